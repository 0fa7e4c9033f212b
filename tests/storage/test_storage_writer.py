"""Writer: encodings, sort order, footer offsets, atomic files; offset bookkeeping."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage import synth
from storage.layout import META_OFFSETS, date_dir, default_tables, list_parts, list_temp_files
from storage.offsets import (
    RangeSet,
    commit_offset,
    decode_offsets,
    encode_offsets,
    file_offsets,
    resume_offset,
    store_offsets,
)
from storage.writer import BufferedWriter, StoreUnavailable, WriterOptions, write_file

GPU = default_tables()["gpu"]
DAY = dt.date(2026, 9, 21)


def _encodings(path: Path) -> dict[str, set[str]]:
    md = pq.ParquetFile(path).metadata
    rg = md.row_group(0)
    return {rg.column(i).path_in_schema: set(rg.column(i).encodings) for i in range(md.num_columns)}


def test_write_file_encodings_sort_and_metadata(tmp_path: Path) -> None:
    t = synth.gpu_table(2, 3, 50, seed=1)
    offsets = {("telemetry.gpu", 0): RangeSet([(10, 19)]), ("telemetry.gpu", 1): RangeSet([(5, 5)])}
    path = write_file(GPU, t, tmp_path / "d", offsets=offsets)
    enc = _encodings(path)
    assert "DELTA_BINARY_PACKED" in enc["ts"]
    assert "DELTA_BINARY_PACKED" in enc["energy_mj"]
    assert "BYTE_STREAM_SPLIT" in enc["power_w"]
    assert "BYTE_STREAM_SPLIT" in enc["temp_gpu_c"]
    assert enc["rack"] & {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}
    md = pq.ParquetFile(path).metadata
    col = md.row_group(0).column(3)
    assert col.compression == "ZSTD"
    assert col.statistics is not None and col.statistics.has_min_max
    assert [s.column_index for s in md.row_group(0).sorting_columns] == [1, 2, 0]
    back = pq.read_table(path)
    assert back.num_rows == t.num_rows
    keys = list(zip(*(back.column(c).to_pylist() for c in ("rack", "gpu", "ts")), strict=True))
    assert keys == sorted(keys)
    assert back.schema.remove_metadata().equals(GPU.schema.remove_metadata())
    assert decode_offsets(md.metadata[META_OFFSETS]) == offsets
    assert file_offsets(path) == offsets
    assert list_temp_files(tmp_path) == []


def test_write_file_failure_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "gpu"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="cannot write"):
        write_file(GPU, synth.gpu_table(1, 1, 2), blocker / "date=2026-09-21")
    assert list(tmp_path.iterdir()) == [blocker]


def test_buffered_writer_flushes_by_rows_and_age(tmp_path: Path) -> None:
    now = [0.0]
    w = BufferedWriter(tmp_path, WriterOptions(row_group_rows=100, max_age_s=10), lambda: now[0])
    tp = ("telemetry.gpu", 0)
    t = synth.gpu_table(1, 10, 1)
    for off in range(5):
        w.add(GPU, DAY, t, tp, off)
    assert w.due() == [] and w.pending_first(tp) == [0]
    for off in range(5, 10):
        w.add(GPU, DAY, t, tp, off)
    assert w.due() == [("gpu", DAY)]
    [path] = w.flush_due()
    assert path.parent == date_dir(tmp_path, "gpu", DAY)
    assert file_offsets(path) == {tp: RangeSet([(0, 9)])}
    assert w.pending_first(tp) == []
    w.add(GPU, DAY, t, tp, 10)
    assert w.due() == []
    now[0] = 10.0
    assert w.due() == [("gpu", DAY)]


def test_failed_flush_keeps_the_buffer(tmp_path: Path) -> None:
    w = BufferedWriter(tmp_path, WriterOptions(row_group_rows=1))
    (tmp_path / "gpu").write_text("in the way")
    w.add(GPU, DAY, synth.gpu_table(1, 4, 1), ("telemetry.gpu", 0), 3)
    with pytest.raises(StoreUnavailable):
        w.flush_due()
    assert w.buffered_rows == 4 and w.pending_first(("telemetry.gpu", 0)) == [3]
    (tmp_path / "gpu").unlink()
    [path] = w.flush_due()
    assert pq.read_table(path).num_rows == 4
    assert store_offsets(tmp_path, ["gpu"]) == {("telemetry.gpu", 0): RangeSet([(3, 3)])}
    assert list_parts(tmp_path / "gpu") == [path]


def test_bytes_per_sample_below_one(tmp_path: Path) -> None:
    # 9 metric values per row (everything but ts, rack, gpu), as Prometheus counts samples.
    t = synth.gpu_table(4, 72, 600, seed=5)
    path = write_file(GPU, t, tmp_path)
    per_sample = path.stat().st_size / (t.num_rows * 9)
    assert per_sample < 1.0


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 10)), max_size=40))
def test_rangeset_matches_a_set(items: list[tuple[int, int]]) -> None:
    rs = RangeSet()
    ref: set[int] = set()
    for a, n in items:
        rs.add(a, a + n)
        ref.update(range(a, a + n + 1))
    assert len(rs) == len(ref)
    assert all((x in rs) == (x in ref) for x in range(0, 215))
    flat = [x for a, b in rs for x in (a, b)]
    assert flat == sorted(flat)
    assert all(rs.ranges[i][1] + 1 < rs.ranges[i + 1][0] for i in range(len(rs.ranges) - 1))
    for start in (0, 50, 120):
        m = rs.first_missing_from(start)
        assert m not in ref and all(x in ref for x in range(start, m))
    assert RangeSet.from_list(rs.to_list()) == rs


def test_resume_offset_cases() -> None:
    durable = RangeSet([(0, 9), (15, 19)])
    assert resume_offset(None, 0, durable) == 10  # no commit: skip the durable head
    assert resume_offset(5, 0, durable) == 10  # committed inside a durable run
    assert resume_offset(10, 0, durable) == 10  # gap at 10..14 must be re-read
    assert resume_offset(12, 0, durable) == 12
    assert resume_offset(15, 0, durable) == 20
    assert resume_offset(3, 7, None) == 7  # log start moved past the commit
    assert resume_offset(None, 0, None) == 0


def test_commit_offset_waits_for_buffered_records() -> None:
    assert commit_offset(100, []) == 100
    assert commit_offset(100, [40, 70]) == 40


def test_offsets_json_round_trip() -> None:
    m = {("a", 0): RangeSet([(1, 3), (7, 7)]), ("b", 2): RangeSet([(0, 0)])}
    assert decode_offsets(encode_offsets(m)) == m
    assert encode_offsets({("a", 1): RangeSet()}) == b"{}"


def test_conform_rejects_a_wrong_frame(tmp_path: Path) -> None:
    from twin.errors import DecodeError

    bad = pa.table({"ts": np.array([1], dtype="int64")})
    with pytest.raises(DecodeError, match="missing columns"):
        write_file(GPU, bad, tmp_path)


def test_flush_isolating_drops_only_the_batch_that_cannot_be_written(tmp_path: Path) -> None:
    gdef = default_tables()["gpu"]
    day = dt.date(2026, 9, 21)
    w = BufferedWriter(tmp_path)
    good = synth.gpu_table(1, 4, 6)
    frames = [good.slice(i * 4, 4) for i in range(6)]
    bad = pa.table({"ts": frames[0].column("ts")})  # no other column: cannot be written
    for i, f in enumerate(frames[:3]):
        w.add(gdef, day, f, ("t", 0), i)
    w.add(gdef, day, bad, ("t", 0), 3)
    for i, f in enumerate(frames[3:], start=4):
        w.add(gdef, day, f, ("t", 0), i)
    with pytest.raises(pa.ArrowInvalid):
        w.flush(("gpu", day))
    paths, dropped = w.flush_isolating(("gpu", day))
    assert [(tp, off) for tp, off, _ in dropped] == [(("t", 0), 3)]
    stored = pa.concat_tables([pq.read_table(p) for p in paths])
    assert stored.num_rows == good.num_rows
    held = RangeSet()
    for p in paths:
        held.update(file_offsets(p)[("t", 0)])
    assert held.to_list() == [[0, 2], [4, 6]]  # the dropped record is in no file
    assert not w.buffer_keys()


async def test_sink_write_counts_a_record_that_cannot_be_written(tmp_path: Path) -> None:
    from storage.sink import ParquetSink

    sink = ParquetSink("127.0.0.1:9", tmp_path, ["telemetry.gpu"])
    gdef = sink.by_topic["telemetry.gpu"]
    day = dt.date(2026, 9, 21)
    good = synth.gpu_table(1, 4, 2)
    sink.writer.add(gdef, day, good.slice(0, 4), ("telemetry.gpu", 0), 0)
    sink.writer.add(gdef, day, pa.table({"ts": good.column("ts")}), ("telemetry.gpu", 0), 1)
    sink.writer.add(gdef, day, good.slice(4, 4), ("telemetry.gpu", 0), 2)
    await sink._write(("gpu", day))
    assert sink.refused["internal_error"] == 1 and sink.stats["bad"] == 1
    assert sum(pq.read_table(p).num_rows for p in list_parts(tmp_path / "gpu")) == 8
