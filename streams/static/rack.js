// Level 3 (rack) and level 4 (GPU diagnostics): per GPU measured beside model-expected
// temperature, power, throttle reasons (power cap apart from thermal/HW slowdown), thermal
// margin, ECC / row remap / XID / NVLink counts, fitted R against the rack's other GPUs,
// residual; the last hour from the SQL store; the rack's coolant against the model.
import { $, ageText, esc, fmt, getJSON, sql, timeChart } from "./util.js";

// NVML clocks-event reasons (nvml.h): power cap, SW thermal, HW slowdown, HW thermal, HW power brake.
const POWER_CAP = 0x4, SW_THERMAL = 0x20, HW_SLOW = 0x8, HW_THERMAL = 0x40, HW_BRAKE = 0x80;
let layout = null, rack = null, timer = null, doc = null, gpuSel = null;

export function initRack(lay) {
  layout = lay;
  $("#rack-pick").addEventListener("change", (e) => (location.hash = `#rack/${e.target.value.trim().toUpperCase()}`));
  $("#rack-table").addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-gpu]");
    if (tr) showGpu(Number(tr.dataset.gpu));
  });
  $("#rack-gpus").addEventListener("click", (e) => {
    const d = e.target.closest("div[data-gpu]");
    if (d) showGpu(Number(d.dataset.gpu));
  });
}

export function showRack(name) {
  clearInterval(timer);
  rack = name || rack || layout.racks[0];
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(rack)) rack = layout.racks[0]; // it goes into SQL text
  gpuSel = null;
  $("#gpu-diag").hidden = true;
  $("#rack-pick").value = rack;
  const i = layout.racks.indexOf(rack);
  $("#rack-where").textContent = i < 0 ? "not in the site layout" :
    `hall ${layout.hall[i] + 1}, row ${layout.row[i] + 1}, ${layout.cdu[i]}, ${layout.pdu[i]}`;
  refresh();
  history();
  timer = setInterval(refresh, 2000);
}
export const leaveRack = () => clearInterval(timer);

async function refresh() {
  const name = rack;
  try {
    const d = await getJSON(`/api/racks/${name}`);
    if (name !== rack) return;
    doc = d;
    render(d);
    $("#rack-title").textContent = `Rack ${name}`;
  } catch (err) {
    $("#rack-title").textContent = `Rack ${name}: ${err.message}`;
  }
}

const num = (v, d) => (v == null ? "–" : v.toFixed(d));

function median(xs) {
  const v = xs.filter((x) => x != null).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : null;
}

const gname = (g) => `G${String(g.gpu).padStart(2, "0")}`;

