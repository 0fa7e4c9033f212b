"""The control room in a real browser (Debian's chromium through Playwright) against
`twin demo` on loopback: 4 racks, a UPS module put on battery by the simulator's fault
injection, the worker's bearer token from a file. Screenshots go to tests/ui/artifacts/.

The tests share one demo and run in file order; the last one restarts it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.brokers.ports import free_port
from streams.httpclient import http_get
from tests.ui.conftest import ARTIFACTS, ConsoleLog

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "ui-test-token-0123456789abcdef"
RACKS = 4


class Demo:
    """`twin demo` as a subprocess on a fixed web port (kept across a restart)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_file = tmp / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0

    def start(self) -> None:
        self.generation += 1
        argv = [
            sys.executable, "-m", "streams", "demo", "--racks", str(RACKS),
            "--web-port", str(self.port), "--state-dir", str(self.tmp / f"state{self.generation}"),
            "--data-dir", str(self.tmp / "data"), "--duration", "900",
            "--api-token-file", str(self.token_file), "--fault", "ups_on_battery:UPS01@30",
        ]  # fmt: skip
        log = (self.tmp / f"demo{self.generation}.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            status, body = http_get(self.url + "/api/state", timeout_s=2)
            racks = body.count(b'"gpus": 72') + body.count(b'"gpus":72')
            if status == 200 and racks >= RACKS and b'"model"' in body:
                return
            time.sleep(1)
        raise AssertionError(f"demo not up in 150 s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: the demo stops its children in order
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace")[-3000:] for p in self.tmp.glob("demo*.log"))

    def get(self, path: str) -> Any:
        status, body = http_get(self.url + path, timeout_s=5)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    d = Demo(tmp_path_factory.mktemp("ui-demo"))
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def page(browser: Any, demo: Demo) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.console = ConsoleLog(pg)
    pg.goto(demo.url + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=20_000)
    try:
        yield pg
    finally:
        ctx.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_until(fn: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def test_page_loads_without_console_errors_and_values_change(page: Any, demo: Demo) -> None:
    page.wait_for_function("window.__store.received >= 2", timeout=10_000)
    first = page.evaluate("({t: __store.t, f: JSON.stringify(__store.f), n: __store.received})")
    assert "worker" in page.inner_text("#worker") and str(demo.port) in page.inner_text("#worker")
    # live: new documents arrive and the figures move within a few seconds
    page.wait_for_function(
        f"__store.received >= {first['n'] + 3}"
        f" && JSON.stringify(__store.f) !== {json.dumps(first['f'])}",
        timeout=15_000,
    )
    it_kw = page.inner_text("#kpi-it_power_w .val")
    assert it_kw != "–" and float(it_kw) > 0, it_kw
    assert page.inner_text("#kpi-it_power_w .unit") in ("kW", "MW")
    assert page.inner_text("#kpi-pue .model").startswith("model ")
    assert page.is_hidden("#stale")
    time.sleep(6)  # a few points on the trends
    shot(page, "overview")
    assert page.console.errors == []


def test_floor_map_hover_and_click_opens_a_rack_with_72_gpus(page: Any, demo: Demo) -> None:
    page.goto(demo.url + "/#floor")
    page.wait_for_function("Object.keys(__store.r).length >= 4", timeout=10_000)
    box = page.locator("#map").bounding_box()
    tile = page.evaluate("__floor.tile(0)")
    x, y = box["x"] + tile["x"] + tile["size"] / 2, box["y"] + tile["y"] + tile["size"] / 2
    page.mouse.move(x, y)
    page.wait_for_selector("#tip:not([hidden])")
    tip = page.inner_text("#tip")
    assert "R0001" in tip and "hottest GPU" in tip and "°C" in tip, tip
    shot(page, "floor")
    page.mouse.click(x, y)
    page.wait_for_function("location.hash === '#rack/R0001'")
    page.wait_for_function(
        "document.querySelectorAll('#rack-table tr[data-gpu]').length === 72", timeout=10_000
    )
    assert page.inner_text("#rack-ngpu") == "72"
    assert "model" in page.inner_text("#rack-coolant")  # coolant measured beside the model
    page.locator("#rack-table tr[data-gpu='5']").click()
    page.wait_for_selector("#gpu-diag:not([hidden])")
    assert "margin to slowdown" in page.inner_text("#gpu-diag")
    # the history: a chart, or (the sink has not written a minute yet) a note saying so
    page.wait_for_function(
        "document.querySelector('#rack-hist-t canvas') || "
        "document.querySelector('#rack-hist-t').textContent.includes('no stored history')",
        timeout=15_000,
    )
    time.sleep(2)
    shot(page, "rack")
    assert page.console.errors == []


def test_fault_alert_on_the_map_and_ack_needs_the_token(page: Any, demo: Demo) -> None:
    # the simulator puts UPS01 on battery 30 s in: a critical alert with its hall as blast radius
    def raised() -> Any:
        alerts = demo.get("/api/alerts")["alerts"]
        return [a for a in alerts if a["rule"] == "ups_on_battery" and a["state"] == "UNACK"]

    alert = wait_until(raised, 120, "ups_on_battery alert")[0]
    assert alert["blast"], alert
    page.goto(demo.url + "/#floor")
    page.select_option("#metric", "alert")
    blast_i = int(alert["blast"][0][1:]) - 1
    page.wait_for_function(f"__floor.colour({blast_i}) === '#e8453c'", timeout=10_000)
    # the pixel at the tile's centre is the critical colour
    rgb = page.evaluate(
        f"""(() => {{ const c = document.getElementById('map'), t = __floor.tile({blast_i}),
        d = window.devicePixelRatio || 1;
        return Array.from(c.getContext('2d').getImageData(Math.round((t.x + t.size / 2) * d),
          Math.round((t.y + t.size / 2) * d), 1, 1).data).slice(0, 3); }})()"""
    )
    assert rgb == [0xE8, 0x45, 0x3C], rgb
    shot(page, "floor-alert")
    page.goto(demo.url + "/#alerts")
    row = page.locator(f"#alerts-active tr[data-id='{alert['id']}']")
    row.wait_for(timeout=10_000)
    assert "critical" in row.inner_text() and alert["action"][:20] in row.inner_text()
    shot(page, "alerts")
    ack = row.locator("button.ack")
    # no token: 401
    ack.click()
    page.fill("#ack-comment", "ui test: on battery, checking mains")
    page.click("#ack-ok")
    page.wait_for_function("document.querySelector('#ack-err').textContent.includes('401')")
    # a wrong token: 403
    page.fill("#ack-token", "wrong-token-00000000000000")
    page.click("#ack-ok")
    page.wait_for_function("document.querySelector('#ack-err').textContent.includes('403')")
    assert demo.get(f"/api/alerts/{alert['id']}")["acked"] is False
    # the right token: acknowledged, kept for the browser session
    page.fill("#ack-token", TOKEN)
    page.click("#ack-ok")
    page.wait_for_function("!document.querySelector('#ack-dlg').open", timeout=10_000)
    a = demo.get(f"/api/alerts/{alert['id']}")
    assert a["acked"] is True and a["ack_comment"] == "ui test: on battery, checking mains"
    assert page.evaluate("sessionStorage.getItem('twin-token')") == TOKEN
    page.wait_for_function(
        f"document.querySelector(\"#alerts-active tr[data-id='{alert['id']}']\")"
        ".innerText.includes('ACKED')",
        timeout=10_000,
    )
    shot(page, "alerts-acked")
    # 401s of the refused attempts are the only console errors (the browser logs them)
    assert all("401" in e or "403" in e for e in page.console.errors), page.console.errors


def sql_rows(demo: Demo, query: str) -> int:
    req = urllib.request.Request(demo.url + "/api/sql", data=query.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(json.loads(r.read())["row_count"])
    except urllib.error.HTTPError:
        return 0


def test_sql_console_rows_chart_csv_and_refusal(page: Any, demo: Demo) -> None:
    # the sink writes the history every 30 s; the 1-minute rollup needs a closed minute
    wait_until(lambda: sql_rows(demo, "SELECT * FROM gpu_1m LIMIT 1"), 180, "rows in gpu_1m")
    page.goto(demo.url + "/#sql")
    page.wait_for_selector("#sql-examples button")
    page.locator("#sql-examples button", has_text="Hottest GPUs in the last hour").click()
    page.wait_for_function("document.querySelectorAll('#sql-table tr').length > 1", timeout=30_000)
    with page.expect_download() as dl:
        page.click("#sql-csv")
    csv = Path(dl.value.path()).read_text().splitlines()
    assert csv[0] == "rack,gpu,temp_max_c,temp_mean_c", csv[:2]
    assert len(csv) == page.locator("#sql-table tr").count() >= 2
    # a time column gives a chart
    page.fill(
        "#sql-text",
        "SELECT ts, max(temp_gpu_c_max) AS temp_max_c, avg(temp_gpu_c_mean) AS temp_mean_c "
        "FROM gpu_1m GROUP BY ts ORDER BY ts",
    )
    page.click("#sql-run")
    page.wait_for_selector("#sql-chart canvas", timeout=30_000)
    shot(page, "sql")
    # ... and the rack view's last hour, read through the same endpoint
    page.goto(demo.url + "/#rack/R0002")
    page.wait_for_selector("#rack-hist-t canvas", timeout=15_000)
    page.locator("#rack-table tr[data-gpu='3']").click()
    page.wait_for_selector("#gpu-hist canvas", timeout=15_000)
    time.sleep(1)
    shot(page, "rack-history")
    page.goto(demo.url + "/#sql")
    # a refusal is shown as the server words it
    page.fill("#sql-text", "DELETE FROM gpu")
    page.click("#sql-run")
    page.wait_for_function("document.querySelector('#sql-err').textContent.length > 0")
    req = urllib.request.Request(demo.url + "/api/sql", data=b"DELETE FROM gpu", method="POST")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("DELETE was not refused")
    except urllib.error.HTTPError as exc:
        words = json.loads(exc.read())["error"]
    assert page.inner_text("#sql-err") == words
    assert all("400" in e for e in page.console.errors), page.console.errors


def test_cooling_and_power_schematic_with_a_whatif(page: Any, demo: Demo) -> None:
    page.goto(demo.url + "/#plant")
    page.wait_for_selector("#plant-svg svg")
    assert "Facility water" in page.inner_text("#plant-svg")
    page.select_option("#wi-kind", "pump_trip")
    page.select_option("#wi-unit", "CDU01")
    page.select_option("#wi-h", "900")
    page.click("#wi-run")
    page.wait_for_selector("#wi-out table", timeout=120_000)
    assert "what-if" in page.inner_text("#plant-svg")  # drawn on the schematic
    assert "coolant" in page.inner_text("#wi-out").lower()
    shot(page, "plant-whatif")
    assert page.console.errors == []


def test_kiosk_mode_has_no_controls(browser: Any, demo: Demo) -> None:
    ctx = browser.new_context(viewport={"width": 1920, "height": 1080})
    pg = ctx.new_page()
    log = ConsoleLog(pg)
    pg.goto(demo.url + "/?kiosk=1")
    pg.wait_for_selector("body[data-ready='1']")
    pg.wait_for_function("window.__store.received >= 3", timeout=15_000)
    time.sleep(2)
    assert pg.is_hidden("#nav") and pg.is_hidden("#metric")
    assert pg.is_visible("#view-overview") and pg.is_visible("#map")
    size = pg.evaluate("parseFloat(getComputedStyle(document.querySelector('.kpi .val')).fontSize)")
    assert size >= 40  # readable at 3 m
    pg.screenshot(path=str(ARTIFACTS / "kiosk.png"))
    ctx.close()
    assert log.errors == []


def test_page_recovers_after_the_worker_restarts(page: Any, demo: Demo) -> None:
    page.wait_for_function("window.__store.received >= 2", timeout=10_000)
    before = page.inner_text("#worker")
    assert page.console.errors == []
    demo.stop()
    page.wait_for_selector("#stale:not([hidden])", timeout=15_000)
    shot(page, "stale")
    demo.start()
    page.wait_for_selector("#stale", state="hidden", timeout=60_000)
    page.wait_for_function(f"document.querySelector('#worker').innerText !== {json.dumps(before)}")
    n = page.evaluate("__store.received")
    page.wait_for_function(f"__store.received >= {n + 2}", timeout=10_000)
    # while the worker was away its requests failed (the browser logs each); once it is back
    # the page runs without a new error
    during = list(page.console.errors)
    assert all(e.startswith("Failed to load resource") for e in during), during
    time.sleep(5)
    assert page.console.errors == during
    assert page.is_hidden("#stale")
    shot(page, "recovered")
