"""Sample-key index: a sample is stored once, whatever its offset, also across restarts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.samples import SampleIndex, stored_samples
from storage.writer import write_file

TABLES = default_tables()
START_MS = 1_790_000_000_000


def _frames(n_steps: int, start_ms: int = START_MS) -> list[pa.Table]:
    t = synth.gpu_table(2, 8, n_steps, start_ms=start_ms)
    return [t.slice(i * 8, 8) for i in range(t.num_rows // 8)]


def test_same_frame_200_times_is_new_once() -> None:
    idx = SampleIndex(TABLES["gpu"], 600_000)
    f = _frames(1)[0]
    got = [idx.admit(f) for _ in range(200)]
    assert got[0][0].num_rows == 8 and got[0][2] == 0
    assert all(t.num_rows == 0 and late is None and d == 8 for t, late, d in got[1:])


def test_partial_overlap_keeps_only_new_gpus() -> None:
    idx = SampleIndex(TABLES["gpu"], 600_000)
    f = _frames(1)[0]
    idx.admit(f.slice(0, 5))
    new, _, dups = idx.admit(f.slice(3, 5))
    assert new.column("gpu").to_pylist() == [5, 6, 7] and dups == 2


def test_points_and_json_tables_key_by_sub_key() -> None:
    plant = synth.points_table({"CDU-A": {"supply_temp_c": 45.0, "flow_kg_s": 2.0}}, 3)
    idx = SampleIndex(TABLES["plant"], 600_000)
    assert idx.admit(plant)[0].num_rows == 6
    new, _, dups = idx.admit(plant.slice(1, 4))
    assert new.num_rows == 0 and dups == 4


def test_late_samples_are_checked_against_the_store(tmp_path: Path) -> None:
    gdef = TABLES["gpu"]
    old = synth.gpu_table(2, 8, 5, start_ms=START_MS)
    write_file(gdef, old, date_dir(tmp_path, "gpu", day_of_ms(START_MS)))
    idx = SampleIndex(gdef, 60_000)
    idx.admit(_frames(1, START_MS + 3_600_000)[0])  # an hour later: the old rows are late
    replayed = pa.concat_tables(
        [old.slice(0, 16), synth.gpu_table(1, 8, 1, start_ms=START_MS - 500)]
    )
    new, late, dups = idx.admit(replayed)
    assert new.num_rows == 0 and dups == 0 and late is not None and late.num_rows == 24
    kept, dups = idx.admit_late(late, stored_samples(tmp_path, idx, late))
    assert kept.num_rows == 8 and dups == 16  # only the never-stored frame
    # Until its buffer is written, a second copy is caught by the pending set.
    kept2, dups2 = idx.admit_late(late, stored_samples(tmp_path, idx, late))
    assert kept2.num_rows == 0 and dups2 == 24


def test_window_is_rebuilt_from_the_store(tmp_path: Path) -> None:
    gdef = TABLES["gpu"]
    rows = synth.gpu_table(3, 8, 120, start_ms=START_MS)
    write_file(gdef, rows, date_dir(tmp_path, "gpu", day_of_ms(START_MS)))
    idx = SampleIndex(gdef, 30_000)
    n = idx.load(tmp_path, START_MS + 200_000)
    assert n == 3 * 8 * 31  # instants newest-30 s .. newest
    assert idx.newest == START_MS + 119_000
    last = rows.slice(rows.num_rows - 24, 24)
    new, late, dups = idx.admit(last)
    assert new.num_rows == 0 and dups == 24 and late is None
    first = rows.slice(0, 24)
    new, late, _ = idx.admit(first)
    assert late is not None and late.num_rows == 24
    kept, dups = idx.admit_late(late, stored_samples(tmp_path, idx, late))
    assert kept.num_rows == 0 and dups == 24


def test_prune_bounds_memory() -> None:
    idx = SampleIndex(TABLES["gpu"], 10_000)
    for f in _frames(100):
        idx.admit(f)
        idx.prune()
    assert len(idx) <= 2 * 2 * 21  # two racks, at most two windows of 1 s instants


def test_load_handles_partial_frames_and_stored_duplicates(tmp_path: Path) -> None:
    gdef = TABLES["gpu"]
    rows = synth.gpu_table(2, 8, 3, start_ms=START_MS)
    racks, gpus = rows.column("rack").to_pylist(), rows.column("gpu").to_pylist()
    keep = [not (r == "R0000" and g in (0, 5)) for r, g in zip(racks, gpus, strict=True)]
    partial = rows.filter(pa.array(keep))
    d = date_dir(tmp_path, "gpu", day_of_ms(START_MS))
    write_file(gdef, partial, d)
    write_file(gdef, partial.slice(0, 4), d)  # the same rows twice in the store
    idx = SampleIndex(gdef, 60_000)
    idx.load(tmp_path, START_MS + 10_000)
    new, _, dups = idx.admit(rows.slice(0, 8))  # R0000 at the first instant, all 8 GPUs
    assert new.column("gpu").to_pylist() == [0, 5] and dups == 6
    new, _, dups = idx.admit(rows.slice(8, 8))  # R0001: complete in the store
    assert new.num_rows == 0 and dups == 8
