// SQL console: read-only queries on POST /api/sql, a table, a chart when there is a time
// column, CSV download; the examples of docs/sql-examples.md one click away.
import { $, esc, getJSON, sql, timeChart } from "./util.js";

let last = null;

export async function initSql() {
  $("#sql-run").addEventListener("click", run);
  $("#sql-text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  $("#sql-csv").addEventListener("click", download);
  try {
    const ex = await getJSON("/api/ui/sql-examples");
    $("#sql-examples").innerHTML = "examples: " + ex.examples.map((e, i) =>
      `<button data-i="${i}" title="${esc(e.sql)}">${esc(e.title)}</button>`).join("");
    $("#sql-examples").addEventListener("click", (e) => {
      const b = e.target.closest("button[data-i]");
      if (b) { $("#sql-text").value = ex.examples[Number(b.dataset.i)].sql; run(); }
    });
  } catch (err) {
    $("#sql-examples").textContent = `examples: ${err.message}`;
  }
}

async function run() {
  $("#sql-err").textContent = "";
  $("#sql-state").textContent = "running...";
  const t0 = performance.now();
  try {
    last = await sql($("#sql-text").value);
  } catch (err) {
    last = null;
    $("#sql-state").textContent = "";
    $("#sql-err").textContent = err.message; // the server's own words
    $("#sql-csv").disabled = true;
    return;
  }
  $("#sql-state").textContent = `${last.row_count} rows in ${((performance.now() - t0) / 1000).toFixed(2)} s`;
  $("#sql-csv").disabled = false;
  const cols = last.columns, rows = last.rows.slice(0, 2000);
  $("#sql-table").innerHTML = `<tr>${cols.map((c) => `<th class=l>${esc(c)}</th>`).join("")}</tr>` +
    rows.map((r) => `<tr>${cols.map((c) => `<td class=l>${esc(cell(r[c]))}</td>`).join("")}</tr>`).join("");
  chart(cols, last.rows);
}

const cell = (v) => (v == null ? "" : typeof v === "object" ? JSON.stringify(v) : typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(6) : v);
const isTime = (v) => typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v);

// A time column (ISO timestamps) and numeric columns: one line per numeric column.
function chart(cols, rows) {
  const el = $("#sql-chart");
  el.innerHTML = "";
  if (!rows.length) return;
  const tcol = cols.find((c) => isTime(rows[0][c]));
  const ycols = cols.filter((c) => c !== tcol && typeof rows[0][c] === "number").slice(0, 5);
  if (!tcol || !ycols.length) return;
  const sorted = [...rows].sort((a, b) => Date.parse(a[tcol]) - Date.parse(b[tcol]));
  const data = [sorted.map((r) => Date.parse(r[tcol]) / 1000), ...ycols.map((c) => sorted.map((r) => r[c]))];
  timeChart(el, `${ycols.join(", ")} by ${tcol}`, ycols, data, Math.max(400, el.clientWidth - 10), 240);
}

export function toCsv(cols, rows) {
  const q = (v) => {
    const s = v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [cols.map(q).join(","), ...rows.map((r) => cols.map((c) => q(r[c])).join(","))].join("\r\n") + "\r\n";
}

function download() {
  if (!last) return;
  const blob = new Blob([toCsv(last.columns, last.rows)], { type: "text/csv" });
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: "query.csv" });
  document.body.appendChild(a);
  a.click();
  a.remove();
}
