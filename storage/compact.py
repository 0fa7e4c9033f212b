"""Compaction: merge the small files of a date partition into one, keeping offset ranges;
seal a finished partition into one file sorted by the table's keys.

The merged file lists the files it replaces in its footer (``twin.replaces``) and carries
the union of their offset ranges, so the sink's reconciliation still sees every record.
The swap: write the merged file (temp, fsync, rename, fsync dir), then delete the inputs.
A crash between the two leaves both; :func:`remove_replaced` (run first by every compaction
and by the sink on start) deletes the inputs that a durable merged file names.

Sealing (:func:`seal_partition`): once a partition's UTC day is over, or no file came for
:data:`SEAL_QUIET_S`, all its files are merged (a streaming k-way merge of the sorted files,
so memory does not grow with the day) into one file sorted by the table's keys, whose row
groups are cut at series boundaries: a query for one GPU then reads one or two row groups
of one file instead of a row group of every file of the day.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.layout import (
    DATE_DIR_RE,
    META_REPLACES,
    META_SEALED,
    PART_SUFFIX,
    TEMP_PREFIX,
    TableDef,
    list_parts,
    new_part_name,
)
from storage.offsets import file_offsets, merge_offsets
from storage.writer import (
    WriterOptions,
    conform,
    file_metadata,
    fsync_dir,
    open_parquet_writer,
    sort_rows,
    write_durably,
    write_file,
)

log = logging.getLogger("storage.compact")


def remove_replaced(table_dir: Path) -> int:
    """Delete files that a merged file already replaces; returns the count."""
    n = 0
    for p in list_parts(table_dir):
        try:
            raw = (pq.read_metadata(p).metadata or {}).get(META_REPLACES)
        except FileNotFoundError:
            continue  # replaced by a file seen earlier in this loop
        if not raw:
            continue
        for name in raw.decode().split(","):
            old = p.parent / name
            if name and old != p and old.exists():
                old.unlink()
                n += 1
        if n:
            fsync_dir(p.parent)
    return n


#: Most rows merged into one file at a time: bounds compaction's memory (about 60 B a GPU
#: row in Arrow, so ~250 MB) whatever a partition holds.
MAX_MERGE_ROWS = 4_000_000


def _merge_groups(small: list[tuple[Path, int]], max_rows: int) -> list[list[Path]]:
    """Consecutive small files in groups of at most ``max_rows`` rows (groups of 2+ only)."""
    groups: list[list[Path]] = []
    current: list[Path] = []
    rows = 0
    for path, n in small:
        if current and rows + n > max_rows:
            groups.append(current)
            current, rows = [], 0
        current.append(path)
        rows += n
    groups.append(current)
    return [g for g in groups if len(g) >= 2]


def _merge(tdef: TableDef, part_dir: Path, files: list[Path], opts: WriterOptions) -> Path:
    table = pa.concat_tables([pq.read_table(p, schema=tdef.schema) for p in files])
    offsets = merge_offsets(file_offsets(p) for p in files)
    merged = write_file(
        tdef,
        table,
        part_dir,
        offsets=offsets,
        replaces=[p.name for p in files],
        options=opts,
        name=new_part_name("compact"),
    )
    for p in files:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    fsync_dir(part_dir)
    log.info(
        "compacted table=%s dir=%s files=%d rows=%d",
        tdef.name,
        part_dir.name,
        len(files),
        table.num_rows,
    )
    return merged


def compact_partition(
    tdef: TableDef,
    part_dir: Path,
    options: WriterOptions | None = None,
    *,
    max_rows: int = MAX_MERGE_ROWS,
) -> list[Path]:
    """Merge the files of ``part_dir`` under half of ``max_rows`` rows, at most ``max_rows``
    rows into one file; returns the merged files (none if < 2 small files).

    Files converge to ``max_rows / 2 .. max_rows`` rows, sorted by the table's keys: long
    runs of one GPU compress far better (bench/results/storage_compare.md: files covering
    60 s of a GPU cost 0.62 B/sample, 900 s 0.52), and memory stays bounded.
    """
    opts = options or WriterOptions()
    small = []
    for p in sorted(part_dir.glob("*.parquet")):
        if p.name.startswith("."):
            continue
        n = pq.read_metadata(p).num_rows
        if n < max_rows // 2:
            small.append((p, n))
    return [_merge(tdef, part_dir, g, opts) for g in _merge_groups(small, max_rows)]


#: A partition of today is sealed once no file has come for this long [s] (a replayed or
#: backfilled day); a past day's partition is sealed at the next pass.
SEAL_QUIET_S = 3600.0
#: Row-group limit of a sealed file. Groups are cut where a series starts, so a GPU's day at
#: 1 Hz (86,400 rows) is one group and one GPU's hour reads one group of one file
#: (DuckDB's own row groups hold 122,880 rows, docs/sources.md E4).
SEALED_ROW_GROUP_ROWS = 131_072
#: Rows decoded per input file at a time while sealing: memory ~ files x this x ~60 B
#: (143 files of a 64-rack day: ~70 MB), whatever the partition holds.
SEAL_BATCH_ROWS = 8_192
#: Partitions above this many rows are not sealed (one file per partition keeps the swap
#: atomic; the campus' day, 7.8 G rows, would take hours on two cores): small-file
#: compaction goes on there.
SEAL_MAX_ROWS = 1_000_000_000
#: A sealed partition is sealed again when its later files hold this share of its rows.
RESEAL_FRACTION = 0.01
#: File name prefix of a sealed file (its footer says so too: META_SEALED).
SEALED_PREFIX = "sealed-"


def _data_files(part_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in part_dir.glob(f"*{PART_SUFFIX}")
        if not p.name.startswith((TEMP_PREFIX, ".", "_"))
    )


def _key(table: pa.Table, keys: Sequence[str], i: int) -> tuple[Any, ...]:
    """The sort key of row ``i``; NULL sorts last, as pyarrow's sort does."""
    out: list[Any] = []
    for k in keys:
        v = table.column(k)[i].as_py()
        out += [v is None, 0 if v is None else v]
    return tuple(out)


