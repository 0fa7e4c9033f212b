"""Compaction: merge the small files of a date partition into one, keeping offset ranges.

The merged file lists the files it replaces in its footer (``twin.replaces``) and carries
the union of their offset ranges, so the sink's reconciliation still sees every record.
The swap: write the merged file (temp, fsync, rename, fsync dir), then delete the inputs.
A crash between the two leaves both; :func:`remove_replaced` (run first by every compaction
and by the sink on start) deletes the inputs that a durable merged file names.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.layout import META_REPLACES, TableDef, list_parts, new_part_name
from storage.offsets import file_offsets, merge_offsets
from storage.writer import WriterOptions, fsync_dir, write_file

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


def compact_table(
    tdef: TableDef, data_dir: Path, options: WriterOptions | None = None
) -> list[Path]:
    table_dir = tdef.table_dir(data_dir)
    remove_replaced(table_dir)
    out = []
    for d in sorted(table_dir.glob("date=*")):
        if d.is_dir():
            out += compact_partition(tdef, d, options)
    return out
