"""Sample keys already stored: the sink stores a sample once, whatever its Kafka offset.

A sample is identified by its table's entity (rack, unit, scope, ...), its instant ``ts``
and its sub-key within the entity (the GPU index, the point name, ...). The same frame sent
200 times arrives at 200 offsets; offsets alone cannot tell it is one sample.

:class:`SampleIndex` keeps, per table, the keys of a recent window of instants in memory
(behind the newest instant seen), keyed by (entity, ts): GPU indices as a bit mask, other
sub-keys as a set. Older samples ("late": a replay, a backlog) are checked against the
store's files of their day (:func:`stored_samples`) and remembered until their buffer is
written. On start the window is rebuilt from the newest files of the store, so a restart
keeps the guarantee. Memory is bounded by the window: about one dict entry per entity and
instant (a 64-rack hall at 1 Hz and a 600 s window: 38,400 entries).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from storage.decode import day_of
from storage.layout import DATE_DIR_RE, TableDef, list_parts

#: Table name -> (entity column, sub-key columns). Other tables: their first sort key is the
#: entity and the remaining sort keys but ts the sub-key.
SAMPLE_KEYS: Final = {
    "gpu": ("rack", ("gpu",)),
    "plant": ("unit", ("point",)),
    "power": ("unit", ("point",)),
    "state": ("entity", ()),
    "kpi": ("scope", ("name",)),
    "residual": ("entity", ("quantity",)),
    "alerts": ("entity", ("alert_id", "state")),
}

_DAY_MS: Final = 86_400_000


def sample_key(tdef: TableDef) -> tuple[str, tuple[str, ...]]:
    """(entity column, sub-key columns) of a table."""
    if tdef.name in SAMPLE_KEYS:
        return SAMPLE_KEYS[tdef.name]
    rest = tuple(k for k in tdef.sort_keys[1:] if k != "ts")
    return tdef.sort_keys[0], rest


def _mask(idx: np.ndarray) -> int:
    """Bit mask of small non-negative integers (GPU indices)."""
    n = len(idx)
    if n and idx[0] == 0 and idx[-1] == n - 1 and np.array_equal(idx, np.arange(n)):
        return (1 << n) - 1  # the usual frame: GPUs 0..n-1
    bits = np.zeros(int(idx.max()) + 1 if n else 0, np.uint8)
    bits[idx] = 1
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")


def _bits(mask: int, size: int) -> np.ndarray:
    """Bool array of the first ``size`` bits of ``mask``."""
    raw = mask.to_bytes((max(size, mask.bit_length()) + 7) // 8, "little")
    return np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:size].astype(bool)


def _ints(col: pa.ChunkedArray) -> np.ndarray:
    """An integer column as int64 numpy (zero-copy view of a one-chunk column)."""
    if col.num_chunks == 1 and col.null_count == 0:
        return col.chunk(0).to_numpy().astype(np.int64, copy=False)
    return col.to_numpy().astype(np.int64)


def _ts_ms(table: pa.Table) -> np.ndarray:
    """``ts`` [ms since epoch] as int64 numpy, without a cast for one-chunk columns."""
    col = table.column("ts")
    if col.num_chunks == 1 and col.null_count == 0 and col.type.unit == "ms":
        return col.chunk(0).view(pa.int64()).to_numpy()
    return col.cast(pa.int64()).to_numpy()


class SampleIndex:
    """Recent sample keys of one table; see the module docstring.

    ``window_ms`` [ms]: instants at most this far behind the newest one are checked in
    memory; older ones are "late" and checked against the store.
    """

    def __init__(self, tdef: TableDef, window_ms: int) -> None:
        self.tdef = tdef
        self.window_ms = window_ms
        self.entity, self.subs = sample_key(tdef)
        gpu_like = len(self.subs) == 1 and pa.types.is_integer(tdef.schema.field(self.subs[0]).type)
        self.bits = gpu_like
        self.newest: int | None = None
        self._seen: dict[tuple[Any, int], Any] = {}
        self._oldest: int | None = None
        # Late samples accepted into a buffer not yet written, per day.
        self._late: dict[dt.date, dict[tuple[Any, int], Any]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    # ---- in-window samples -----------------------------------------------------------

    def cutoff(self) -> int | None:
        """Instants below this [ms] are late (None: nothing seen yet)."""
        return None if self.newest is None else self.newest - self.window_ms

    def admit(
        self, table: pa.Table, now_ms: int | None = None, *, frame: bool = False
    ) -> tuple[pa.Table, pa.Table | None, int]:
        """Split ``table`` into (new in-window rows, late rows, in-window duplicates).

        New rows are recorded as seen; late rows are neither checked nor recorded
        (:meth:`admit_late` does, given what the store holds). The newest instant never
        moves past ``now_ms`` [ms] plus a day, so one far-future row cannot make every
        later sample late. ``frame``: the rows are one validated telemetry frame (one
        entity, no sub-key twice), which skips those checks.
        """
        if table.num_rows == 0:
            return table, None, 0
        ts = _ts_ms(table)
        cut = self.cutoff()
        late: pa.Table | None = None
        if cut is not None and int(ts.min()) < cut:
            is_late = ts < cut
            late = table.filter(pa.array(is_late))
            table = table.filter(pa.array(~is_late))
            ts = ts[~is_late]
            if table.num_rows == 0:
                return table, late, 0
        keep = self._check(table, ts, self._seen, frame)
        dups = 0
        if keep is not None:
            dups = int((~keep).sum())
            table = table.filter(pa.array(keep))
        if table.num_rows:
            hi, lo = int(ts.max()), int(ts.min())
            if now_ms is not None:
                hi = min(hi, now_ms + _DAY_MS)
            self.newest = hi if self.newest is None else max(self.newest, hi)
            self._oldest = lo if self._oldest is None else min(self._oldest, lo)
        return table, late, dups

    def _check(
        self,
        table: pa.Table,
        ts: np.ndarray,
        seen: dict[tuple[Any, int], Any],
        frame: bool = False,
    ) -> np.ndarray | None:
        """Record the rows' keys in ``seen``; a keep mask, or None when every row is new."""
        if not self.bits or ts[0] != ts[-1] or not (ts == ts[0]).all():
            return self._check_rows(table, ts, seen)
        ent = table.column(self.entity)
        if not frame and pc.count_distinct(ent).as_py() != 1:
            return self._check_rows(table, ts, seen)
        # One rack at one instant: one GPU mask operation, no per-row work.
        return self._check_frame(ent[0].as_py(), int(ts[0]), table, seen, frame)

    def _check_frame(
        self,
        entity: Any,
        ts: int,
        table: pa.Table,
        seen: dict[tuple[Any, int], Any],
        frame: bool,
    ) -> np.ndarray | None:
        idx = _ints(table.column(self.subs[0]))
        if not frame and np.unique(idx).size != idx.size:
            return self._check_rows(table, np.full(idx.size, ts), seen)
        m = _mask(idx)
        key = (entity, ts)
        old = seen.get(key)
        if old is None or old & m == 0:
            seen[key] = m if old is None else old | m
            return None
        seen[key] = old | m
        return ~_bits(old, int(idx.max()) + 1)[idx]

    def _check_rows(
        self, table: pa.Table, ts: np.ndarray, seen: dict[tuple[Any, int], Any]
    ) -> np.ndarray | None:
        ents = table.column(self.entity).to_pylist()
        subs = [table.column(c).to_pylist() for c in self.subs]
        keep = np.ones(len(ents), bool)
        for i, (e, t) in enumerate(zip(ents, ts.tolist(), strict=True)):
            key = (e, t)
            cur = seen.get(key)
            if self.bits:
                bit = 1 << int(subs[0][i])
                if cur is not None and cur & bit:
                    keep[i] = False
                else:
                    seen[key] = (cur or 0) | bit
            else:
                sub = tuple(s[i] for s in subs)
                if cur is None:
                    seen[key] = {sub}
                elif sub in cur:
                    keep[i] = False
                else:
                    cur.add(sub)
        return None if keep.all() else keep

    def _load_rows(self, rows: pa.Table) -> None:
        """Record stored rows; GPU masks per (rack, ts) group from sorted numpy columns."""
        if not self.bits:
            self._check_rows(rows, _ts_ms(rows), self._seen)
            return
        enc = rows.column(self.entity).combine_chunks().dictionary_encode()
        names = enc.dictionary.to_pylist()
        codes = enc.indices.to_numpy()
        ts = rows.column("ts").cast(pa.int64()).to_numpy()
        sub = rows.column(self.subs[0]).to_numpy().astype(np.int64)
        order = np.lexsort((sub, ts, codes))
        c, t, g = codes[order], ts[order], sub[order]
        first = np.r_[True, (c[1:] != c[:-1]) | (t[1:] != t[:-1])]
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], len(c)]
        # Distinct GPUs per group: rows minus repeats of the previous row's GPU.
        repeat = np.r_[False, ~first[1:] & (g[1:] == g[:-1])]
        n = (ends - starts) - np.add.reduceat(repeat.astype(np.int64), starts)
        regular = (g[starts] == 0) & (g[ends - 1] == n - 1)  # GPUs 0..n-1: n ones
        seen = self._seen
        for i in np.flatnonzero(regular).tolist():
            k = int(starts[i])
            seen[(names[c[k]], int(t[k]))] = (1 << int(n[i])) - 1
        for i in np.flatnonzero(~regular).tolist():
            k, e = int(starts[i]), int(ends[i])
            seen[(names[c[k]], int(t[k]))] = _mask(np.unique(g[k:e]))

    def prune(self) -> int:
        """Forget instants older than the window; returns how many entries went."""
        cut = self.cutoff()
        if cut is None or self._oldest is None or self._oldest >= cut - self.window_ms:
            return 0  # prune in steps of a window, not on every call
        before = len(self._seen)
        self._seen = {k: v for k, v in self._seen.items() if k[1] >= cut}
        self._oldest = min((k[1] for k in self._seen), default=None)
        return before - len(self._seen)

    # ---- late samples ----------------------------------------------------------------

    def admit_late(
        self, late: pa.Table, stored: dict[tuple[Any, int], Any]
    ) -> tuple[pa.Table, int]:
        """Rows of ``late`` neither in ``stored`` (from :func:`stored_samples`) nor pending.

        Accepted rows are remembered per day until :meth:`written` says their buffer is on
        disk. Returns (new rows, duplicates).
        """
        ts = _ts_ms(late)
        ents = late.column(self.entity).to_pylist()
        subs = [late.column(c).to_pylist() for c in self.subs]
        keep = np.ones(late.num_rows, bool)
        pendings: dict[int, dict[tuple[Any, int], Any]] = {}
        for i, t in enumerate(ts.tolist()):
            d = t // _DAY_MS
            pending = pendings.get(d)
            if pending is None:
                pending = pendings[d] = self._late.setdefault(day_of(d * _DAY_MS), {})
            key = (ents[i], t)
            if self.bits:
                bit = 1 << int(subs[0][i])
                if (stored.get(key, 0) | pending.get(key, 0)) & bit:
                    keep[i] = False
                else:
                    pending[key] = pending.get(key, 0) | bit
            else:
                sub = tuple(c[i] for c in subs)
                if sub in stored.get(key, ()) or sub in pending.get(key, ()):
                    keep[i] = False
                else:
                    pending.setdefault(key, set()).add(sub)
        dups = int((~keep).sum())
        return (late if dups == 0 else late.filter(pa.array(keep))), dups

    def written(self, day: dt.date) -> None:
        """The buffer of ``day`` is durable: its late samples are found on disk from now."""
        self._late.pop(day, None)

    def forget_pending(self) -> None:
        """Buffers were dropped unwritten (their records are read again): forget everything."""
        self._late.clear()
        self._seen.clear()
        self.newest = self._oldest = None

    # ---- from the store --------------------------------------------------------------

    def load(self, data_dir: Path, now_ms: int) -> int:
        """Rebuild the window from the store's newest files; returns the samples loaded.

        The newest instant is the largest ``ts`` in the footers of the newest date
        partition that is not in the future of ``now_ms`` (a bogus far-future file must not
        make every sample late).
        """
        table_dir = self.tdef.table_dir(data_dir)
        newest = _newest_ts(table_dir, now_ms)
        if newest is None:
            return 0
        cut = newest - self.window_ms
        files = [p for p in list_parts(table_dir) if _day_of_dir(p) >= day_of(max(cut, 0))]
        cols = [self.entity, *self.subs, "ts"]
        rows = _read(files, cols, (ds.field("ts") >= pa.scalar(cut, pa.timestamp("ms", "UTC"))))
        rows = rows.filter(pc.less_equal(rows.column("ts").cast(pa.int64()), newest))
        self.forget_pending()
        if rows.num_rows:
            self._load_rows(rows)
            self._oldest = int(_ts_ms(rows).min())
        self.newest = newest
        return rows.num_rows


