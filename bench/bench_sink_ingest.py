"""Sink ingest benchmark: records -> validated, de-duplicated rows in the writer's buffers.

    .venv/bin/python bench/bench_sink_ingest.py [--racks 8] [--gpus 72] [--seconds 900]

Runs the sink's own record handling (``ParquetSink._handle_batches``: poison-pill note,
decode and validate as the worker, sample-key check, buffering) on synthetic telemetry.gpu
records in batches of ``--batch`` (the consumer's max_poll_records), then writes the
buffers as the sink would. No broker: the consumer's fetch is not part of the figure.
A second pass sends every frame again at new offsets (all duplicates). Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import ConsumerRecord, TopicPartition

from storage import synth
from storage.sink import ParquetSink
from streams.inflight import InflightGuard
from streams.schema import TOPIC_GPU


def _records(
    frames: list[tuple[bytes, bytes]], first_offset: int, ts_ms: int
) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(TOPIC_GPU, 0, first_offset + i, ts_ms, 0, k, v, None, len(k), len(v), [])
        for i, (k, v) in enumerate(frames)
    ]


async def _feed(sink: ParquetSink, records: list[ConsumerRecord], batch: int) -> float:
    tp = TopicPartition(TOPIC_GPU, 0)
    t0 = time.perf_counter()
    for i in range(0, len(records), batch):
        await sink._handle_batches({tp: records[i : i + batch]})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--racks", type=int, default=8)
    ap.add_argument("--gpus", type=int, default=72)
    ap.add_argument("--seconds", type=int, default=900)
    ap.add_argument("--batch", type=int, default=5000)
    args = ap.parse_args()
    now_ms = time.time_ns() // 1_000_000
    start = now_ms - (args.seconds + 5) * 1000
    gpu = synth.gpu_table(args.racks, args.gpus, args.seconds, start_ms=start)
    frames = synth.frames(gpu, "rack")
    with tempfile.TemporaryDirectory() as tmp:
        sink = ParquetSink("127.0.0.1:9", Path(tmp), [TOPIC_GPU], flush_seconds=1e9)
        sink._guard = InflightGuard(sink.guard_path)
        dt_in = asyncio.run(_feed(sink, _records(frames, 0, now_ms), args.batch))
        t0 = time.perf_counter()
        n_files = len(sink.writer.flush_all())
        dt_w = time.perf_counter() - t0
        dt_dup = asyncio.run(_feed(sink, _records(frames, len(frames), now_ms), args.batch))
    rows = gpu.num_rows
    print(f"{len(frames):,} frames, {rows:,} GPU rows, batches of {args.batch}")
    print(f"handle (note, decode+validate, sample keys, buffer): {rows / dt_in:,.0f} rows/s")
    print(f"write ({n_files} files): {rows / dt_w:,.0f} rows/s")
    print(f"sink without the broker (handle + write): {rows / (dt_in + dt_w):,.0f} rows/s")
    print(
        f"same frames again at new offsets: {rows / dt_dup:,.0f} rows/s, "
        f"stored {sink.stats['rows']:,} rows, duplicates {sink.stats['duplicates']:,}"
    )


if __name__ == "__main__":
    main()
