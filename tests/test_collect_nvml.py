"""NVML collector without a GPU: a fake NVML module with the same functions, real frames."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from streams.codec import decode_gpu_frame
from streams.collect_nvml import (
    GpuReadError,
    GpuReading,
    NvmlCollector,
    collect_loop,
    frame_from_readings,
    open_nvml,
)
from streams.schema import GPU_SCHEMA
from twin.errors import NoGpuError

NOT_SUPPORTED, TIMEOUT, LIB_NOT_FOUND, DRIVER_NOT_LOADED = 3, 10, 12, 9


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    power_mw: int
    temp_c: int
    mem_temp_c: int | None  # None: field unsupported
    energy_mj: int | None  # None: no energy counter (pre-Volta)
    sm_mhz: int = 1980
    util: int = 50
    reasons: int = 0
    limit_mw: int = 1_800_000
    broken: bool = False  # power read fails
    # telemetry.gpu/v2 sources; None: NotSupported
    ecc: tuple[int, int] | None = None  # (corrected, uncorrected) volatile
    remap: tuple[int, int, int, int] | None = None  # (corr, unc, pending, failure)
    nvlink_totals: tuple[int, int, int, int] | None = None  # CRC flit, CRC data, replay, recov.
    nvlink_links: dict[int, int] | None = None  # link -> errors per counter (per-link API)
    slowdown_c: int | None = None  # NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
    margin_c: int | None = None  # nvmlDeviceGetMarginTemperature


@dataclass
class FakeNvml:
    """Stands in for pynvml: same function names, return shapes and error type."""

    gpus: list[FakeGpu]
    init_error: int | None = None
    event_reasons_api: bool = True
    xid_supported: bool = True
    events: deque[tuple[int, int]] = field(default_factory=deque)  # (gpu index, xid)
    shutdowns: int = 0

    NVMLError = FakeNvmlError
    NVML_CLOCK_SM = 1
    NVML_FI_DEV_MEMORY_TEMP = 82
    NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL = 38
    NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL = 45
    NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL = 52
    NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL = 59
    NVML_NVLINK_MAX_LINKS = 18
    nvmlEventTypeXidCriticalError = 0x8
    calls: dict[str, int] = field(default_factory=dict)  # v2 call -> times called

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNvmlError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA Fake R200"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "999.1"

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if self.gpus[handle].broken:
            raise FakeNvmlError(15)  # GPU is lost
        return self.gpus[handle].power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        energy = self.gpus[handle].energy_mj
        if energy is None:
            raise FakeNvmlError(NOT_SUPPORTED)
        return energy

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == 0  # NVML_TEMPERATURE_GPU
        return self.gpus[handle].temp_c

    def nvmlDeviceGetFieldValues(self, handle: int, ids: list[int]) -> list[Any]:
        gpu = self.gpus[handle]
        if ids == [self.NVML_FI_DEV_MEMORY_TEMP]:
            temp = gpu.mem_temp_c
            ret = NOT_SUPPORTED if temp is None else 0
            return [SimpleNamespace(nvmlReturn=ret, valueType=1, value=SimpleNamespace(uiVal=temp))]
        assert ids == [38, 45, 52, 59]
        self._count("nvlink fields")
        totals = gpu.nvlink_totals
        return [
            SimpleNamespace(
                nvmlReturn=NOT_SUPPORTED if totals is None else 0,
                valueType=3,  # unsigned long long
                value=SimpleNamespace(ullVal=0 if totals is None else totals[k]),
            )
            for k in range(4)
        ]

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def nvmlDeviceGetTotalEccErrors(self, handle: int, kind: int, counter: int) -> int:
        assert counter == 0  # volatile
        self._count("ecc")
        ecc = self.gpus[handle].ecc
        if ecc is None:
            raise FakeNvmlError(NOT_SUPPORTED)
        return ecc[kind]

    def nvmlDeviceGetRemappedRows(self, handle: int) -> tuple[int, int, int, int]:
        self._count("remap")
        remap = self.gpus[handle].remap
        if remap is None:
            raise FakeNvmlError(NOT_SUPPORTED)
        return remap

    def nvmlDeviceGetNvLinkErrorCounter(self, handle: int, link: int, counter: int) -> int:
        self._count("nvlink link")
        links = self.gpus[handle].nvlink_links
        if links is None or link not in links:
            raise FakeNvmlError(NOT_SUPPORTED)
        return links[link]

    def nvmlDeviceGetTemperatureThreshold(self, handle: int, kind: int) -> int:
        assert kind == 1  # SLOWDOWN
        self._count("threshold")
        slow = self.gpus[handle].slowdown_c
        if slow is None:
            raise FakeNvmlError(NOT_SUPPORTED)
        return slow

    def nvmlDeviceGetMarginTemperature(self, handle: int) -> int:
        self._count("margin")
        margin = self.gpus[handle].margin_c
        if margin is None:
            raise FakeNvmlError(NOT_SUPPORTED)
        return margin

    def nvmlDeviceGetClockInfo(self, handle: int, kind: int) -> int:
        assert kind == self.NVML_CLOCK_SM
        return self.gpus[handle].sm_mhz

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=self.gpus[handle].util, memory=0)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int) -> int:
        return self.gpus[handle].reasons

    def __getattr__(self, name: str) -> Any:
        # Older bindings lack the new name; getattr(..., None) must then find nothing.
        if name == "nvmlDeviceGetCurrentClocksEventReasons" and self.event_reasons_api:
            return self.nvmlDeviceGetCurrentClocksThrottleReasons
        raise AttributeError(name)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self.gpus[handle].limit_mw

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle: int, types: int, events: str) -> None:
        if not self.xid_supported:
            raise FakeNvmlError(NOT_SUPPORTED)

    def nvmlEventSetWait(self, events: str, timeout_ms: int) -> Any:
        assert timeout_ms == 0  # polling must never block the sampler
        if not self.events:
            raise FakeNvmlError(TIMEOUT)
        gpu, xid = self.events.popleft()
        return SimpleNamespace(device=gpu, eventType=0x8, eventData=xid)

    def nvmlEventSetFree(self, events: str) -> None:
        pass


class FakeClock:
    def __init__(self, t_s: float) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(power_mw=1_234_567, temp_c=61, mem_temp_c=74, energy_mj=5_000_000, reasons=0x4),
        FakeGpu(power_mw=400_000, temp_c=55, mem_temp_c=None, energy_mj=None, util=100),
    ]


# -- open_nvml -----------------------------------------------------------------------------


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="this machine has an NVIDIA driver")
def test_open_nvml_without_driver_says_so_in_one_line() -> None:
    with pytest.raises(NoGpuError) as info:
        open_nvml()
    message = str(info.value)
    assert message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (LIB_NOT_FOUND, "libnvidia-ml.so not found"),
        (DRIVER_NOT_LOADED, "driver not loaded"),
        (999, "NVML init failed"),
    ],
)
def test_open_nvml_maps_init_errors(code: int, expected: str) -> None:
    with pytest.raises(NoGpuError, match=expected):
        open_nvml(FakeNvml(gpus=[], init_error=code))


def test_open_nvml_without_gpus_shuts_nvml_down() -> None:
    fake = FakeNvml(gpus=[])
    with pytest.raises(NoGpuError, match="no NVIDIA GPU"):
        open_nvml(fake)
    assert fake.shutdowns == 1


def test_open_nvml_lists_gpus() -> None:
    nvml = open_nvml(FakeNvml(gpus=two_gpus()))
    assert nvml.handles == [0, 1]
    assert nvml.names == ["NVIDIA Fake R200"] * 2
    assert nvml.driver == "999.1"


# -- frame building ------------------------------------------------------------------------


def test_frame_from_readings_converts_units_and_fills_memory_temperature() -> None:
    readings = [
        GpuReading(1_234_567, 9_000, 61.0, 74.0, 1980, 50.0, 0x4, 0, 1_800_000),
        GpuReading(400_000, 10, 55.0, None, 1500, 100.0, 0x0, 79, 1_000_000),
    ]
    batch = frame_from_readings("r07", 1_780_000_000_000, readings, gpu_offset=8)
    assert batch.schema.equals(GPU_SCHEMA)
    cols = batch.to_pydict()
    assert cols["rack"] == ["r07", "r07"]
    assert cols["gpu"] == [8, 9]
    assert_allclose(cols["power_w"], [1234.567, 400.0], rtol=1e-6)
    assert_allclose(cols["power_limit_w"], [1800.0, 1000.0])
    assert cols["energy_mj"] == [9_000, 10]
    assert_allclose(cols["temp_mem_c"], [74.0, 55.0])  # None -> GPU temperature
    assert cols["clock_event_reasons"] == [4, 0]
    assert cols["xid"] == [0, 79]
    ts = batch.column("ts").cast(pa.int64()).to_pylist()
    assert ts == [1_780_000_000_000] * 2


def test_frame_from_no_readings_is_an_error() -> None:
    with pytest.raises(GpuReadError, match="no GPU readings"):
        frame_from_readings("r01", 0, [])


readings_strategy = st.builds(
    GpuReading,
    power_mw=st.integers(0, 4_000_000),
    energy_mj=st.integers(0, 2**63),
    temp_gpu_c=st.integers(-10, 120).map(float),
    temp_mem_c=st.one_of(st.none(), st.integers(1, 120).map(float)),
    sm_clock_mhz=st.integers(0, 4000),
    util_pct=st.integers(0, 100).map(float),
    clock_event_reasons=st.integers(0, 2**16),
    xid=st.integers(0, 200),
    power_limit_mw=st.integers(100_000, 4_000_000),
    ecc_corrected=st.integers(0, 2**48),
    ecc_uncorrected=st.integers(0, 2**48),
    remapped_rows=st.integers(0, 65_535),
    row_remap_flags=st.integers(0, 3),
    nvlink_errors=st.integers(0, 2**48),
    thermal_margin_k=st.one_of(st.none(), st.integers(-50, 100).map(float)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(readings_strategy, min_size=1, max_size=72))
def test_frames_from_any_readings_pass_the_gpu_decoder(readings: list[GpuReading]) -> None:
    from streams.codec import encode_frame

    ts_ms = 1_780_000_000_000
    frame = decode_gpu_frame(
        encode_frame(frame_from_readings("rk", ts_ms, readings)), key=b"rk", now_ms=ts_ms
    )
    assert_array_equal(frame.gpu, np.arange(len(readings)))
    assert_allclose(frame.columns["power_w"], [r.power_mw / 1000 for r in readings], rtol=1e-6)
    assert np.isfinite(frame.columns["temp_mem_c"]).all()


# -- the collector -------------------------------------------------------------------------


def test_collector_reads_every_field_with_fallbacks() -> None:
    fake = FakeNvml(gpus=two_gpus(), event_reasons_api=False)
    clock = FakeClock(1_780_000_000.0)
    collector = NvmlCollector(open_nvml(fake), rack="r03", clock=clock)

    first = collector.read().to_pydict()
    assert_allclose(first["power_w"], [1234.567, 400.0], rtol=1e-6)
    assert_allclose(first["temp_gpu_c"], [61.0, 55.0])
    assert_allclose(first["temp_mem_c"], [74.0, 55.0])
    assert collector.mem_temp_fallback == [False, True]
    assert first["sm_clock_mhz"] == [1980, 1980]
    assert_allclose(first["util_pct"], [50.0, 100.0])
    assert first["clock_event_reasons"] == [4, 0]  # through the deprecated throttle call
    assert_allclose(first["power_limit_w"], [1800.0, 1800.0])
    assert first["energy_mj"] == [5_000_000, 0]  # GPU 1 integrates from its first sample
    assert collector.energy_integrated == [False, True]

    fake.events.append((1, 79))  # XID 79: GPU has fallen off the bus
    clock.t_s += 0.5
    second = collector.read().to_pydict()
    assert second["energy_mj"] == [5_000_000, 200_000]  # 400 W x 0.5 s = 200 J
    assert second["xid"] == [0, 79]
    assert second["ts"][0].timestamp() == pytest.approx(1_780_000_000.5)

    clock.t_s += 0.5
    assert collector.read().to_pydict()["xid"] == [0, 79]  # sticky, like DCGM
    collector.close()
    assert fake.shutdowns == 1


def test_collector_without_xid_support_reports_zero() -> None:
    fake = FakeNvml(gpus=two_gpus(), xid_supported=False)
    fake.events.append((0, 48))
    collector = NvmlCollector(open_nvml(fake), rack="r03", clock=FakeClock(1.0))
    assert collector.read().to_pydict()["xid"] == [0, 0]


def test_collector_names_the_gpu_that_fails() -> None:
    gpus = two_gpus()
    gpus[1].broken = True
    collector = NvmlCollector(open_nvml(FakeNvml(gpus=gpus)), rack="r09", clock=FakeClock(1.0))
    with pytest.raises(GpuReadError, match=r"rack r09 GPU 1 .*power"):
        collector.read()


# -- the loop ------------------------------------------------------------------------------


async def test_collect_loop_publishes_decodable_frames_until_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpus = two_gpus()
    clock = FakeClock(1_780_000_000.0)
    collector = NvmlCollector(open_nvml(FakeNvml(gpus=gpus)), rack="r05", clock=clock)
    stop = asyncio.Event()
    sent: list[tuple[str, bytes]] = []

    async def publish(key: str, value: bytes) -> None:
        sent.append((key, value))
        clock.t_s += 1.0
        if len(sent) == 2:
            gpus[0].broken = True  # the samples until it heals fail and are skipped
            asyncio.get_running_loop().call_later(0.02, setattr, gpus[0], "broken", False)
        if len(sent) == 3:
            stop.set()

    with caplog.at_level("WARNING", logger="streams.collect_nvml"):
        count = await collect_loop(collector, publish, 0.005, stop)
    assert count == 3
    assert "sample skipped: rack r05 GPU 0" in caplog.text
    assert [k for k, _ in sent] == ["r05"] * 3
    for i, (key, value) in enumerate(sent):
        frame = decode_gpu_frame(value, key=key.encode(), now_ms=None)
        assert frame.ts_ms[0] == 1_780_000_000_000 + 1000 * i
        assert_allclose(frame.columns["power_w"], [1234.567, 400.0], rtol=1e-6)


async def test_collect_loop_refuses_a_zero_interval() -> None:
    collector = NvmlCollector(open_nvml(FakeNvml(gpus=two_gpus())), rack="r", clock=FakeClock(1))

    async def publish(key: str, value: bytes) -> None:
        pass

    with pytest.raises(ValueError, match="interval_s"):
        await collect_loop(collector, publish, 0.0, asyncio.Event())


# -- telemetry.gpu/v2 fields ---------------------------------------------------------------


def test_collector_reads_ecc_remaps_nvlink_and_margin() -> None:
    gpus = [
        FakeGpu(
            power_mw=1_000_000,
            temp_c=70,
            mem_temp_c=75,
            energy_mj=1,
            ecc=(12, 1),
            remap=(3, 1, 1, 0),
            nvlink_totals=(5, 6, 7, 8),
            slowdown_c=87,
        ),
        # per-link NVLink counters only, no threshold but a margin call
        FakeGpu(
            power_mw=1_000_000,
            temp_c=60,
            mem_temp_c=75,
            energy_mj=1,
            ecc=(0, 0),
            remap=(0, 0, 0, 1),
            nvlink_links={0: 2, 5: 1},
            margin_c=21,
        ),
        # nothing of v2 supported (an old GPU): defaults, margin to the reference 89 C
        FakeGpu(power_mw=300_000, temp_c=50, mem_temp_c=55, energy_mj=1),
    ]
    fake = FakeNvml(gpus=gpus)
    collector = NvmlCollector(open_nvml(fake), rack="r01", clock=FakeClock(1_780_000_000.0))
    cols = collector.read().to_pydict()
    assert cols["ecc_corrected"] == [12, 0, 0]
    assert cols["ecc_uncorrected"] == [1, 0, 0]
    assert cols["remapped_rows"] == [4, 0, 0]
    assert cols["row_remap_flags"] == [1, 2, 0]  # pending; failure occurred; none
    assert cols["nvlink_errors"] == [26, 4 * (2 + 1), 0]  # 4 counters per answering link
    assert cols["thermal_margin_k"] == [17.0, 21.0, 89.0 - 50.0]
    assert collector.slowdown_c == [87.0, None, None]
    # NotSupported answers are not asked again; the threshold is read once per GPU
    before = dict(fake.calls)
    collector.read()
    after = fake.calls
    assert after["threshold"] == before["threshold"] == 3
    assert after["ecc"] - before["ecc"] == 2 * 2  # GPUs 0 and 1, corrected + uncorrected
    assert after["remap"] - before["remap"] == 2
    assert after["nvlink link"] - before["nvlink link"] == 2 * 4  # GPU 1: its 2 links
    assert "ECC corrected" in collector.unsupported[2]


def test_sentinel_counts_read_zero_and_frames_decode() -> None:
    from streams.codec import encode_frame

    gpu = FakeGpu(
        power_mw=1_000_000,
        temp_c=70,
        mem_temp_c=75,
        energy_mj=1,
        ecc=(2**64 - 1, 3),
        nvlink_totals=(2**63, 0, 0, 0),
        remap=(70_000, 0, 0, 0),
    )
    collector = NvmlCollector(open_nvml(FakeNvml(gpus=[gpu])), rack="r", clock=FakeClock(1e9))
    batch = collector.read()
    cols = batch.to_pydict()
    assert cols["ecc_corrected"] == [0]
    assert cols["ecc_uncorrected"] == [3]
    assert cols["nvlink_errors"] == [0]
    assert cols["remapped_rows"] == [65_535]
    frame = decode_gpu_frame(encode_frame(batch), key=b"r", now_ms=None)
    assert frame.columns["ecc_uncorrected"].tolist() == [3]
