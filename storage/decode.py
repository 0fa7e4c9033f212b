"""Kafka message -> rows of a store table, validated exactly as the worker validates them.

Telemetry tables (telemetry.gpu, telemetry.thermal, telemetry.power) decode through the
worker's own functions (:mod:`streams.codec`, :mod:`streams.codec_batch`): full Arrow
validation, schema, key, bounds, duplicate GPU indices, frame size and the live-time window,
so the store only ever holds what the twin accepted. JSON tables (twin.state, twin.kpi, ...)
check required fields, types, finite numbers and a plausible timestamp range. Every refusal
is a :class:`~twin.errors.DecodeError` whose reason code (:func:`reason_code`) is one of a
fixed set; nothing here raises anything else on bad input.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.layout import TableDef
from storage.writer import conform
from streams.codec import DEFAULT_LIMITS, Limits, decode_gpu_frame, decode_points_frame
from streams.codec_batch import GpuMessage, decode_gpu_frames
from streams.schema import GPU_SCHEMA, POINTS_SCHEMA
from twin.errors import DecodeError
from twin.timeparse import TimeError, parse_ms

#: An Arrow IPC stream starts with the continuation marker 0xFFFFFFFF.
_ARROW_MAGIC = b"\xff\xff\xff\xff"

#: Plausible sample instants of JSON tables [ms since epoch]: 2000-01-01 .. 2100-01-01 UTC.
#: Telemetry has the tighter live window of :class:`streams.codec.Limits`.
TS_MIN_MS: Final = 946_684_800_000
TS_MAX_MS: Final = 4_102_444_800_000

#: Reason codes of refusals raised here, from the fixed set of streams.schema.DlqReason
#: (the ``dlq.reason`` header and the metrics label); streams.codec's own pass through.
CODE_INVALID: Final = "invalid"  # a refusal without a more precise code
CODE_NOT_JSON: Final = "not_json"  # not UTF-8 JSON, or not objects
CODE_TOO_DEEP: Final = "too_deep"  # JSON nested deeper than the parser allows
CODE_BAD_FIELD: Final = "bad_field"  # missing required field, wrong type, unparseable ts
CODE_SCHEMA: Final = "schema"  # an Arrow frame whose columns do not fit the table
CODE_CORRUPT: Final = "corrupt"  # an Arrow stream that fails full validation
CODE_TS_TOO_OLD: Final = "ts_too_old"  # ts before the plausible range
CODE_TS_FUTURE: Final = "ts_future"  # ts after the plausible range
CODE_NOT_FINITE: Final = "not_finite"  # NaN or infinity
CODE_OVERSIZED: Final = "oversized"  # message too big
#: Sink-only codes: the record crashed the process before (poison pill), or handling it
#: raised something unexpected.
CODE_CRASHED: Final = "crashed"
CODE_INTERNAL: Final = "internal_error"


def refuse(code: str, detail: str) -> DecodeError:
    """A DecodeError carrying ``code`` (the reason code) and ``detail`` (its message)."""
    return DecodeError(detail, code)


def reason_code(exc: BaseException) -> str:
    """The reason code of a refusal (``invalid`` when the raiser gave none)."""
    code = getattr(exc, "code", None)
    return str(code) if code else CODE_INVALID


def _ts_ms(value: Any, fallback_ms: int) -> int:
    """Epoch milliseconds of a JSON row's ``ts``: a number of ms (as the twin writes them) or
    ISO 8601 text with a zone (twin/timeparse.py, the one rule of the code base); None
    takes ``fallback_ms`` (the Kafka record time).

    Refuses anything outside [TS_MIN_MS, TS_MAX_MS), NaN and infinity, so no later
    conversion can overflow.
    """
    if value is None:
        ms = fallback_ms
    else:
        try:
            ms = parse_ms(value, unit="ms")
        except TimeError as exc:
            code = {"too_old": CODE_TS_TOO_OLD, "future": CODE_TS_FUTURE}.get(
                exc.problem, CODE_BAD_FIELD
            )
            raise refuse(code, f"ts: {exc}") from None
    if not TS_MIN_MS <= ms < TS_MAX_MS:
        raise refuse(
            CODE_TS_FUTURE if ms >= TS_MAX_MS else CODE_TS_TOO_OLD,
            f"ts {ms} ms outside [{TS_MIN_MS}, {TS_MAX_MS})",
        )
    return ms


def _check_rows(tdef: TableDef, table: pa.Table) -> pa.Table:
    """Required fields present, ts in the plausible range, floats finite."""
    for f in tdef.schema:
        if not f.nullable and table.column(f.name).null_count:
            raise refuse(CODE_BAD_FIELD, f"{tdef.topic}: field {f.name!r} is required")
    if table.num_rows:
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        lo, hi = int(ts.min()), int(ts.max())
        if lo < TS_MIN_MS or hi >= TS_MAX_MS:
            code, bad = (CODE_TS_TOO_OLD, lo) if lo < TS_MIN_MS else (CODE_TS_FUTURE, hi)
            raise refuse(code, f"{tdef.topic}: ts {bad} ms outside the plausible range")
    for f in tdef.schema:
        if pa.types.is_floating(f.type):
            col = table.column(f.name)
            if pc.all(pc.is_finite(col), skip_nulls=True).as_py() not in (True, None):
                raise refuse(CODE_NOT_FINITE, f"{tdef.topic}: {f.name} is not finite")
    return table


def _decode_arrow(tdef: TableDef, value: bytes, limits: Limits) -> pa.Table:
    """An Arrow frame on a table without a telemetry contract (validated, then checked)."""
    if len(value) > limits.max_message_bytes:
        raise refuse(
            CODE_OVERSIZED, f"{tdef.topic}: {len(value)} bytes > {limits.max_message_bytes}"
        )
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(value))
        batches = []
        for b in reader:
            # Offsets and lengths are checked before any buffer is read (a corrupt string
            # offset would make Arrow read out of bounds).
            b.validate(full=True)
            batches.append(b)
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as exc:
        # (UnicodeDecodeError is a ValueError: a field name that is not UTF-8)
        raise refuse(CODE_CORRUPT, f"{tdef.topic}: not a valid Arrow IPC stream: {exc}") from exc
    if not batches:
        return tdef.schema.empty_table()
    try:
        table = pa.Table.from_batches(batches)
        table.column_names  # noqa: B018 -- decodes every field name: refuse non-UTF-8 here
    except (UnicodeDecodeError, pa.ArrowException) as exc:
        raise refuse(CODE_SCHEMA, f"{tdef.topic}: unreadable field names: {exc}") from exc
    return _check_rows(tdef, _conform(tdef, table))


def _conform(tdef: TableDef, table: pa.Table) -> pa.Table:
    try:
        return conform(tdef, table)
    except DecodeError as exc:
        raise refuse(CODE_SCHEMA, exc.reason) from exc


def _decode_json(
    tdef: TableDef, key: str | None, value: bytes, ts_ms: int, limits: Limits
) -> pa.Table:
    if len(value) > limits.max_message_bytes:
        raise refuse(
            CODE_OVERSIZED, f"{tdef.topic}: {len(value)} bytes > {limits.max_message_bytes}"
        )
    try:
        doc = json.loads(value)
    except RecursionError as exc:
        raise refuse(CODE_TOO_DEEP, f"{tdef.topic}: JSON nested too deep") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise refuse(CODE_NOT_JSON, f"{tdef.topic}: not JSON: {exc}") from exc
    objs = doc if isinstance(doc, list) else [doc]
    rows: dict[str, list[Any]] = {n: [] for n in tdef.schema.names}
    for obj in objs:
        if not isinstance(obj, dict):
            raise refuse(
                CODE_NOT_JSON, f"{tdef.topic}: expected a JSON object, got {type(obj).__name__}"
            )
        for name in tdef.schema.names:
            if name == "ts":
                rows[name].append(_ts_ms(obj.get("ts"), ts_ms))
            elif name == "payload":
                try:
                    rows[name].append(json.dumps(obj, separators=(",", ":"), sort_keys=True))
                except (ValueError, TypeError, RecursionError) as exc:
                    raise refuse(CODE_TOO_DEEP, f"{tdef.topic}: payload: {exc}") from exc
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
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError, ValueError) as exc:
        raise refuse(CODE_BAD_FIELD, f"{tdef.topic}: bad field value: {exc}") from exc
    for f in tdef.schema:
        if not f.nullable and table.column(f.name).null_count:
            raise refuse(CODE_BAD_FIELD, f"{tdef.topic}: field {f.name!r} is required")
    return _check_rows(tdef, _conform(tdef, table))


def is_gpu_table(tdef: TableDef) -> bool:
    return tdef.codec == "arrow" and tdef.schema.equals(GPU_SCHEMA, check_metadata=False)


def is_points_table(tdef: TableDef) -> bool:
    return tdef.codec == "arrow" and tdef.schema.equals(POINTS_SCHEMA, check_metadata=False)


def is_telemetry_table(tdef: TableDef) -> bool:
    """Tables of topics the worker consumes itself (and dead-letters refusals of)."""
    return is_gpu_table(tdef) or is_points_table(tdef)


def decode_message(
    tdef: TableDef,
    key: bytes | None,
    value: bytes | None,
    ts_ms: int,
    *,
    now_ms: int | None = None,
    replay: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> pa.Table:
    """Rows of ``tdef`` carried by one message; raises DecodeError (with a code) on bad input.

    ``ts_ms`` [ms since epoch] is the record's timestamp (a JSON row without ``ts`` takes
    it). ``now_ms`` bounds telemetry timestamps to the worker's live window (None: no window,
    as for stored data); ``replay`` lifts the age limit as the worker's twin-replay rule
    does. JSON tables also accept an Arrow frame (producers can switch encoding freely).
    """
    if value is None:
        return tdef.schema.empty_table()
    if is_gpu_table(tdef):
        f = decode_gpu_frame(value, key=key, now_ms=now_ms, limits=limits, replay=replay)
        return _conform(tdef, pa.Table.from_batches([f.batch]))
    if is_points_table(tdef):
        p = decode_points_frame(
            value, key=key, now_ms=now_ms, limits=limits, replay=replay, contract=str(tdef.topic)
        )
        return _conform(tdef, pa.Table.from_batches([p.batch]))
    if tdef.codec == "arrow" or value[:4] == _ARROW_MAGIC:
        return _decode_arrow(tdef, value, limits)
    key_s = key.decode("utf-8", "replace") if key is not None else None
    return _decode_json(tdef, key_s, value, ts_ms, limits)


@dataclass(frozen=True)
class Incoming:
    """One record to decode: key, value, record timestamp [ms] and the replay mark."""

    key: bytes | None
    value: bytes | None
    ts_ms: int
    replay: bool = False


def decode_many(
    tdef: TableDef,
    records: Sequence[Incoming],
    now_ms: int | None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[pa.Table | DecodeError]:
    """Per record, its rows or the refusal; never raises on bad input.

    GPU frames are checked a batch at a time by the worker's batch decoder (same rules and
    reasons as one by one); everything else one record at a time. ``now_ms`` [ms since
    epoch] bounds telemetry timestamps (None: no window).
    """
    if is_gpu_table(tdef) and now_ms is not None:
        idx = [i for i, r in enumerate(records) if r.value is not None]
        msgs = [GpuMessage(records[i].value or b"", records[i].key, records[i].replay) for i in idx]
        out: list[pa.Table | DecodeError] = [tdef.schema.empty_table()] * len(records)
        for i, f in zip(idx, decode_gpu_frames(msgs, now_ms=now_ms, limits=limits), strict=True):
            if isinstance(f, DecodeError):
                out[i] = f
                continue
            try:
                out[i] = _conform(tdef, pa.Table.from_batches([f.batch]))
            except DecodeError as exc:
                out[i] = exc
        return out
    return [_one(tdef, r, now_ms, limits) for r in records]


def _one(tdef: TableDef, r: Incoming, now: int | None, limits: Limits) -> pa.Table | DecodeError:
    try:
        return decode_message(
            tdef, r.key, r.value, r.ts_ms, now_ms=now, replay=r.replay, limits=limits
        )
    except DecodeError as exc:
        return exc


def ts_bounds_ms(table: pa.Table) -> tuple[int, int]:
    """Smallest and largest ``ts`` of a non-empty table [ms since epoch]."""
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    return int(ts.min()), int(ts.max())


def day_of(ts_ms: int) -> dt.date:
    """UTC day of an instant; DecodeError (code ``timestamp``) beyond what dates can hold."""
    try:
        return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ts_ms)).date()
    except (OverflowError, ValueError) as exc:
        raise refuse(CODE_TS_FUTURE, f"ts {ts_ms} ms has no calendar day") from exc


def table_day(table: pa.Table) -> dt.date:
    """Date partition of a message: the day of its first row (a frame has one instant)."""
    first = table.column("ts")[0].value
    unit = table.schema.field("ts").type.unit
    div = {"s": 1_000, "ms": 1, "us": 1_000, "ns": 1_000_000}[unit]
    ms = first * 1000 if unit == "s" else first // div
    return day_of(int(ms))


def split_by_day(table: pa.Table) -> list[tuple[dt.date, pa.Table]]:
    """Rows grouped by their UTC day (a message normally has one instant, so one day)."""
    lo, hi = ts_bounds_ms(table)
    d_lo, d_hi = day_of(lo), day_of(hi)
    if d_lo == d_hi:
        return [(d_lo, table)]
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    days = ts // 86_400_000
    out = []
    for d in np.unique(days).tolist():
        out.append((day_of(int(d) * 86_400_000), table.filter(pa.array(days == d))))
    return out
