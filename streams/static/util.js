// Formatting, colour scales, small charts and API calls shared by the views.
import uPlot from "./vendor/uplot/uPlot.esm.js";

export const $ = (sel, root = document) => root.querySelector(sel);
export const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

// Display units: SI value -> [scaled value, unit, decimals]. Power in kW/MW by size.
export function scaled(v, unit) {
  if (v == null || !Number.isFinite(v)) return [null, unit, 0];
  if (unit === "W") {
    const a = Math.abs(v);
    if (a >= 1e6) return [v / 1e6, "MW", 2];
    if (a >= 1e3) return [v / 1e3, "kW", a >= 1e5 ? 0 : 1];
    return [v, "W", 0];
  }
  if (unit === "%") return [v * 100, "%", 0];
  if (unit === "°C" || unit === "K") return [v, unit, 1];
  if (unit === "kg/s") return [v, unit, 2];
  if (unit === "") return [v, "", Math.abs(v) < 10 ? 3 : 0];
  if (unit === "count") return [v, "", 0];
  return [v, unit, Math.abs(v) < 1 ? 3 : Math.abs(v) < 100 ? 2 : 0];
}
export function fmt(v, unit) {
  const [x, u, d] = scaled(v, unit);
  return x == null ? "–" : `${x.toFixed(d)}${u && u !== "count" ? " " + u : ""}`;
}

// cividis in 6 steps (Nuñez et al. 2018, readable with every colour-vision deficiency).
export const CIVIDIS = ["#00224e", "#35456c", "#666970", "#948e77", "#c8b866", "#fee838"];
export const SEV_COLOUR = { critical: "#e8453c", major: "#f08c1a", minor: "#e8c547", warning: "#53b6e8" };
export const SEV_RANK = { critical: 4, major: 3, minor: 2, warning: 1 };

export async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

// POST /api/sql: {columns, rows} or an Error carrying the server's words.
export async function sql(query) {
  const r = await fetch("/api/sql", { method: "POST", body: JSON.stringify({ sql: query }),
    headers: { "Content-Type": "application/json" } });
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

const AXIS = { stroke: "#8d9298", grid: { stroke: "#3e4146", width: 1 }, ticks: { stroke: "#3e4146" } };

// A sparkline: measured (grey line) and model (dashed) over the last minutes.
export function sparkline(el, width) {
  const opts = { width, height: 34, legend: { show: false }, cursor: { show: false },
    axes: [{ show: false }, { show: false }], scales: { x: { time: false } },
    series: [{}, { stroke: "#aab0b6", width: 1.5, points: { show: false } },
      { stroke: "#7d8c9b", width: 1, dash: [4, 3], points: { show: false } }] };
  return new uPlot(opts, [[], [], []], el);
}

// A time chart of several series; data = [xs (s since epoch), ys...].
export function timeChart(el, title, names, data, width = 520, height = 200) {
  el.innerHTML = "";
  const pal = ["#c9ccd0", "#7d8c9b", "#c8b866", "#666970", "#948e77"];
  const opts = { title, width, height,
    axes: [AXIS, { ...AXIS, size: 55 }],
    series: [{}, ...names.map((n, i) => ({ label: n, stroke: pal[i % pal.length], width: 1.5 }))] };
  return new uPlot(opts, data, el);
}

export function ageText(s) {
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
