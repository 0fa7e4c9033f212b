"""The rack view (streams/static/rack.js) in chromium over the real API (streams/api_views.py):
a runtime fed real GPU frames of one rack with its manifold and a fitted model, served with
the control room's routes on a bare aiohttp app. Checks the page reads the API's shapes: one
object per GPU, the fit under each GPU, coolant points with their expected values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from streams.api_views import api_handlers
from streams.codec import decode_gpu_frame, decode_points_frame, encode_frame, points_batch
from streams.runtime import TwinRuntime
from streams.ui_views import UiSource, ui_web_app
from tests.streams.frames import gpu_columns, known_gpu_batch
from tests.ui.conftest import ARTIFACTS, ConsoleLog, no_alerts, serve_app
from twin.site import load_site

pytestmark = [pytest.mark.slow]
NOW = 1_795_000_000_000


def runtime() -> TwinRuntime:
    rt = TwinRuntime(partitions=4, clock_ms=lambda: NOW)
    pts = {"inlet_temp_c": 30.0, "outlet_temp_c": 40.0, "flow_kg_s": 1.5}
    batch = points_batch(NOW - 1000, "R0001", pts)
    rt.apply_points(decode_points_frame(encode_frame(batch), key=b"R0001", now_ms=NOW), "t")
    for i in range(3):
        b = known_gpu_batch("R0001", NOW - 3000 + 1000 * i, n=72, seed=i)
        rt.apply_gpu(decode_gpu_frame(encode_frame(b), key=None, now_ms=NOW), "telemetry.gpu")
    rt.model_view = {
        "ts_ms": NOW,
        "kpis": {},
        "headroom": {},
        "units": {"R0001": {"inlet_temp_c": {"measured": 30.0, "expected": 30.4}}},
    }
    return rt


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    rt = runtime()
    app = ui_web_app(UiSource(rt, load_site(None, racks=3), "rack-view"))
    for path, handler in api_handlers(rt).items():
        app.router.add_get(path, handler)

    async def no_rows(request: web.Request) -> web.Response:
        return web.json_response({"columns": [], "rows": [], "row_count": 0})

    app.router.add_get("/api/alerts", no_alerts)
    app.router.add_post("/api/sql", no_rows)
    with serve_app(app) as url:
        yield url


def test_rack_view_reads_gpu_objects_and_coolant_points(browser: Any, server: str) -> None:
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = ctx.new_page()
    log = ConsoleLog(page)
    page.goto(server + "/#rack/R0001")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function(
        "document.querySelectorAll('#rack-table tr[data-gpu]').length === 72", timeout=15_000
    )
    assert page.inner_text("#rack-ngpu") == "72"
    cols = gpu_columns(72, seed=2)  # the last frame
    cells = page.locator("#rack-table tr[data-gpu='5'] td").all_inner_texts()
    assert cells[0] == "G05"
    assert cells[1] == f"{float(cols['temp_gpu_c'][5]):.0f}"
    assert cells[2] != "–" and cells[3] != "–"  # the fit's expected temperature and residual
    assert cells[5] == f"{float(cols['power_w'][5]):.0f}"
    assert cells[8] == str(int(cols["sm_clock_mhz"][5]))
    assert page.locator("#rack-gpus div[data-gpu]").count() == 72
    coolant = page.inner_text("#rack-coolant")
    assert "30.0 °C" in coolant and "model 30.4 °C" in coolant and "1.50 kg/s" in coolant
    page.locator("#rack-table tr[data-gpu='5']").click()
    page.wait_for_selector("#gpu-diag:not([hidden])")
    diag = page.inner_text("#gpu-diag")
    assert "R0001/G05" in diag and "updates" in diag and "1 s old" in diag, diag
    page.screenshot(path=str(ARTIFACTS / "rack-view.png"), full_page=True)
    ctx.close()
    assert log.errors == []
