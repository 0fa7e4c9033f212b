// The control room: views chosen by the URL hash (#overview, #floor, #rack/R0001, #plant,
// #alerts, #sql); ?kiosk=1 shows overview, floor and alerts together without controls.
import { $, getJSON } from "./util.js";
import { start } from "./stream.js";
import { initOverview } from "./overview.js";
import { initFloor, drawAll, repaint } from "./floor.js";
import { initAlerts, onAlerts } from "./alerts.js";
import { initRack, showRack, leaveRack } from "./rack.js";
import { initSql } from "./sql.js";
import { initPlant, showPlant } from "./plant.js";

const kiosk = new URLSearchParams(location.search).get("kiosk") === "1";

function route() {
  const [view, arg] = (location.hash.slice(1) || "overview").split("/");
  const name = $(`#view-${view}`) ? view : "overview";
  document.querySelectorAll(".view").forEach((v) => v.classList.toggle("on", v.dataset.view === name));
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("on", a.dataset.view === name));
  if (name === "rack") showRack(arg); else leaveRack();
  if (name === "floor" || kiosk) drawAll();
  if (name === "plant") showPlant();
}

async function main() {
  if (kiosk) document.body.classList.add("kiosk");
  const layout = await getJSON("/api/ui/layout");
  $("#worker").textContent = `worker ${layout.worker}`;
  initOverview();
  initFloor(layout, kiosk);
  initAlerts();
  onAlerts(repaint);
  initRack(layout);
  initPlant(layout);
  initSql();
  window.addEventListener("hashchange", route);
  start();
  route();
  document.body.dataset.ready = "1";
}

main().catch((err) => {
  // the worker is down while the page loads: try again shortly
  $("#stale").hidden = false;
  $("#stale").textContent = `cannot reach the worker (${err.message}); retrying...`;
  setTimeout(() => location.reload(), 3000);
});
