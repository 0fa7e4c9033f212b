// Level 2: the floor map. Every rack is a tile in its row and hall, drawn on one canvas; a
// stream update redraws only the tiles that changed, so 1,250 racks stay cheap.
import { $, esc, fmt, CIVIDIS, SEV_COLOUR, SEV_RANK } from "./util.js";
import { store, onUpdate } from "./stream.js";
import { alertsByRack, blastRacks } from "./alerts.js";

const NORMAL = "#5d6167";
const EMPTY = "#3a3d41";
// metric -> [label, value of a tile, lo, hi, unit, reversed (low = bad)]
const METRICS = {
  temp: ["hottest GPU", (t) => t[0], 50, 89, "°C", false],
  headroom: ["thermal headroom", (t) => t[1], 0, 30, "K", true],
  power: ["rack power", (t) => t[2], 0, 200, "kW", false],
  residual: ["largest |residual|", (t) => t[3], 0, 3, "K", false],
  alert: ["alert state", null],
};
export const perf = { draws: 0, drawMs: 0, maxDrawMs: 0, tilesDrawn: 0 };
window.__perf = perf;
// for the browser tests: where a rack's tile is and what colour it should have
window.__floor = { tile: (i) => ({ x: pos[i][0], y: pos[i][1], size: geo.size }), colour: (i) => colour(i) };

let layout = null, canvas, ctx, geo = { size: 10, gap: 2 }, pos = [], metric = "temp";

export function initFloor(lay, kiosk) {
  layout = lay;
  canvas = $("#map");
  ctx = canvas.getContext("2d");
  metric = new URLSearchParams(location.search).get("metric") || (kiosk ? "alert" : "temp");
  $("#metric").value = metric;
  $("#metric").addEventListener("change", (e) => { metric = e.target.value; legend(); drawAll(); });
  canvas.addEventListener("mousemove", hover);
  canvas.addEventListener("mouseleave", () => ($("#tip").hidden = true));
  canvas.addEventListener("click", (e) => {
    const i = hit(e);
    if (i >= 0) location.hash = `#rack/${layout.racks[i]}`;
  });
  window.addEventListener("resize", () => { place(); drawAll(); });
  onUpdate((ch) => { if (ch.r.size) drawSome([...ch.r].map(Number)); });
  legend();
}

// Halls in a grid of hallCols columns; within a hall, rows top to bottom, racks left to right.
function place() {
  const w = Math.max(320, canvas.parentElement.clientWidth);
  // rows and racks actually present (a small demo site fills one short row)
  const per = Math.max(...layout.pos) + 1, rows = Math.max(...layout.row) + 1, n = layout.n_halls;
  const label = n > 2 ? 18 : 48, hallGap = 14, head = 18;
  // as many halls side by side as give the biggest tiles that fit the window's width and height
  const availH = Math.max(240, window.innerHeight - canvas.getBoundingClientRect().top - 16);
  let hallCols = 1, size = 0;
  for (let c = 1; c <= n; c++) {
    const r = Math.ceil(n / c);
    const sw = Math.floor((w - c * (label + hallGap)) / (c * per)) - 2;
    const sh = Math.floor((availH - r * (head + hallGap)) / (r * rows)) - 2;
    const sz = Math.min(46, sw, sh);
    if (sz > size) { size = sz; hallCols = c; }
  }
  size = Math.max(6, size);
  const hallRows = Math.ceil(n / hallCols);
  const gap = size > 14 ? 2 : 1;
  const hallW = per * (size + gap) + label, hallH = rows * (size + gap) + head;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.floor(w * dpr);
  canvas.height = Math.floor((hallRows * (hallH + hallGap) + 4) * dpr);
  canvas.style.height = `${hallRows * (hallH + hallGap) + 4}px`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  geo = { size, gap, hallW, hallH, hallCols, label, hallGap };
  pos = layout.racks.map((_, i) => {
    const h = layout.hall[i];
    const x0 = (h % hallCols) * (hallW + hallGap) + label, y0 = Math.floor(h / hallCols) * (hallH + hallGap) + 16;
    return [x0 + layout.pos[i] * (size + gap), y0 + layout.row[i] * (size + gap)];
  });
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#8d9298";
  ctx.font = `${Math.min(13, Math.max(9, size))}px system-ui, sans-serif`;
  for (let h = 0; h < n; h++) {
    const x0 = (h % hallCols) * (hallW + hallGap), y0 = Math.floor(h / hallCols) * (hallH + hallGap);
    ctx.fillText(`Hall ${h + 1}`, x0 + label, y0 + 11);
    if (size >= 9) for (let r = 0; r < rows; r++) ctx.fillText(n > 2 ? `${r + 1}` : `row ${r + 1}`, x0, y0 + 16 + r * (size + gap) + size * 0.7);
  }
}

