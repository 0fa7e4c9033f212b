"""The shape of every JSON endpoint of streams/api_views.py (docs/api.md), over a runtime fed
real frames: one rack owned live with a fitted model, one rack and one unit seen through
twin.state, the facility model's view; plus the number and time formats of api_format."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.api_format import age_s, api_json, iso_utc, round_for, unit_suffix
from streams.api_views import api_web_app
from streams.codec import decode_gpu_frame, decode_points_frame, encode_frame, points_batch
from streams.runtime import TwinRuntime
from tests.streams.frames import gpu_columns, known_gpu_batch

NOW = 1_795_000_000_000  # 2026-11-18T11:06:40Z (date -u -d @1795000000)
ISO_NOW = "2026-11-18T11:06:40.000Z"


def _points(rt: TwinRuntime, unit: str, ts: int, pts: dict[str, float]) -> None:
    frame = decode_points_frame(
        encode_frame(points_batch(ts, unit, pts)), key=unit.encode(), now_ms=NOW
    )
    rt.apply_points(frame, "telemetry.thermal")


def _runtime() -> TwinRuntime:
    rt = TwinRuntime(partitions=4, clock_ms=lambda: NOW)
    # R0001's manifold first (its fit needs the coolant), one point 60 s older than the rest
    _points(rt, "R0001", NOW - 2000, {"inlet_temp_c": 30.123456, "outlet_temp_c": 40.0})
    _points(rt, "R0001", NOW - 62_000, {"flow_kg_s": 1.23456789})
    _points(rt, "CDU01", NOW - 1000, {"supply_temp_c": 31.987654, "flow_kg_s": 15.04321})
    for i in range(3):
        batch = known_gpu_batch("R0001", NOW - 3000 + 1000 * i, n=4, seed=i)
        rt.apply_gpu(decode_gpu_frame(encode_frame(batch), key=None, now_ms=NOW), "telemetry.gpu")
    # a rack and a unit owned by another worker, as twin.state carries them
    rt.absorb_view(
        "rack/R0002",
        {
            "kind": "rack",
            "summary": {"rack": "R0002", "ts_ms": NOW - 5000, "gpus": 2, "power_w": 900.0,
                        "temp_gpu_max_c": 71.0, "hottest_gpu": "R0002/G01"},
            "detail": {"rack": "R0002", "gpu": [0, 1], "ts_ms": [NOW - 5000, NOW - 5000],
                       "power_w": [400.0, 500.0], "temp_gpu_c": [60.0, 71.0]},
        },
    )  # fmt: skip
    rt.absorb_view(
        "unit/UPS01",
        {
            "kind": "unit",
            "summary": {"unit": "UPS01", "ts_ms": NOW - 1000,
                        "points": {"load_frac": 0.61234, "output_power_w": 1.23456789e6},
                        "points_ts_ms": {"load_frac": NOW - 1000, "output_power_w": NOW - 90_000}},
        },
    )  # fmt: skip
    rt.model_view = {
        "ts_ms": NOW - 500,
        "kpis": {"pue": 1.1734567, "it_power_w": 1.5e6},
        "headroom": {"R0001": {"headroom_k": 12.3456, "seconds_to_throttle_s": None}},
        "units": {"CDU01": {"supply_temp_c": {"measured": 31.987654, "expected": 32.5}}},
    }
    return rt


@pytest.fixture
async def client() -> Any:
    async with TestClient(TestServer(api_web_app(_runtime()))) as c:
        yield c


async def _get(client: Any, path: str, status: int = 200) -> Any:
    r = await client.get(path)
    text = await r.text()
    assert r.status == status, (path, r.status, text[:300])
    return json.loads(text)  # strict JSON: no NaN


def _walk_ts(x: Any) -> None:
    """Every ts_ms has its ISO twin beside it, and it says the same instant."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "ts_ms" or (k.endswith("_ts_ms") and not isinstance(v, dict)):
                assert x[k[:-3]] == iso_utc(v), (k, x)
            _walk_ts(v)
    elif isinstance(x, list):
        for v in x:
            _walk_ts(v)