def _bisect(table: pa.Table, keys: Sequence[str], bound: tuple[Any, ...], right: bool) -> int:
    """Rows of the sorted ``table`` whose key is < ``bound`` (<= with ``right``)."""
    lo, hi = 0, table.num_rows
    while lo < hi:
        mid = (lo + hi) // 2
        k = _key(table, keys, mid)
        if k < bound or (right and k == bound):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _is_sorted_file(md: pq.FileMetaData, tdef: TableDef) -> bool:
    """Whether every row group declares the table's sort order (write_file sorts the file)."""
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    want = [names.index(k) if k in names else -1 for k in tdef.sort_keys]
    for g in range(md.num_row_groups):
        cols = md.row_group(g).sorting_columns
        if [c.column_index for c in cols][: len(want)] != want or any(
            c.descending for c in cols[: len(want)]
        ):
            return False
    return True


class _Cursor:
    """The rows of one input file in the table's sort order, as runs of one series each."""

    def __init__(self, tdef: TableDef, path: Path, batch_rows: int) -> None:
        self.series_keys = tdef.sort_keys[:-1]
        pf = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        self._batches: Iterator[pa.Table]
        if _is_sorted_file(pf.metadata, tdef):
            self._batches = (conform(tdef, b) for b in pf.iter_batches(batch_size=batch_rows))
        else:  # a foreign or pre-sorting file: sorted in memory (such files were small)
            whole = sort_rows(tdef, conform(tdef, pf.read()))
            self._batches = (whole.slice(i, batch_rows) for i in range(0, len(whole), batch_rows))
        self._runs: list[pa.Table] = []

    def next_run(self) -> pa.Table | None:
        """The next run of rows of one series (None at the end of the file)."""
        while not self._runs:
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._runs = self._split(batch)
        return self._runs.pop()

    def _split(self, batch: pa.Table) -> list[pa.Table]:
        """``batch`` cut where its series changes, last run first (runs are popped)."""
        n = batch.num_rows
        if n == 0:
            return []
        change = np.zeros(n - 1, dtype=bool)
        for k in self.series_keys:
            col = batch.column(k)
            ne = pc.not_equal(col.slice(1), col.slice(0, n - 1))
            change |= pc.fill_null(ne, True).to_numpy(zero_copy_only=False)
        cuts = [0, *(np.flatnonzero(change) + 1).tolist(), n]
        return [batch.slice(a, b - a) for a, b in itertools.pairwise(cuts)][::-1]


class _RowGroups:
    """Writes sorted rows as row groups of at most ``target`` rows cut at series starts
    (series = the sort keys but the last), so one series' rows share one row group."""

    def __init__(
        self, writer: pq.ParquetWriter, tdef: TableDef, target: int, meta: dict[bytes, bytes]
    ) -> None:
        self.writer, self.tdef, self.target, self.meta = writer, tdef, target, meta
        self.series_keys = tdef.sort_keys[:-1]
        self.parts: list[pa.Table] = []
        self.rows = 0
        self.groups = 0

    def add(self, rows: pa.Table) -> None:
        self.parts.append(rows)
        self.rows += rows.num_rows
        if self.rows < self.target:
            return
        acc = pa.concat_tables(self.parts)
        while acc.num_rows > self.target:
            cut = self.target
            if self.series_keys:
                series = _key(acc, self.series_keys, self.target)
                cut = _bisect(acc, self.series_keys, series, right=False) or self.target
            self._write(acc.slice(0, cut))
            acc = acc.slice(cut)
        self.parts, self.rows = [acc], acc.num_rows

    def _write(self, rows: pa.Table) -> None:
        # runs of one series from several files may overlap in time: sort the group
        rows = sort_rows(self.tdef, rows).combine_chunks().replace_schema_metadata(self.meta)
        self.writer.write_table(rows, row_group_size=rows.num_rows)
        self.groups += 1

    def close(self) -> None:
        if self.rows:
            self._write(pa.concat_tables(self.parts))
        self.parts, self.rows = [], 0