function colour(i) {
  const t = store.r[i];
  if (!t) return EMPTY;
  const rack = layout.racks[i];
  if (metric === "alert") {
    const a = alertsByRack()[rack];
    return a ? SEV_COLOUR[a] : NORMAL; // ISA-101: grey when normal
  }
  const [, val, lo, hi, , rev] = METRICS[metric];
  const v = val(t);
  if (v == null) return EMPTY;
  let x = (v - lo) / (hi - lo);
  if (rev) x = 1 - x;
  return CIVIDIS[Math.max(0, Math.min(5, Math.floor(x * 6)))];
}

function drawTile(i) {
  const [x, y] = pos[i], s = geo.size;
  const c = colour(i);
  ctx.fillStyle = c;
  ctx.fillRect(x, y, s, s);
  if (s >= 28) { // big tiles (a hall or less) carry the rack number, dark on light colours
    const lum = 0.3 * parseInt(c.slice(1, 3), 16) + 0.59 * parseInt(c.slice(3, 5), 16) + 0.11 * parseInt(c.slice(5, 7), 16);
    ctx.fillStyle = lum > 140 ? "#111" : "#e6e8ea";
    ctx.font = `${Math.floor(s / 3.6)}px system-ui, sans-serif`;
    ctx.fillText(layout.racks[i].replace(/^R0*/, ""), x + s * 0.3, y + s * 0.62);
  }
  const t = store.r[i];
  const blast = blastRacks();
  if (blast.has(layout.racks[i])) { ctx.strokeStyle = "#f08c1a"; ctx.lineWidth = 2; ctx.strokeRect(x + 1, y + 1, s - 2, s - 2); }
  // abnormal GPU conditions (thermal/HW slowdown, XID, ECC) marked in every metric: a notch
  if (t && (t[4] & 0b11111)) { ctx.fillStyle = "#e8453c"; ctx.fillRect(x, y, Math.max(3, s / 4), Math.max(3, s / 4)); }
}

export function drawAll() {
  if (!layout || !canvas.offsetParent) return;
  place();
  drawSome(layout.racks.map((_, i) => i));
}

// Colours only (alerts or blast radius changed): no new layout.
export function repaint() {
  if (layout) drawSome(layout.racks.map((_, i) => i));
}

function drawSome(idx) {
  if (!layout || !canvas.offsetParent || !pos.length) return;
  const t0 = performance.now();
  for (const i of idx) if (i < pos.length) drawTile(i);
  const ms = performance.now() - t0;
  perf.draws += 1; perf.drawMs += ms; perf.maxDrawMs = Math.max(perf.maxDrawMs, ms); perf.tilesDrawn += idx.length;
}

function hit(e) {
  const r = canvas.getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top;
  const s = geo.size;
  for (let i = 0; i < pos.length; i++) {
    const [px, py] = pos[i];
    if (x >= px && x < px + s && y >= py && y < py + s) return i;
  }
  return -1;
}

function hover(e) {
  const i = hit(e), tip = $("#tip");
  if (i < 0) { tip.hidden = true; return; }
  const t = store.r[i] || [];
  const rack = layout.racks[i];
  const flags = ["thermal slowdown", "HW slowdown", "XID", "ECC uncorrected", "row remap", "power cap"]
    .filter((_, b) => (t[4] || 0) & (1 << b));
  const sev = alertsByRack()[rack];
  tip.textContent = `${rack}  hall ${layout.hall[i] + 1} row ${layout.row[i] + 1}  ${layout.cdu[i]}\n` +
    `hottest GPU ${fmt(t[0], "°C")}\nheadroom ${fmt(t[1], "K")}\npower ${t[2] == null ? "–" : t[2] + " kW"}\n` +
    `largest |residual| ${fmt(t[3], "K")}\n${flags.length ? flags.join(", ") : "no GPU condition"}` +
    (sev ? `\nalert: ${sev}` : "");
  const r = canvas.getBoundingClientRect();
  tip.style.left = `${Math.min(e.clientX - r.left + 14, r.width - 260)}px`;
  tip.style.top = `${e.clientY - r.top + 14}px`;
  tip.hidden = false;
}

function legend() {
  const el = $("#legend");
  if (metric === "alert") {
    el.innerHTML = `<i style="background:${NORMAL}"></i>normal ` +
      Object.keys(SEV_RANK).map((s) => `<i style="background:${SEV_COLOUR[s]}"></i>${s}`).join(" ") +
      ` <i style="background:${EMPTY}"></i>no data`;
    return;
  }
  const [label, , lo, hi, unit, rev] = METRICS[metric];
  const step = (hi - lo) / 6;
  const cells = CIVIDIS.map((c, k) => {
    const a = rev ? hi - (k + 1) * step : lo + k * step;
    return `<i style="background:${c}" title="${a.toFixed(0)}-${(a + step).toFixed(0)} ${unit}"></i>`;
  }).join("");
  el.innerHTML = `${esc(label)}: ${rev ? hi : lo} ${unit} ${cells} ${rev ? lo : hi} ${unit}` +
    ` <i style="background:${EMPTY}"></i>no data <i style="background:#e8453c;width:.5rem"></i>GPU condition` +
    ` <i style="outline:2px solid #f08c1a;background:none"></i>blast radius`;
}
