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


def compact_partition(
    tdef: TableDef, part_dir: Path, options: WriterOptions | None = None
) -> Path | None:
    """Merge the files of ``part_dir`` smaller than the row-group target; None if < 2."""
    opts = options or WriterOptions()
    small = [
        p
        for p in sorted(part_dir.glob("*.parquet"))
        if not p.name.startswith(".") and pq.read_metadata(p).num_rows < opts.row_group_rows
    ]
    if len(small) < 2:
        return None
    table = pa.concat_tables([pq.read_table(p, schema=tdef.schema) for p in small])
    offsets = merge_offsets(file_offsets(p) for p in small)
    merged = write_file(
        tdef,
        table,
        part_dir,
        offsets=offsets,
        replaces=[p.name for p in small],
        options=opts,
        name=new_part_name("compact"),
    )
    for p in small:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    fsync_dir(part_dir)
    log.info(
        "compacted table=%s dir=%s files=%d rows=%d",
        tdef.name,
        part_dir.name,
        len(small),
        table.num_rows,
    )
    return merged


def compact_table(
    tdef: TableDef, data_dir: Path, options: WriterOptions | None = None
) -> list[Path]:
    table_dir = tdef.table_dir(data_dir)
    remove_replaced(table_dir)
    out = []
    for d in sorted(table_dir.glob("date=*")):
        if d.is_dir() and (p := compact_partition(tdef, d, options)) is not None:
            out.append(p)
    return out
