"""The floor map at the campus's 1,250 racks in chromium: the real page and the real stream
code (streams/ui_views.py) over a runtime whose racks are synthetic (other workers' twin.state
documents, changed every second with seeded noise). Records the redraw time per update, the
animation-frame intervals and the stream's bytes per second in
tests/ui/artifacts/floor-1250.json (figures, not pass/fail timings: see bench/ for targets)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from streams.runtime import TwinRuntime
from streams.ui_views import UiSource, ui_web_app
from tests.ui.conftest import ARTIFACTS, ConsoleLog, no_alerts, serve_app
from twin.site import load_site

pytestmark = [pytest.mark.slow]
N_RACKS = 1250


def rack_doc(rack: str, temp_c: float, power_w: float, margin_k: float) -> dict[str, Any]:
    return {
        "kind": "rack",
        "summary": {
            "rack": rack, "gpus": 72, "power_w": power_w, "temp_gpu_max_c": temp_c,
            "temp_gpu_mean_c": temp_c - 1.0, "thermal_margin_min_k": margin_k,
            "residual_max_abs_k": abs(temp_c - 75.0) / 4, "throttled_gpus": 0,
            "power_capped_gpus": 72,
        },
    }  # fmt: skip


def feed(rt: TwinRuntime, racks: tuple[str, ...], rng: np.random.Generator) -> None:
    """One second of the campus: every rack's power and hottest die move by their noise."""
    temp = np.clip(75.0 + rng.normal(0.0, 3.0, len(racks)), 40.0, 92.0).round()
    power = np.clip(150e3 + rng.normal(0.0, 20e3, len(racks)), 0.0, 210e3)
    for k, rack in enumerate(racks):
        rt.absorb_view(f"rack/{rack}", rack_doc(rack, temp[k], power[k], 89.0 - temp[k]))


@pytest.fixture(scope="module")
def campus() -> Iterator[str]:
    site = load_site(None, racks=N_RACKS)
    rt = TwinRuntime(partitions=8)
    rng = np.random.default_rng(7)
    feed(rt, site.rack_ids, rng)
    src = UiSource(rt, site, "synthetic-campus")
    app = ui_web_app(src)
    app.router.add_get("/api/alerts", no_alerts)
    with serve_app(app, lambda: feed(rt, site.rack_ids, rng)) as url:
        yield url


def test_floor_map_at_1250_racks(browser: Any, campus: str) -> None:
    ctx = browser.new_context(viewport={"width": 1920, "height": 1080})
    page = ctx.new_page()
    log = ConsoleLog(page)
    page.goto(campus + "/#floor")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function(f"Object.keys(__store.r).length === {N_RACKS}", timeout=20_000)
    page.wait_for_function("__store.received >= 3", timeout=10_000)
    # every tile carries a colour of the scale
    colours = page.evaluate(f"Array.from({{length: {N_RACKS}}}, (_, i) => __floor.colour(i))")
    assert len(colours) == N_RACKS and "#3a3d41" not in colours  # no tile without data
    # measure over 15 s: animation-frame intervals, redraw time per update, stream bytes
    page.evaluate(
        """() => { window.__frames = []; let last = performance.now();
        const tick = (t) => { __frames.push(t - last); last = t; requestAnimationFrame(tick); };
        requestAnimationFrame(tick);
        window.__m0 = {bytes: __store.bytes, n: __store.received, draws: __perf.draws,
          drawMs: __perf.drawMs, tiles: __perf.tilesDrawn, t: performance.now()}; }"""
    )
    time.sleep(15)
    m = page.evaluate(
        """() => { const f = __frames.slice(2).sort((a, b) => a - b), m0 = __m0;
        const s = (performance.now() - m0.t) / 1000, draws = __perf.draws - m0.draws;
        return {seconds: s, updates: __store.received - m0.n,
          bytes_per_s: (__store.bytes - m0.bytes) / s,
          redraws: draws, redraw_ms_mean: (__perf.drawMs - m0.drawMs) / Math.max(1, draws),
          redraw_ms_max: __perf.maxDrawMs,
          tiles_per_redraw: (__perf.tilesDrawn - m0.tiles) / Math.max(1, draws),
          frames: f.length, frame_ms_p50: f[Math.floor(f.length * 0.5)],
          frame_ms_p95: f[Math.floor(f.length * 0.95)], frame_ms_max: f[f.length - 1]}; }"""
    )
    page.mouse.move(400, 300)
    page.screenshot(path=str(ARTIFACTS / "floor-1250.png"))
    (ARTIFACTS / "floor-1250.json").write_text(json.dumps(m, indent=2))
    print(json.dumps(m, indent=2))
    ctx.close()
    assert m["updates"] >= 10  # about one document a second
    assert m["redraws"] >= 10 and m["tiles_per_redraw"] > 0  # only changed tiles are redrawn
    assert m["tiles_per_redraw"] <= N_RACKS
    assert log.errors == []