// GET /api/racks/{rack} (docs/api.md): gpus is a list of objects, the fit's values under
// each GPU's model (null before the rack's first fit); coolant points carry their expected value.
function render(d) {
  const gpus = d.gpus;
  const n = gpus.length;
  const rMed = median(gpus.map((g) => g.model?.r_k_w ?? null));
  const cool = d.coolant || {};
  const pts = [["inlet_temp_c", "coolant inlet", "°C"], ["outlet_temp_c", "coolant outlet", "°C"],
    ["flow_kg_s", "coolant flow", "kg/s"], ["heat_to_liquid_w", "heat to liquid", "W"]];
  $("#rack-coolant").innerHTML = pts.map(([k, label, u]) => {
    const e = cool[k]?.expected;
    return `<div class="kpi"><div class="name">${label}</div><div class="val">${fmt(cool[k]?.value, u)}</div>
      <div class="model">${e == null ? "" : "model " + fmt(e, u)}</div></div>`;
  }).join("") + `<div class="kpi"><div class="name">rack power</div><div class="val">${fmt(d.summary.power_w, "W")}</div></div>` +
    `<div class="kpi"><div class="name">GPUs reporting</div><div class="val" id="rack-ngpu">${n}</div></div>`;
  const rows = [], tiles = [];
  for (let k = 0; k < n; k++) {
    const g = gpus[k], m = g.model || {};
    const reasons = g.clock_event_reasons;
    const cap = reasons & POWER_CAP, therm = reasons & (SW_THERMAL | HW_THERMAL), hw = reasons & (HW_SLOW | HW_BRAKE);
    const margin = g.thermal_margin_k ?? null;
    const res = m.residual_k ?? null;
    const r = m.r_k_w ?? null;
    const bad = g.ecc_uncorrected || hw || (margin != null && margin <= 2);
    const warn = therm || g.xid || g.row_remap_flags || (margin != null && margin <= 5) || (res != null && Math.abs(res) > 3) ||
      (r != null && rMed && r / rMed > 1.25) || g.nvlink_errors;
    const cls = bad ? "crit" : warn ? "abn" : "";
    tiles.push(`<div data-gpu="${k}" class="${cls}" title="${gname(g)}">${num(g.temp_gpu_c, 0)}</div>`);
    rows.push(`<tr data-gpu="${k}" class="${cls}${gpuSel === k ? " sel" : ""}"><td class=l>${gname(g)}</td>
      <td>${num(g.temp_gpu_c, 0)}</td><td>${m.expected_temp_gpu_c == null ? "–" : num(m.expected_temp_gpu_c, 1)}</td>
      <td>${num(res, 2)}</td><td>${num(margin, 0)}</td>
      <td>${num(g.power_w, 0)}</td><td>${num(g.power_limit_w, 0)}</td><td>${num(g.util_pct, 0)}</td><td>${g.sm_clock_mhz ?? "–"}</td>
      <td class=l>${cap ? "cap" : ""}</td><td class=l>${therm ? "THERMAL" : ""}</td><td class=l>${hw ? "HW SLOWDOWN" : ""}</td>
      <td>${r == null ? "–" : (r * 1000).toFixed(1)}</td><td>${r == null || !rMed ? "–" : (r / rMed).toFixed(2)}</td>
      <td>${g.ecc_corrected ?? "–"}</td><td>${g.ecc_uncorrected ?? "–"}</td><td>${g.remapped_rows ?? "–"}</td>
      <td>${g.row_remap_flags ?? "–"}</td><td>${g.xid || ""}</td><td>${g.nvlink_errors ?? "–"}</td></tr>`);
  }
  $("#rack-gpus").innerHTML = tiles.join("");
  $("#rack-table").innerHTML = `<tr><th class=l>GPU</th><th>temp °C</th><th>model °C</th><th>residual K</th><th>margin K</th>
    <th>power W</th><th>limit W</th><th>util %</th><th>SM MHz</th><th class=l>power cap</th><th class=l>thermal</th><th class=l>HW</th>
    <th>R mK/W</th><th>R / rack median</th><th>ECC corr</th><th>ECC uncorr</th><th>remapped rows</th><th>remap flags</th><th>XID</th><th>NVLink err</th></tr>` + rows.join("");
  if (gpuSel != null) diag(gpuSel);
}

// The rack over the last hour of stored data (1-minute rollup): hottest and mean die, power.
async function history() {
  const name = rack;
  const q = `SELECT epoch_ms(ts) / 1000.0 AS t, max(temp_gpu_c_max) AS temp_max_c, avg(temp_gpu_c_mean) AS temp_mean_c,
    sum(power_w_mean) / 1000.0 AS power_kw FROM gpu_1m WHERE rack = '${name}' AND ts > now() - INTERVAL 1 HOUR GROUP BY ts ORDER BY ts`;
  try {
    const res = await sql(q);
    if (name !== rack) return;
    if (!res.rows.length) {
      $("#rack-hist-t").textContent = `${name}: no stored history in the last hour yet (the sink writes every 30 s, the rollup per closed minute)`;
      $("#rack-hist-p").textContent = "";
      return;
    }
    const col = (c) => res.rows.map((r) => r[c]);
    timeChart($("#rack-hist-t"), `${name} GPU temperature, last hour [°C] (hottest, mean)`, ["hottest", "mean"], [col("t"), col("temp_max_c"), col("temp_mean_c")]);
    timeChart($("#rack-hist-p"), `${name} GPU power, last hour [kW]`, ["power"], [col("t"), col("power_kw")]);
  } catch (err) {
    $("#rack-hist-t").textContent = `history: ${err.message}`;
  }
}

