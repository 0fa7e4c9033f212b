// The live state: one EventSource on /api/stream, merged into a store; listeners get the
// keys that changed. The browser's EventSource reconnects by itself (retry: 1000 ms); a
// watchdog shows the stale banner after 5 s without an update and reopens a dead stream.
import { $ } from "./util.js";

export const store = { f: {}, r: {}, u: {}, t: 0, worker: "", received: 0, bytes: 0, history: {} };
window.__store = store; // read by the browser tests (values, bytes received)
const listeners = [];
export const onUpdate = (fn) => listeners.push(fn);
const STALE_MS = 5000;
const HISTORY_N = 300; // samples kept per facility figure for the sparklines (~5 min)
let es = null;
let lastAt = 0;

function merge(doc) {
  const changed = { f: new Set(), r: new Set(), u: new Set() };
  if (doc.full) { store.f = {}; store.r = {}; store.u = {}; }
  for (const sec of ["f", "r", "u"]) {
    for (const [k, v] of Object.entries(doc[sec] || {})) {
      if (v === null) delete store[sec][k]; else store[sec][k] = v;
      changed[sec].add(k);
    }
  }
  store.t = doc.t;
  // keep a short history of every facility figure (measured, model) for the trends
  for (const [k, v] of Object.entries(store.f)) {
    const h = store.history[k] || (store.history[k] = [[], [], []]);
    h[0].push(doc.t / 1000); h[1].push(v[0]); h[2].push(v[1]);
    if (h[0].length > HISTORY_N) h.forEach((a) => a.shift());
  }
  return changed;
}

function open() {
  if (es) es.close();
  es = new EventSource("/api/stream");
  es.addEventListener("hello", (ev) => {
    const h = JSON.parse(ev.data);
    store.worker = h.worker;
    $("#worker").textContent = `worker ${h.worker}`;
  });
  es.addEventListener("d", (ev) => {
    store.bytes += ev.data.length;
    store.received += 1;
    lastAt = performance.now();
    const changed = merge(JSON.parse(ev.data));
    for (const fn of listeners) fn(changed);
  });
  es.onopen = () => $("#conn-state").className = "dot live";
  es.onerror = () => $("#conn-state").className = "dot down";
}

export function start() {
  open();
  lastAt = performance.now();
  setInterval(() => {
    const age = performance.now() - lastAt;
    const stale = age > STALE_MS;
    $("#stale").hidden = !stale;
    $("#stale-s").textContent = Math.floor(age / 1000);
    if (store.t) $("#clock").textContent = new Date(store.t).toISOString().slice(11, 19) + " UTC";
    // a stream that is open but silent (worker half gone) or closed for good: reopen it
    if (stale && (es.readyState === EventSource.CLOSED || age > 3 * STALE_MS)) { lastAt = performance.now() - STALE_MS; open(); }
  }, 500);
}
