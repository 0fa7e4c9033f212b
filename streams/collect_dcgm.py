"""Scrape a dcgm-exporter endpoint and build telemetry.gpu frames from its ``DCGM_FI_*`` fields.

dcgm-exporter (NVIDIA, one per GPU node, port 9400) serves the Prometheus text exposition
format: one sample per GPU and field, labelled ``gpu`` (the device index on that node),
``UUID``, ``device``, ``modelName``, ``Hostname`` and ``DCGM_FI_DRIVER_VERSION``.
:data:`DCGM_FIELDS` is the one mapping of those fields to the frame's columns: the code
below reads it, and docs/collectors.md shows it (a test renders it with
:func:`mapping_markdown` and compares, so the two cannot drift).

Units are DCGM's (docs/sources.md S7): power and power limits in W (NVML's mW already
divided), energy in mJ since the driver loaded, temperatures in C, clocks in MHz,
utilisation in %, the thermal margin ``DCGM_FI_DEV_GPU_TEMP_LIMIT`` in K to the nearest
slowdown threshold.

Every value is untrusted: one that is not finite, not an integer where the column is one,
or outside the range the decoder accepts (streams/codec.py ``Limits``) is treated as not
exported. A GPU then gets the column's default (:data:`COLUMN_DEFAULTS`), or is left out of
the frame where the column is required (:data:`REQUIRED_COLUMNS`); the rest of the rack's
GPUs still go out (the worker merges partial frames by GPU index). Each frame passes the
same decoder the worker runs before it is sent. A scrape that fails (timeout, refused
connection, HTTP error, oversized or unparsable body) is counted by cause and logged once
per cause, then at most once a minute per cause; it never ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from streams.codec import DEFAULT_LIMITS, Limits, decode_gpu_frame, encode_frame, gpu_batch
from streams.schema import DEFAULT_SLOWDOWN_C, GPU_SCHEMA, ROW_REMAP_FAILURE, ROW_REMAP_PENDING
from twin.errors import DecodeError

log = logging.getLogger(__name__)


class DcgmField(NamedTuple):
    """One dcgm-exporter field and the telemetry.gpu column it feeds."""

    field: str  # dcgm-exporter metric name (the DCGM field name)
    column: str  # telemetry.gpu column
    unit: str  # unit of the exported value
    scale: float  # column value = exported value x scale
    #: "first": the first field of the column (in table order) that a GPU exports wins
    #: (names of one quantity across DCGM versions); "sum": the exported fields are added.
    combine: str


#: The mapping, in one place (module docstring). Order matters for "first" columns.
DCGM_FIELDS: Final[tuple[DcgmField, ...]] = (
    DcgmField("DCGM_FI_DEV_POWER_USAGE", "power_w", "W", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "energy_mj", "mJ", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_GPU_TEMP", "temp_gpu_c", "C", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_MEMORY_TEMP", "temp_mem_c", "C", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_SM_CLOCK", "sm_clock_mhz", "MHz", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_GPU_UTIL", "util_pct", "%", 1.0, "first"),
    # DCGM 3.3 renamed the throttle reasons to clock-event reasons (same bits as NVML)
    DcgmField("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "clock_event_reasons", "bitmask", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "clock_event_reasons", "bitmask", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_XID_ERRORS", "xid", "XID", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "power_limit_w", "W", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_POWER_MGMT_LIMIT", "power_limit_w", "W", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "ecc_corrected", "count", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "ecc_uncorrected", "count", 1.0, "first"),
    DcgmField("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "remapped_rows", "count", 1.0, "sum"),
    DcgmField("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "remapped_rows", "count", 1.0, "sum"),
    DcgmField("DCGM_FI_DEV_ROW_REMAP_PENDING", "row_remap_flags", "0/1", ROW_REMAP_PENDING, "sum"),
    DcgmField("DCGM_FI_DEV_ROW_REMAP_FAILURE", "row_remap_flags", "0/1", ROW_REMAP_FAILURE, "sum"),
    DcgmField(
        "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "nvlink_errors", "count", 1.0, "sum"
    ),
    DcgmField(
        "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", "nvlink_errors", "count", 1.0, "sum"
    ),
    DcgmField("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "nvlink_errors", "count", 1.0, "sum"),
    DcgmField(
        "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "nvlink_errors", "count", 1.0, "sum"
    ),
    DcgmField("DCGM_FI_DEV_GPU_TEMP_LIMIT", "thermal_margin_k", "K", 1.0, "first"),
)

#: Columns a GPU must export (valid): without one of them the GPU is left out of the frame.
REQUIRED_COLUMNS: Final = ("power_w", "temp_gpu_c", "sm_clock_mhz", "util_pct")

#: What a GPU that does not export a column (or exports garbage) gets, as docs say it.
COLUMN_DEFAULTS: Final[tuple[tuple[str, str], ...]] = (
    ("energy_mj", "the last counter value read plus power integrated since (from 0)"),
    ("temp_mem_c", "`temp_gpu_c` (also where it reads 0 C: no HBM sensor)"),
    ("clock_event_reasons", "0"),
    ("xid", "0 (none)"),
    ("power_limit_w", "`power_w`"),
    ("ecc_corrected", "0"),
    ("ecc_uncorrected", "0"),
    ("remapped_rows", "0"),
    ("row_remap_flags", "0"),
    ("nvlink_errors", "0"),
    ("thermal_margin_k", f"{DEFAULT_SLOWDOWN_C:g} C - `temp_gpu_c`"),
)

#: Scrape failure causes: the fixed set of ``failures`` keys (bounded labels).
SCRAPE_FAILURES: Final = (
    "timeout",  # no complete answer within --timeout
    "connection",  # refused, reset, DNS: no HTTP answer at all
    "http_status",  # an answer other than 200
    "too_large",  # a body beyond max_bytes
    "garbage",  # not UTF-8 or not the Prometheus text format
    "no_gpus",  # parsed, but no GPU exported every required column
    "invalid_frame",  # the decoder refused the frame built (should not happen)
)

_FIELD_INDEX: Final = {f.field: i for i, f in enumerate(DCGM_FIELDS)}
_COLUMNS: Final = tuple(dict.fromkeys(f.column for f in DCGM_FIELDS))
_FLOAT_RANGES: Final = {
    "power_w": "power_w",
    "power_limit_w": "power_w",
    "temp_gpu_c": "temp_c",
    "temp_mem_c": "temp_c",
    "util_pct": "util_pct",
    "thermal_margin_k": "thermal_margin_k",
}


def _int_top(column: str, limits: Limits) -> float:
    """Largest valid value of an integer column: the codec's bound, else its type's."""
    bounds = {
        "ecc_corrected": limits.max_error_count,
        "ecc_uncorrected": limits.max_error_count,
        "nvlink_errors": limits.max_error_count,
        "remapped_rows": limits.max_remapped_rows,
        "row_remap_flags": ROW_REMAP_PENDING | ROW_REMAP_FAILURE,
    }
    if column in bounds:
        return float(bounds[column])
    # at most 2^53: every integer up to it is exact in float64, so the cast cannot overflow
    return float(min(np.iinfo(GPU_SCHEMA.field(column).type.to_pandas_dtype()).max, 1 << 53))


def mapping_markdown() -> str:
    """docs/collectors.md's table of :data:`DCGM_FIELDS` and the defaults (one source)."""
    lines = [
        "| DCGM field | frame column | unit | scale | several fields |",
        "|---|---|---|---|---|",
    ]
    for f in DCGM_FIELDS:
        combine = "first exported wins" if f.combine == "first" else "summed"
        lines.append(f"| `{f.field}` | `{f.column}` | {f.unit} | {f.scale:g} | {combine} |")
    lines += [
        "",
        "| column not exported (or invalid) | value |",
        "|---|---|",
    ]
    lines += [f"| `{c}` | GPU left out of the frame (required) |" for c in REQUIRED_COLUMNS]
    lines += [f"| `{c}` | {text} |" for c, text in COLUMN_DEFAULTS]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DcgmSamples:
    """One scrape, parsed: ``values[field, i]`` is DCGM_FIELDS[field] of GPU ``gpus[i]``
    (the exporter's ``gpu`` label) in the exported unit; NaN where not exported."""

    gpus: np.ndarray  # int64, sorted exporter gpu labels
    values: np.ndarray  # float64 (len(DCGM_FIELDS), len(gpus))
    duplicates: int = 0  # samples of a (gpu, field) seen before (MIG instances): ignored
    bad_labels: int = 0  # mapped samples whose gpu label is not an index: ignored


