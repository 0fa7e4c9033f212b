// Level 1: facility figures, each with its live trend and the model's value beside it.
import { $, esc, fmt, scaled, sparkline } from "./util.js";
import { store, onUpdate } from "./stream.js";
import { alertCounts } from "./alerts.js";

// key, label, unit, abnormal(v) -> "" | "abn" | "crit", range for the analogue bar
const FIGURES = [
  ["it_power_w", "IT power", "W"],
  ["facility_power_w", "Facility power", "W"],
  ["pue", "PUE", "", (v) => (v > 1.4 ? "crit" : v > 1.25 ? "abn" : ""), [1, 1.5]],
  ["ere", "ERE", "", null, [0, 1.5]],
  ["heat_to_dh_w", "Heat to district heating", "W"],
  ["outdoor_temp_c", "Outdoor temperature", "°C", null, [-30, 35]],
  ["free_cooling_share", "Free-cooling share", "%", null, [0, 1]],
  ["cue_kg_kwh", "CUE", "kg CO2/kWh"],
  ["carbon_g_per_kwh", "Grid carbon intensity", "g CO2/kWh", null, [0, 500]],
  ["cooling_cop", "Cooling COP", ""],
  ["temp_gpu_max_c", "Hottest GPU", "°C", (v) => (v >= 89 ? "crit" : v >= 85 ? "abn" : ""), [20, 92]],
  ["thermal_margin_min_k", "Least thermal margin", "K", (v) => (v <= 2 ? "crit" : v <= 5 ? "abn" : ""), [0, 40]],
];
const CONDITIONS = [
  ["throttled_gpus", "GPUs in thermal/HW slowdown", (v) => (v > 0 ? "abn" : "")],
  ["power_capped_gpus", "GPUs at power cap (normal)", () => ""],
  ["xid_gpus", "GPUs with XID events", (v) => (v > 0 ? "abn" : "")],
  ["ecc_uncorrected_gpus", "GPUs with uncorrected ECC", (v) => (v > 0 ? "crit" : "")],
  ["row_remap_flagged_gpus", "GPUs with row-remap flags", (v) => (v > 0 ? "abn" : "")],
  ["gpus", "GPUs reporting", () => ""],
];
const sparks = {};

export function initOverview() {
  const box = $("#kpis");
  box.innerHTML = FIGURES.map(([k, label, unit, , range]) => `
    <div class="kpi" id="kpi-${k}"><div class="name">${esc(label)}</div>
      <div><span class="val">–</span><span class="unit"></span></div><div class="model"></div>
      ${range ? '<div class="bar-ind"><i></i><b hidden></b></div>' : ""}
      <div class="spark"></div></div>`).join("");
  for (const [k] of FIGURES) sparks[k] = sparkline($(`#kpi-${k} .spark`), 195);
  $("#conditions").innerHTML = CONDITIONS.map(([k, label]) =>
    `<div class="kpi" id="cond-${k}"><div class="name">${esc(label)}</div><div class="val">–</div></div>`).join("") +
    ["critical", "major", "minor", "warning"].map((s) =>
      `<div class="kpi" id="alerts-${s}"><div class="name">active ${s} alerts</div><div class="val">–</div></div>`).join("");
  onUpdate(render);
}

function render() {
  for (const [k, , unit, judge, range] of FIGURES) {
    const el = $(`#kpi-${k}`);
    const [m, e] = store.f[k] || [null, null];
    const [x, u, d] = scaled(m ?? e, unit);
    el.querySelector(".val").textContent = x == null ? "–" : x.toFixed(d);
    el.querySelector(".unit").textContent = x == null ? "" : u;
    el.querySelector(".model").textContent = m == null && e != null ? "model only" : e == null ? "" : `model ${fmt(e, unit)}`;
    const cls = judge && (m ?? e) != null ? judge(m ?? e) : "";
    el.className = `kpi ${cls}`;
    if (range) {
      const pos = (v) => `${Math.max(0, Math.min(100, (100 * (v - range[0])) / (range[1] - range[0])))}%`;
      const v = m ?? e;
      el.querySelector(".bar-ind i").style.width = v == null ? "0" : pos(v);
      const b = el.querySelector(".bar-ind b");
      b.hidden = e == null || m == null;
      if (e != null) b.style.left = pos(e);
    }
    const h = store.history[k];
    if (h && el.offsetParent) sparks[k].setData(h);
  }
  for (const [k, , judge] of CONDITIONS) {
    const v = (store.f[k] || [null])[0];
    const el = $(`#cond-${k}`);
    el.querySelector(".val").textContent = v == null ? "–" : String(v);
    el.className = `kpi ${v == null ? "" : judge(v)}`;
  }
  const counts = alertCounts();
  for (const s of ["critical", "major", "minor", "warning"]) {
    const el = $(`#alerts-${s}`);
    el.querySelector(".val").textContent = counts[s] ?? 0;
    el.className = `kpi ${counts[s] ? (s === "critical" ? "crit" : "abn") : ""}`;
  }
}