def seal_partition(
    tdef: TableDef,
    part_dir: Path,
    options: WriterOptions | None = None,
    *,
    row_group_rows: int = SEALED_ROW_GROUP_ROWS,
    batch_rows: int = SEAL_BATCH_ROWS,
) -> Path | None:
    """Merge every file of ``part_dir`` into one file sorted by the table's keys (see the
    module docstring); returns it, or None when the partition has no file.

    Durability as for compaction: the sealed file carries the union of the inputs' offset
    ranges and names them in ``twin.replaces``; the inputs are deleted after its rename.
    """
    opts = options or WriterOptions()
    files = _data_files(part_dir)
    if not files:
        return None
    offsets = merge_offsets(file_offsets(p) for p in files)
    meta = file_metadata(tdef, offsets, [p.name for p in files], {META_SEALED: b"1"})
    stats = {"rows": 0, "groups": 0}

    def fill(tmp: Path) -> None:
        # k-way merge of the files' series runs by their first key: all runs of a series
        # come out before any run of a later one, and each row group is sorted once more
        cursors = [_Cursor(tdef, p, batch_rows) for p in files]
        heap: list[tuple[tuple[Any, ...], int, pa.Table]] = []

        def push(i: int) -> None:
            run = cursors[i].next_run()
            if run is not None:
                heapq.heappush(heap, (_key(run, tdef.sort_keys, 0), i, run))

        for i in range(len(cursors)):
            push(i)
        with open_parquet_writer(tdef, tmp, meta, opts) as w:
            out = _RowGroups(w, tdef, row_group_rows, meta)
            while heap:
                _, i, run = heapq.heappop(heap)
                out.add(run)
                stats["rows"] += run.num_rows
                push(i)
            out.close()
            stats["groups"] = out.groups

    t0 = time.monotonic()
    sealed = write_durably(part_dir, new_part_name(SEALED_PREFIX.rstrip("-")), fill)
    for p in files:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    fsync_dir(part_dir)
    log.info(
        "sealed table=%s dir=%s files=%d rows=%d row_groups=%d in %.1f s",
        tdef.name,
        part_dir.name,
        len(files),
        stats["rows"],
        stats["groups"],
        time.monotonic() - t0,
    )
    return sealed


def needs_seal(part_dir: Path, day: dt.date, today: dt.date, now_s: float) -> bool:
    """Whether ``part_dir`` (the partition of ``day``) is finished and not sealed yet.

    Finished: its day is before ``today`` (UTC) or its newest file is SEAL_QUIET_S old.
    Not sealed: no sealed file, or files that came later hold RESEAL_FRACTION of its rows.
    """
    files = _data_files(part_dir)
    if not files or (len(files) == 1 and files[0].name.startswith(SEALED_PREFIX)):
        # sealed and alone: decided without reading its footer (MBs for a hall's day)
        return False
    newest = max(p.stat().st_mtime for p in files)
    if day >= today and now_s - newest < SEAL_QUIET_S:
        return False
    sealed = other = 0
    for p in files:
        md = pq.read_metadata(p)
        if (md.metadata or {}).get(META_SEALED):
            sealed += md.num_rows
        else:
            other += md.num_rows
    if sealed + other > SEAL_MAX_ROWS:
        return False
    return sealed == 0 or other > RESEAL_FRACTION * sealed


def compact_table(
    tdef: TableDef,
    data_dir: Path,
    options: WriterOptions | None = None,
    *,
    today: dt.date | None = None,
    now_s: float | None = None,
) -> list[Path]:
    """Seal the finished partitions of ``tdef`` and compact the small files of the others;
    returns the files written. ``today`` (UTC) and ``now_s`` [s since the epoch] default
    to the clock."""
    table_dir = tdef.table_dir(data_dir)
    remove_replaced(table_dir)
    now = time.time() if now_s is None else now_s
    day_now = today or dt.datetime.fromtimestamp(now, dt.UTC).date()
    out: list[Path] = []
    for d in sorted(table_dir.glob("date=*")):
        m = DATE_DIR_RE.match(d.name)
        if not (m and d.is_dir()):
            continue
        if needs_seal(d, dt.date.fromisoformat(m.group(1)), day_now, now):
            sealed = seal_partition(tdef, d, options)
            out += [sealed] if sealed is not None else []
        elif len(_data_files(d)) >= 2:  # a lone file has nothing to merge with
            out += compact_partition(tdef, d, options)
    return out
