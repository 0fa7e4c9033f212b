"""The control room served by every worker: the page at ``/``, its static files, a stream of
changes (server-sent events) and the small JSON endpoints the page needs.

GET / (the page), GET /static/{path} (vendored files under streams/static), GET /api/stream
(SSE: one ``full`` document, then about once a second only what changed), GET /api/ui/layout
(rack -> row, hall, CDU, PDU from the site model), GET /api/ui/sql-examples (the queries of
docs/sql-examples.md), POST /api/whatif (``twin whatif`` on this worker's snapshot, bounded
horizon, one run at a time).

The handlers are plain aiohttp functions over a :class:`UiSource`; ``register_ui_views`` hangs
them on the Faust app and :func:`ui_web_app` on a bare aiohttp app (tests feed that one a
runtime of synthetic racks to measure the page at 1,250 racks).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from faust.web import Request, Response, View

from streams.runtime import TwinRuntime
from streams.settings import Settings
from twin.site import Site

STATIC_DIR = Path(__file__).with_name("static")
SQL_EXAMPLES_MD = Path(__file__).resolve().parents[1] / "docs" / "sql-examples.md"
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain",
}
#: Seconds between two stream documents.
TICK_S = 1.0
#: Longest what-if horizon the page may ask for [s]; runs are one at a time.
WHATIF_MAX_HORIZON_S = 7200.0
WHATIF_DT_S = 10.0
#: Facility figures streamed: key -> key of the model's KPIs (None: measured only).
FACILITY_KEYS: dict[str, str | None] = {
    "it_power_w": "it_power_w",
    "facility_power_w": "facility_power_w",
    "pue": "pue",
    "ere": "ere",
    "heat_to_dh_w": "heat_to_dh_w",
    "outdoor_temp_c": None,
    "free_cooling_share": "free_cooling_share",
    "cue_kg_kwh": "cue_kg_kwh",
    "carbon_g_per_kwh": "carbon_g_per_kwh",
    "cooling_cop": "cooling_cop",
    "temp_gpu_max_c": None,
    "thermal_margin_min_k": "min_headroom_k",
    "throttled_gpus": None,
    "power_capped_gpus": None,
    "xid_gpus": None,
    "ecc_uncorrected_gpus": None,
    "row_remap_flagged_gpus": None,
    "gpus": None,
    "racks": None,
}
#: Rack tile flags (bit -> condition), the page draws them as marks on the tile.
FLAG_THERMAL, FLAG_HW, FLAG_XID, FLAG_ECC, FLAG_REMAP, FLAG_CAPPED = 1, 2, 4, 8, 16, 32


def sig(x: Any, digits: int = 4) -> float | int | None:
    """``x`` rounded to ``digits`` significant digits; None when missing or not finite.

    Rounding is what keeps the stream small: a value that moves in its noise is not sent.
    """
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x  # counts stay counts
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    if f == 0.0:
        return 0.0
    return round(f, digits - 1 - math.floor(math.log10(abs(f))))


def rack_tile(summary: dict[str, Any], headroom_k: float | None) -> list[Any]:
    """A rack's compact tile: [hottest GPU [C], headroom [K], power [kW], |residual| [K],
    flags (FLAG_*)]; rounded to what a tile can show."""
    flags = 0
    for key, bit in (
        ("thermal_slowdown_gpus", FLAG_THERMAL),
        ("hw_slowdown_gpus", FLAG_HW),
        ("xid_gpus", FLAG_XID),
        ("ecc_uncorrected_gpus", FLAG_ECC),
        ("row_remap_flagged_gpus", FLAG_REMAP),
        ("power_capped_gpus", FLAG_CAPPED),
    ):
        if summary.get(key, 0):
            flags |= bit
    if headroom_k is None:
        headroom_k = summary.get("thermal_margin_min_k")
    t = summary.get("temp_gpu_max_c")
    p = summary.get("power_w")
    r = summary.get("residual_max_abs_k")
    return [
        None if t is None else round(float(t)),
        None if headroom_k is None else round(float(headroom_k), 1),
        None if p is None else round(float(p) / 1000.0),
        None if r is None else round(float(r), 1),
        flags,
    ]


def ui_document(rt: TwinRuntime, rack_index: dict[str, int]) -> dict[str, Any]:
    """Everything the page streams, compact: facility figures [measured, model], rack tiles
    by layout index, plant units (not rack manifolds) [measured, expected] per point."""
    doc = rt.facility()
    fac = doc["facility"]
    kpis = (doc.get("model") or {}).get("kpis") or {}
    headroom = (doc.get("model") or {}).get("headroom") or {}
    figures = {
        k: [sig(fac.get(k)), sig(kpis.get(m)) if m else None] for k, m in FACILITY_KEYS.items()
    }
    tiles: dict[str, list[Any]] = {}
    for rack, summary in doc["racks"].items():
        i = rack_index.get(rack)
        if i is not None:
            h = headroom.get(rack, {}).get("headroom_k")
            tiles[str(i)] = rack_tile(summary, h)
    expected = (doc.get("model") or {}).get("units") or {}
    units: dict[str, dict[str, list[float | None]]] = {}
    for unit, points in doc["units"].items():
        if unit in rack_index:
            continue  # rack manifolds: the rack view reads them itself
        exp = expected.get(unit, {})
        units[unit] = {
            p: [sig(v), sig((exp.get(p) or {}).get("expected"))] for p, v in points.items()
        }
    return {"f": figures, "r": tiles, "u": units}


def changes(prev: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """What of ``cur`` differs from ``prev`` (two levels deep; removed keys are sent as null)."""
    out: dict[str, Any] = {}
    for section, now in cur.items():
        before = prev.get(section, {})
        diff = {k: v for k, v in now.items() if before.get(k) != v}
        diff.update({k: None for k in before if k not in now})
        if diff:
            out[section] = diff
    return out


def parse_sql_examples(text: str) -> list[dict[str, str]]:
    """(title, sql) of every ``## title`` followed by a fenced sql block, in order."""
    out = []
    for m in re.finditer(r"^## (.+?)\n(.*?)```sql\n(.*?)```", text, re.S | re.M):
        out.append({"title": m.group(1).strip(), "sql": m.group(3).strip()})
    return out


