// Level 2 for the plant: the liquid loops and the power path as one inline SVG with live
// measured (white) and model-expected (blue-grey) values, and a what-if drawn on the same
// boxes (yellow: the end of the horizon, beside the baseline's end).
import { $, esc, fmt } from "./util.js";
import { store, onUpdate } from "./stream.js";

let layout = null, whatif = null, Y = 1;
const KINDS = {
  pump_trip: ["cdu_ids", "pump trip"], pump_degrade: ["cdu_ids", "pump degrade"], fan_fail: ["dc_ids", "dry-cooler fans fail"],
  ups_module_lost: ["ups_ids", "UPS module lost"], ups_on_battery: ["ups_ids", "UPS on battery"],
  heatwave: [["+5K", "+8K", "+12K"], "heat wave"], load: [["+10%", "+20%", "+30%"], "more load"],
};

export function initPlant(lay) {
  layout = lay;
  $("#wi-kind").innerHTML = Object.entries(KINDS).map(([k, [, l]]) => `<option value="${k}">${esc(l)}</option>`).join("");
  const units = () => {
    const [src] = KINDS[$("#wi-kind").value];
    const ids = Array.isArray(src) ? src : layout[src];
    $("#wi-unit").innerHTML = ids.map((u) => `<option>${esc(u)}</option>`).join("");
  };
  $("#wi-kind").addEventListener("change", units);
  units();
  $("#wi-run").addEventListener("click", runWhatif);
  onUpdate(() => { if ($("#plant-svg").offsetParent) render(); });
}

const u = (name, p) => (store.u[name] && store.u[name][p]) || [null, null];
const agg = (ids, p, how) => {
  const v = ids.map((i) => u(i, p)[0]).filter((x) => x != null);
  const e = ids.map((i) => u(i, p)[1]).filter((x) => x != null);
  const f = how === "sum" ? (a) => a.reduce((s, x) => s + x, 0) : how === "max" ? (a) => Math.max(...a) : (a) => Math.min(...a);
  return [v.length ? f(v) : null, e.length ? f(e) : null];
};

// A box: title and lines of [label, [measured, expected], unit, whatIfValue?, abnormal?]
function box(x, y0, w, title, lines, state = "") {
  const y = Math.round(y0 * Y);
  const rowH = whatif ? 42 : 30; // room for the what-if line under the model's
  const h = 22 + lines.length * rowH;
  let s = `<rect class="box ${state}" x="${x}" y="${y}" width="${w}" height="${h}" rx="3"/><text class="title" x="${x + 8}" y="${y + 16}">${esc(title)}</text>`;
  lines.forEach(([label, [m, e], unit, wi], k) => {
    const yy = y + 34 + k * rowH;
    s += `<text x="${x + 8}" y="${yy}">${esc(label)}</text><text class="v" x="${x + w - 8}" y="${yy}" text-anchor="end">${fmt(m, unit)}</text>`;
    const sub = [e != null ? `model ${fmt(e, unit)}` : "", wi != null ? `what-if ${fmt(wi[0], unit)} (base ${fmt(wi[1], unit)})` : ""];
    if (sub[0]) s += `<text class="m" x="${x + w - 8}" y="${yy + 13}" text-anchor="end">${esc(sub[0])}</text>`;
    if (sub[1]) s += `<text class="wi" x="${x + w - 8}" y="${yy + 26}" text-anchor="end">${esc(sub[1])}</text>`;
  });
  return s;
}

