"""Batch decoding of telemetry.gpu gives, message by message, what decoding alone gives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import GpuFrame, decode_gpu_frame, encode_frame
from streams.codec_batch import GpuMessage, decode_gpu_frames
from tests.streams.frames import known_gpu_batch, with_column
from twin.errors import DecodeError

NOW = 1_790_000_000_000


def _alone(m: GpuMessage) -> GpuFrame | DecodeError:
    try:
        return decode_gpu_frame(m.value, key=m.key, now_ms=NOW, replay=m.replay)
    except DecodeError as exc:
        return exc


def _same(a: GpuFrame | DecodeError, b: GpuFrame | DecodeError) -> None:
    assert type(a) is type(b)
    if isinstance(a, DecodeError):
        assert isinstance(b, DecodeError) and (a.code, a.reason) == (b.code, b.reason)
        return
    assert isinstance(b, GpuFrame)
    assert a.rack == b.rack and a.raw == b.raw
    np.testing.assert_array_equal(a.ts_ms, b.ts_ms)
    assert a.columns.keys() == b.columns.keys()
    for k in a.columns:
        np.testing.assert_array_equal(a.columns[k], b.columns[k])
        assert a.columns[k].dtype == b.columns[k].dtype


def _good(i: int, n: int = 72) -> GpuMessage:
    rack = f"R{i:04d}"
    return GpuMessage(encode_frame(known_gpu_batch(rack, NOW - i, n=n, seed=i)), rack.encode())


def _bad(kind: str, i: int) -> GpuMessage:
    rack = f"R{i:04d}"
    b = known_gpu_batch(rack, NOW, n=8, seed=i)
    if kind == "garbage":
        return GpuMessage(b"\x00garbage", rack.encode())
    if kind == "nan":
        return GpuMessage(encode_frame(with_column(b, "power_w", np.full(8, np.nan))), None)
    if kind == "hot":
        return GpuMessage(encode_frame(with_column(b, "temp_gpu_c", np.full(8, 400.0))), None)
    if kind == "key":
        return GpuMessage(encode_frame(b), b"R9999")
    if kind == "old":
        return GpuMessage(encode_frame(known_gpu_batch(rack, NOW - 2 * 86_400_000, n=8)), None)
    if kind == "old-replay":
        old = known_gpu_batch(rack, NOW - 2 * 86_400_000, n=8)
        return GpuMessage(encode_frame(old), None, replay=True)
    if kind == "future":
        return GpuMessage(encode_frame(known_gpu_batch(rack, NOW + 3_600_000, n=8)), None)
    if kind == "dup-gpu":
        return GpuMessage(encode_frame(with_column(b, "gpu", np.zeros(8))), None)
    if kind == "reversed":  # valid: GPUs in another order
        return GpuMessage(encode_frame(with_column(b, "gpu", np.arange(8)[::-1])), None)
    if kind == "host":  # valid: one host's GPUs 8..15 of its rack (--gpu-offset 8)
        return GpuMessage(encode_frame(with_column(b, "gpu", np.arange(8, 16))), None)
    if kind == "host-gaps":  # valid: GPUs 1, 3, ..., 15
        return GpuMessage(encode_frame(with_column(b, "gpu", np.arange(1, 17, 2))), None)
    if kind == "host-past-end":  # GPUs 68..75 of a 72-GPU limit
        return GpuMessage(encode_frame(with_column(b, "gpu", np.arange(68, 76))), None)
    if kind == "mixed-racks":
        other = known_gpu_batch("R7777", NOW, n=8)
        t = pa.Table.from_batches([b, other]).combine_chunks().to_batches()[0]
        return GpuMessage(encode_frame(t), None)
    if kind == "schema":
        return GpuMessage(encode_frame(b.drop_columns(["xid"])), None)
    if kind == "ancient-replay":  # before 2000-01-01: refused even as a replay
        return GpuMessage(encode_frame(known_gpu_batch(rack, 0, n=8)), None, replay=True)
    if kind == "flipped":  # a string offset past the data: full validation refuses it
        data = bytearray(encode_frame(b))
        values_at = data.index(rack.encode() * 8)
        data[values_at - 24 : values_at - 20] = (1 << 30).to_bytes(4, "little")
        return GpuMessage(bytes(data), None)
    raise AssertionError(kind)


KINDS = [
    "garbage", "nan", "hot", "key", "old", "old-replay", "future", "dup-gpu", "reversed",
    "host", "host-gaps", "host-past-end", "mixed-racks", "schema", "ancient-replay", "flipped",
]  # fmt: skip


def test_good_batch_matches_one_by_one() -> None:
    msgs = [_good(i) for i in range(1, 40)] + [_good(40, n=3)]
    got = decode_gpu_frames(msgs, now_ms=NOW)
    for m, g in zip(msgs, got, strict=True):
        _same(_alone(m), g)


@pytest.mark.parametrize("kind", KINDS)
def test_one_bad_frame_gets_its_own_reason_and_neighbours_pass(kind: str) -> None:
    msgs = [_good(1), _bad(kind, 2), _good(3)]
    got = decode_gpu_frames(msgs, now_ms=NOW)
    for m, g in zip(msgs, got, strict=True):
        _same(_alone(m), g)
    assert isinstance(got[0], GpuFrame) and isinstance(got[2], GpuFrame)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["good", *KINDS]), min_size=1, max_size=12))
def test_any_mix_matches_one_by_one(kinds: list[str]) -> None:
    msgs = [_good(i) if k == "good" else _bad(k, i) for i, k in enumerate(kinds, start=1)]
    got = decode_gpu_frames(msgs, now_ms=NOW)
    assert len(got) == len(msgs)
    for m, g in zip(msgs, got, strict=True):
        _same(_alone(m), g)


def test_host_frames_are_checked_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """18 hosts of 4 GPUs each, every one with its offset: one pass for the whole batch,
    not the one-by-one fallback (which costs ~10x per message)."""
    import streams.codec_batch as cb

    msgs = []
    for rack in range(1, 6):
        full = known_gpu_batch(f"R{rack:04d}", NOW, n=72, seed=rack)
        for lo in range(0, 72, 4):
            msgs.append(GpuMessage(encode_frame(full.slice(lo, 4)), f"R{rack:04d}".encode()))
    alone = [_alone(m) for m in msgs]

    def refuse(*_: object) -> None:
        raise AssertionError("fell back to one by one")

    monkeypatch.setattr(cb, "_one", refuse)
    got = decode_gpu_frames(msgs, now_ms=NOW)
    for a, g in zip(alone, got, strict=True):
        _same(a, g)
    assert isinstance(got[-1], GpuFrame) and got[-1].gpu.tolist() == [68, 69, 70, 71]


def test_empty_batch() -> None:
    assert decode_gpu_frames([], now_ms=NOW) == []
