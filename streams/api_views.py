"""The JSON API over the twin's state (docs/api.md): the facility, the lists of racks and of
plant units, one rack with a list of GPU objects, one unit with each point's time, age and
residual.

GET /api/state, GET /api/racks, GET /api/racks/{rack}, GET /api/units, GET /api/units/{unit};
each takes ``?precision=display|full`` (streams/api_format.py). The documents are built by
plain functions of a :class:`TwinRuntime` (tests call them and :func:`api_web_app`);
``register_api_views`` hangs the handlers on a worker's Faust app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiohttp import web

from streams.api_format import PRECISIONS, age_s, api_json
from streams.runtime import TwinRuntime

#: Per-GPU model fields of a rack's fit (streams/modelpool.py view), arrays by GPU index.
GPU_MODEL_KEYS = (
    "expected_temp_gpu_c",
    "residual_k",
    "r_k_w",
    "r_baseline_k_w",
    "c_j_k",
    "tau_s",
    "updates",
)
#: Rack summary keys repeated in the list of racks.
RACK_LIST_KEYS = (
    "gpus",
    "ts_ms",
    "power_w",
    "temp_gpu_max_c",
    "hottest_gpu",
    "thermal_margin_min_k",
    "residual_max_abs_k",
    "throttled_gpus",
    "power_capped_gpus",
    "xid_gpus",
    "ecc_uncorrected_gpus",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def model_view(rt: TwinRuntime) -> dict[str, Any] | None:
    """The facility model's latest view: this worker's, else the one published on twin.state."""
    if rt.model_view is not None:
        return rt.model_view
    doc = rt.view.get("facility")
    return doc.get("model") if doc else None


def is_rack(rt: TwinRuntime, name: str) -> bool:
    """Whether ``name`` is a rack this worker knows (its manifold is then a unit too)."""
    return name in rt.racks or f"rack/{name}" in rt.view


def unit_readings(rt: TwinRuntime, unit: str) -> dict[str, tuple[int, float]] | None:
    """point -> (ts_ms, value) of one unit, live if owned, else from twin.state (a document of
    a worker without per-point times gives every point the unit's newest time)."""
    state = rt.units.get(unit)
    if state is not None:
        return dict(state.points)
    doc = rt.view.get(f"unit/{unit}")
    if doc is None or "summary" not in doc:
        return None
    s = doc["summary"]
    times = s.get("points_ts_ms") or {}
    newest = int(s.get("ts_ms") or 0)
    return {p: (int(times.get(p, newest)), float(v)) for p, v in s["points"].items()}


def points_doc(
    readings: dict[str, tuple[int, float]], expected: dict[str, Any], now_ms: int
) -> dict[str, dict[str, Any]]:
    """Per point: value, time, age, and where the model has it the expected value and the
    residual (measured minus expected at the model's step, as on twin.residuals)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (ts, value) in sorted(readings.items()):
        exp = expected.get(name) or {}
        e, m = exp.get("expected"), exp.get("measured")
        out[name] = {
            "value": value,
            "ts_ms": ts,
            "age_s": age_s(ts, now_ms),
            "expected": e,
            "residual": m - e if e is not None and m is not None else None,
        }
    return out


def gpu_list(
    rack: str, detail: dict[str, Any], model: dict[str, Any] | None, now_ms: int
) -> list[dict[str, Any]]:
    """One object per reporting GPU from the parallel lists of a rack's detail; the fit's
    per-GPU arrays (indexed by GPU) joined under ``model``."""
    gpus = detail.get("gpu") or []
    times = detail.get("ts_ms") or [0] * len(gpus)
    fields = [k for k in detail if k not in ("rack", "gpu", "ts_ms")]
    m = model or {}
    have = [k for k in GPU_MODEL_KEYS if isinstance(m.get(k), list)]
    out = []
    for i, g in enumerate(gpus):
        row: dict[str, Any] = {
            "gpu": g,
            "id": f"{rack}/G{g:02d}",
            "ts_ms": times[i],
            "age_s": age_s(times[i], now_ms),
        }
        row.update({k: detail[k][i] for k in fields})
        row["model"] = {k: m[k][g] if g < len(m[k]) else None for k in have} if have else None
        out.append(row)
    return out


def state_doc(rt: TwinRuntime) -> dict[str, Any]:
    """GET /api/state: the facility (with its hottest GPU), every rack's summary with its age,
    every unit's points, the model's KPIs and headroom."""
    doc = rt.facility()
    now = doc["ts_ms"]
    for summary in doc["racks"].values():
        summary["age_s"] = age_s(summary.get("ts_ms"), now)
    doc["links"] = {"racks": "/api/racks", "units": "/api/units"}
    return doc


def racks_doc(rt: TwinRuntime) -> dict[str, Any]:
    """GET /api/racks: every known rack, a short summary and its links."""
    now = rt.clock_ms()
    headroom = (model_view(rt) or {}).get("headroom") or {}
    items = []
    for rack, s in rt.rack_summaries().items():
        item: dict[str, Any] = {"rack": rack}
        item.update({k: s[k] for k in RACK_LIST_KEYS if k in s})
        item["age_s"] = age_s(s.get("ts_ms"), now)
        item["headroom_k"] = (headroom.get(rack) or {}).get("headroom_k")
        item["owned"] = rack in rt.racks
        item["links"] = {"self": f"/api/racks/{rack}", "coolant": f"/api/units/{rack}"}
        items.append(item)
    return {"ts_ms": now, "count": len(items), "racks": items}


def rack_doc(rt: TwinRuntime, rack: str) -> dict[str, Any] | None:
    """GET /api/racks/{rack}: summary, headroom, coolant points, one object per GPU; None if
    the rack is unknown or no detail of it has arrived yet."""
    detail = rt.rack_detail(rack)
    if detail is None:
        return None
    now = rt.clock_ms()
    summary = rt.rack_summary(rack) or {}
    summary["age_s"] = age_s(summary.get("ts_ms"), now)
    model = rt.rack_model(rack)
    view = model_view(rt) or {}
    readings = unit_readings(rt, rack) or {}
    return {
        "rack": rack,
        "ts_ms": now,
        "summary": summary,
        "headroom": (view.get("headroom") or {}).get(rack),
        "model": {"coolant_c": model.get("coolant_c")} if model else None,
        "coolant": points_doc(readings, (view.get("units") or {}).get(rack) or {}, now),
        "gpus": gpu_list(rack, detail, model, now),
        "links": {
            "self": f"/api/racks/{rack}",
            "coolant": f"/api/units/{rack}",
            "racks": "/api/racks",
        },
    }


def units_doc(rt: TwinRuntime) -> dict[str, Any]:
    """GET /api/units: every known unit (plant units and rack manifolds), a short summary:
    newest and oldest reading, how many points the model expects, links."""
    now = rt.clock_ms()
    expected = (model_view(rt) or {}).get("units") or {}
    names = {e.partition("/")[2] for e, d in rt.view.items() if d.get("kind") == "unit"}
    items = []
    for unit in sorted(names | set(rt.units)):
        readings = unit_readings(rt, unit) or {}
        times = [t for t, _ in readings.values()]
        newest, oldest = max(times, default=0), min(times, default=0)
        items.append(
            {
                "unit": unit,
                "kind": "rack_manifold" if is_rack(rt, unit) else "plant",
                "points": len(readings),
                "modelled_points": sum(p in readings for p in expected.get(unit, {})),
                "ts_ms": newest,
                "age_s": age_s(newest, now),
                "oldest_age_s": age_s(oldest, now),
                "links": {"self": f"/api/units/{unit}"},
            }
        )
    return {"ts_ms": now, "count": len(items), "units": items}


def unit_doc(rt: TwinRuntime, unit: str) -> dict[str, Any] | None:
    """GET /api/units/{unit}: each point's value, time, age, expected value and residual."""
    readings = unit_readings(rt, unit)
    if readings is None:
        return None
    now = rt.clock_ms()
    view = model_view(rt)
    rack = is_rack(rt, unit)
    links = {"self": f"/api/units/{unit}", "units": "/api/units"}
    if rack:
        links["rack"] = f"/api/racks/{unit}"
    return {
        "unit": unit,
        "kind": "rack_manifold" if rack else "plant",
        "ts_ms": now,
        "model_ts_ms": view.get("ts_ms") if view else None,
        "points": points_doc(readings, ((view or {}).get("units") or {}).get(unit) or {}, now),
        "links": links,
    }


def _precision(request: web.Request) -> str | None:
    p = request.query.get("precision", "display")
    return p if p in PRECISIONS else None


def _answer(request: web.Request, doc: dict[str, Any] | None, missing: str) -> web.Response:
    precision = _precision(request)
    if precision is None:
        got = request.query.get("precision")
        return web.json_response(
            {"error": f"precision: expected display or full, got {got!r}"}, status=400
        )
    if doc is None:
        return web.json_response({"error": missing}, status=404)
    return web.json_response(api_json(doc, precision))


def api_handlers(rt: TwinRuntime) -> dict[str, Handler]:
    """path -> GET handler of every endpoint of this module."""

    async def state(request: web.Request) -> web.StreamResponse:
        return _answer(request, state_doc(rt), "")

    async def racks(request: web.Request) -> web.StreamResponse:
        return _answer(request, racks_doc(rt), "")

    async def rack(request: web.Request) -> web.StreamResponse:
        name = request.match_info["rack"]
        return _answer(request, rack_doc(rt, name), f"unknown rack {name!r} (list: /api/racks)")

    async def units(request: web.Request) -> web.StreamResponse:
        return _answer(request, units_doc(rt), "")

    async def unit(request: web.Request) -> web.StreamResponse:
        name = request.match_info["unit"]
        return _answer(request, unit_doc(rt, name), f"unknown unit {name!r} (list: /api/units)")

    return {
        "/api/state": state,
        "/api/racks": racks,
        "/api/racks/{rack}": rack,
        "/api/units": units,
        "/api/units/{unit}": unit,
    }


def api_web_app(rt: TwinRuntime) -> web.Application:
    """A bare aiohttp app with these endpoints (tests)."""
    app = web.Application()
    for path, handler in api_handlers(rt).items():
        app.router.add_get(path, handler)
    return app


def register_api_views(app: faust.App, rt: TwinRuntime) -> None:
    """Attach these endpoints to a worker's Faust app."""
    from streams.ui_views import faust_page

    for path, handler in api_handlers(rt).items():
        faust_page(app, path, get=handler)