def _day_of_dir(path: Path) -> dt.date:
    return dt.date.fromisoformat(path.parent.name[5:])


def _newest_ts(table_dir: Path, now_ms: int) -> int | None:
    if not table_dir.is_dir():
        return None
    limit = now_ms + _DAY_MS
    dates = sorted(
        (dt.date.fromisoformat(m.group(1)), p)
        for p in table_dir.iterdir()
        if (m := DATE_DIR_RE.match(p.name)) and p.is_dir()
    )
    for day, d in reversed(dates):
        if day > day_of(limit):
            continue
        best: int | None = None
        for f in d.glob("*.parquet"):
            if f.name.startswith("."):
                continue
            try:
                md = pq.read_metadata(f)
                i = md.schema.to_arrow_schema().get_field_index("ts")
                for g in range(md.num_row_groups):
                    st = md.row_group(g).column(i).statistics
                    if st is not None and st.has_min_max:
                        hi = int(st.max_raw)
                        if hi <= limit:
                            best = hi if best is None else max(best, hi)
            except (OSError, ValueError, KeyError):
                continue  # unreadable or vanished: the sink's index reports such files
        if best is not None:
            return best
    return None


def _read(files: Iterable[Path], columns: list[str], flt: Any) -> pa.Table:
    paths = [str(f) for f in files]
    if not paths:
        return pa.table({c: pa.array([]) for c in columns})
    try:
        return ds.dataset(paths, format="parquet").to_table(columns=columns, filter=flt)
    except (OSError, ValueError, pa.ArrowException):
        # One unreadable (foreign or torn) file must not hide the others.
        parts = []
        for f in paths:
            try:
                parts.append(
                    ds.dataset([f], format="parquet").to_table(columns=columns, filter=flt)
                )
            except (OSError, ValueError, pa.ArrowException):
                continue
        if not parts:
            return pa.table({c: pa.array([]) for c in columns})
        return pa.concat_tables(parts, promote_options="permissive")


def stored_samples(
    data_dir: Path, index: SampleIndex, late: pa.Table
) -> dict[tuple[Any, int], Any]:
    """Keys of ``late``'s entities and instants that the store's files already hold.

    Reads only the date partitions of ``late``; row-group statistics prune the rest (files
    are sorted by entity and ts).
    """
    ts = _ts_ms(late)
    out: dict[tuple[Any, int], Any] = {}
    days = sorted({day_of(int(t)) for t in np.unique(ts // _DAY_MS * _DAY_MS).tolist()})
    entities = pc.unique(late.column(index.entity))
    instants = pa.array(np.unique(ts)).cast(pa.timestamp("ms", "UTC"))
    cols = [index.entity, *index.subs, "ts"]
    flt = ds.field(index.entity).isin(entities) & ds.field("ts").isin(instants)
    for day in days:
        d = index.tdef.table_dir(data_dir) / f"date={day.isoformat()}"
        files = [p for p in list_parts(index.tdef.table_dir(data_dir)) if p.parent == d]
        rows = _read(files, cols, flt)
        if rows.num_rows:
            index._check_rows(rows, _ts_ms(rows), out)
    return out