def site_layout(site: Site) -> dict[str, Any]:
    """Floor layout for the map: per rack its hall, row (within its hall), position in the
    row and CDU/PDU; plus the unit ids of the plant and power chain."""
    import numpy as np

    rows_per_hall = math.ceil(site.layout.racks_per_hall / site.layout.racks_per_row)
    idx = np.arange(site.n_racks)
    in_hall = idx % site.layout.racks_per_hall
    return {
        "racks": list(site.rack_ids),
        "hall": site.rack_hall.tolist(),
        "row": (site.rack_row - site.rack_hall * rows_per_hall).tolist(),
        "pos": (in_hall % site.layout.racks_per_row).tolist(),
        "cdu": [site.cdu_ids[i] for i in site.rack_cdu],
        "pdu": [site.pdu_ids[i] for i in site.rack_pdu],
        "racks_per_row": site.layout.racks_per_row,
        "rows_per_hall": rows_per_hall,
        "n_halls": site.n_halls,
        "cdu_ids": list(site.cdu_ids),
        "dc_ids": list(site.dc_ids),
        "ups_ids": list(site.ups_ids),
        "tx_ids": list(site.tx_ids),
        "pdu_ids": list(site.pdu_ids),
        "gpus_per_rack": site.n_gpus,
        "slowdown_c": site.gpu.slowdown_c,
        "shutdown_c": site.gpu.shutdown_c,
    }


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