async def test_state_names_the_hottest_gpu_and_links_the_lists(client: Any) -> None:
    doc = await _get(client, "/api/state")
    _walk_ts(doc)
    assert doc["ts_ms"] == NOW and doc["ts"] == ISO_NOW
    cols = [gpu_columns(4, seed=2)["temp_gpu_c"]]  # the last frame of R0001 holds
    hottest = max(float(cols[0].max()), 71.0)
    fac = doc["facility"]
    assert fac["temp_gpu_max_c"] == hottest
    expected_id = "R0002/G01" if hottest == 71.0 else f"R0001/G{int(cols[0].argmax()):02d}"
    assert fac["hottest_gpu"] == expected_id
    assert doc["racks"]["R0002"]["age_s"] == 5.0 and doc["racks"]["R0002"]["ts"]
    assert doc["links"] == {"racks": "/api/racks", "units": "/api/units"}
    assert doc["model"]["kpis"]["pue"] == 1.173  # four significant digits
    assert doc["units"]["CDU01"]["flow_kg_s"] == 15.043  # 1 g/s


async def test_racks_list_summarises_every_rack_with_links(client: Any) -> None:
    doc = await _get(client, "/api/racks")
    _walk_ts(doc)
    assert doc["count"] == 2 and [r["rack"] for r in doc["racks"]] == ["R0001", "R0002"]
    own, other = doc["racks"]
    assert own["owned"] is True and other["owned"] is False
    assert own["gpus"] == 4 and own["hottest_gpu"].startswith("R0001/G")
    assert own["headroom_k"] == 12.35 and other["headroom_k"] is None
    assert own["age_s"] == 1.0 and other["age_s"] == 5.0
    assert own["links"] == {"self": "/api/racks/R0001", "coolant": "/api/units/R0001"}
    assert "residual_max_abs_k" in own  # the rack's fit has run
    for item in doc["racks"]:  # every link answers
        await _get(client, item["links"]["self"])


async def test_rack_is_a_list_of_gpu_objects_with_units_in_the_keys(client: Any) -> None:
    doc = await _get(client, "/api/racks/R0001")
    _walk_ts(doc)
    assert set(doc) == {
        "rack", "ts_ms", "ts", "summary", "headroom", "model", "coolant", "gpus", "links",
    }  # fmt: skip
    assert doc["summary"]["age_s"] == 1.0 and doc["headroom"]["headroom_k"] == 12.35
    cols = gpu_columns(4, seed=2)
    gpus = doc["gpus"]
    assert [g["gpu"] for g in gpus] == [0, 1, 2, 3]
    assert [g["id"] for g in gpus] == ["R0001/G00", "R0001/G01", "R0001/G02", "R0001/G03"]
    g = gpus[1]
    assert g["ts_ms"] == NOW - 1000 and g["ts"] == "2026-11-18T11:06:39.000Z" and g["age_s"] == 1.0
    assert g["power_w"] == round(float(cols["power_w"][1]), 1)
    assert g["temp_gpu_c"] == float(cols["temp_gpu_c"][1])
    assert g["sm_clock_mhz"] == int(cols["sm_clock_mhz"][1])
    assert g["clock_event_reasons"] == int(cols["clock_event_reasons"][1])
    assert set(g["model"]) == {
        "expected_temp_gpu_c", "residual_k", "r_k_w", "r_baseline_k_w", "c_j_k", "tau_s", "updates",
    }  # fmt: skip
    assert g["model"]["updates"] >= 1
    # coolant: the manifold's points with their own ages; the flow is a minute old
    assert doc["coolant"]["flow_kg_s"] == {
        "value": 1.235, "ts_ms": NOW - 62_000, "ts": iso_utc(NOW - 62_000), "age_s": 62.0,
        "expected": None, "residual": None,
    }  # fmt: skip
    assert doc["model"]["coolant_c"] is not None
    assert doc["links"]["coolant"] == "/api/units/R0001"


async def test_rack_of_another_worker_and_unknown_rack(client: Any) -> None:
    doc = await _get(client, "/api/racks/R0002")
    assert [(g["id"], g["power_w"], g["model"]) for g in doc["gpus"]] == [
        ("R0002/G00", 400.0, None),
        ("R0002/G01", 500.0, None),
    ]
    assert doc["model"] is None and doc["coolant"] == {} and doc["gpus"][0]["age_s"] == 5.0
    err = await _get(client, "/api/racks/R0404", status=404)
    assert err == {"error": "unknown rack 'R0404' (list: /api/racks)"}


