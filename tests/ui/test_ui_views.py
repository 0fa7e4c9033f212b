"""The control room's stream and helpers without a browser: rounding, change sets, tiles,
the SQL examples parsed from docs/sql-examples.md, the layout and static-file guard."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.runtime import TwinRuntime
from streams.ui_views import (
    FLAG_CAPPED,
    FLAG_THERMAL,
    SQL_EXAMPLES_MD,
    UiSource,
    changes,
    parse_sql_examples,
    rack_tile,
    sig,
    ui_document,
    ui_web_app,
)
from twin.site import load_site


def test_sig_rounds_to_significant_digits_and_drops_non_finite() -> None:
    assert sig(649245.33) == 649200.0
    assert sig(1.17358) == 1.174
    assert sig(0.0243515) == 0.02435
    assert sig(72) == 72 and isinstance(sig(72), int)
    assert sig(float("nan")) is None and sig(None) is None and sig(True) is None
    assert sig("x") is None


def test_changes_sends_only_what_differs_and_nulls_removed_keys() -> None:
    prev = {"f": {"pue": [1.17, 1.18], "ere": [0.6, 0.6]}, "r": {"0": [75, 14.0, 100, 1.0, 32]}}
    cur = {"f": {"pue": [1.17, 1.18], "ere": [0.61, 0.6]}, "r": {"1": [70, 19.0, 90, 0.5, 0]}}
    assert changes(prev, cur) == {
        "f": {"ere": [0.61, 0.6]},
        "r": {"1": [70, 19.0, 90, 0.5, 0], "0": None},
    }
    assert changes(cur, cur) == {}


def test_rack_tile_rounds_and_flags() -> None:
    s = {
        "temp_gpu_max_c": 75.4, "power_w": 100713.1, "residual_max_abs_k": 0.99,
        "thermal_margin_min_k": 14.0, "power_capped_gpus": 72, "thermal_slowdown_gpus": 2,
    }  # fmt: skip
    assert rack_tile(s, 13.96) == [75, 14.0, 101, 1.0, FLAG_THERMAL | FLAG_CAPPED]
    assert rack_tile({"rack": "R1", "gpus": 0}, None) == [None, None, None, None, 0]


def test_sql_examples_are_those_of_the_doc() -> None:
    text = SQL_EXAMPLES_MD.read_text(encoding="utf-8")
    ex = parse_sql_examples(text)
    assert [e["title"] for e in ex][:2] == ["Hottest GPUs in the last hour", "PUE by day"]
    assert len(ex) == text.count("```sql")
    assert all(e["sql"].upper().startswith(("SELECT", "WITH")) for e in ex)


def test_document_of_a_runtime_uses_layout_indices() -> None:
    site = load_site(None, racks=3)
    rt = TwinRuntime(partitions=4)
    summary = {"rack": "R0002", "gpus": 72, "power_w": 5e4, "temp_gpu_max_c": 60.0}
    rt.absorb_view("rack/R0002", {"kind": "rack", "summary": summary})
    rt.absorb_view("unit/CDU01", {"kind": "unit", "summary": {"points": {"flow_kg_s": 15.04321}}})
    rt.absorb_view("unit/R0002", {"kind": "unit", "summary": {"points": {"flow_kg_s": 5.0}}})
    doc = ui_document(rt, {r: i for i, r in enumerate(site.rack_ids)})
    assert doc["r"] == {"1": [60, None, 50, None, 0]}
    assert doc["u"] == {"CDU01": {"flow_kg_s": [15.04, None]}}  # rack manifolds left out
    assert doc["f"]["racks"] == [1, None]
    json.dumps(doc, allow_nan=False)


@pytest.fixture
async def client() -> Any:
    src = UiSource(TwinRuntime(partitions=4), load_site(None, racks=10), "test", tick_s=0.05)
    async with TestClient(TestServer(ui_web_app(src))) as c:
        yield c


async def test_static_files_and_layout(client: Any) -> None:
    r = await client.get("/")
    assert r.status == 200 and "control room" in await r.text()
    r = await client.get("/static/vendor/uplot/uPlot.esm.js")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
    for bad in ("/static/../ui_views.py", "/static/%2e%2e/ui_views.py", "/static/vendor"):
        assert (await client.get(bad)).status == 404, bad
    lay = await (await client.get("/api/ui/layout")).json()
    assert lay["racks"][:2] == ["R0001", "R0002"] and len(lay["hall"]) == 10
    assert lay["cdu"][0] == "CDU01" and lay["pos"][9] == 1 and lay["row"][9] == 1


async def test_stream_sends_hello_then_full_then_changes(client: Any) -> None:
    r = await client.get("/api/stream")
    assert r.headers["Content-Type"] == "text/event-stream"
    events: list[tuple[str, dict[str, Any]]] = []
    buf = b""
    while len(events) < 3:
        buf += await r.content.readany()
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            lines = dict(ln.split(": ", 1) for ln in block.decode().splitlines() if ": " in ln)
            if "event" in lines:
                events.append((lines["event"], json.loads(lines["data"])))
    r.close()
    assert events[0] == ("hello", {"worker": "test", "racks": 10})
    assert events[1][0] == "d" and events[1][1]["full"] is True and "f" in events[1][1]
    assert events[2][0] == "d" and "full" not in events[2][1] and set(events[2][1]) == {"t"}


async def test_whatif_validates_its_body_and_says_why() -> None:
    src = UiSource(TwinRuntime(partitions=4), load_site(None, racks=10), "t", lambda: b"no npz")
    async with TestClient(TestServer(ui_web_app(src))) as c:
        for body, words in (
            (b"{}", "body: expected"),
            (b"[1", "body: expected"),
            (b'{"scenario": 3}', "scenario: expected text"),
            (b'{"scenario": "pump_trip:CDU01", "horizon_s": 10}', "horizon_s: expected 60"),
            (b'{"scenario": "pump_trip:CDU01", "horizon_s": 1e9}', "horizon_s: expected 60"),
        ):
            r = await c.post("/api/whatif", data=body)
            assert r.status == 400 and words in (await r.json())["error"], body
        # a valid request on a snapshot that cannot be read: refused with the reason, no crash
        r = await c.post("/api/whatif", data=b'{"scenario": "pump_trip:CDU01"}')
        assert r.status == 400 and (await r.json())["error"]
        assert src._whatif_busy is False


async def test_open_streams_end_when_the_server_shuts_down() -> None:
    # an open page must not hold the worker's graceful stop (its supervisor would kill it)
    src = UiSource(TwinRuntime(partitions=4), load_site(None, racks=2), "t", tick_s=0.05)
    app = ui_web_app(src)
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/api/stream")
        assert b"event: hello" in await r.content.readuntil(b"\n\n")
        await app.on_shutdown.send(app)
        rest = await asyncio.wait_for(r.content.read(), timeout=2.0)  # EOF: the handler ended
        assert rest.count(b"event: d") <= 3