def parse_exposition(text: str, *, max_gpu: int = DEFAULT_LIMITS.max_gpus_per_frame) -> DcgmSamples:
    """The mapped fields of a dcgm-exporter page; ValueError where it is not the format.

    Only samples whose name is a field of :data:`DCGM_FIELDS` and that carry a ``gpu``
    label (a decimal index below ``max_gpu``) are kept; NVSwitch, CPU and unknown fields
    are skipped. The parser reads every sample (Python objects): a page is a few hundred.
    """
    rows: list[int] = []
    labels: list[int] = []
    vals: list[float] = []
    bad_labels = 0
    for family in text_string_to_metric_families(text):
        i = _FIELD_INDEX.get(family.name)
        if i is None:
            continue
        # prometheus_client names a counter's samples <name>_total
        names = (family.name, family.name + "_total")
        for sample in family.samples:
            if sample.name not in names:
                continue
            gpu = sample.labels.get("gpu", "")
            if not (gpu.isascii() and gpu.isdigit() and int(gpu) < max_gpu):
                bad_labels += 1
                continue
            rows.append(i)
            labels.append(int(gpu))
            vals.append(float(sample.value))
    gpus, col = np.unique(np.array(labels, dtype=np.int64), return_inverse=True)
    values = np.full((len(DCGM_FIELDS), gpus.size), np.nan)
    row = np.array(rows, dtype=np.intp)
    # the first sample of each (field, gpu) counts; later ones (MIG instances) are ignored
    _, first = np.unique(row * max(gpus.size, 1) + col, return_index=True)
    values[row[first], col[first]] = np.array(vals, dtype=np.float64)[first]
    duplicates = int(row.size - first.size)
    return DcgmSamples(gpus=gpus, values=values, duplicates=duplicates, bad_labels=bad_labels)


