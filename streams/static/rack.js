// Level 3 (rack) and level 4 (GPU diagnostics): per GPU measured beside model-expected
// temperature, power, throttle reasons (power cap apart from thermal/HW slowdown), thermal
// margin, ECC / row remap / XID / NVLink counts, fitted R against the rack's other GPUs,
// residual; the last hour from the SQL store; the rack's coolant against the model.
import { $, esc, fmt, getJSON, sql, timeChart } from "./util.js";

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
    const [d, u] = await Promise.all([getJSON(`/api/racks/${name}`), getJSON(`/api/units/${name}`).catch(() => null)]);
    if (name !== rack) return;
    doc = d;
    render(d, u);
    $("#rack-title").textContent = `Rack ${name}`;
  } catch (err) {
    $("#rack-title").textContent = `Rack ${name}: ${err.message}`;
  }
}

function median(xs) {
  const v = xs.filter((x) => x != null).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : null;
}

function render(d, unit) {
  const g = d.gpus, m = d.model || {};
  const n = g.gpu.length;
  const rMed = median(m.r_k_w || []);
  const exp = unit && unit.model ? unit.model : {};
  const cool = d.coolant || {};
  const pts = [["inlet_temp_c", "coolant inlet", "°C"], ["outlet_temp_c", "coolant outlet", "°C"],
    ["flow_kg_s", "coolant flow", "kg/s"], ["heat_to_liquid_w", "heat to liquid", "W"]];
  $("#rack-coolant").innerHTML = pts.map(([k, label, u]) => {
    const e = exp[k] && exp[k].expected;
    return `<div class="kpi"><div class="name">${label}</div><div class="val">${fmt(cool[k], u)}</div>
      <div class="model">${e == null ? "" : "model " + fmt(e, u)}</div></div>`;
  }).join("") + `<div class="kpi"><div class="name">rack power</div><div class="val">${fmt(d.summary.power_w, "W")}</div></div>` +
    `<div class="kpi"><div class="name">GPUs reporting</div><div class="val" id="rack-ngpu">${n}</div></div>`;
  const rows = [], tiles = [];
  for (let k = 0; k < n; k++) {
    const reasons = g.clock_event_reasons[k];
    const cap = reasons & POWER_CAP, therm = reasons & (SW_THERMAL | HW_THERMAL), hw = reasons & (HW_SLOW | HW_BRAKE);
    const margin = g.thermal_margin_k ? g.thermal_margin_k[k] : null;
    const res = m.residual_k ? m.residual_k[k] : null;
    const r = m.r_k_w ? m.r_k_w[k] : null;
    const bad = g.ecc_uncorrected?.[k] || hw || (margin != null && margin <= 2);
    const warn = therm || g.xid[k] || g.row_remap_flags?.[k] || (margin != null && margin <= 5) || (res != null && Math.abs(res) > 3) ||
      (r != null && rMed && r / rMed > 1.25) || g.nvlink_errors?.[k];
    const cls = bad ? "crit" : warn ? "abn" : "";
    tiles.push(`<div data-gpu="${k}" class="${cls}" title="G${String(g.gpu[k]).padStart(2, "0")}">${g.temp_gpu_c[k].toFixed(0)}</div>`);
    rows.push(`<tr data-gpu="${k}" class="${cls}${gpuSel === k ? " sel" : ""}"><td class=l>G${String(g.gpu[k]).padStart(2, "0")}</td>
      <td>${g.temp_gpu_c[k].toFixed(0)}</td><td>${m.expected_temp_gpu_c ? fmt(m.expected_temp_gpu_c[k], "°C").replace(" °C", "") : "–"}</td>
      <td>${res == null ? "–" : res.toFixed(2)}</td><td>${margin == null ? "–" : margin.toFixed(0)}</td>
      <td>${g.power_w[k].toFixed(0)}</td><td>${g.power_limit_w[k].toFixed(0)}</td><td>${g.util_pct[k].toFixed(0)}</td><td>${g.sm_clock_mhz[k]}</td>
      <td class=l>${cap ? "cap" : ""}</td><td class=l>${therm ? "THERMAL" : ""}</td><td class=l>${hw ? "HW SLOWDOWN" : ""}</td>
      <td>${r == null ? "–" : (r * 1000).toFixed(1)}</td><td>${r == null || !rMed ? "–" : (r / rMed).toFixed(2)}</td>
      <td>${g.ecc_corrected?.[k] ?? "–"}</td><td>${g.ecc_uncorrected?.[k] ?? "–"}</td><td>${g.remapped_rows?.[k] ?? "–"}</td>
      <td>${g.row_remap_flags?.[k] ?? "–"}</td><td>${g.xid[k] || ""}</td><td>${g.nvlink_errors?.[k] ?? "–"}</td></tr>`);
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
  const gpu = doc.gpus.gpu[k], name = rack;
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
  const g = doc.gpus, m = doc.model || {};
  const el = $("#gpu-diag");
  el.hidden = false;
  const slow = layout.slowdown_c;
  const margin = g.thermal_margin_k ? g.thermal_margin_k[k] : slow - g.temp_gpu_c[k];
  const keep = el.querySelector("#gpu-hist");
  el.innerHTML = `<h3>GPU diagnostics: ${esc(rack)} G${String(g.gpu[k]).padStart(2, "0")}</h3>
    <div class="kpis small">
      <div class="kpi"><div class="name">die temperature</div><div class="val">${fmt(g.temp_gpu_c[k], "°C")}</div>
        <div class="model">model ${m.expected_temp_gpu_c ? fmt(m.expected_temp_gpu_c[k], "°C") : "–"}</div>
        <div class="bar-ind"><i style="width:${Math.min(100, (100 * g.temp_gpu_c[k]) / slow)}%"></i></div></div>
      <div class="kpi"><div class="name">margin to slowdown (${slow} °C)</div><div class="val">${fmt(margin, "K")}</div></div>
      <div class="kpi"><div class="name">power / limit</div><div class="val">${g.power_w[k].toFixed(0)} / ${g.power_limit_w[k].toFixed(0)} W</div></div>
      <div class="kpi"><div class="name">fitted R (cold plate)</div><div class="val">${m.r_k_w ? (m.r_k_w[k] * 1000).toFixed(1) + " mK/W" : "–"}</div>
        <div class="model">tau ${m.tau_s ? m.tau_s[k].toFixed(1) + " s" : "–"}, ${m.updates ? m.updates[k] : 0} updates</div></div>
      <div class="kpi"><div class="name">clocks-event reasons</div><div class="val">0x${g.clock_event_reasons[k].toString(16)}</div></div>
      <div class="kpi"><div class="name">ECC corr / uncorr, remapped rows, XID, NVLink</div>
        <div class="val">${g.ecc_corrected?.[k] ?? "–"} / ${g.ecc_uncorrected?.[k] ?? "–"}, ${g.remapped_rows?.[k] ?? "–"}, ${g.xid[k]}, ${g.nvlink_errors?.[k] ?? "–"}</div></div>
    </div>`;
  const h = keep || Object.assign(document.createElement("div"), { id: "gpu-hist", className: "chart" });
  el.appendChild(h);
}
