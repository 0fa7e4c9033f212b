"""dcgm-exporter collector: the mapping on a page in dcgm-exporter 3.x's format, bad scrapes
from a real HTTP server on loopback, and frames through a real broker."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from numpy.testing import assert_allclose, assert_array_equal

from streams.brokers import Broker
from streams.codec import decode_gpu_frame, encode_frame, gpu_batch
from streams.collect_dcgm import (
    COLUMN_DEFAULTS,
    DCGM_FIELDS,
    REQUIRED_COLUMNS,
    SCRAPE_FAILURES,
    DcgmFrameBuilder,
    DcgmSamples,
    DcgmScraper,
    FailureLog,
    collect_dcgm,
    mapping_markdown,
    parse_exposition,
)
from streams.producer import FramePublisher
from streams.schema import GPU_SCHEMA
from streams.settings import Topics
from streams.topics_admin import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
PAGE = (Path(__file__).parent / "data" / "dcgm_exporter_4gpu.prom").read_text()
T0_S = 1_780_000_000.0


def _build(text: str, offset: int = 0, ts_ms: int = 1_780_000_000_000) -> dict[str, np.ndarray]:
    cols = DcgmFrameBuilder("R0001", offset).build(parse_exposition(text), ts_ms)
    assert cols is not None
    return cols


def _decoded(cols: dict[str, np.ndarray], ts_ms: int = 1_780_000_000_000) -> dict[str, np.ndarray]:
    data = encode_frame(gpu_batch(ts_ms, "R0001", cols))
    return decode_gpu_frame(data, key=b"R0001", now_ms=ts_ms).columns


def _page(gpus: dict[int, dict[str, object]]) -> str:
    """A dcgm-exporter style page: {gpu label: {field: value}}."""
    lines = []
    for name in dict.fromkeys(f for fields in gpus.values() for f in fields):
        lines += [f"# HELP {name} test field", f"# TYPE {name} gauge"]
        for gpu, fields in gpus.items():
            if name in fields:
                lines.append(
                    f'{name}{{gpu="{gpu}",UUID="GPU-{gpu}",device="nvidia{gpu}",'
                    f'modelName="NVIDIA H100 80GB HBM3",Hostname="n1",'
                    f'DCGM_FI_DRIVER_VERSION="550.90.07"}} {fields[name]}'
                )
    return "\n".join(lines) + "\n"


def _required(power: object = 500.0, temp: object = 50, util: object = 80) -> dict[str, object]:
    return {
        "DCGM_FI_DEV_POWER_USAGE": power,
        "DCGM_FI_DEV_GPU_TEMP": temp,
        "DCGM_FI_DEV_SM_CLOCK": 1980,
        "DCGM_FI_DEV_GPU_UTIL": util,
    }


# -- the mapping ---------------------------------------------------------------------------


def test_exporter_page_maps_every_field_with_units_and_offset() -> None:
    got = _decoded(_build(PAGE, offset=8))
    assert_array_equal(got["gpu"], [8, 9, 10, 11])
    assert_allclose(got["power_w"], [612.405, 698.12, 402.977, 455.5], rtol=1e-6)  # W as is
    assert_array_equal(
        got["energy_mj"], [8456123456789, 8512098765432, 7123456789012, 6987654321098]
    )
    assert_array_equal(got["temp_gpu_c"], [47, 51, 44, 58])
    assert_array_equal(got["temp_mem_c"], [52, 55, 49, 61])
    assert_array_equal(got["sm_clock_mhz"], [1980, 1755, 1980, 1410])
    assert_array_equal(got["util_pct"], [97, 100, 38, 64])
    assert_array_equal(got["clock_event_reasons"], [0, 4, 1, 72])
    assert_array_equal(got["xid"], [0, 0, 0, 48])
    # the enforced limit wins over the management limit where both are exported
    assert_array_equal(got["power_limit_w"], [700, 700, 650, 500])
    assert_array_equal(got["ecc_corrected"], [0, 0, 17, 4])
    assert_array_equal(got["ecc_uncorrected"], [0, 0, 0, 2])
    assert_array_equal(got["remapped_rows"], [0, 0, 2, 4])  # correctable + uncorrectable
    assert_array_equal(got["row_remap_flags"], [0, 0, 1, 2])  # 0x1 pending, 0x2 failure
    assert_array_equal(got["nvlink_errors"], [0, 9, 0, 0])  # CRC flit + data + replay + recov.
    assert_array_equal(got["thermal_margin_k"], [40, 36, 43, -1])


def test_newer_field_names_win_and_older_ones_are_fallbacks() -> None:
    both = _required() | {
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": 8,
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": 4,
    }
    old = _required() | {
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": 32,
        "DCGM_FI_DEV_POWER_MGMT_LIMIT": 600,
    }
    got = _decoded(_build(_page({0: both, 1: old})))
    assert_array_equal(got["clock_event_reasons"], [8, 32])
    assert_array_equal(got["power_limit_w"], [500, 600])  # GPU 0: none exported -> power


def test_missing_fields_take_the_documented_defaults_and_energy_integrates_power() -> None:
    builder = DcgmFrameBuilder("R0001", gpu_offset=4)
    page = _page({0: _required(power=500.0, temp=60), 1: _required(power=250.0, temp=40)})
    t = 1_780_000_000_000
    first = builder.build(parse_exposition(page), t)
    second = builder.build(parse_exposition(page), t + 2000)
    assert first is not None and second is not None
    got = _decoded(second, t + 2000)
    assert_array_equal(got["gpu"], [4, 5])
    assert_array_equal(got["temp_mem_c"], [60, 40])  # the die temperature
    assert_array_equal(got["power_limit_w"], [500, 250])  # the power
    assert_array_equal(got["thermal_margin_k"], [29, 49])  # 89 C - die
    for c in ("clock_event_reasons", "xid", "ecc_corrected", "ecc_uncorrected"):
        assert_array_equal(got[c], [0, 0], err_msg=c)
    for c in ("remapped_rows", "row_remap_flags", "nvlink_errors"):
        assert_array_equal(got[c], [0, 0], err_msg=c)
    assert_array_equal(first["energy_mj"], [0, 0])
    assert_array_equal(got["energy_mj"], [1_000_000, 500_000])  # W x 2 s, in mJ
    # the counter comes back: it is taken as is, and integration continues from it
    with_counter = _page(
        {0: _required() | {"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 7_000_000}, 1: _required()}
    )
    third = builder.build(parse_exposition(with_counter), t + 3000)
    assert third is not None
    assert_array_equal(third["energy_mj"], [7_000_000, 1_000_000])


def test_garbage_values_are_defaults_or_leave_the_gpu_out_never_an_invalid_frame() -> None:
    builder = DcgmFrameBuilder("R0001")
    page = _page(
        {
            0: _required() | {"DCGM_FI_DEV_MEMORY_TEMP": 0},  # no HBM sensor -> die temp
            1: _required(power="NaN"),  # required and not finite: GPU left out
            2: _required(util=150),  # out of range: left out
            3: _required()
            | {
                "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": -1,
                "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 1.5,
                "DCGM_FI_DEV_ROW_REMAP_PENDING": 2,
                "DCGM_FI_DEV_XID_ERRORS": "+Inf",
                "DCGM_FI_DEV_GPU_TEMP_LIMIT": 999,
                "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL": 2.0**60,
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 2.0**64,  # beyond uint64: integrated
                "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": 1e300,
            },
            4: {"DCGM_FI_DEV_GPU_TEMP": 50},  # nothing else: left out
        }
    )
    samples = parse_exposition(page)
    cols = builder.build(samples, 1_780_000_000_000)
    assert cols is not None
    got = _decoded(cols)
    assert_array_equal(got["gpu"], [0, 3])
    assert builder.skipped_gpus == 3
    assert_array_equal(got["temp_mem_c"], [50, 50])
    for c in ("ecc_corrected", "ecc_uncorrected", "row_remap_flags", "xid", "nvlink_errors"):
        assert_array_equal(got[c], [0, 0], err_msg=c)
    assert_array_equal(got["thermal_margin_k"], [39, 39])
    assert_array_equal(got["energy_mj"], [0, 0])  # first scrape: nothing integrated yet
    assert_array_equal(got["clock_event_reasons"], [0, 0])


def test_parser_keeps_first_sample_and_skips_unlabelled_and_unknown_fields() -> None:
    page = _page({0: _required(power=300.0)}) + (
        'DCGM_FI_DEV_POWER_USAGE{gpu="0",GPU_I_ID="1"} 999\n'  # a second sample: ignored
        'DCGM_FI_DEV_POWER_USAGE{gpu="abc"} 1\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="99999"} 1\n'
        "DCGM_FI_DEV_POWER_USAGE 5\n"  # no gpu label (e.g. an NVSwitch)
        'DCGM_FI_DEV_FB_USED{gpu="0"} 100\n'
    )
    samples = parse_exposition(page)
    assert_array_equal(samples.gpus, [0])
    assert samples.duplicates == 1
    assert samples.bad_labels == 3
    assert _build(page)["power_w"][0] == 300.0


# -- table and docs ------------------------------------------------------------------------


def test_mapping_table_is_consistent_and_covers_every_column() -> None:
    names = [f.field for f in DCGM_FIELDS]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"DCGM_FI_DEV_[A-Z0-9_]+", n) for n in names)
    frame_columns = {f.name for f in GPU_SCHEMA} - {"ts", "rack", "gpu"}
    mapped = {f.column for f in DCGM_FIELDS}
    assert mapped == frame_columns
    for column in mapped:
        assert len({f.combine for f in DCGM_FIELDS if f.column == column}) == 1, column
    assert all(f.combine in ("first", "sum") for f in DCGM_FIELDS)
    defaults = {c for c, _ in COLUMN_DEFAULTS}
    assert defaults.isdisjoint(REQUIRED_COLUMNS)
    assert defaults | set(REQUIRED_COLUMNS) == frame_columns


def test_docs_show_the_mapping_the_code_uses() -> None:
    doc = (ROOT / "docs" / "collectors.md").read_text()
    m = re.search(r"<!-- dcgm-mapping:[^>]*-->\n(.*?)<!-- /dcgm-mapping -->", doc, re.S)
    assert m is not None, "docs/collectors.md lacks the dcgm-mapping markers"
    assert m.group(1) == mapping_markdown(), (
        "docs/collectors.md differs from DCGM_FIELDS: paste mapping_markdown() between the markers"
    )


# -- scrapes from a real HTTP server --------------------------------------------------------


class Exporter:
    """A dcgm-exporter stand-in on loopback; ``plan`` says how each next scrape is answered
    (then ``default``)."""

    def __init__(self, default: str = "ok") -> None:
        self.plan: list[str] = []
        self.default = default
        self.hits = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        mode = self.plan.pop(0) if self.plan else self.default
        if mode == "500":
            return web.Response(status=500, text="DCGM not ready")
        if mode == "garbage":
            return web.Response(text="<html><body>login</body></html>\n")
        if mode == "binary":
            return web.Response(body=b"\xff\xfe\x00garbage")
        if mode == "slow":
            await asyncio.sleep(5.0)
        if mode == "empty":
            return web.Response(text="# HELP go_goroutines x\n# TYPE go_goroutines gauge\n")
        return web.Response(text=PAGE, content_type="text/plain", charset="utf-8")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/metrics"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def exporter() -> AsyncIterator[Exporter]:
    ex = Exporter()
    await ex.start()
    try:
        yield ex
    finally:
        await ex.stop()


def _fake_clock() -> Callable[[], float]:
    state = {"t": T0_S}

    def clock() -> float:
        state["t"] += 1.0
        return state["t"]

    return clock


async def test_bad_scrapes_are_counted_by_cause_and_never_end_the_loop(
    exporter: Exporter, caplog: pytest.LogCaptureFixture
) -> None:
    exporter.plan = ["ok", "500", "garbage", "binary", "slow", "empty", "500", "ok"]
    sent: list[tuple[str, bytes]] = []
    stop = asyncio.Event()
    async with DcgmScraper(
        exporter.url, "R0007", gpu_offset=68, timeout_s=0.3, clock=_fake_clock()
    ) as scraper:

        async def publish(key: str, value: bytes) -> None:
            sent.append((key, value))
            if len(sent) == 2:
                stop.set()

        with caplog.at_level(logging.WARNING, logger="streams.collect_dcgm"):
            count = await asyncio.wait_for(collect_dcgm(scraper, publish, 0.01, stop), 30)
    assert count == 2 and exporter.hits == 8
    assert scraper.scrapes_ok == 2
    assert scraper.failures == dict.fromkeys(SCRAPE_FAILURES, 0) | {
        "http_status": 2,
        "garbage": 2,
        "timeout": 1,
        "no_gpus": 1,
    }
    for key, value in sent:
        frame = decode_gpu_frame(value, key=key.encode(), now_ms=None)
        assert key == "R0007" and frame.rack == "R0007"
        assert_array_equal(frame.gpu, [68, 69, 70, 71])
    # one log line per cause (the second 500 falls within the rate limit), one on recovery
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("HTTP 500" in w for w in warnings) == 1
    assert sum("no answer within 0.3 s" in w for w in warnings) == 1
    # the page of HTML is logged; the binary one, the same cause a moment later, is not
    assert sum("not the Prometheus text format" in w for w in warnings) == 1
    assert sum("not UTF-8" in w for w in warnings) == 0
    assert sum("scraping works again" in w for w in warnings) == 1


async def test_an_exporter_that_is_down_is_a_counted_connection_failure() -> None:
    ex = Exporter()
    await ex.start()
    url = ex.url
    await ex.stop()  # nothing listens on that port any more
    async with DcgmScraper(url, "R0001", timeout_s=1.0) as scraper:
        assert await scraper.read() is None
        assert await scraper.read() is None
    assert scraper.failures["connection"] == 2


async def test_oversized_pages_are_refused(exporter: Exporter) -> None:
    async with DcgmScraper(exporter.url, "R0001", max_bytes=1000) as scraper:
        assert await scraper.read() is None
    assert scraper.failures["too_large"] == 1


def test_failure_log_repeats_a_cause_only_after_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = {"t": 0.0}
    flog = FailureLog("x", every_s=60.0, clock=lambda: now["t"])
    with caplog.at_level(logging.WARNING, logger="streams.collect_dcgm"):
        for _ in range(5):
            flog.failed("timeout", "slow")
        flog.failed("http_status", "HTTP 503")
        now["t"] = 61.0
        flog.failed("timeout", "slow")
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3
    assert "(1 time(s) since last report, 1 in all)" in msgs[0]
    assert "(5 time(s) since last report, 6 in all)" in msgs[2]
    assert flog.counts["timeout"] == 6 and flog.counts["http_status"] == 1


# -- through a real broker -----------------------------------------------------------------


async def _read_frames(
    bootstrap: str, topic: str, n: int, timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            out += [r for recs in batches.values() for r in recs]
    finally:
        await consumer.stop()
    return out


@pytest.mark.integration
async def test_collector_publishes_frames_the_worker_decodes(
    broker: Broker, topic_prefix: str, exporter: Exporter
) -> None:
    topics = Topics(topic_prefix)
    await ensure_topics(broker.bootstrap, topics, 8)
    exporter.plan = ["ok", "500", "ok", "ok"]
    stop = asyncio.Event()
    async with (
        FramePublisher(broker.bootstrap) as pub,
        DcgmScraper(exporter.url, "R0001", gpu_offset=8, timeout_s=2.0) as scraper,
    ):

        async def publish(key: str, value: bytes) -> None:
            await pub.send(topics.gpu, key, value)
            if scraper.scrapes_ok == 3:
                stop.set()

        count = await asyncio.wait_for(collect_dcgm(scraper, publish, 0.2, stop), 30)
        await pub.flush()
    assert count == 3 and scraper.failures["http_status"] == 1
    records = await _read_frames(broker.bootstrap, topics.gpu, 3)
    assert len(records) == 3
    now_ms = time.time_ns() // 1_000_000
    stamps = []
    for rec in records:
        assert rec.key == b"R0001"
        frame = decode_gpu_frame(rec.value, key=rec.key, now_ms=now_ms)
        assert_array_equal(frame.gpu, [8, 9, 10, 11])
        assert_allclose(frame.columns["power_w"], [612.405, 698.12, 402.977, 455.5], rtol=1e-6)
        assert_array_equal(frame.columns["xid"], [0, 0, 0, 48])
        stamps.append(int(frame.ts_ms[0]))
    assert stamps == sorted(stamps) and len(set(stamps)) == 3


async def test_an_unforeseen_error_in_building_a_frame_is_counted_not_raised(
    exporter: Exporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with DcgmScraper(exporter.url, "R0001") as scraper:
        real = scraper.builder.build
        calls = {"n": 0}

        def flaky(samples: DcgmSamples, ts_ms: int) -> dict[str, np.ndarray] | None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
            return real(samples, ts_ms)

        monkeypatch.setattr(scraper.builder, "build", flaky)
        assert await scraper.read() is None
        assert await scraper.read() is not None
    assert scraper.failures["invalid_frame"] == 1 and scraper.scrapes_ok == 1