async def test_units_list_shows_kinds_and_the_oldest_reading(client: Any) -> None:
    doc = await _get(client, "/api/units")
    _walk_ts(doc)
    by = {u["unit"]: u for u in doc["units"]}
    assert doc["count"] == 3 and sorted(by) == ["CDU01", "R0001", "UPS01"]
    assert by["R0001"]["kind"] == "rack_manifold" and by["CDU01"]["kind"] == "plant"
    assert (by["R0001"]["points"], by["R0001"]["age_s"], by["R0001"]["oldest_age_s"]) == (
        3,
        2.0,
        62.0,
    )
    assert by["UPS01"]["oldest_age_s"] == 90.0  # per-point times from twin.state
    assert by["CDU01"]["modelled_points"] == 1
    assert by["CDU01"]["links"] == {"self": "/api/units/CDU01"}
    for item in doc["units"]:
        await _get(client, item["links"]["self"])


async def test_unit_has_timestamps_ages_and_residuals(client: Any) -> None:
    doc = await _get(client, "/api/units/CDU01")
    _walk_ts(doc)
    assert doc["kind"] == "plant" and doc["model_ts_ms"] == NOW - 500 and doc["model_ts"]
    sup = doc["points"]["supply_temp_c"]
    assert sup == {
        "value": 31.99, "ts_ms": NOW - 1000, "ts": iso_utc(NOW - 1000), "age_s": 1.0,
        "expected": 32.5, "residual": -0.51,
    }  # fmt: skip
    assert doc["points"]["flow_kg_s"]["expected"] is None
    ups = await _get(client, "/api/units/UPS01")
    assert ups["points"]["output_power_w"]["age_s"] == 90.0
    assert ups["points"]["output_power_w"]["value"] == 1234567.9
    assert ups["points"]["load_frac"]["value"] == 0.6123
    rack = await _get(client, "/api/units/R0001")
    assert rack["kind"] == "rack_manifold" and rack["links"]["rack"] == "/api/racks/R0001"
    err = await _get(client, "/api/units/NOPE", status=404)
    assert "unknown unit 'NOPE'" in err["error"]


async def test_precision_full_keeps_what_the_worker_holds(client: Any) -> None:
    cols = gpu_columns(4, seed=2)
    doc = await _get(client, "/api/racks/R0001?precision=full")
    assert [g["power_w"] for g in doc["gpus"]] == cols["power_w"].tolist()
    unit = await _get(client, "/api/units/CDU01?precision=full")
    assert unit["points"]["supply_temp_c"]["value"] == 31.987654
    for path in ("/api/state", "/api/racks", "/api/units", "/api/racks/R0001", "/api/units/X"):
        err = await _get(client, path + "?precision=exact", status=400)
        assert err == {"error": "precision: expected display or full, got 'exact'"}


def test_rounding_follows_the_unit_suffix() -> None:
    assert unit_suffix("r_k_w") == "_k_w" and unit_suffix("power_w") == "_w"
    assert unit_suffix("flow_kg_s") == "_kg_s" and unit_suffix("age_s") == "_s"
    assert unit_suffix("pue") is None and unit_suffix("_w") is None
    assert round_for(61.23456, "_c") == 61.23
    assert round_for(1234.5678, "_w") == 1234.6
    assert round_for(0.0123456, "_k_w") == 0.01235
    assert round_for(1.17345, None) == 1.173
    assert round_for(-0.001, "_k") == 0.0 and str(round_for(-0.001, "_k")) == "0.0"
    assert round_for(float("nan"), "_c") is None
    doc = {"CDU01": {"supply_temp_c": {"measured": 31.98765, "expected": float("inf")}}}
    assert api_json(doc) == {"CDU01": {"supply_temp_c": {"measured": 31.99, "expected": None}}}
    assert api_json({"a_ts_ms": NOW, "ts_ms": None}) == {
        "a_ts_ms": NOW, "a_ts": ISO_NOW, "ts_ms": None, "ts": None,
    }  # fmt: skip
    assert iso_utc(0) is None and iso_utc(NOW + 7) == "2026-11-18T11:06:40.007Z"
    assert age_s(NOW - 1500, NOW) == 1.5 and age_s(0, NOW) is None