// Level 4: one GPU, with its own last hour at 1 s from the gpu table.
async function showGpu(k) {
  gpuSel = k;
  diag(k);
  const gpu = doc.gpus[k].gpu, name = rack;
  const q = `SELECT epoch_ms(ts) / 1000.0 AS t, temp_gpu_c, temp_mem_c, power_w FROM gpu
    WHERE rack = '${name}' AND gpu = ${gpu} AND ts > now() - INTERVAL 1 HOUR ORDER BY ts`;
  try {
    const res = await sql(q);
    if (!res.rows.length) { $("#gpu-hist").textContent = "no stored samples in the last hour yet"; return; }
    const col = (c) => res.rows.map((r) => r[c]);
    timeChart($("#gpu-hist"), `${name} G${String(gpu).padStart(2, "0")} die and memory [°C], last hour`, ["die", "memory"], [col("t"), col("temp_gpu_c"), col("temp_mem_c")], 620, 180);
  } catch (err) {
    $("#gpu-hist").textContent = `history: ${err.message}`;
  }
}

function diag(k) {
  const g = doc.gpus[k], m = g.model || {};
  const el = $("#gpu-diag");
  el.hidden = false;
  const slow = layout.slowdown_c;
  const margin = g.thermal_margin_k ?? slow - g.temp_gpu_c;
  const keep = el.querySelector("#gpu-hist");
  el.innerHTML = `<h3>GPU diagnostics: ${esc(g.id)}</h3>
    <div class="kpis small">
      <div class="kpi"><div class="name">die temperature</div><div class="val">${fmt(g.temp_gpu_c, "°C")}</div>
        <div class="model">model ${fmt(m.expected_temp_gpu_c, "°C")}</div>
        <div class="bar-ind"><i style="width:${Math.min(100, (100 * g.temp_gpu_c) / slow)}%"></i></div></div>
      <div class="kpi"><div class="name">margin to slowdown (${slow} °C)</div><div class="val">${fmt(margin, "K")}</div></div>
      <div class="kpi"><div class="name">power / limit</div><div class="val">${num(g.power_w, 0)} / ${num(g.power_limit_w, 0)} W</div></div>
      <div class="kpi"><div class="name">fitted R (cold plate)</div><div class="val">${m.r_k_w == null ? "–" : (m.r_k_w * 1000).toFixed(1) + " mK/W"}</div>
        <div class="model">tau ${m.tau_s == null ? "–" : m.tau_s.toFixed(1) + " s"}, ${m.updates ?? 0} updates</div></div>
      <div class="kpi"><div class="name">clocks-event reasons</div><div class="val">0x${g.clock_event_reasons.toString(16)}</div></div>
      <div class="kpi"><div class="name">ECC corr / uncorr, remapped rows, XID, NVLink</div>
        <div class="val">${g.ecc_corrected ?? "–"} / ${g.ecc_uncorrected ?? "–"}, ${g.remapped_rows ?? "–"}, ${g.xid}, ${g.nvlink_errors ?? "–"}</div></div>
      <div class="kpi"><div class="name">reading</div><div class="val">${g.age_s == null ? "–" : ageText(g.age_s) + " old"}</div>
        <div class="model">${esc(g.ts ?? "")}</div></div>
    </div>`;
  const h = keep || Object.assign(document.createElement("div"), { id: "gpu-hist", className: "chart" });
  el.appendChild(h);
}
