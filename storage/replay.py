"""``twin replay``: re-publish a time range of the store as the original telemetry frames.

One Arrow IPC RecordBatch per message, keyed by rack (telemetry.gpu) or unit (thermal and
power), in time order, optionally paced at ``speed`` x real time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import heapq
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from storage.cliutil import (
    DEFAULT_BROKER,
    DEFAULT_DATA_DIR,
    data_dir_arg,
    env,
    parse_broker_url,
    setup_logging,
)
from storage.layout import TableDef, default_tables, list_parts
from storage.synth import frames
from streams.schema import TOPIC_GPU, TOPIC_POWER, TOPIC_THERMAL
from twin.errors import ConfigError, TwinError

#: Replayed tables: name -> (key column, topic).
REPLAYED = {
    "gpu": ("rack", TOPIC_GPU),
    "plant": ("unit", TOPIC_THERMAL),
    "power": ("unit", TOPIC_POWER),
}

Message = tuple[int, str, bytes, bytes]  # (ts [ms], topic, key, value)


def _parse_time(s: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError as exc:
        raise ConfigError(f"not an ISO-8601 time: {s!r}") from exc
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def read_range(
    data_dir: Path, tdef: TableDef, t0: dt.datetime, t1: dt.datetime, key: str
) -> pa.Table:
    """Rows of ``tdef`` with t0 <= ts < t1, ordered by (ts, key)."""
    parts = list_parts(tdef.table_dir(data_dir))
    day0, day1 = t0.date(), t1.date()
    parts = [p for p in parts if day0 <= dt.date.fromisoformat(p.parent.name[5:]) <= day1]
    if not parts:
        return tdef.schema.empty_table()
    files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts) + "]"
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        cols = ", ".join(f'"{n}"' for n in tdef.schema.names)
        table = con.sql(
            f"SELECT {cols} FROM read_parquet({files}) WHERE ts >= $t0 AND ts < $t1 "
            f'ORDER BY ts, "{key}"',
            params={"t0": t0, "t1": t1},
        ).to_arrow_table()
    finally:
        con.close()
    return table.cast(tdef.schema)


def replay_messages(
    data_dir: Path, t0: dt.datetime, t1: dt.datetime, chunk_s: float = 600.0
) -> Iterator[Message]:
    """Messages of every replayed table in time order, read one chunk of time at a time."""
    tables = default_tables()
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
                streams.append(
                    [(int(ts[s]), topic, k, v) for s, (k, v) in zip(starts, fr, strict=True)]
                )
        yield from heapq.merge(*streams, key=lambda m: m[0])
        a = b


def _frame_starts(ts: Any, keys: Any) -> list[int]:
    change = np.flatnonzero((ts[1:] != ts[:-1]) | (keys[1:] != keys[:-1])) + 1
    return [0, *change.tolist()]


async def publish(
    bootstrap: str, messages: list[Message], speed: float, progress: bool = True
) -> int:
    """Send ``messages`` paced at ``speed`` x real time (0: as fast as possible)."""
    from aiokafka import AIOKafkaProducer
    from rich.progress import Progress

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    await producer.start()
    sent = 0
    try:
        with Progress(disable=not progress, transient=False) as bar:
            task = bar.add_task("replaying", total=len(messages))
            wall0 = time.monotonic()
            ts0 = messages[0][0] if messages else 0
            for ts, topic, key, value in messages:
                if speed > 0:
                    lag = (ts - ts0) / 1000.0 / speed - (time.monotonic() - wall0)
                    if lag > 0:
                        await asyncio.sleep(lag)
                await producer.send(topic, value=value, key=key)
                sent += 1
                bar.advance(task)
            await producer.flush()
    finally:
        await producer.stop()
    return sent


def _fill_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="t_from", required=True, help="ISO-8601 start (UTC if no zone)")
    p.add_argument("--to", dest="t_to", required=True, help="ISO-8601 end, exclusive")
    p.add_argument("--speed", type=float, default=float(env("TWIN_REPLAY_SPEED", "0")))
    p.add_argument("--broker", default=env("TWIN_BROKER", DEFAULT_BROKER))
    p.add_argument("--data-dir", type=data_dir_arg, default=env("TWIN_DATA_DIR", DEFAULT_DATA_DIR))


def add_replay_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``replay`` on an argparse subparsers object; ``run_replay`` runs it."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay", help="re-publish stored telemetry of a time range to the telemetry topics"
    )
    _fill_parser(p)
    p.set_defaults(handler=run_replay)
    return p


def run_replay(args: argparse.Namespace) -> int:
    setup_logging()
    try:
        t0, t1 = _parse_time(args.t_from), _parse_time(args.t_to)
        if t1 <= t0:
            raise ConfigError(f"--to {args.t_to} must be after --from {args.t_from}")
        if args.speed < 0:
            raise ConfigError(f"--speed must be >= 0, got {args.speed}")
        bootstrap = parse_broker_url(args.broker)
        messages = list(replay_messages(args.data_dir, t0, t1))
        sent = asyncio.run(publish(bootstrap, messages, args.speed, sys.stderr.isatty()))
    except TwinError as exc:
        print(f"twin replay: {exc}", file=sys.stderr)
        return 2
    print(f"replayed {sent} messages", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="twin replay")
    _fill_parser(p)
    return run_replay(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
