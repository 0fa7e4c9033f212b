"""Durable Parquet files: sort, encode, write to a temp file, fsync, rename, fsync the dir.

:class:`BufferedWriter` gathers record batches per (table, date) until a buffer reaches the
row-group target or its maximum age, because every Parquet write closes a row group and
DuckDB scans best with 100k-1M rows per group (docs/sources.md E4).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.layout import (
    META_OFFSETS,
    META_REPLACES,
    META_TABLE,
    TEMP_PREFIX,
    TableDef,
    date_dir,
    new_part_name,
)
from storage.offsets import OffsetMap, RangeSet, TopicPartition, encode_offsets
from twin.errors import DecodeError, TwinError


class StorageError(TwinError):
    """The store could not be written; the message names the path and the cause."""


class StoreUnavailable(StorageError):
    """The data directory cannot take writes now (full disk, read-only, permissions)."""

    def __init__(self, message: str, errno_: int | None) -> None:
        super().__init__(message)
        self.errno = errno_


@dataclass(frozen=True)
class WriterOptions:
    """Parquet settings; the defaults come from bench/bench_storage.py measurements."""

    row_group_rows: int = 500_000  # DuckDB: 100k-1M rows per row group (docs/sources.md E4)
    max_age_s: float = 60.0
    compression_level: int = 3  # zstd; level 3 vs 1 saves ~5 % at NVML resolution
    write_page_index: bool = True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unavailable(action: str, path: Path, exc: OSError) -> StoreUnavailable:
    reason = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
    }.get(exc.errno or -1, exc.strerror or type(exc).__name__)
    return StoreUnavailable(f"cannot {action} {path}: {reason} ({exc})", exc.errno)


def conform(tdef: TableDef, data: pa.RecordBatch | pa.Table) -> pa.Table:
    """``data`` as a table in ``tdef.schema`` (columns reordered and cast)."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
    if table.schema.equals(tdef.schema, check_metadata=False):
        return table  # the usual case (a validated frame): nothing to reorder or cast
    names = tdef.schema.names
    missing = [n for n in names if n not in table.column_names]
    # A column added to the table later (nullable) is NULL in rows written before it
    # existed (a telemetry.gpu/v1 frame, an old file being compacted): not measured.
    absent = [n for n in missing if tdef.schema.field(n).nullable]
    missing = [n for n in missing if n not in absent]
    if missing:
        raise DecodeError(f"table {tdef.name}: missing columns {missing}")
    for n in absent:
        f = tdef.schema.field(n)
        table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    try:
        return table.select(names).cast(tdef.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DecodeError(f"table {tdef.name}: cannot cast to its schema: {exc}") from exc


def sort_rows(tdef: TableDef, table: pa.Table) -> pa.Table:
    """Rows sorted by the table's filter keys, so row-group statistics prune well."""
    return table.sort_by([(k, "ascending") for k in tdef.sort_keys])


def file_metadata(
    tdef: TableDef,
    offsets: Mapping[TopicPartition, RangeSet] | None = None,
    replaces: Iterable[str] = (),
    extra: Mapping[bytes, bytes] | None = None,
) -> dict[bytes, bytes]:
    """Footer key-value metadata of a new file of ``tdef`` (table, offsets, replaced files)."""
    meta = dict(tdef.schema.metadata or {})
    meta[META_TABLE] = tdef.name.encode()
    if offsets:
        meta[META_OFFSETS] = encode_offsets(offsets)
    replaces = list(replaces)
    if replaces:
        meta[META_REPLACES] = ",".join(replaces).encode()
    meta.update(extra or {})
    return meta


def balanced_row_groups(rows: int, target: int) -> int:
    """Rows per row group that split ``rows`` into equal groups of at most ``target``.

    A plain ``target`` leaves a small trailing group (531k rows -> 500k + 31k); equal
    groups (2 x 265.5k) keep every group in DuckDB's 100k-1M range and compress alike.
    """
    if rows <= target:
        return max(rows, 1)
    groups = -(-rows // target)
    return -(-rows // groups)


def open_parquet_writer(
    tdef: TableDef, path: Path, meta: Mapping[bytes, bytes], opts: WriterOptions
) -> pq.ParquetWriter:
    """A ParquetWriter with the store's encodings (see docs/storage.md, Encoding)."""
    schema = tdef.schema.with_metadata(dict(meta))
    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        compression_level=opts.compression_level,
        use_dictionary=list(tdef.tag_columns),
        column_encoding=tdef.column_encodings(),
        write_statistics=True,
        write_page_index=opts.write_page_index,
        sorting_columns=[pq.SortingColumn(schema.get_field_index(k)) for k in tdef.sort_keys],
    )


def write_durably(directory: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Create ``directory/name`` with ``fill(temp_path)``: the file appears under its final
    name only once its bytes are on disk (temp file, fsync, rename, fsync of the directory).

    Raises :class:`StoreUnavailable` on full disk, read-only or permission errors, leaving
    no file behind; any other error also removes the temp file and propagates.
    """
    final = directory / name
    tmp = directory / f"{TEMP_PREFIX}{final.name}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fill(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _unavailable("write", final, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return final


def write_file(
    tdef: TableDef,
    table: pa.Table,
    directory: Path,
    *,
    offsets: Mapping[TopicPartition, RangeSet] | None = None,
    replaces: Iterable[str] = (),
    options: WriterOptions | None = None,
    name: str | None = None,
    sort: bool = True,
) -> Path:
    """Write ``table`` as one new durable file in ``directory`` and return its path.

    The file appears under its final name only once its bytes are on disk: temp file,
    fsync, rename, fsync of the directory. Raises :class:`StoreUnavailable` on full disk,
    read-only or permission errors, leaving no file behind. Row groups are of equal size,
    at most ``options.row_group_rows``.
    """
    opts = options or WriterOptions()
    table = conform(tdef, table)
    if sort:
        table = sort_rows(tdef, table)
    meta = file_metadata(tdef, offsets, replaces)

    def fill(tmp: Path) -> None:
        with open_parquet_writer(tdef, tmp, meta, opts) as w:
            w.write_table(
                table.replace_schema_metadata(meta),
                row_group_size=balanced_row_groups(table.num_rows, opts.row_group_rows),
            )

    return write_durably(directory, name or new_part_name(), fill)


@dataclass
class _Buffer:
    tdef: TableDef
    day: dt.date
    created: float
    batches: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    offsets: OffsetMap = field(default_factory=dict)
    # The record each batch came from (for isolating one that cannot be written).
    sources: list[tuple[TopicPartition | None, int | None]] = field(default_factory=list)


BufferKey = tuple[str, dt.date]


class BufferedWriter:
    """Buffers rows per (table, date) and writes each buffer as one file when due.

    A failed flush keeps its buffer intact, so the caller can retry once the cause is gone.
    """

    def __init__(
        self,
        data_dir: Path,
        options: WriterOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = data_dir
        self.options = options or WriterOptions()
        self._clock = clock
        self._buffers: dict[BufferKey, _Buffer] = {}

    def add(
        self,
        tdef: TableDef,
        day: dt.date,
        table: pa.Table,
        tp: TopicPartition | None = None,
        offset: int | None = None,
    ) -> None:
        key = (tdef.name, day)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _Buffer(tdef, day, self._clock())
        if table.num_rows:
            buf.batches.append(table)
            buf.rows += table.num_rows
            buf.sources.append((tp, offset))
        if tp is not None and offset is not None:
            buf.offsets.setdefault(tp, RangeSet()).add(offset)

    @property
    def buffered_rows(self) -> int:
        return sum(b.rows for b in self._buffers.values())

    def buffer_keys(self) -> list[BufferKey]:
        return list(self._buffers)

    def due(self) -> list[BufferKey]:
        now = self._clock()
        return [
            k
            for k, b in self._buffers.items()
            if b.rows >= self.options.row_group_rows or now - b.created >= self.options.max_age_s
        ]

    def pending_first(self, tp: TopicPartition) -> list[int]:
        """First buffered offset of ``tp`` in each buffer holding any."""
        out = []
        for b in self._buffers.values():
            rs = b.offsets.get(tp)
            if rs:
                out.append(rs.ranges[0][0])
        return out

    def flush(self, key: BufferKey) -> Path | None:
        buf = self._buffers[key]
        if buf.rows == 0:
            # Only offsets of empty messages: nothing to store, nothing to wait for.
            del self._buffers[key]
            return None
        table = pa.concat_tables(buf.batches)
        path = write_file(
            buf.tdef,
            table,
            date_dir(self.data_dir, buf.tdef.name, buf.day),
            offsets=buf.offsets,
            options=self.options,
        )
        del self._buffers[key]
        return path

    def flush_isolating(
        self, key: BufferKey
    ) -> tuple[list[Path], list[tuple[TopicPartition | None, int | None, Exception]]]:
        """Write a buffer whose :meth:`flush` failed for a reason other than the store.

        Halves the buffer until the batches that cannot be written are alone; those are
        dropped and returned with their record and error, every other batch is written
        (with its records' offsets). A :class:`StoreUnavailable` on the way keeps what is
        not written yet buffered and is raised.
        """
        buf = self._buffers[key]
        todo = [list(zip(buf.batches, buf.sources, strict=True))]
        paths: list[Path] = []
        dropped: list[tuple[TopicPartition | None, int | None, Exception]] = []
        directory = date_dir(self.data_dir, buf.tdef.name, buf.day)
        while todo:
            part = todo.pop()
            offsets: OffsetMap = {}
            for _, (tp, off) in part:
                if tp is not None and off is not None:
                    offsets.setdefault(tp, RangeSet()).add(off)
            try:
                table = pa.concat_tables([b for b, _ in part])
                paths.append(
                    write_file(buf.tdef, table, directory, offsets=offsets, options=self.options)
                )
            except StoreUnavailable:
                rest = [item for chunk in [*todo, part] for item in chunk]
                self._rebuffer(key, buf, rest)
                raise
            except Exception as exc:
                if len(part) == 1:
                    dropped.append((part[0][1][0], part[0][1][1], exc))
                else:
                    half = len(part) // 2
                    todo += [part[half:], part[:half]]
        del self._buffers[key]
        return paths, dropped

    def _rebuffer(
        self,
        key: BufferKey,
        buf: _Buffer,
        items: list[tuple[pa.Table, tuple[TopicPartition | None, int | None]]],
    ) -> None:
        new = _Buffer(buf.tdef, buf.day, buf.created)
        for table, (tp, off) in items:
            new.batches.append(table)
            new.rows += table.num_rows
            new.sources.append((tp, off))
            if tp is not None and off is not None:
                new.offsets.setdefault(tp, RangeSet()).add(off)
        self._buffers[key] = new

    def flush_due(self) -> list[Path]:
        return [p for k in self.due() if (p := self.flush(k)) is not None]

    def flush_all(self) -> list[Path]:
        return [p for k in self.buffer_keys() if (p := self.flush(k)) is not None]

    def clear(self) -> None:
        """Forget every buffer (after a failed flush on revoke: the rows are re-read)."""
        self._buffers.clear()