function render() {
  const L = layout, end = whatif && whatif.end, base = whatif && whatif.baseline_end;
  const wi = (k) => (end ? [end[k], base ? base[k] : null] : null);
  const site = (p) => u("SITE", p);
  const cdu = L.cdu_ids, dc = L.dc_ids, ups = L.ups_ids, pdu = L.pdu_ids, tx = L.tx_ids;
  const onBatt = agg(ups, "on_battery_bool", "sum")[0];
  const hottestSupply = agg(cdu, "supply_temp_c", "max");
  const f = (k) => store.f[k] || [null, null];
  Y = whatif ? 1.3 : 1; // rows stretch when every line has a what-if line
  const py = (v) => Math.round(v * Y);
  let s = `<svg viewBox="0 0 1240 ${Math.round(600 * Y)}" width="100%" style="max-width:1400px" role="img" aria-label="cooling and power schematic">`;
  s += `<text class="title" x="10" y="18">LIQUID COOLING: technology loop -> CDUs -> facility water -> dry coolers / trim chiller / heat pump -> district heating</text>`;
  // pipes (drawn first, under the boxes)
  s += `<path class="pipe-hot" d="M190 ${py(90)} H250 M440 ${py(90)} H500 M690 ${py(90)} H740 M690 ${py(90)} V${py(230)} H740 M690 ${py(90)} V${py(370)} H740 M930 ${py(370)} H990"/>`;
  s += `<path class="pipe-cold" d="M190 ${py(150)} H250 M440 ${py(150)} H500"/>`;
  s += box(10, 40, 180, `Racks (${L.racks.length})`, [
    ["IT power", f("it_power_w"), "W", wi("it_power_w")],
    ["hottest GPU", f("temp_gpu_max_c"), "°C", wi("max_gpu_temp_c")],
    ["least margin", f("thermal_margin_min_k"), "K"]]);
  s += box(250, 40, 190, cdu.length === 1 ? cdu[0] : `CDUs (${cdu.length})`, [
    ["supply (hottest)", hottestSupply, "°C", wi("max_coolant_c")],
    ["return (hottest)", agg(cdu, "return_temp_c", "max"), "°C"],
    ["flow (total)", agg(cdu, "flow_kg_s", "sum"), "kg/s"],
    ["pump power", agg(cdu, "pump_power_w", "sum"), "W"]],
    hottestSupply[0] != null && hottestSupply[0] > 47 ? "abn" : "");
  s += box(500, 40, 190, "Facility water (FWS)", [
    ["supply", u("FWS", "supply_temp_c"), "°C", wi("fws_supply_c")],
    ["return", u("FWS", "return_temp_c"), "°C"],
    ["flow", u("FWS", "flow_kg_s"), "kg/s"],
    ["pump power", u("FWS", "pump_power_w"), "W"]]);
  s += box(740, 40, 190, `Dry coolers (${dc.length})`, [
    ["heat rejected", agg(dc, "heat_rejected_w", "sum"), "W", wi("heat_to_dc_w")],
    ["fan power", agg(dc, "fan_power_w", "sum"), "W"],
    ["outdoor", u("OUTDOOR", "air_temp_c"), "°C"]]);
  s += box(740, 190, 190, "Trim chiller", [
    ["cooling", u("CH01", "cooling_w"), "W"], ["power", u("CH01", "power_w"), "W"]]);
  s += box(740, 300, 190, "Heat pump", [
    ["heat delivered", u("HP01", "heat_delivered_w"), "W"], ["power", u("HP01", "power_w"), "W"], ["COP", u("HP01", "cop"), ""]]);
  s += box(990, 300, 200, "District heating", [
    ["heat to DH", site("heat_to_dh_w"), "W", wi("heat_to_dh_w")], ["ERE", f("ere"), ""]]);
  s += box(990, 40, 200, "Site", [
    ["PUE", f("pue"), ""], ["facility power", f("facility_power_w"), "W", wi("facility_power_w")],
    ["cooling power", site("mech_power_w"), "W", wi("cooling_power_w")], ["free cooling", f("free_cooling_share"), "%"]]);
  s += `<text class="title" x="10" y="${py(458)}">POWER PATH: grid -> transformers -> UPS -> PDUs / busways -> racks</text>`;
  s += `<path class="wire" d="M190 ${py(510)} H250 M440 ${py(510)} H500 M690 ${py(510)} H740"/>`;
  s += box(10, 470, 180, `Transformers (${tx.length})`, [
    ["input", agg(tx, "input_power_w", "sum"), "W"], ["losses", agg(tx, "loss_w", "sum"), "W"]]);
  s += box(250, 470, 190, `UPS modules (${ups.length})`, [
    ["output", agg(ups, "output_power_w", "sum"), "W"],
    ["on battery", [onBatt, null], "count"], ["losses", agg(ups, "loss_w", "sum"), "W"]], onBatt ? "crit" : "");
  s += box(500, 470, 190, `PDUs (${pdu.length})`, [
    ["power", agg(pdu, "power_w", "sum"), "W"], ["losses", agg(pdu, "loss_w", "sum"), "W"]]);
  s += box(740, 470, 190, "IT load", [["IT power", f("it_power_w"), "W", wi("it_power_w")],
    ["GPUs off (what-if)", [end ? end.gpus_off : null, null], "count"]]);
  s += `</svg>`;
  $("#plant-svg").innerHTML = s;
}

async function runWhatif() {
  const kind = $("#wi-kind").value, unit = $("#wi-unit").value;
  const scenario = `${kind}:${unit}`;
  $("#wi-state").textContent = `running ${scenario} ...`;
  $("#wi-run").disabled = true;
  try {
    const r = await fetch("/api/whatif", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ scenario, horizon_s: Number($("#wi-h").value) }) });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    whatif = body;
    $("#wi-state").textContent = `what-if ${scenario} over ${body.horizon_s / 60} min (yellow: end of horizon, base = without the change)`;
    const crossed = body.limits.filter((l) => l.crossed);
    $("#wi-out").innerHTML = `<h3>Limits</h3><table class="grid"><tr><th class=l>limit</th><th>first crossed</th><th class=l>where</th></tr>` +
      body.limits.map((l) => `<tr class="${l.crossed ? "abn" : ""}"><td class=l>${esc(l.description)}</td><td>${l.crossed ? l.first_min.toFixed(1) + " min" : "not crossed"}</td>
        <td class=l>${l.crossed ? esc((l.groups || []).slice(0, 6).map((g) => g.units).join("; ")) : ""}</td></tr>`).join("") + `</table>` +
      `<p class="muted">${crossed.length} of ${body.limits.length} limits crossed. ${esc((body.notes || []).join(" "))}</p>`;
    render();
  } catch (err) {
    $("#wi-state").textContent = `what-if refused: ${err.message}`;
  } finally {
    $("#wi-run").disabled = false;
  }
}

export const showPlant = () => render();
