// Alerts: polled from GET /api/alerts every 2 s (the alert engine lives beside the stream);
// acknowledge with a comment and the bearer token, asked once per browser session.
import { $, esc, ageText, SEV_RANK } from "./util.js";

let alerts = [], byRack = {}, blast = new Set(), selected = null;
const listeners = [];
export const onAlerts = (fn) => listeners.push(fn);
export const alertsByRack = () => byRack;
export const blastRacks = () => blast;
export function alertCounts() {
  const c = {};
  for (const a of alerts) if (a.active && !["SHLVD", "DSUPR", "OOSRV"].includes(a.state)) c[a.severity] = (c[a.severity] || 0) + 1;
  return c;
}
const rackOf = (a) => (/^R\d+/.test(a.owner) ? a.owner : null);

async function poll() {
  try {
    const r = await fetch("/api/alerts", { cache: "no-store" });
    if (!r.ok) return;
    const body = await r.json();
    alerts = body.alerts || [];
    $("#flood").hidden = !body.flood;
  } catch { return; }
  byRack = {};
  blast = new Set();
  for (const a of alerts) {
    if (!a.active && a.state !== "RTNUN") continue;
    const racks = [rackOf(a), ...(a.blast || [])].filter(Boolean);
    for (const r of racks) if (!byRack[r] || SEV_RANK[a.severity] > SEV_RANK[byRack[r]]) byRack[r] = a.severity;
    if (a.blast && a.blast.length && (selected == null || selected === a.id)) a.blast.forEach((r) => blast.add(r));
    if (selected === a.id && rackOf(a)) blast.add(rackOf(a));
  }
  render();
  listeners.forEach((fn) => fn());
}

function render() {
  const now = Date.now() / 1000;
  const active = alerts.filter((a) => a.active || a.state === "RTNUN");
  const n = alerts.filter((a) => a.active && a.state === "UNACK").length;
  $("#nav-alerts").textContent = n ? String(n) : "";
  $("#alerts-active").innerHTML = "<tr><th class=l>severity</th><th class=l>state</th><th>age</th><th class=l>entity</th>" +
    "<th class=l>alert</th><th class=l>recommended action</th><th>blast radius</th><th class=l></th></tr>" +
    (active.length ? active.map((a) => `<tr data-id="${esc(a.id)}" class="${selected === a.id ? "sel" : ""}">
      <td class=l><span class="sev ${esc(a.severity)}">${esc(a.severity)}</span></td><td class=l>${esc(a.state)}</td>
      <td>${ageText(now - a.raised_s)}</td><td class=l><a href="#rack/${esc(rackOf(a) || "")}">${esc(a.entity)}</a></td>
      <td class=l>${esc(a.message)}</td><td class=l>${esc(a.action)}</td><td>${(a.blast || []).length} racks</td>
      <td class=l>${a.state === "UNACK" || a.state === "RTNUN" ? `<button class="ack" data-id="${esc(a.id)}">ack</button>` :
        a.ack_by ? `acked by ${esc(a.ack_by)}` : ""}</td></tr>`).join("")
      : "<tr><td class=l colspan=8>no active alerts</td></tr>");
  const resolved = alerts.filter((a) => !a.active && a.state === "NORM" && a.cleared_s).sort((x, y) => y.cleared_s - x.cleared_s).slice(0, 20);
  $("#alerts-resolved").innerHTML = "<tr><th class=l>severity</th><th>cleared</th><th class=l>entity</th><th class=l>alert</th><th class=l>ack</th></tr>" +
    (resolved.length ? resolved.map((a) => `<tr><td class=l>${esc(a.severity)}</td><td>${ageText(now - a.cleared_s)} ago</td>
      <td class=l>${esc(a.entity)}</td><td class=l>${esc(a.message)}</td><td class=l>${esc(a.ack_by || "")} ${esc(a.ack_comment || "")}</td></tr>`).join("")
      : "<tr><td class=l colspan=5>none</td></tr>");
}

function openAck(id) {
  const a = alerts.find((x) => x.id === id);
  $("#ack-id").textContent = a ? a.entity : id;
  $("#ack-msg").textContent = a ? `${a.message}. Action: ${a.action}` : "";
  $("#ack-err").textContent = "";
  $("#ack-token-row").hidden = !!sessionStorage.getItem("twin-token");
  $("#ack-dlg").dataset.id = id;
  $("#ack-dlg").showModal();
}

async function sendAck(ev) {
  ev.preventDefault();
  const id = $("#ack-dlg").dataset.id;
  const typed = $("#ack-token").value.trim();
  const token = sessionStorage.getItem("twin-token") || typed;
  const r = await fetch(`/api/alerts/${encodeURIComponent(id)}/ack`, {
    method: "POST", headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ comment: $("#ack-comment").value, by: $("#ack-by").value || "operator" }) });
  const body = await r.json().catch(() => ({}));
  if (r.status === 401 || r.status === 403) {
    sessionStorage.removeItem("twin-token");
    $("#ack-token-row").hidden = false;
    $("#ack-err").textContent = `refused (${r.status}): ${body.error || ""}`;
    return;
  }
  if (!r.ok) { $("#ack-err").textContent = `${r.status}: ${body.error || ""}`; return; }
  if (token) sessionStorage.setItem("twin-token", token);
  $("#ack-dlg").close();
  $("#ack-comment").value = "";
  poll();
}

export function initAlerts() {
  $("#alerts-active").addEventListener("click", (e) => {
    const b = e.target.closest("button.ack");
    if (b) { openAck(b.dataset.id); return; }
    const tr = e.target.closest("tr[data-id]");
    if (tr && !e.target.closest("a")) { selected = selected === tr.dataset.id ? null : tr.dataset.id; poll(); }
  });
  $("#ack-ok").addEventListener("click", sendAck);
  poll();
  setInterval(poll, 2000);
}
