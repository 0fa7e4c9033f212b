"""Convert JSON single readings (telemetry.ingest) into Arrow frames, once, at the edge.

Tools that cannot write Arrow (Telegraf, a BMS gateway, a shell script) publish readings as
JSON objects, or JSON arrays of them:

    {"kind": "gpu", "rack": "R0001", "gpu": 3, "ts": "2026-11-28T12:00:00Z",
     "power_w": 1420.5, "energy_mj": 123456789, "temp_gpu_c": 61, "temp_mem_c": 70,
     "sm_clock_mhz": 1980, "util_pct": 97}
    {"kind": "thermal", "unit": "CDU01", "point": "supply_temp_c", "value": 45.1,
     "ts": 1764331200000}

Readings of one rack (or unit) at one instant become one frame, so the rest of the pipeline
sees exactly what a native Arrow source would have sent.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from streams.codec import gpu_batch, points_batch
from streams.schema import TOPIC_GPU, TOPIC_POWER, TOPIC_THERMAL
from twin.errors import DecodeError

_GPU_REQUIRED = ("power_w", "temp_gpu_c", "temp_mem_c", "sm_clock_mhz", "util_pct", "energy_mj")
_GPU_DEFAULTS = {"clock_event_reasons": 0, "xid": 0}
_POINT_TOPICS = {"thermal": TOPIC_THERMAL, "power": TOPIC_POWER}


@dataclass(frozen=True)
class ConvertedFrame:
    """A frame ready to publish: destination topic, key and the Arrow batch."""

    topic: str
    key: str
    batch: pa.RecordBatch


def parse_ts_ms(value: Any) -> int:
    """Timestamp of a reading: integer ms since epoch, or an ISO 8601 string with a zone."""
    if isinstance(value, bool):
        raise DecodeError(f"ts must be ms since epoch or ISO 8601, got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise DecodeError(f"ts {value!r} is not ISO 8601") from None
        if parsed.tzinfo is None:
            raise DecodeError(f"ts {value!r} has no time zone; add Z or +00:00")
        return int(parsed.timestamp() * 1000)
    raise DecodeError(f"ts must be ms since epoch or ISO 8601, got {value!r}")


def _number(reading: dict[str, Any], name: str) -> float:
    value = reading.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"{name} must be a number, got {value!r}")
    return float(value)


def convert_json(data: bytes) -> list[ConvertedFrame]:
    """Parse one telemetry.ingest message and group its readings into frames."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    readings = doc if isinstance(doc, list) else [doc]
    if not readings:
        raise DecodeError("empty list of readings")
    gpus: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    points: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)
    for i, r in enumerate(readings):
        if not isinstance(r, dict):
            raise DecodeError(f"reading {i} is not a JSON object")
        kind = r.get("kind")
        ts_ms = parse_ts_ms(r.get("ts"))
        if kind == "gpu":
            rack = r.get("rack")
            gpu = r.get("gpu")
            if not isinstance(rack, str) or not rack:
                raise DecodeError(f"reading {i}: rack must be a non-empty string")
            if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu < 65536:
                raise DecodeError(f"reading {i}: gpu must be an integer index, got {gpu!r}")
            gpus[(rack, ts_ms)].append(r)
        elif kind in _POINT_TOPICS:
            unit, point = r.get("unit"), r.get("point")
            if not isinstance(unit, str) or not unit or not isinstance(point, str) or not point:
                raise DecodeError(f"reading {i}: unit and point must be non-empty strings")
            points[(str(kind), unit, ts_ms)][point] = _number(r, "value")
        else:
            raise DecodeError(f"reading {i}: kind must be gpu, thermal or power, got {kind!r}")
    frames: list[ConvertedFrame] = []
    for (rack, ts_ms), rows in gpus.items():
        cols: dict[str, np.ndarray] = {"gpu": np.array([r["gpu"] for r in rows], dtype=np.uint16)}
        for name in _GPU_REQUIRED:
            cols[name] = np.array([_number(r, name) for r in rows])
        for name, default in _GPU_DEFAULTS.items():
            cols[name] = np.array([int(r.get(name, default)) for r in rows])
        cols["power_limit_w"] = np.array(
            [float(r.get("power_limit_w", r["power_w"])) for r in rows]
        )
        if (cols["energy_mj"] < 0).any():
            raise DecodeError(f"{rack}: energy_mj must not be negative")
        frames.append(ConvertedFrame(TOPIC_GPU, rack, gpu_batch(ts_ms, rack, cols)))
    for (kind, unit, ts_ms), values in points.items():
        frames.append(ConvertedFrame(_POINT_TOPICS[kind], unit, points_batch(ts_ms, unit, values)))
    return frames