def _valid(column: str, x: np.ndarray, limits: Limits) -> np.ndarray:
    """Mask of values (of any GPU) a frame may hold in ``column``."""
    with np.errstate(invalid="ignore"):
        if column in _FLOAT_RANGES:
            lo, hi = getattr(limits, _FLOAT_RANGES[column])
            return (x >= lo) & (x <= hi)
        return (x >= 0) & (x <= _int_top(column, limits)) & (np.floor(x) == x)


def map_columns(samples: DcgmSamples, limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Frame columns of every scraped GPU (float64; NaN = not exported or invalid).

    Applies each field's scale and combination rule and the column's validity (module
    docstring); defaults are not filled here.
    """
    v = samples.values
    out: dict[str, np.ndarray] = {}
    for column in _COLUMNS:
        idx = [i for i, f in enumerate(DCGM_FIELDS) if f.column == column]
        scaled = v[idx] * np.array([DCGM_FIELDS[i].scale for i in idx])[:, None]
        flags = np.array([DCGM_FIELDS[i].unit == "0/1" for i in idx])
        if flags.any():  # a boolean field is 0 or 1; anything else is garbage
            bad = flags[:, None] & ~np.isin(v[idx], (0.0, 1.0))
            scaled = np.where(bad & ~np.isnan(v[idx]), np.inf, scaled)
        present = ~np.isnan(scaled)
        if DCGM_FIELDS[idx[0]].combine == "sum":
            total = np.where(present, scaled, 0.0).sum(axis=0)
            x = np.where(present.any(axis=0), total, np.nan)
        else:  # the first exported field, in table order
            first = np.argmax(present, axis=0)
            x = scaled[first, np.arange(scaled.shape[1])]
        out[column] = np.where(_valid(column, x, limits), x, np.nan)
    return out


@dataclass
class DcgmFrameBuilder:
    """Builds one rack's telemetry.gpu batches from scrapes, filling defaults.

    Keeps per exporter GPU the last energy counter and its time, so that a GPU without
    ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` gets power integrated over the scrapes.
    """

    rack: str
    gpu_offset: int = 0
    limits: Limits = DEFAULT_LIMITS
    _energy_mj: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _energy_ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: GPUs left out of frames so far for a missing or invalid required column.
    skipped_gpus: int = 0

    def build(self, samples: DcgmSamples, ts_ms: int) -> dict[str, np.ndarray] | None:
        """Frame columns (``gpu`` included) at ``ts_ms``; None when no GPU is complete."""
        cols = map_columns(samples, self.limits)
        ok = np.ones(samples.gpus.size, dtype=bool)
        for c in REQUIRED_COLUMNS:
            ok &= ~np.isnan(cols[c])
        self.skipped_gpus += int((~ok).sum())
        if not ok.any():
            return None
        cols = {c: x[ok] for c, x in cols.items()}
        gpus = samples.gpus[ok]
        power, temp = cols["power_w"], cols["temp_gpu_c"]
        mem = cols["temp_mem_c"]
        cols["temp_mem_c"] = np.where(np.isnan(mem) | (mem <= 0.0), temp, mem)
        limit = cols["power_limit_w"]
        cols["power_limit_w"] = np.where(np.isnan(limit), power, limit)
        margin = cols["thermal_margin_k"]
        cols["thermal_margin_k"] = np.where(np.isnan(margin), DEFAULT_SLOWDOWN_C - temp, margin)
        cols["energy_mj"] = self._energy(gpus, cols["energy_mj"], power, ts_ms)
        for c in _COLUMNS:
            if c not in REQUIRED_COLUMNS:
                cols[c] = np.nan_to_num(cols[c], nan=0.0)
        cols["gpu"] = gpus + self.gpu_offset
        return cols

    def _energy(
        self, gpus: np.ndarray, energy_mj: np.ndarray, power_w: np.ndarray, ts_ms: int
    ) -> np.ndarray:
        n = int(gpus.max()) + 1
        if n > self._energy_mj.size:
            grow = n - self._energy_mj.size
            self._energy_mj = np.concatenate([self._energy_mj, np.zeros(grow)])
            self._energy_ts_ms = np.concatenate(
                [self._energy_ts_ms, np.full(grow, ts_ms, dtype=np.int64)]
            )
        dt_s = np.maximum(ts_ms - self._energy_ts_ms[gpus], 0) / 1000.0
        integrated = self._energy_mj[gpus] + power_w * dt_s * 1000.0  # [W] x [s] = [J] -> mJ
        out = np.where(np.isnan(energy_mj), np.floor(integrated), energy_mj)
        out = np.minimum(out, _int_top("energy_mj", self.limits))
        self._energy_mj[gpus] = out
        self._energy_ts_ms[gpus] = ts_ms
        return out


class ScrapeError(Exception):
    """A scrape that gave no frame; ``cause`` is one of :data:`SCRAPE_FAILURES`."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail


class FailureLog:
    """Counts failures by cause; logs a cause the first time, then at most every
    ``every_s`` [s] with the count since, and once when scrapes work again."""

    def __init__(
        self, what: str, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        self.what = what
        self.every_s = every_s
        self.clock = clock
        self.counts: dict[str, int] = dict.fromkeys(SCRAPE_FAILURES, 0)
        self._logged_at: dict[str, float] = {}
        self._since: dict[str, int] = {}
        self._failing = False

    def failed(self, cause: str, detail: str) -> None:
        """Count one failure; log it when its cause is new or last logged ``every_s`` ago."""
        self.counts[cause] = self.counts.get(cause, 0) + 1
        self._since[cause] = self._since.get(cause, 0) + 1
        self._failing = True
        now = self.clock()
        last = self._logged_at.get(cause)
        if last is None or now - last >= self.every_s:
            log.warning(
                "%s: %s (%d time(s) since last report, %d in all); retrying",
                self.what,
                detail,
                self._since[cause],
                self.counts[cause],
            )
            self._logged_at[cause] = now
            self._since[cause] = 0

    def ok(self) -> None:
        """A scrape worked: say so once after failures."""
        if self._failing:
            log.warning("%s: scraping works again", self.what)
            self._failing = False


class DcgmScraper:
    """Scrapes one dcgm-exporter ``url`` into validated telemetry.gpu messages of ``rack``.

    Use as ``async with DcgmScraper(...) as s: data = await s.read()``. ``clock`` gives the
    sample time [s since epoch] (tests pass a fake one). ``failures`` counts failed scrapes
    by cause.
    """

    def __init__(
        self,
        url: str,
        rack: str,
        *,
        gpu_offset: int = 0,
        timeout_s: float = 2.0,
        max_bytes: int = 8 << 20,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        log_every_s: float = 60.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.rack = rack
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.limits = limits
        self.clock = clock
        self.builder = DcgmFrameBuilder(rack, gpu_offset, limits)
        self.log = FailureLog(f"dcgm-exporter {url} (rack {rack})", every_s=log_every_s)
        self.scrapes_ok = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def failures(self) -> dict[str, int]:
        """Failed scrapes by cause (:data:`SCRAPE_FAILURES`)."""
        return self.log.counts

    async def __aenter__(self) -> DcgmScraper:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"Accept": "text/plain"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self) -> str:
        """The page's text; ScrapeError with the cause otherwise."""
        if self._session is None:
            raise RuntimeError("DcgmScraper used outside 'async with'")
        body = bytearray()
        try:
            async with self._session.get(self.url) as resp:
                if resp.status != 200:
                    raise ScrapeError("http_status", f"HTTP {resp.status} {resp.reason}")
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise ScrapeError("too_large", f"body over {self.max_bytes} bytes")
        except TimeoutError:
            raise ScrapeError("timeout", f"no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise ScrapeError("connection", f"{type(exc).__name__}: {exc}") from None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScrapeError("garbage", f"body is not UTF-8: {exc}") from None

    async def read(self) -> bytes | None:
        """Scrape once: one validated telemetry.gpu message, or None (failure counted)."""
        try:
            data = self._frame(await self.fetch())
        except ScrapeError as exc:
            self.log.failed(exc.cause, exc.detail)
            return None
        except Exception as exc:  # a page no rule above foresaw must not end the collector
            self.log.failed("invalid_frame", f"{type(exc).__name__}: {exc}")
            return None
        self.scrapes_ok += 1
        self.log.ok()
        return data

    def _frame(self, text: str) -> bytes:
        ts_ms = round(self.clock() * 1000)
        try:
            samples = parse_exposition(text, max_gpu=self.limits.max_gpus_per_frame)
        except Exception as exc:  # a third-party parser on untrusted text: any error
            raise ScrapeError("garbage", f"not the Prometheus text format: {exc}") from None
        cols = self.builder.build(samples, ts_ms)
        if cols is None:
            raise ScrapeError(
                "no_gpus",
                f"{samples.gpus.size} GPU(s) seen, none exporting every one of "
                f"{', '.join(_fields_of(REQUIRED_COLUMNS))} with a valid value",
            )
        data = encode_frame(gpu_batch(ts_ms, self.rack, cols))
        try:  # the worker's own checks: a frame that would be dead-lettered is not sent
            decode_gpu_frame(data, key=self.rack.encode(), now_ms=ts_ms, limits=self.limits)
        except DecodeError as exc:
            raise ScrapeError("invalid_frame", f"{exc.code}: {exc.reason}") from None
        return data


def _fields_of(columns: Iterable[str]) -> list[str]:
    return [f.field for f in DCGM_FIELDS if f.column in columns]


async def collect_dcgm(
    scraper: DcgmScraper,
    publish: Callable[[str, bytes], Awaitable[None]],
    interval_s: float,
    stop: asyncio.Event,
) -> int:
    """Scrape every ``interval_s`` [s] and ``publish(rack, arrow_ipc_bytes)`` each frame.

    Runs until ``stop`` is set; returns the number of frames published. Failed scrapes are
    counted and logged by the scraper and never end the loop. Fixed-rate schedule; after a
    stall (a slow scrape) it resumes from now instead of bursting.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    loop = asyncio.get_running_loop()
    next_s = loop.time()
    published = 0
    while not stop.is_set():
        data = await scraper.read()
        if data is not None:
            await publish(scraper.rack, data)
            published += 1
        next_s = max(next_s + interval_s, loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=next_s - loop.time())
    return published
