"""Byte-level mutations of valid frames through every decoder, run as a child process.

``python -m tests.streams.flipcheck SEED`` decodes every single-bit flip of a small GPU frame
and a plant-unit frame (every byte position: IPC framing, schema and batch metadata,
validity bitmaps, offsets, string and numeric buffers) plus seeded random multi-byte
mutations of a 72-GPU frame, single and batched. It prints one JSON line of counts; an
exception other than DecodeError, a reason code outside the fixed set or an accepted frame
that fails Arrow's own validation exits non-zero. A segfault kills only this process, so the
test that runs it fails instead of pytest dying.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator

import numpy as np

from streams.codec import (
    GpuFrame,
    decode_gpu_frame,
    decode_points_frame,
    encode_frame,
    points_batch,
)
from streams.codec_batch import GpuMessage, decode_gpu_frames
from streams.schema import DLQ_REASONS
from tests.streams.frames import known_gpu_batch
from twin.errors import DecodeError

NOW = 1_795_000_000_000


def single_bit_flips(data: bytes) -> Iterator[bytes]:
    """Every message with exactly one bit of ``data`` flipped."""
    for pos in range(len(data)):
        for bit in range(8):
            b = bytearray(data)
            b[pos] ^= 1 << bit
            yield bytes(b)


def random_mutations(data: bytes, rng: np.random.Generator, n: int) -> Iterator[bytes]:
    """Seeded flips, byte overwrites (0x00, 0xff, random), truncations and insertions."""
    for _ in range(n):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(len(b)))
            op = int(rng.integers(5))
            if op == 0:
                b[pos] ^= 1 << int(rng.integers(8))
            elif op == 1:
                b[pos] = 0xFF
            elif op == 2:
                b[pos] = 0
            elif op == 3:
                b[pos] = int(rng.integers(256))
            else:
                b[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
        if rng.random() < 0.1:
            b = b[: int(rng.integers(len(b)))]
        yield bytes(b)


def check_gpu(frame: GpuFrame) -> None:
    """An accepted frame is whole: Arrow-valid, one rack, columns of its row count."""
    frame.batch.validate(full=True)
    n = frame.batch.num_rows
    assert isinstance(frame.rack, str) and frame.ts_ms.shape == (n,)
    assert all(c.shape == (n,) for c in frame.columns.values())


def main(seed: int) -> int:
    """Run every mutation; 0 when all were refused with a known code or accepted whole."""
    counts: Counter[str] = Counter()

    def refused(exc: DecodeError) -> None:
        if exc.code not in DLQ_REASONS:
            raise AssertionError(f"unknown code {exc.code!r}: {exc.reason}")
        counts[exc.code] += 1

    small = encode_frame(known_gpu_batch("R0001", NOW, n=3, seed=seed))
    for data in single_bit_flips(small):
        try:
            check_gpu(decode_gpu_frame(data, key=None, now_ms=NOW))
            counts["accepted"] += 1
        except DecodeError as exc:
            refused(exc)
    points = encode_frame(points_batch(NOW, "CDU01", {"supply_temp_c": 45.0, "flow_kg_s": 40.0}))
    for data in single_bit_flips(points):
        try:
            decode_points_frame(data, key=None, now_ms=NOW).batch.validate(full=True)
            counts["accepted"] += 1
        except DecodeError as exc:
            refused(exc)
    rng = np.random.default_rng(seed)
    big = encode_frame(known_gpu_batch("R0001", NOW, seed=seed))
    mutated = list(random_mutations(big, rng, 1500))
    for data in mutated:
        try:
            check_gpu(decode_gpu_frame(data, key=b"R0001", now_ms=NOW))
            counts["accepted"] += 1
        except DecodeError as exc:
            refused(exc)
    for i in range(0, len(mutated), 50):  # the batch path, good frames mixed in
        msgs = [GpuMessage(d, b"R0001") for d in mutated[i : i + 50]] + [GpuMessage(big, b"R0001")]
        for r in decode_gpu_frames(msgs, now_ms=NOW):
            if isinstance(r, DecodeError):
                refused(r)
            else:
                check_gpu(r)
    print(json.dumps({"seed": seed, **counts}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
