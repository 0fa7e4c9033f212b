"""Read the local NVIDIA GPUs through NVML (nvidia-ml-py) and build telemetry.gpu frames.

Units follow NVML (docs/sources.md S7): power and power limit in mW (converted to W in the
frame), energy in mJ since the driver loaded, temperatures in integer C, clocks in MHz,
utilisation in %. Where a GPU does not report a field, the collector substitutes the best
value it has instead of NaN (a NaN frame would be dead-lettered downstream):

- memory (HBM) temperature: ``NVML_FI_DEV_MEMORY_TEMP``; where the field is unsupported
  or reads 0, the GPU die temperature (the HBM stacks sit on the same package and read
  close to it); ``NvmlCollector.mem_temp_fallback`` says which GPUs use it;
- energy counter: ``nvmlDeviceGetTotalEnergyConsumption`` (Volta and newer); older GPUs
  get power integrated over the sample intervals since the collector started;
- clock-event reasons: ``nvmlDeviceGetCurrentClocksEventReasons``, else the deprecated
  ``...ThrottleReasons`` call of older drivers, else 0;
- XID: the last critical XID seen on that GPU since the collector started (sticky, like
  DCGM's ``DCGM_FI_DEV_XID_ERRORS``), 0 = none; 0 also where XID events are unsupported;
- ECC: ``nvmlDeviceGetTotalEccErrors`` corrected and uncorrected, volatile (since driver
  load); 0 where ECC is off or unsupported;
- remapped rows: ``nvmlDeviceGetRemappedRows`` (Ampere and newer): correctable plus
  uncorrectable remaps, and the pending / failure flags; 0 where unsupported;
- NVLink errors: CRC flit + CRC data + replay + recovery counters summed over every link,
  read as the ``NVML_FI_DEV_NVLINK_*_TOTAL`` fields in one call, else per link with
  ``nvmlDeviceGetNvLinkErrorCounter``; 0 on GPUs without NVLink;
- thermal margin: ``nvmlDeviceGetTemperatureThreshold(SLOWDOWN)`` (read once per GPU)
  minus the die temperature, else ``nvmlDeviceGetMarginTemperature``, else the margin to
  the reference 89 C (``streams.schema.DEFAULT_SLOWDOWN_C``).

Every optional call is guarded: a GPU answering NotSupported is not asked again, and a
count beyond the codec's bound (a driver's "not available" sentinel) reads 0.

The NVML module is a parameter (``open_nvml(nvml=...)``), so tests drive the collector
with a fake module object and no GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from streams.codec import DEFAULT_LIMITS, encode_frame, gpu_batch
from streams.schema import DEFAULT_SLOWDOWN_C, ROW_REMAP_FAILURE, ROW_REMAP_PENDING
from twin.errors import NoGpuError, TwinError
from twin.extras import MissingExtra, import_extra

log = logging.getLogger(__name__)

#: nvmlReturn_t codes (nvml.h), used to tell "no driver" from other failures.
_NVML_SUCCESS = 0
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_TIMEOUT = 10
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_ERROR_FUNCTION_NOT_FOUND = 13


class GpuReadError(TwinError):
    """A GPU stopped answering an NVML call that every datacenter GPU supports."""


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant, in NVML's own units."""

    power_mw: int  # board power [mW]
    energy_mj: int  # energy since driver load [mJ]
    temp_gpu_c: float  # GPU die temperature [C]
    temp_mem_c: float | None  # HBM temperature [C]; None where the GPU does not report it
    sm_clock_mhz: int  # SM clock [MHz]
    util_pct: float  # GPU utilisation [%]
    clock_event_reasons: int  # NVML clock-event (throttle) bitmask
    xid: int  # last critical XID, 0 = none
    power_limit_mw: int  # enforced power limit [mW]
    ecc_corrected: int = 0  # volatile corrected ECC errors [count]
    ecc_uncorrected: int = 0  # volatile uncorrected ECC errors [count]
    remapped_rows: int = 0  # HBM rows remapped, correctable + uncorrectable [count]
    row_remap_flags: int = 0  # 0x1 remap pending, 0x2 a remap failed
    nvlink_errors: int = 0  # NVLink CRC + replay + recovery errors, all links [count]
    thermal_margin_k: float | None = None  # slowdown temp - die temp [K]; None: unknown


