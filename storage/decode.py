"""Kafka message -> rows of a store table (Arrow frames or JSON objects)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa

from storage.layout import TableDef
from storage.writer import conform
from twin.errors import DecodeError

#: An Arrow IPC stream starts with the continuation marker 0xFFFFFFFF.
_ARROW_MAGIC = b"\xff\xff\xff\xff"


def _ts_ms(value: Any, fallback_ms: int) -> int:
    """Epoch milliseconds from an int/float (s or ms) or an ISO-8601 string."""
    if value is None:
        return fallback_ms
    if isinstance(value, bool):
        raise DecodeError(f"ts must be a number or ISO string, got {value!r}")
    if isinstance(value, int | float):
        # Below 1e11 it cannot be ms since 1973: read it as seconds.
        return int(value * 1000) if abs(value) < 1e11 else int(value)
    if isinstance(value, str):
        try:
            t = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise DecodeError(f"ts {value!r} is not ISO-8601") from exc
        if t.tzinfo is None:
            raise DecodeError(f"ts {value!r} has no time zone")
        return int(t.timestamp() * 1000)
    raise DecodeError(f"ts must be a number or ISO string, got {type(value).__name__}")


def _decode_arrow(tdef: TableDef, value: bytes) -> pa.Table:
    try:
        reader = pa.ipc.open_stream(value)
        batches = [b for b in reader]
    except (pa.ArrowInvalid, OSError) as exc:
        raise DecodeError(f"{tdef.topic}: not an Arrow IPC stream: {exc}") from exc
    if not batches:
        return tdef.schema.empty_table()
    return conform(tdef, pa.Table.from_batches(batches))


def _decode_json(tdef: TableDef, key: str | None, value: bytes, ts_ms: int) -> pa.Table:
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{tdef.topic}: not JSON: {exc}") from exc
    objs = doc if isinstance(doc, list) else [doc]
    rows: dict[str, list[Any]] = {n: [] for n in tdef.schema.names}
    for obj in objs:
        if not isinstance(obj, dict):
            raise DecodeError(f"{tdef.topic}: expected a JSON object, got {type(obj).__name__}")
        for name in tdef.schema.names:
            if name == "ts":
                rows[name].append(_ts_ms(obj.get("ts"), ts_ms))
            elif name == "payload":
                rows[name].append(json.dumps(obj, separators=(",", ":"), sort_keys=True))
            elif name == "entity" and "entity" not in obj:
                rows[name].append(key)
            else:
                rows[name].append(obj.get(name))
    try:
        arrays = {
            n: pa.array(v, type=pa.int64() if n == "ts" else tdef.schema.field(n).type)
            for n, v in rows.items()
        }
        table = pa.table(arrays)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
        raise DecodeError(f"{tdef.topic}: bad field value: {exc}") from exc
    for f in tdef.schema:
        if not f.nullable and table.column(f.name).null_count:
            raise DecodeError(f"{tdef.topic}: field {f.name!r} is required")
    return conform(tdef, table)


def decode_message(tdef: TableDef, key: bytes | None, value: bytes | None, ts_ms: int) -> pa.Table:
    """Rows of ``tdef`` carried by one message; raises DecodeError on bad input.

    JSON tables also accept an Arrow frame (so producers can switch encoding freely).
    """
    if value is None:
        return tdef.schema.empty_table()
    if tdef.codec == "arrow" or value[:4] == _ARROW_MAGIC:
        return _decode_arrow(tdef, value)
    key_s = key.decode("utf-8", "replace") if key is not None else None
    return _decode_json(tdef, key_s, value, ts_ms)


def table_day(table: pa.Table) -> dt.date:
    """Date partition of a message: the day of its first row (a frame has one instant)."""
    first = table.column("ts")[0].value
    unit = table.schema.field("ts").type.unit
    div = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    return dt.datetime.fromtimestamp(first / div, tz=dt.UTC).date()
