"""``twin replay``: re-publish a time range of the store as the original telemetry frames.

One Arrow IPC RecordBatch per message, keyed by rack (telemetry.gpu) or unit (thermal and
power), in time order, optionally paced at ``speed`` x real time. Every message carries the
``twin-replay`` header: the worker refuses frames older than its age limit unless marked so.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import heapq
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from aiokafka.errors import KafkaError

from storage.cliutil import add_data_dir_flag, setup_logging
from storage.decode import Incoming, decode_many, is_gpu_table, reason_code
from storage.layout import TableDef, default_tables, list_parts
from storage.sql import NoStoreError, require_store
from storage.synth import frames
from streams.codec import fill_v2_nulls
from streams.kafka_security import (
    KafkaSecurity,
    add_kafka_security_flags,
    check_access,
    kafka_client_kwargs,
    kafka_security_from_args,
)
from streams.schema import TOPIC_GPU, TOPIC_POWER, TOPIC_THERMAL
from streams.settings import parse_broker_url
from twin.errors import ConfigError, DecodeError, TwinError
from twin.timeparse import TimeError, iso_ns, to_datetime

#: Replayed tables: name -> (key column, topic).
REPLAYED = {
    "gpu": ("rack", TOPIC_GPU),
    "plant": ("unit", TOPIC_THERMAL),
    "power": ("unit", TOPIC_POWER),
}

Message = tuple[int, str, bytes, bytes]  # (ts [ms], topic, key, value)

#: Header of every replayed message; streams.app accepts old frames only with it.
REPLAY_HEADER = ("twin-replay", b"store")


def _parse_time(s: str) -> dt.datetime:
    # ISO 8601, no zone = UTC (twin/timeparse.py: the one rule of the code base)
    try:
        return to_datetime(iso_ns(s, naive_utc=True))
    except TimeError as exc:
        raise ConfigError(str(exc)) from None


def read_range(
    data_dir: Path, tdef: TableDef, t0: dt.datetime, t1: dt.datetime, key: str
) -> pa.Table:
    """Rows of ``tdef`` with t0 <= ts < t1, ordered by (ts, key, then its other sort keys).

    The trailing sort keys (gpu, point) give each frame its rows in the order a source
    sends them, and make a replay deterministic.
    """
    parts = list_parts(tdef.table_dir(data_dir))
    # Partitions are UTC days; a bound given in another zone may fall on another date.
    day0, day1 = t0.astimezone(dt.UTC).date(), t1.astimezone(dt.UTC).date()
    parts = [p for p in parts if day0 <= dt.date.fromisoformat(p.parent.name[5:]) <= day1]
    if not parts:
        return tdef.schema.empty_table()
    files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts) + "]"
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        cols = ", ".join(f'"{n}"' for n in tdef.schema.names)
        keys = ["ts", key, *(k for k in tdef.sort_keys if k not in ("ts", key))]
        order = ", ".join(f'"{k}"' for k in keys)
        table = con.sql(
            # union_by_name: files written before a column was added (telemetry.gpu/v1)
            # read it as NULL instead of failing the scan
            f"SELECT {cols} FROM read_parquet({files}, union_by_name = true) "
            f"WHERE ts >= $t0 AND ts < $t1 "
            f"ORDER BY {order}",
            params={"t0": t0, "t1": t1},
        ).to_arrow_table()
    finally:
        con.close()
    table = table.cast(tdef.schema)
    # NULL v2 columns are replayed as a v1 frame is decoded: counts 0, margin computed
    return fill_v2_nulls(table) if is_gpu_table(tdef) else table


def replay_messages(
    data_dir: Path,
    t0: dt.datetime,
    t1: dt.datetime,
    chunk_s: float = 600.0,
    *,
    refused: Counter[str] | None = None,
    now_ms: int | None = None,
) -> Iterator[Message]:
    """Messages of every replayed table in time order, read one chunk of time at a time.

    Each frame is validated as the worker will validate it (a replay: no age limit, but
    bounds, duplicates, frame size and the future limit still apply against ``now_ms``,
    default the wall clock), so rows stored before validation existed are not sent; the
    frames left out are counted per reason code in ``refused``.
    """
    tables = default_tables()
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    a = t0
    while a < t1:
        b = min(a + dt.timedelta(seconds=chunk_s), t1)
        streams = []
        for name, (key, topic) in REPLAYED.items():
            rows = read_range(data_dir, tables[name], a, b, key)
            if rows.num_rows:
                ts = rows.column("ts").cast(pa.int64()).to_numpy()
                fr = frames(rows, key)
                # frames() splits on (ts, key) changes, so each frame's first ts is its ts.
                starts = _frame_starts(ts, rows.column(key).to_numpy(zero_copy_only=False))
                msgs = [(int(ts[s]), topic, k, v) for s, (k, v) in zip(starts, fr, strict=True)]
                streams.append(_valid(tables[name], msgs, now, refused))
        yield from heapq.merge(*streams, key=lambda m: m[0])
        a = b


def _valid(
    tdef: TableDef, msgs: list[Message], now_ms: int, refused: Counter[str] | None
) -> list[Message]:
    checked = decode_many(tdef, [Incoming(k, v, ts, replay=True) for ts, _, k, v in msgs], now_ms)
    out = []
    for m, got in zip(msgs, checked, strict=True):
        if isinstance(got, DecodeError):
            if refused is not None:
                refused[reason_code(got)] += 1
            continue
        out.append(m)
    return out


def _frame_starts(ts: Any, keys: Any) -> list[int]:
    change = np.flatnonzero((ts[1:] != ts[:-1]) | (keys[1:] != keys[:-1])) + 1
    return [0, *change.tolist()]


async def publish(
    bootstrap: str,
    messages: list[Message],
    speed: float,
    progress: bool = True,
    *,
    topic_prefix: str = "",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    security: KafkaSecurity | None = None,
) -> int:
    """Send ``messages`` paced at ``speed`` x real time (0: as fast as possible).

    A message of stored instant ``ts`` leaves no earlier than ``(ts - ts_first) / speed``
    seconds of ``clock`` after the first. ``topic_prefix`` is prepended to every topic, as
    the worker's ``--topic-prefix``. The progress bar (on stderr) is drawn only if
    ``progress``.
    """
    from aiokafka import AIOKafkaProducer
    from rich.console import Console
    from rich.progress import Progress

    await check_access(bootstrap, security)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=10, **kafka_client_kwargs(security)
    )
    delivered: list[asyncio.Future[Any]] = []
    try:
        await producer.start()
        # stderr, so that a progress bar never mixes with piped stdout.
        with Progress(console=Console(stderr=True), disable=not progress) as bar:
            task = bar.add_task("replaying", total=len(messages))
            wall0 = clock()
            ts0 = messages[0][0] if messages else 0
            for ts, topic, key, value in messages:
                if speed > 0:
                    lag = (ts - ts0) / 1000.0 / speed - (clock() - wall0)
                    if lag > 0:
                        await sleep(lag)
                fut = await producer.send(
                    topic_prefix + topic, value=value, key=key, headers=[REPLAY_HEADER]
                )
                delivered.append(fut)
                bar.advance(task)
            await producer.flush()
        # flush() does not raise a failed delivery; the futures do.
        await asyncio.gather(*delivered)
    finally:
        await producer.stop()
    return len(delivered)


def _fill_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="t_from", required=True, help="ISO-8601 start (UTC if no zone)")
    p.add_argument("--to", dest="t_to", required=True, help="ISO-8601 end, exclusive")
    from streams.cli import add_broker_flag  # streams.cli registers this parser

    p.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="pace at this many times real time (default 0: as fast as the broker takes it)",
    )
    add_broker_flag(p, required=True)
    add_data_dir_flag(p, "to read (as the sink's --data-dir)")
    p.add_argument(
        "--topic-prefix",
        default="",
        help="prefix of every target topic, as given to the worker (default: none)",
    )
    add_kafka_security_flags(p)


def add_replay_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``replay`` on an argparse subparsers object; ``run_replay`` runs it."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay", help="re-publish stored telemetry of a time range to the telemetry topics"
    )
    _fill_parser(p)
    p.set_defaults(handler=run_replay)
    return p


def run_replay(args: argparse.Namespace) -> int:
    """Replay; 2 on a bad argument, 1 on a runtime failure (store, broker)."""
    setup_logging()
    try:
        t0, t1 = _parse_time(args.t_from), _parse_time(args.t_to)
        if t1 <= t0:
            raise ConfigError(f"--to {args.t_to} must be after --from {args.t_from}")
        if args.speed < 0:
            raise ConfigError(f"--speed must be >= 0, got {args.speed}")
        bootstrap = parse_broker_url(args.broker)
        security = kafka_security_from_args(args)
    except TwinError as exc:
        print(f"twin replay: {exc}", file=sys.stderr)
        return 2
    try:
        require_store(args.data_dir)  # a wrong --data-dir is an error, not "nothing stored"
        refused: Counter[str] = Counter()
        messages = list(replay_messages(args.data_dir, t0, t1, refused=refused))
        if refused:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(refused.items()))
            print(
                f"twin replay: left out {sum(refused.values())} stored frames the worker "
                f"would refuse ({reasons})",
                file=sys.stderr,
            )
        if not messages:
            print(f"twin replay: nothing stored in [{t0}, {t1})", file=sys.stderr)
            return 0
        sent = asyncio.run(
            publish(
                bootstrap,
                messages,
                args.speed,
                sys.stderr.isatty(),
                topic_prefix=args.topic_prefix,
                security=security,
            )
        )
    except NoStoreError as exc:
        print(f"twin replay: {exc}", file=sys.stderr)
        return 1
    except TwinError as exc:
        print(f"twin replay: {exc}", file=sys.stderr)
        return 1
    except KafkaError as exc:
        print(f"twin replay: broker {args.broker}: {exc}", file=sys.stderr)
        return 1
    print(f"replayed {sent} messages", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from streams.cli import add_common_flags
    from streams.config import parse

    p = argparse.ArgumentParser(prog="twin replay")
    _fill_parser(p)
    add_common_flags(p)
    return run_replay(parse(p, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