def frame_from_readings(
    rack: str, ts_ms: int, readings: Sequence[GpuReading], gpu_offset: int = 0
) -> pa.RecordBatch:
    """telemetry.gpu record batch of one rack at ``ts_ms`` [ms since epoch, UTC].

    GPU ``i`` of ``readings`` gets index ``gpu_offset + i`` within the rack (a host with
    GPUs 8..15 of its rack passes ``gpu_offset=8``). A missing memory temperature takes
    the GPU temperature (module docstring).
    """
    if not readings:
        raise GpuReadError(f"rack {rack}: no GPU readings to build a frame from")
    n = len(readings)
    temp_gpu_c = np.array([r.temp_gpu_c for r in readings], dtype=np.float32)
    temp_mem = np.array(
        [np.nan if r.temp_mem_c is None else r.temp_mem_c for r in readings], dtype=np.float32
    )
    columns: dict[str, np.ndarray] = {
        "gpu": np.arange(gpu_offset, gpu_offset + n, dtype=np.uint16),
        "power_w": np.array([r.power_mw for r in readings], dtype=np.float64) / 1000.0,
        "energy_mj": np.array([r.energy_mj for r in readings], dtype=np.uint64),
        "temp_gpu_c": temp_gpu_c,
        "temp_mem_c": np.where(np.isnan(temp_mem), temp_gpu_c, temp_mem),
        "sm_clock_mhz": np.array([r.sm_clock_mhz for r in readings], dtype=np.uint16),
        "util_pct": np.array([r.util_pct for r in readings], dtype=np.float32),
        "clock_event_reasons": np.array([r.clock_event_reasons for r in readings], dtype=np.uint64),
        "xid": np.array([r.xid for r in readings], dtype=np.uint32),
        "power_limit_w": np.array([r.power_limit_mw for r in readings], dtype=np.float64) / 1000.0,
        "ecc_corrected": np.array([r.ecc_corrected for r in readings], dtype=np.uint64),
        "ecc_uncorrected": np.array([r.ecc_uncorrected for r in readings], dtype=np.uint64),
        "remapped_rows": np.array([r.remapped_rows for r in readings], dtype=np.uint32),
        "row_remap_flags": np.array([r.row_remap_flags for r in readings], dtype=np.uint8),
        "nvlink_errors": np.array([r.nvlink_errors for r in readings], dtype=np.uint64),
        "thermal_margin_k": np.array(
            [
                DEFAULT_SLOWDOWN_C - r.temp_gpu_c
                if r.thermal_margin_k is None
                else r.thermal_margin_k
                for r in readings
            ],
            dtype=np.float32,
        ),
    }
    return gpu_batch(ts_ms, rack, columns)


@dataclass
class Nvml:
    """An initialised NVML library and the handles of the local GPUs."""

    module: Any  # pynvml, or a fake with the same functions
    handles: list[Any]
    names: list[str]
    driver: str

    def close(self) -> None:
        """Shut NVML down (releases the driver's per-process state)."""
        with contextlib.suppress(Exception):
            self.module.nvmlShutdown()


def _nvml_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_nvml(module: ModuleType | Any | None = None) -> Nvml:
    """Initialise NVML and list the GPUs; NoGpuError with a one-line reason otherwise.

    ``module`` is pynvml (the default) or a stand-in with the same functions (tests).
    """
    nvml: Any = module
    if nvml is None:
        try:
            nvml = import_extra("pynvml", "nvml", "twin collect nvml")
        except MissingExtra as exc:
            raise NoGpuError(str(exc)) from None
    error = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error as exc:
        code = _nvml_code(exc)
        if code == _NVML_ERROR_LIBRARY_NOT_FOUND:
            reason = "no NVIDIA driver: libnvidia-ml.so not found"
        elif code == _NVML_ERROR_DRIVER_NOT_LOADED:
            reason = "NVIDIA driver not loaded"
        else:
            reason = f"NVML init failed: {exc}"
        raise NoGpuError(reason) from None
    try:
        count = int(nvml.nvmlDeviceGetCount())
        if count == 0:
            raise NoGpuError("NVML found no NVIDIA GPU on this machine")
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        names = [_text(nvml.nvmlDeviceGetName(h)) for h in handles]
        driver = _text(nvml.nvmlSystemGetDriverVersion())
    except error as exc:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
        raise NoGpuError(f"NVML could not list the GPUs: {exc}") from None
    except NoGpuError:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
        raise
    return Nvml(module=nvml, handles=handles, names=names, driver=driver)


