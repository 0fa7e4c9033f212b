"""Replay: stored rows come back as the original frames, in time order."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from storage import synth
from storage.decode import decode_message
from storage.layout import date_dir, day_of_ms, default_tables
from storage.replay import replay_messages
from storage.writer import write_file
from streams.schema import TOPIC_GPU, TOPIC_THERMAL

START_MS = 1_789_999_200_000


def test_replay_reproduces_frames(tmp_path: Path) -> None:
    tables = default_tables()
    gpu = synth.gpu_table(3, 4, 30, start_ms=START_MS, seed=9)
    plant = synth.points_table({"CDU-A": {"supply_temp_c": 45.0, "flow_kg_s": 2.0}}, 30)
    day = day_of_ms(START_MS)
    write_file(tables["gpu"], gpu, date_dir(tmp_path, "gpu", day))
    write_file(tables["plant"], plant, date_dir(tmp_path, "plant", day_of_ms(1_790_000_000_000)))
    t0 = dt.datetime.fromtimestamp(START_MS / 1000 + 5, dt.UTC)
    t1 = t0 + dt.timedelta(seconds=10)
    msgs = list(replay_messages(tmp_path, t0, t1, chunk_s=4))
    gpu_msgs = [m for m in msgs if m[1] == TOPIC_GPU]
    assert len(gpu_msgs) == 10 * 3
    assert [m[0] for m in msgs] == sorted(m[0] for m in msgs)
    assert not [m for m in msgs if m[1] == TOPIC_THERMAL]  # plant data is later in time
    ts, _, key, value = gpu_msgs[4]
    frame = decode_message(tables["gpu"], key, value, 0)
    assert frame.num_rows == 4 and set(frame["rack"].to_pylist()) == {key.decode()}
    assert frame["ts"].cast(pa.int64()).to_pylist() == [ts] * 4
    mask = pc.and_(pc.equal(gpu["rack"], key.decode()), pc.equal(gpu["ts"].cast(pa.int64()), ts))
    expect = gpu.filter(mask)
    assert frame.sort_by("gpu").equals(expect.sort_by("gpu").cast(frame.schema))


def test_replay_leaves_out_frames_the_worker_would_refuse(tmp_path: Path) -> None:
    """Rows stored before validation existed (1000 C, a 2,000-GPU frame) are not replayed."""
    from collections import Counter

    import numpy as np

    tables = default_tables()
    good = synth.gpu_table(2, 4, 3, start_ms=START_MS, seed=3)
    hot = synth.gpu_table(1, 4, 1, start_ms=START_MS + 1000, rack_prefix="HOT")
    hot = hot.set_column(5, "temp_gpu_c", pa.array(np.full(4, 1000.0, np.float32)))
    huge = synth.gpu_table(1, 2000, 1, start_ms=START_MS + 2000, rack_prefix="BIG")
    day = day_of_ms(START_MS)
    for t in (good, hot, huge):
        write_file(tables["gpu"], t, date_dir(tmp_path, "gpu", day))
    t0 = dt.datetime.fromtimestamp(START_MS / 1000, dt.UTC)
    refused: Counter[str] = Counter()
    msgs = list(replay_messages(tmp_path, t0, t0 + dt.timedelta(seconds=10), refused=refused))
    assert sorted({m[2] for m in msgs}) == [b"R0000", b"R0001"]
    assert len(msgs) == 6
    assert sum(refused.values()) == 2