@dataclass
class UiSource:
    """What the views read: the runtime, the site, a snapshot function and who we are."""

    rt: TwinRuntime
    site: Site
    worker: str
    snapshot: Callable[[], bytes] | None = None
    tick_s: float = TICK_S
    layout: dict[str, Any] = field(init=False)
    rack_index: dict[str, int] = field(init=False)
    examples: list[dict[str, str]] = field(init=False)
    _doc: tuple[float, dict[str, Any]] | None = field(default=None, init=False)
    _whatif_busy: bool = field(default=False, init=False)
    #: Set when the web server shuts down: open streams end within a tick instead of holding
    #: the server's graceful shutdown (an open page would otherwise cost the worker its
    #: clean stop: the demo's supervisor kills it after 30 s).
    closing: bool = field(default=False, init=False)

    async def on_shutdown(self, app: web.Application) -> None:
        """aiohttp ``on_shutdown`` hook: end the open event streams."""
        self.closing = True

    def __post_init__(self) -> None:
        self.layout = site_layout(self.site)
        self.rack_index = {r: i for i, r in enumerate(self.site.rack_ids)}
        try:
            self.examples = parse_sql_examples(SQL_EXAMPLES_MD.read_text(encoding="utf-8"))
        except OSError:  # an installed package without the repository's docs
            self.examples = []

    def document(self) -> dict[str, Any]:
        """The current stream document, built at most once per tick for all connections."""
        now = time.monotonic()
        if self._doc is None or now - self._doc[0] >= self.tick_s * 0.9:
            self._doc = (now, ui_document(self.rt, self.rack_index))
        return self._doc[1]

    # --- handlers ------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info.get("path", "")
        path = (STATIC_DIR / rel).resolve()
        if (
            not rel
            or not path.is_relative_to(STATIC_DIR.resolve())
            or path.suffix not in _TYPES
            or not path.is_file()
        ):
            return web.json_response({"error": f"no static file {rel!r}"}, status=404)
        return web.FileResponse(
            path, headers={"Content-Type": _TYPES[path.suffix], "Cache-Control": "no-cache"}
        )

    async def layout_view(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({**self.layout, "worker": self.worker})

    async def examples_view(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"source": "docs/sql-examples.md", "examples": self.examples})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """SSE: ``hello`` (worker), then ``d`` events: the first full, then changes only."""
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        hello = json.dumps({"worker": self.worker, "racks": len(self.rack_index)})
        await resp.write(f"retry: 1000\nevent: hello\ndata: {hello}\n\n".encode())
        prev: dict[str, Any] = {}
        try:
            while not self.closing:
                cur = self.document()
                diff = changes(prev, cur) if prev else {**cur, "full": True}
                prev = cur
                diff["t"] = self.rt.clock_ms()
                data = json.dumps(diff, separators=(",", ":"))
                await resp.write(f"event: d\ndata: {data}\n\n".encode())
                await asyncio.sleep(self.tick_s)
        except ConnectionResetError:
            pass  # the page went away
        return resp

    async def whatif(self, request: web.Request) -> web.StreamResponse:
        """POST {"scenario": "pump_trip:CDU01", "horizon_s": 1800}: the what-if as JSON."""
        if self.snapshot is None:
            return web.json_response({"error": "no snapshot on this server"}, status=503)
        try:
            doc = json.loads(await request.read() or b"{}")
            scen = doc["scenario"]
            horizon = float(doc.get("horizon_s", 1800))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return web.json_response(
                {"error": 'body: expected {"scenario": "KIND:TARGET", "horizon_s": S}'}, status=400
            )
        scenarios = [scen] if isinstance(scen, str) else scen
        if not isinstance(scenarios, list) or not all(isinstance(s, str) for s in scenarios):
            return web.json_response({"error": "scenario: expected text"}, status=400)
        if not 60.0 <= horizon <= WHATIF_MAX_HORIZON_S:
            return web.json_response(
                {"error": f"horizon_s: expected 60 to {WHATIF_MAX_HORIZON_S:.0f}"}, status=400
            )
        if self._whatif_busy:
            return web.json_response({"error": "a what-if is already running"}, status=409)
        self._whatif_busy = True
        try:
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(None, self.snapshot)
            out = await loop.run_in_executor(None, self._run_whatif, data, scenarios, horizon)
        except Exception as exc:  # WhatIfError and bad scenarios: say it as the model words it
            return web.json_response({"error": " ".join(str(exc).split())}, status=400)
        finally:
            self._whatif_busy = False
        return web.json_response(_finite(out))

    def _run_whatif(self, data: bytes, scenarios: list[str], horizon_s: float) -> dict[str, Any]:
        from twin.snapshot import load_snapshot_bytes
        from twin.whatif import WhatIfError, run_whatif

        snap = load_snapshot_bytes(data)
        if snap.state is None:
            raise WhatIfError("the worker holds no facility state yet (no model running)")
        ts = snap.meta.get("ts_ms")
        res = run_whatif(
            self.site,
            snap.state,
            scenarios,
            horizon_s,
            WHATIF_DT_S,
            False,
            start_ms=int(ts) if ts is not None else self.rt.clock_ms(),
        )
        out = res.as_dict()
        s, b = res.series, res.baseline
        # the schematic shows the end of the horizon beside the baseline's end
        names = (
            "it_power_w", "facility_power_w", "cooling_power_w", "heat_to_dh_w", "heat_to_dc_w",
            "max_gpu_temp_c", "max_coolant_c", "fws_supply_c", "max_rack_inlet_c",
            "max_ups_load_frac", "max_cdu_load_frac", "gpus_off",
        )  # fmt: skip
        out["end"] = {n: float(getattr(s, n)[-1]) for n in names}
        out["baseline_end"] = {n: float(getattr(b, n)[-1]) for n in names} if b else None
        out["series"] = {
            "t_s": s.t_s.tolist(),
            "max_gpu_temp_c": s.max_gpu_temp_c.tolist(),
            "max_coolant_c": s.max_coolant_c.tolist(),
        }
        return out