def _field_number(value: Any) -> float:
    """The number in an nvmlFieldValue_t, read through its valueType (nvml.h order)."""
    members = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
    kind = int(value.valueType)
    return float(getattr(value.value, members[kind] if 0 <= kind < len(members) else "uiVal"))


class NvmlCollector:
    """Samples every local GPU into one telemetry.gpu frame per call of ``read()``.

    ``clock`` gives the sample time [s since epoch]; tests pass a fake one.
    """

    def __init__(
        self,
        nvml: Nvml,
        rack: str,
        *,
        gpu_offset: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nvml = nvml
        self.rack = rack
        self.gpu_offset = gpu_offset
        self.clock = clock
        n = len(nvml.handles)
        #: True for GPUs whose memory temperature is their GPU temperature (no HBM sensor).
        self.mem_temp_fallback = [False] * n
        #: True for GPUs whose energy is integrated power (no NVML energy counter).
        self.energy_integrated = [False] * n
        self._energy_mj = [0.0] * n
        self._last_xid = [0] * n
        #: Optional readings a GPU answered NotSupported to, by name: not asked again.
        self.unsupported: list[set[str]] = [set() for _ in range(n)]
        #: Slowdown temperature [C] per GPU, read once (None: not read yet or unsupported).
        self.slowdown_c: list[float | None] = [None] * n
        self._nvlink_links: list[list[int] | None] = [None] * n  # links that answer
        self._last_sample_s: float | None = None
        self._error: type[BaseException] = getattr(nvml.module, "NVMLError", Exception)
        self._events = self._register_xid_events()

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Free the XID event set and shut NVML down."""
        if self._events is not None:
            with contextlib.suppress(Exception):
                self.nvml.module.nvmlEventSetFree(self._events)
            self._events = None
        self.nvml.close()

    def __enter__(self) -> NvmlCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sampling -------------------------------------------------------------------------
    def read(self) -> pa.RecordBatch:
        """Sample every GPU now; one record batch in GPU_SCHEMA for this collector's rack."""
        now_s = self.clock()
        dt_s = 0.0 if self._last_sample_s is None else max(0.0, now_s - self._last_sample_s)
        self._last_sample_s = now_s
        self._poll_xid()
        readings = [self._read_gpu(i, h, dt_s) for i, h in enumerate(self.nvml.handles)]
        return frame_from_readings(self.rack, round(now_s * 1000), readings, self.gpu_offset)

    def _read_gpu(self, i: int, handle: Any, dt_s: float) -> GpuReading:
        m = self.nvml.module
        power_mw = int(self._essential(i, "power", m.nvmlDeviceGetPowerUsage, handle))
        temp_c = float(self._essential(i, "temperature", m.nvmlDeviceGetTemperature, handle, 0))
        corr, unc, pending, failed = self._remapped_rows(i, handle)
        return GpuReading(
            power_mw=power_mw,
            energy_mj=self._energy(i, handle, power_mw, dt_s),
            temp_gpu_c=temp_c,
            temp_mem_c=self._mem_temp(i, handle),
            sm_clock_mhz=int(
                self._essential(i, "SM clock", m.nvmlDeviceGetClockInfo, handle, m.NVML_CLOCK_SM)
            ),
            util_pct=float(
                self._essential(i, "utilisation", m.nvmlDeviceGetUtilizationRates, handle).gpu
            ),
            clock_event_reasons=self._clock_event_reasons(handle),
            xid=self._last_xid[i],
            power_limit_mw=int(
                self._essential(i, "power limit", m.nvmlDeviceGetEnforcedPowerLimit, handle)
            ),
            ecc_corrected=self._ecc(i, handle, corrected=True),
            ecc_uncorrected=self._ecc(i, handle, corrected=False),
            remapped_rows=min(corr + unc, DEFAULT_LIMITS.max_remapped_rows),
            row_remap_flags=(ROW_REMAP_PENDING if pending else 0)
            | (ROW_REMAP_FAILURE if failed else 0),
            nvlink_errors=self._nvlink_errors(i, handle),
            thermal_margin_k=self._thermal_margin(i, handle, temp_c),
        )

    # -- optional readings: guarded, NotSupported once means never asked again ----------
    def _optional(self, i: int, what: str, fn: Callable[..., Any] | None, *args: Any) -> Any:
        """fn(*args), or None where the GPU (or the bindings) do not support it."""
        if fn is None or what in self.unsupported[i]:
            return None
        try:
            return fn(*args)
        except self._error as exc:
            code = _nvml_code(exc)
            if code in (_NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_FUNCTION_NOT_FOUND):
                self.unsupported[i].add(what)
                log.info("GPU %d: %s not supported; reads as a default", i, what)
            return None

    def _count(self, value: Any) -> int:
        """An NVML counter as an int; a value beyond the codec's bound (a driver's
        "not available" sentinel) or below 0 reads 0."""
        n = int(value)
        return n if 0 <= n <= DEFAULT_LIMITS.max_error_count else 0

    def _ecc(self, i: int, handle: Any, *, corrected: bool) -> int:
        m = self.nvml.module
        kind = 0 if corrected else 1  # NVML_MEMORY_ERROR_TYPE_CORRECTED / _UNCORRECTED
        what = "ECC corrected" if corrected else "ECC uncorrected"
        fn = getattr(m, "nvmlDeviceGetTotalEccErrors", None)
        got = self._optional(i, what, fn, handle, kind, 0)  # 0: NVML_VOLATILE_ECC
        return 0 if got is None else self._count(got)

    def _remapped_rows(self, i: int, handle: Any) -> tuple[int, int, int, int]:
        fn = getattr(self.nvml.module, "nvmlDeviceGetRemappedRows", None)
        got = self._optional(i, "remapped rows", fn, handle)
        if got is None:
            return 0, 0, 0, 0
        corr, unc, pending, failed = (int(x) for x in got)
        return max(corr, 0), max(unc, 0), pending, failed

    def _nvlink_errors(self, i: int, handle: Any) -> int:
        m = self.nvml.module
        fields = [
            getattr(m, name, None)
            for name in (
                "NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
                "NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
                "NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
                "NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
            )
        ]
        ids = [f for f in fields if f is not None]
        if ids and "NVLink fields" not in self.unsupported[i]:
            got = self._optional(
                i, "NVLink fields", getattr(m, "nvmlDeviceGetFieldValues", None), handle, ids
            )
            if got is not None:
                ok = [v for v in got if int(v.nvmlReturn) == _NVML_SUCCESS]
                if ok:
                    return self._count(sum(int(_field_number(v)) for v in ok))
                self.unsupported[i].add("NVLink fields")
        return self._nvlink_per_link(i, handle)

    def _nvlink_per_link(self, i: int, handle: Any) -> int:
        m = self.nvml.module
        fn = getattr(m, "nvmlDeviceGetNvLinkErrorCounter", None)
        if fn is None or "NVLink counters" in self.unsupported[i]:
            return 0
        counters = (0, 1, 2, 3)  # NVML_NVLINK_ERROR_DL_REPLAY, _RECOVERY, _CRC_FLIT, _CRC_DATA
        links = self._nvlink_links[i]
        if links is None:  # first read: find the links that answer, then ask only those
            links = []
            for link in range(int(getattr(m, "NVML_NVLINK_MAX_LINKS", 18))):
                try:
                    fn(handle, link, counters[0])
                except self._error:
                    continue
                links.append(link)
            self._nvlink_links[i] = links
            if not links:
                self.unsupported[i].add("NVLink counters")
                return 0
        total = 0
        for link in links:
            for c in counters:
                try:
                    total += int(fn(handle, link, c))
                except self._error:
                    continue
        return self._count(total)

    def _thermal_margin(self, i: int, handle: Any, temp_c: float) -> float | None:
        m = self.nvml.module
        if self.slowdown_c[i] is None:
            slow = self._optional(
                i,
                "slowdown threshold",
                getattr(m, "nvmlDeviceGetTemperatureThreshold", None),
                handle,
                1,  # NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
            )
            # a threshold of 0 C is a GPU that does not report one
            self.slowdown_c[i] = float(slow) if slow is not None and float(slow) > 0 else None
        slowdown = self.slowdown_c[i]
        if slowdown is not None:
            return slowdown - temp_c
        margin = self._optional(
            i, "margin temperature", getattr(m, "nvmlDeviceGetMarginTemperature", None), handle
        )
        return None if margin is None else float(margin)

    def _essential(self, i: int, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._error as exc:
            raise GpuReadError(
                f"rack {self.rack} GPU {i} ({self.nvml.names[i]}): reading {what} failed: {exc}"
            ) from None

    def _energy(self, i: int, handle: Any, power_mw: int, dt_s: float) -> int:
        if not self.energy_integrated[i]:
            try:
                return int(self.nvml.module.nvmlDeviceGetTotalEnergyConsumption(handle))
            except self._error:
                self.energy_integrated[i] = True
                log.info("GPU %d has no energy counter; integrating power instead", i)
        self._energy_mj[i] += power_mw * dt_s  # [mW] x [s] = [mJ]
        return int(self._energy_mj[i])

    def _mem_temp(self, i: int, handle: Any) -> float | None:
        m = self.nvml.module
        field = getattr(m, "NVML_FI_DEV_MEMORY_TEMP", None)
        value: float | None = None
        if field is not None:
            try:
                got = m.nvmlDeviceGetFieldValues(handle, [field])[0]
                if int(got.nvmlReturn) == _NVML_SUCCESS:
                    value = _field_number(got)
            except self._error:
                value = None
        # GPUs without an HBM sensor answer 0 C rather than an error.
        if value is not None and value <= 0.0:
            value = None
        if (value is None) != self.mem_temp_fallback[i]:
            self.mem_temp_fallback[i] = value is None
            if value is None:
                log.info("GPU %d reports no memory temperature; using its GPU temperature", i)
        return value

    def _clock_event_reasons(self, handle: Any) -> int:
        m = self.nvml.module
        for name in (
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",  # deprecated name, older drivers
        ):
            fn = getattr(m, name, None)
            if fn is None:
                continue
            try:
                return int(fn(handle))
            except self._error:
                continue
        return 0

    # -- XID events -----------------------------------------------------------------------
    def _register_xid_events(self) -> Any:
        m = self.nvml.module
        try:
            events = m.nvmlEventSetCreate()
        except self._error as exc:
            log.info("no NVML event set (%s); XID will read 0", exc)
            return None
        registered = 0
        for i, handle in enumerate(self.nvml.handles):
            try:
                m.nvmlDeviceRegisterEvents(handle, m.nvmlEventTypeXidCriticalError, events)
                registered += 1
            except self._error as exc:
                log.info("GPU %d: XID events unavailable (%s)", i, exc)
        if registered == 0:
            with contextlib.suppress(Exception):
                m.nvmlEventSetFree(events)
            return None
        return events

    def _poll_xid(self, max_events: int = 256) -> None:
        if self._events is None:
            return
        m = self.nvml.module
        for _ in range(max_events):
            try:
                data = m.nvmlEventSetWait(self._events, 0)
            except self._error as exc:
                if _nvml_code(exc) != _NVML_ERROR_TIMEOUT:
                    log.warning("NVML event wait failed: %s", exc)
                return
            if not int(data.eventType) & int(m.nvmlEventTypeXidCriticalError):
                continue
            try:
                index = int(m.nvmlDeviceGetIndex(data.device))
            except self._error:
                continue
            if 0 <= index < len(self._last_xid):
                self._last_xid[index] = int(data.eventData)
                log.warning("rack %s GPU %d: XID %d", self.rack, index, int(data.eventData))


class FrameSource(Protocol):
    """What collect_loop needs: a rack id (the message key) and a read() giving a frame."""

    rack: str

    def read(self) -> pa.RecordBatch:
        """One telemetry.gpu record batch sampled now."""
        ...


async def collect_loop(
    collector: FrameSource,
    publish: Callable[[str, bytes], Awaitable[None]],
    interval_s: float,
    stop: asyncio.Event,
) -> int:
    """Read a frame every ``interval_s`` [s] and ``publish(rack, arrow_ipc_bytes)`` it.

    Runs until ``stop`` is set; returns the number of frames published. A sample whose read
    fails with GpuReadError is logged and skipped, so one flaky GPU does not stop the host.
    The schedule is fixed-rate; after a stall it resumes from now instead of bursting.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    loop = asyncio.get_running_loop()
    next_s = loop.time()
    published = 0
    while not stop.is_set():
        try:
            # NVML calls block; keep the event loop (and the producer) responsive.
            batch = await asyncio.to_thread(collector.read)
        except GpuReadError as exc:
            log.warning("sample skipped: %s", exc)
        else:
            await publish(collector.rack, encode_frame(batch))
            published += 1
        next_s = max(next_s + interval_s, loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=next_s - loop.time())
    return published
