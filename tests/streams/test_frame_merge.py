"""Per-host frames of one rack and instant apply as one rack frame, with the same result as
applying them one by one."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_array_equal

from streams.codec import GpuFrame, decode_gpu_frame, encode_frame
from streams.frame_merge import merge_host_frames
from streams.runtime import TwinRuntime
from tests.streams.frames import known_gpu_batch

NOW = 1_790_000_000_000


def _hosts(rack: str, ts_ms: int, seed: int, hosts: range = range(18)) -> list[GpuFrame]:
    full = known_gpu_batch(rack, ts_ms, n=72, seed=seed)
    return [
        decode_gpu_frame(encode_frame(full.slice(4 * h, 4)), key=rack.encode(), now_ms=NOW)
        for h in hosts
    ]


def test_hosts_of_one_instant_become_one_frame_per_rack_and_instant() -> None:
    a0 = _hosts("R0001", NOW - 2000, 1)
    b0 = _hosts("R0002", NOW - 2000, 2)
    a1 = _hosts("R0001", NOW - 1000, 3)
    # interleaved as partitions deliver them: instants of a rack stay apart and in order
    frames = [x for pair in zip(a0, b0, strict=True) for x in pair] + a1
    merged = merge_host_frames(frames)
    assert [(f.rack, int(f.ts_ms[0]), f.gpu.size) for f in merged] == [
        ("R0001", NOW - 2000, 72),
        ("R0002", NOW - 2000, 72),
        ("R0001", NOW - 1000, 72),
    ]
    assert_array_equal(merged[0].gpu, np.arange(72))
    assert_array_equal(
        merged[2].columns["power_w"], np.concatenate([f.columns["power_w"] for f in a1])
    )


def test_a_resent_gpu_keeps_its_group_apart() -> None:
    hosts = _hosts("R0001", NOW - 1000, 1, range(3))
    frames = [*hosts, hosts[1]]
    assert merge_host_frames(frames) == frames


def test_applying_merged_equals_applying_one_by_one() -> None:
    frames = _hosts("R0001", NOW - 3000, 1) + _hosts("R0001", NOW - 2000, 2, range(0, 18, 2))
    frames += _hosts("R0002", NOW - 2000, 3) + _hosts("R0001", NOW - 1000, 4, range(5))
    together, alone = TwinRuntime(partitions=8), TwinRuntime(partitions=8)
    together.apply_gpus(frames, "telemetry.gpu")
    for f in frames:
        alone.apply_gpus([f], "telemetry.gpu")
    assert together.counters.frames_in == alone.counters.frames_in == {"telemetry.gpu": len(frames)}
    assert together.counters.samples_in == alone.counters.samples_in
    for rack in ("R0001", "R0002"):
        t, a = together.racks[rack], alone.racks[rack]
        assert_array_equal(t.ts_ms, a.ts_ms)
        for name, col in a.values.items():
            assert_array_equal(t.values[name], col)