def worker_name(settings: Settings) -> str:
    """How the page names the worker it is connected to: host, port and process id."""
    return f"{socket.gethostname()}:{settings.web_port} pid {os.getpid()}"


def ui_web_app(src: UiSource) -> web.Application:
    """A bare aiohttp app with the control room's routes (tests and benches)."""
    app = web.Application()
    app.on_shutdown.append(src.on_shutdown)
    app.router.add_get("/", src.index)
    app.router.add_get("/static/{path:.+}", src.static)
    app.router.add_get("/api/stream", src.stream)
    app.router.add_get("/api/ui/layout", src.layout_view)
    app.router.add_get("/api/ui/sql-examples", src.examples_view)
    app.router.add_post("/api/whatif", src.whatif)
    return app


def faust_page(app: faust.App, path: str, get: Any = None, post: Any = None) -> None:
    """Hang plain aiohttp handlers (``get``, ``post``) on a Faust app's web server at ``path``."""

    async def get_method(self: View, request: Request, **kw: Any) -> Response:
        return await get(request)

    async def post_method(self: View, request: Request, **kw: Any) -> Response:
        return await post(request)

    body: dict[str, Any] = {}
    if get is not None:
        body["get"] = get_method
    if post is not None:
        body["post"] = post_method
    app.page(path)(type(f"Ui{abs(hash(path))}", (View,), body))


def register_ui_views(
    app: faust.App,
    rt: TwinRuntime,
    settings: Settings,
    snapshot: Callable[[], bytes],
) -> UiSource:
    """Attach the control room's routes to a worker's Faust app."""
    from twin.site import load_site

    src = UiSource(
        rt,
        load_site(settings.site_path, racks=settings.racks),
        worker_name(settings),
        snapshot,
    )

    def page(path: str, get: Any = None, post: Any = None) -> None:
        faust_page(app, path, get=get, post=post)

    # Faust's aiohttp driver runs the Application's on_shutdown before it waits for handlers
    app.web.web_app.on_shutdown.append(src.on_shutdown)  # type: ignore[attr-defined]
    page("/", get=src.index)
    page("/static/{path:.+}", get=src.static)
    page("/api/stream", get=src.stream)
    page("/api/ui/layout", get=src.layout_view)
    page("/api/ui/sql-examples", get=src.examples_view)
    page("/api/whatif", post=src.whatif)
    return src
