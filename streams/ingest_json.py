"""Convert JSON single readings (telemetry.ingest) into Arrow frames, once, at the edge.

Tools that cannot write Arrow (Telegraf, a BMS gateway, a shell script) publish readings as
JSON objects, or JSON arrays of them:

    {"kind": "gpu", "rack": "R0001", "gpu": 3, "ts": "2026-11-28T12:00:00Z",
     "power_w": 1420.5, "energy_mj": 123456789, "temp_gpu_c": 61, "temp_mem_c": 70,
     "sm_clock_mhz": 1980, "util_pct": 97}
    {"kind": "thermal", "unit": "CDU01", "point": "supply_temp_c", "value": 45.1,
     "ts": 1764331200000}

Readings of one rack (or unit) at one instant become one frame, so the rest of the pipeline
sees exactly what a native Arrow source would have sent. Every frame made here then goes
through the same decoder and checks as an Arrow frame (streams/codec.py), so one set of rules
applies to both; what cannot be represented (NaN, a clock beyond uint16, an energy beyond
uint64, a time outside 1970..9999) is refused before any cast could wrap it.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import numpy as np
import pyarrow as pa

from streams.codec import (
    DEFAULT_LIMITS,
    Limits,
    decode_gpu_frame,
    decode_points_frame,
    encode_frame,
    gpu_batch,
    points_batch,
)
from streams.ingest_map import IngestMapper, Metric, load_map
from streams.schema import DEFAULT_SLOWDOWN_C, TOPIC_GPU, TOPIC_POWER, TOPIC_THERMAL
from twin.errors import DecodeError
from twin.timeparse import TimeError, parse_ms, parse_ns

_GPU_FLOATS: Final = ("power_w", "temp_gpu_c", "temp_mem_c", "util_pct")
#: Integer fields of a GPU reading -> (default or None if required, largest value): the
#: range of their column type in GPU_SCHEMA, checked before the cast.
_GPU_INTS: Final = {
    "energy_mj": (None, 2**64 - 1),
    "sm_clock_mhz": (None, 2**16 - 1),
    "clock_event_reasons": (0, 2**64 - 1),
    "xid": (0, 2**32 - 1),
    # telemetry.gpu/v2 counters: optional, 0 when a reading does not carry them
    "ecc_corrected": (0, 2**64 - 1),
    "ecc_uncorrected": (0, 2**64 - 1),
    "remapped_rows": (0, 2**32 - 1),
    "row_remap_flags": (0, 2**8 - 1),
    "nvlink_errors": (0, 2**64 - 1),
}
_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)
_POINT_TOPICS: Final = {"thermal": TOPIC_THERMAL, "power": TOPIC_POWER}
#: Readings in one message: a few racks of GPUs; more is a flood, not a gateway.
MAX_READINGS: Final = 4096


@dataclass(frozen=True)
class ConvertedFrame:
    """A frame ready to publish: destination topic, key, the Arrow batch and its bytes."""

    topic: str
    key: str
    batch: pa.RecordBatch
    value: bytes = b""  # the batch as an Arrow IPC stream, as validated


@functools.cache
def default_mapper() -> IngestMapper:
    """The mapper of the shipped mapping (streams/ingest_map.toml), loaded once."""
    return IngestMapper(load_map())


def _refuse_constant(name: str) -> NoReturn:
    raise DecodeError(f"{name} is not a JSON number", "not_finite")


def parse_ts_ms(value: Any, unit: str = "ms") -> int:
    """Timestamp of a reading [ms since epoch]: a number counted in ``unit`` (the twin's
    JSON: ms), or ISO 8601 text with a zone (twin/timeparse.py, one rule everywhere)."""
    try:
        return parse_ms(value, unit=unit)
    except TimeError as exc:
        raise time_refusal("ts", exc) from None


def time_refusal(what: str, exc: TimeError) -> DecodeError:
    """The DecodeError (reason code by kind) of a time that twin/timeparse.py refused."""
    if exc.problem == "too_old":
        return DecodeError(f"{what}: {exc}", "ts_too_old")
    if exc.problem == "future":
        return DecodeError(f"{what}: {exc}", "ts_future")
    if exc.problem == "not_finite":
        return DecodeError(f"{what}: {exc}", "not_finite")
    return DecodeError(f"{what}: {exc}", "bad_field")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(reading: dict[str, Any], name: str, default: float | None = None) -> float:
    value = reading.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"{name} must be a number, got {_short(value)}", "bad_field")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64
        raise DecodeError(f"{name} is out of range: {_short(value)}", "out_of_range") from None
    if not math.isfinite(number):
        raise DecodeError(f"{name} is not finite ({number})", "not_finite")
    return number


def _integer(reading: dict[str, Any], name: str, default: int | None, top: int) -> int:
    value = reading.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{name} must be an integer, got {_short(value)}", "bad_field")
    if not 0 <= value <= top:
        raise DecodeError(f"{name} out of range [0, {top}]: {_short(value)}", "out_of_range")
    return value


def _name(reading: dict[str, Any], field: str, i: int) -> str:
    value = reading.get(field)
    if not isinstance(value, str) or not value:
        raise DecodeError(f"reading {i}: {field} must be a non-empty string", "bad_field")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800) is valid JSON, not UTF-8
        raise DecodeError(f"reading {i}: {field} is not valid UTF-8", "bad_field") from None
    return value


def _parse(data: bytes, limits: Limits) -> list[Any]:
    if len(data) > limits.max_message_bytes:
        raise DecodeError(
            f"oversized payload: {len(data)} bytes > {limits.max_message_bytes}", "oversized"
        )
    if not data:
        raise DecodeError("empty payload", "empty")
    try:
        doc = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise DecodeError("JSON nested too deeply", "too_deep") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}", "not_json") from None
    except ValueError as exc:  # JSONDecodeError, an integer of more than 4,300 digits
        raise DecodeError(f"not JSON: {str(exc)[:200]}", "not_json") from None
    if isinstance(doc, dict) and "kind" not in doc and isinstance(doc.get("metrics"), list):
        doc = doc["metrics"]  # Telegraf's JSON batch form {"metrics": [...]}
    readings = doc if isinstance(doc, list) else [doc]
    if not readings:
        raise DecodeError("empty list of readings", "empty")
    if len(readings) > MAX_READINGS:
        raise DecodeError(
            f"{len(readings)} readings in one message > {MAX_READINGS}", "too_many_rows"
        )
    return readings


def convert_json(
    data: bytes,
    *,
    now_ms: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    replay: bool = False,
    mapper: IngestMapper | None = None,
) -> list[ConvertedFrame]:
    """Parse one telemetry.ingest message and group its readings into validated frames.

    Each frame is checked as the Arrow decoders check a frame from the wire, with ``now_ms``
    [ms since epoch] bounding the timestamps as for live telemetry (None: only 1970..9999).
    Telegraf JSON metrics (``name``, ``tags``, ``fields``, ``timestamp``) become readings
    through ``mapper`` (None: the shipped mapping); unmapped ones are counted there.
    Any refused reading refuses the whole message (DecodeError with a reason code).
    """
    items = _parse(data, limits)
    readings: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and "kind" not in item and "fields" in item:
            mapper = mapper if mapper is not None else default_mapper()
            metric = telegraf_metric(item, i, mapper.mapping.json_timestamp_unit)
            readings.extend(mapper.readings(metric, now_ms if now_ms is not None else 0))
        else:
            readings.append(item)
    return convert_readings(readings, now_ms=now_ms, limits=limits, replay=replay)


def telegraf_metric(obj: dict[str, Any], i: int, unit: str) -> Metric:
    """A Metric of one object of Telegraf's JSON serializer; a numeric ``timestamp`` counts
    ``unit``, a string one is ISO 8601 with a zone (Telegraf's json_timestamp_format)."""
    name, tags, fields = obj.get("name"), obj.get("tags", {}), obj.get("fields")
    if not isinstance(name, str) or not name:
        raise DecodeError(f"metric {i}: name must be a non-empty string", "bad_field")
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise DecodeError(f"metric {i} ({name[:40]}): tags must map to strings", "bad_field")
    if not isinstance(fields, dict) or not all(
        isinstance(v, int | float | str) for v in fields.values()
    ):
        raise DecodeError(
            f"metric {i} ({name[:40]}): fields must map to numbers, booleans or strings",
            "bad_field",
        )
    if "timestamp" not in obj:
        raise DecodeError(f"metric {i} ({name[:40]}): no timestamp", "bad_field")
    try:
        # a number in json_timestamp_units, or text where json_timestamp_format is set
        ts_ns = parse_ns(obj["timestamp"], unit=unit)
    except TimeError as exc:
        raise time_refusal(f"metric {i} ({name[:40]}) timestamp", exc) from None
    return Metric(name, dict(tags), dict(fields), ts_ns)


def convert_readings(
    readings: list[Any],
    *,
    now_ms: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    replay: bool = False,
) -> list[ConvertedFrame]:
    """Group readings (twin JSON objects, already parsed) into validated frames, one per
    rack (or unit) and instant; DecodeError with a code for the first refused reading."""
    gpus: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    points: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)
    for i, r in enumerate(readings):
        if not isinstance(r, dict):
            raise DecodeError(f"reading {i} is not a JSON object", "bad_field")
        kind = r.get("kind")
        if not isinstance(kind, str) or (kind != "gpu" and kind not in _POINT_TOPICS):
            raise DecodeError(
                f"reading {i}: kind must be gpu, thermal or power, got {_short(kind)}",
                "unknown_kind",
            )
        ts_ms = parse_ts_ms(r.get("ts"))
        if kind == "gpu":
            rack = _name(r, "rack", i)
            gpu = r.get("gpu")
            if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu < 65536:
                raise DecodeError(
                    f"reading {i}: gpu must be an integer index, got {_short(gpu)}", "bad_field"
                )
            gpus[(rack, ts_ms)].append(r)
        else:
            unit, point = _name(r, "unit", i), _name(r, "point", i)
            points[(str(kind), unit, ts_ms)][point] = _number(r, "value")
    frames: list[ConvertedFrame] = []
    for (rack, ts_ms), rows in gpus.items():
        cols: dict[str, np.ndarray] = {"gpu": np.array([r["gpu"] for r in rows], dtype=np.uint16)}
        for name in _GPU_FLOATS:
            cols[name] = np.array([_number(r, name) for r in rows])
        cols["power_limit_w"] = np.array(
            [_number(r, "power_limit_w", r.get("power_w")) for r in rows]
        )
        # optional: without it, the margin to the reference slowdown temperature (v1 frames)
        cols["thermal_margin_k"] = np.array(
            [
                _number(r, "thermal_margin_k", DEFAULT_SLOWDOWN_C - _number(r, "temp_gpu_c"))
                for r in rows
            ]
        )
        for name in (*_GPU_FLOATS, "power_limit_w", "thermal_margin_k"):
            # float32 columns: a bigger value would become inf in the cast, not a range error
            if np.abs(cols[name]).max() > _FLOAT32_MAX:
                raise DecodeError(
                    f"rack {rack}: {name} out of range: {cols[name].max()}", "out_of_range"
                )
        for name, (default, top) in _GPU_INTS.items():
            cols[name] = np.array([_integer(r, name, default, top) for r in rows], dtype=np.uint64)
        batch = gpu_batch(ts_ms, rack, cols)
        value = encode_frame(batch)
        try:
            decode_gpu_frame(value, key=rack.encode(), now_ms=now_ms, limits=limits, replay=replay)
        except DecodeError as exc:
            raise DecodeError(f"rack {rack}: {exc.reason}", exc.code) from None
        frames.append(ConvertedFrame(TOPIC_GPU, rack, batch, value))
    for (kind, unit, ts_ms), values in points.items():
        topic = _POINT_TOPICS[kind]
        batch = points_batch(ts_ms, unit, values)
        value = encode_frame(batch)
        try:
            decode_points_frame(
                value,
                key=unit.encode(),
                now_ms=now_ms,
                limits=limits,
                replay=replay,
                contract=topic,
            )
        except DecodeError as exc:
            raise DecodeError(f"unit {unit}: {exc.reason}", exc.code) from None
        frames.append(ConvertedFrame(topic, unit, batch, value))
    return frames
