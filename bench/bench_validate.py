"""Cost of reading and fully validating a 72-GPU telemetry.gpu frame, alone and batched.

Prints microseconds a frame for: the IPC read alone, ``RecordBatch.validate(full=True)``
alone, the whole single-frame decoder and the batch decoder (4,096 frames a batch, every
frame's batch validated). Asserts nothing about speed (measured here, not in tests).
Usage: python bench/bench_validate.py [--frames N] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from streams.codec import decode_gpu_frame, encode_frame, gpu_batch
from streams.codec_batch import GpuMessage, decode_gpu_frames

NOW = 1_795_000_000_000


def frame_bytes(rack: str, seed: int) -> bytes:
    """One realistic 72-GPU frame (NVML resolution)."""
    rng = np.random.default_rng(seed)
    n = 72
    cols: dict[str, np.ndarray] = {
        "power_w": np.round(rng.uniform(200, 1800, n), 3).astype(np.float32),
        "energy_mj": rng.integers(0, 10**12, n).astype(np.uint64),
        "temp_gpu_c": rng.integers(40, 85, n).astype(np.float32),
        "temp_mem_c": rng.integers(45, 90, n).astype(np.float32),
        "sm_clock_mhz": rng.integers(345, 1980, n).astype(np.uint16),
        "util_pct": rng.integers(0, 101, n).astype(np.float32),
        "clock_event_reasons": np.zeros(n, dtype=np.uint64),
        "xid": np.zeros(n, dtype=np.uint32),
        "power_limit_w": np.full(n, 1800.0, dtype=np.float32),
    }
    return encode_frame(gpu_batch(NOW, rack, cols))


def per_frame_us(fn: Callable[[], object], frames: int, repeat: int) -> float:
    """Median microseconds a frame of ``fn`` (which handles ``frames`` frames)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / frames * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=4096, help="frames a batch")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    data = [frame_bytes(f"R{i % 1250:04d}", i) for i in range(args.frames)]
    batches = [pa.ipc.open_stream(pa.py_buffer(d)).read_next_batch() for d in data]
    msgs = [GpuMessage(d, f"R{i % 1250:04d}".encode()) for i, d in enumerate(data)]

    def read() -> None:
        for d in data:
            pa.ipc.open_stream(pa.py_buffer(d)).read_next_batch()

    def validate() -> None:
        for b in batches:
            b.validate(full=True)

    def single() -> None:
        for m in msgs:
            decode_gpu_frame(m.value, key=m.key, now_ms=NOW)

    def batched() -> None:
        decode_gpu_frames(msgs, now_ms=NOW)

    n = args.frames
    print(f"frame bytes:                    {len(data[0])}")
    print(f"IPC read (open_stream):         {per_frame_us(read, n, args.repeat):8.2f} us/frame")
    print(f"validate(full=True):            {per_frame_us(validate, n, args.repeat):8.2f} us/frame")
    print(f"decode_gpu_frame (single):      {per_frame_us(single, n, args.repeat):8.2f} us/frame")
    print(f"decode_gpu_frames (batch {n}): {per_frame_us(batched, n, args.repeat):8.2f} us/frame")


if __name__ == "__main__":
    main()
