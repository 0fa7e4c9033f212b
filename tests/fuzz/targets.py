"""Fuzz targets: how a case is made from its seed, the call under test, and its oracle.

A target's ``run`` returns ``"A"`` (accepted, invariants hold) or ``"I:<what>"`` (accepted
but an invariant is broken) or raises. The runner turns a refusal (DecodeError, SqlRefused)
into ``"R:<reason code>"`` and any other exception into a crash.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa

from streams import schema
from streams.codec import DEFAULT_LIMITS, GpuFrame, decode_gpu_frame, decode_points_frame
from streams.codec import encode_frame as _encode_frame
from streams.codec_batch import GpuMessage, decode_gpu_frames
from streams.ingest_json import convert_json
from tests.fuzz import corpus
from tests.fuzz.mutate import mutate_arrow, mutate_json, mutate_sql, sql_bytes, sql_text
from twin.errors import DecodeError

KEY: Final = corpus.RACK.encode()
UNIT_KEY: Final = corpus.UNIT.encode()
_MIN_TS_MS: Final = -62_135_596_800_000  # 0001-01-01
_MAX_TS_MS: Final = 253_402_300_800_000 - 86_400_000  # a day before year 10000 (rollups)
_F32_MAX: Final = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Target:
    """One function under test; ``make`` builds a case's bytes, ``run`` checks them."""

    name: str
    group: str
    make: Callable[[random.Random], bytes]
    run: Callable[[bytes], str]
    refusals: tuple[type[BaseException], ...] = (DecodeError,)
    hang_s: float = 2.0
    #: False for the in-process SQL targets: only the worker pool (what untrusted HTTP
    #: queries reach) can stop a query mid-function (DuckDB's interrupt waits for the
    #: function, e.g. repeat('x', 10^9)); there a timeout is counted as slow, not a hang.
    deadline_bound: bool = True
    weight: int = 1  # share of its group's cases
    doc: str = field(default="", compare=False)


def reason_codes() -> frozenset[str] | None:
    """The fixed set of dead-letter reason codes, once streams.schema defines it."""
    for name in ("DLQ_REASONS", "REASON_CODES"):
        codes = getattr(schema, name, None)
        if codes is not None:
            return frozenset(str(c) for c in codes)
    return None


# ---- invariants ------------------------------------------------------------------------


def _ts_ok(ts_ms: np.ndarray) -> str | None:
    if ts_ms.size and (int(ts_ms.min()) < _MIN_TS_MS or int(ts_ms.max()) > _MAX_TS_MS):
        return f"timestamp outside year 1..9999: {int(ts_ms.min())}..{int(ts_ms.max())} ms"
    return None


def gpu_frame_violation(f: GpuFrame, key: bytes, now_ms: int | None) -> str | None:
    """Why an accepted GPU frame breaks the contract, or None."""
    lim = DEFAULT_LIMITS
    try:
        f.batch.validate(full=True)
    except pa.ArrowInvalid as exc:
        return f"accepted a batch that fails full validation: {exc}"
    n = f.batch.num_rows
    if not 0 < n <= lim.max_gpus_per_frame:
        return f"accepted {n} rows"
    if f.rack.encode("utf-8", "surrogatepass") != key:
        return f"rack {f.rack!r} is not the key {key!r}"
    racks = f.batch.column("rack").unique()
    if len(racks) != 1:
        return f"accepted a frame of {len(racks)} racks"
    gpu = np.asarray(f.gpu)
    if gpu.size != n or np.unique(gpu).size != n:
        return "accepted duplicate GPU indices"
    for name, limit in (
        ("power_w", lim.power_w),
        ("power_limit_w", lim.power_w),
        ("temp_gpu_c", lim.temp_c),
        ("temp_mem_c", lim.temp_c),
        ("util_pct", lim.util_pct),
    ):
        col = np.asarray(f.columns[name], dtype=np.float64)
        if col.size != n or not (np.isfinite(col).all() and (col >= limit[0]).all()):
            return f"accepted {name} not finite or below {limit[0]}"
        if (col > limit[1]).any():
            return f"accepted {name} above {limit[1]}"
    ts = np.asarray(f.ts_ms, dtype=np.int64)
    if (
        now_ms is not None
        and ts.size
        and (
            int(ts.max()) - now_ms > lim.max_future_skew_s * 1000
            or now_ms - int(ts.min()) > lim.max_age_s * 1000
        )
    ):
        return "accepted a timestamp outside the window of now"
    return _ts_ok(ts)


def points_frame_violation(f: Any, key: bytes) -> str | None:
    """Why an accepted plant-unit frame breaks the contract, or None."""
    try:
        f.batch.validate(full=True)
    except pa.ArrowInvalid as exc:
        return f"accepted a batch that fails full validation: {exc}"
    if f.unit.encode("utf-8", "surrogatepass") != key:
        return f"unit {f.unit!r} is not the key {key!r}"
    if len(set(f.points)) != len(f.points) or not all(f.points):
        return "accepted duplicate or empty point names"
    if not np.isfinite(np.asarray(f.values, dtype=np.float64)).all():
        return "accepted a value that is not finite"
    return _ts_ok(np.asarray(f.ts_ms, dtype=np.int64))


# ---- Arrow frame targets ---------------------------------------------------------------


def _make_gpu(rng: random.Random) -> bytes:
    return mutate_arrow(rng.choice(corpus.gpu_seeds()), rng, corpus.gpu_frames())


def _make_points(rng: random.Random) -> bytes:
    return mutate_arrow(rng.choice(corpus.points_seeds()), rng, corpus.points_frames())


def run_gpu_frame(data: bytes) -> str:
    f = decode_gpu_frame(data, key=KEY, now_ms=corpus.NOW_MS)
    return _verdict(gpu_frame_violation(f, KEY, corpus.NOW_MS))


def run_gpu_frames(data: bytes) -> str:
    """The mutated frame among four valid ones (at a place set by its length).

    Each message must get what it gets alone: the valid ones their frame, the mutated
    one the same frame or the same reason as ``decode_gpu_frame`` gives it.
    """
    valid = corpus.gpu_frames()[:4]
    pos = len(data) % (len(valid) + 1)
    values = [*valid[:pos], data, *valid[pos:]]
    got = decode_gpu_frames([GpuMessage(v, KEY) for v in values], now_ms=corpus.NOW_MS)
    if len(got) != len(values):
        return f"I:{len(got)} results for {len(values)} messages"
    for i, r in enumerate(got):
        if i != pos and not isinstance(r, GpuFrame):
            return f"I:valid neighbour {i} refused: {r}"
    alone: GpuFrame | DecodeError
    try:
        alone = decode_gpu_frame(data, key=KEY, now_ms=corpus.NOW_MS)
    except DecodeError as exc:
        alone = exc
    mine = got[pos]
    if isinstance(mine, DecodeError):
        if not isinstance(alone, DecodeError):
            return f"I:refused in a batch ({mine}) but accepted alone"
        if str(mine) != str(alone):
            return f"I:reason in a batch {str(mine)!r} differs from alone {str(alone)!r}"
        raise mine
    if isinstance(alone, DecodeError):
        return f"I:accepted in a batch but refused alone: {alone}"
    for name in alone.columns:
        if not np.array_equal(alone.columns[name], mine.columns[name], equal_nan=False):
            return f"I:column {name} in a batch differs from alone"
    return _verdict(gpu_frame_violation(mine, KEY, corpus.NOW_MS))


def run_points_frame(data: bytes) -> str:
    f = decode_points_frame(data, key=UNIT_KEY, now_ms=corpus.NOW_MS, contract=schema.TOPIC_THERMAL)
    return _verdict(points_frame_violation(f, UNIT_KEY))


def _verdict(violation: str | None) -> str:
    return "A" if violation is None else "I:" + violation


# ---- JSON ingest -----------------------------------------------------------------------

_GPU_INTS: Final = {
    "gpu": 2**16 - 1,
    "sm_clock_mhz": 2**16 - 1,
    "energy_mj": 2**64 - 1,
    "xid": 2**32 - 1,
    "clock_event_reasons": 2**64 - 1,
}
_GPU_FLOATS: Final = ("power_w", "temp_gpu_c", "temp_mem_c", "util_pct", "power_limit_w")


def _make_json(rng: random.Random) -> bytes:
    docs = corpus.json_docs()
    return mutate_json(docs, rng, [corpus.dump(d) for d in docs])


def _unrepresentable(doc: Any) -> str | None:
    """A reading value that cannot be stored in its column without wrapping or rounding."""
    for r in doc if isinstance(doc, list) else [doc]:
        if not isinstance(r, dict):
            continue
        if r.get("kind") == "gpu":
            for name, hi in _GPU_INTS.items():
                v = r.get(name)
                if name in r and isinstance(v, int | float) and not 0 <= v <= hi:
                    return f"{name}={v!r} wraps in its column"
            for name in _GPU_FLOATS:
                v = r.get(name)
                if isinstance(v, int | float) and not (math.isfinite(v) and abs(v) <= _F32_MAX):
                    return f"{name}={v!r} is not a finite float32"
        v = r.get("value")
        if r.get("kind") in ("thermal", "power") and isinstance(v, float) and not math.isfinite(v):
            return f"value={v!r} is not finite"
    return None


def run_convert_json(data: bytes) -> str:
    """Convert, then do what the json-ingest agent does: encode key and frame, and the
    worker's decoder must accept the frame (the converter passes on nothing it refuses)."""
    live = "now_ms" in inspect.signature(convert_json).parameters  # as the agent calls it
    now = corpus.NOW_MS if live else None
    frames = convert_json(data, now_ms=now) if live else convert_json(data)
    for f in frames:
        key = f.key.encode()
        value = _encode_frame(f.batch)
        try:
            if f.topic == schema.TOPIC_GPU:
                gf = decode_gpu_frame(value, key=key, now_ms=now)
                bad = gpu_frame_violation(gf, key, now)
            else:
                pf = decode_points_frame(value, key=key, now_ms=now)
                bad = points_frame_violation(pf, key)
        except DecodeError as exc:
            return f"I:converted a frame the worker refuses: {exc}"
        if bad:
            return "I:" + bad
    if frames:
        bad = _unrepresentable(json.loads(data))
        if bad:
            return "I:accepted " + bad
    return "A"


# ---- store decode (the sink) -------------------------------------------------------------

STORE_TABLES: Final = ("gpu", "plant", "power", "state", "kpi", "residual", "alerts")


def _store_tdef(table: str) -> Any:
    from storage.layout import default_tables

    return default_tables()[table]


def _make_store(table: str) -> Callable[[random.Random], bytes]:
    def make(rng: random.Random) -> bytes:
        if table in ("gpu", "plant", "power"):
            seeds = corpus.store_arrow_seeds(table)
            return mutate_arrow(rng.choice(seeds), rng, corpus.store_arrow_frames(table))
        if rng.random() < 0.1:  # JSON tables take Arrow frames too
            return mutate_arrow(rng.choice(corpus.points_seeds()), rng, corpus.points_frames())
        docs = corpus.store_json_docs(table)
        return mutate_json(docs, rng, [corpus.dump(d) for d in docs])

    return make


def _make_run_store(table: str) -> Callable[[bytes], str]:
    def run(data: bytes) -> str:
        from storage.decode import decode_message, table_day

        tdef = _store_tdef(table)
        key = UNIT_KEY if table in ("plant", "power") else KEY
        if "now_ms" in inspect.signature(decode_message).parameters:  # as the sink, live
            t = decode_message(tdef, key, data, corpus.NOW_MS, now_ms=corpus.NOW_MS)
        else:
            t = decode_message(tdef, key, data, corpus.NOW_MS)
        if not isinstance(t, pa.Table):
            return f"I:returned {type(t).__name__}"
        if not t.schema.equals(tdef.schema, check_metadata=False):
            return f"I:schema differs from the table's: {t.schema}"
        try:
            t.validate(full=True)
        except pa.ArrowInvalid as exc:
            return f"I:accepted a table that fails full validation: {exc}"
        if t.num_rows == 0:
            return "A"
        table_day(t)  # the sink's partition of the message; must not raise
        ts = t.column("ts").cast(pa.int64()).to_numpy()
        bad = _ts_ok(ts)
        if bad:
            return "I:" + bad
        for f in tdef.schema:
            if not f.nullable and t.column(f.name).null_count:
                return f"I:null in required column {f.name}"
        if table == "gpu":  # the store holds only what the twin accepts (issue 8)
            try:
                gf = decode_gpu_frame(data, key=key, now_ms=None)
            except DecodeError as exc:
                return f"I:stored a frame the worker refuses: {exc}"
            return _verdict(gpu_frame_violation(gf, key, None))
        if table in ("plant", "power"):
            try:
                pf = decode_points_frame(data, key=key, now_ms=None)
            except DecodeError as exc:
                return f"I:stored a frame the worker refuses: {exc}"
            return _verdict(points_frame_violation(pf, key))
        return "A"

    return run


# ---- SQL -------------------------------------------------------------------------------

_CANARY: Final = (
    "SELECT (SELECT count(*) FROM gpu) AS n_gpu, (SELECT count(*) FROM kpi) AS n_kpi, "
    "(SELECT count(*) FROM duckdb_views() WHERE NOT internal) AS n_views, "
    "(SELECT count(*) FROM duckdb_tables()) AS n_tables, "
    "(SELECT count(*) FROM duckdb_databases()) AS n_dbs, "
    "(SELECT count(*) FROM duckdb_functions() WHERE function_type LIKE '%macro%' "
    "AND NOT internal) AS n_macros, "
    "current_setting('enable_external_access') AS ext"
)
_CANARY_MIN: Final = "SELECT count(*) AS n_gpu FROM gpu"


class SqlWorld:
    """A tiny store, a secret file beside it, and a SqlService over the store."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers  # 0: the engine in this process; N: SqlService's pool
        self.root = Path(tempfile.mkdtemp(prefix="twin-fuzz-sql-"))
        self.token = "FUZZ-SECRET-" + uuid.uuid4().hex
        self.secret = self.root / "secret.txt"
        self.secret.write_text(self.token + "\n")
        self.store = self.root / "store"
        self._build_store()
        self.svc = self._service()
        self.canary = _CANARY
        try:
            self.baseline = self._canary()
        except Exception:  # a service that refuses catalog functions: count rows only
            self.canary = _CANARY_MIN
            self.baseline = self._canary()
        self.snapshot = self._snapshot()

    def _build_store(self) -> None:
        from storage import synth
        from storage.layout import date_dir, day_of_ms, default_tables
        from storage.writer import write_file

        tables = default_tables()
        start = corpus.NOW_MS - 3_600_000
        day = day_of_ms(start)
        self.store.mkdir()
        gpu = synth.gpu_table(2, 4, 60, start_ms=start, dt_ms=60_000, seed=1)
        write_file(tables["gpu"], gpu, date_dir(self.store, "gpu", day))
        plant = synth.points_table(
            {"CDU01": {"supply_temp_c": 45.0}}, 60, start_ms=start, dt_ms=60_000
        )
        write_file(tables["plant"], plant, date_dir(self.store, "plant", day))
        power = synth.points_table(
            {"SITE": {"facility_power_w": 1.1e6, "it_power_w": 1.0e6}}, 60, start_ms=start
        )
        write_file(tables["power"], power, date_dir(self.store, "power", day))
        kpi = pa.table(
            {
                "ts": pa.array([start], pa.int64()).cast(schema.TS_TYPE),
                "scope": ["site"],
                "name": ["pue_frac"],
                "value": [1.1],
            }
        )
        write_file(tables["kpi"], kpi, date_dir(self.store, "kpi", day))
        try:
            from storage.site_tables import write_site_tables

            write_site_tables(self.store, {"R0000": "CDU01", "R0001": "CDU01"})
        except (ImportError, TypeError):
            pass

    def _service(self) -> Any:
        from storage.sql import SqlService

        opts: dict[str, Any] = {"workers": self.workers} if self.workers else {}
        svc = SqlService(
            self.store, timeout_s=1.0, max_rows=1000, memory_limit="512MB", threads=1, **opts
        )
        pool = getattr(svc, "pool", None)
        if pool is not None:
            pool.wait_ready(120.0)
        return svc

    def _canary(self) -> list[dict[str, Any]]:
        from storage.sql import SqlRefused

        for attempt in range(3):  # a loaded machine can push the canary past its deadline
            try:
                rows: list[dict[str, Any]] = _query_unchecked(self, self.canary).to_pylist()
                return rows
            except SqlRefused as exc:
                if attempt == 2 or "time limit" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for d in (self.root, Path.cwd()):
            for dirpath, _dirs, files in os.walk(d):
                for name in files:
                    p = os.path.join(dirpath, name)
                    try:
                        st = os.stat(p)
                    except OSError:
                        continue
                    out[p] = (st.st_size, st.st_mtime_ns)
        return out

    def reset(self) -> None:
        """Throw the world away after a query changed it, and build a fresh one."""
        self.close()
        for p in Path.cwd().iterdir():  # files a relative COPY wrote
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        self.__init__(self.workers)  # type: ignore[misc]

    def close(self) -> None:
        try:
            self.svc.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def resolve(self, sql: str) -> str:
        return sql.replace("{STORE}", str(self.store)).replace("{SECRET}", str(self.secret))


@functools.cache
def sql_world(workers: int = 0) -> SqlWorld:
    """One world per process and mode (built on first use; the worker process owns its cwd)."""
    return SqlWorld(workers)


def _make_sql(rng: random.Random) -> bytes:
    texts = corpus.sql_examples() + corpus.SQL_ATTACKS
    r = rng.random()
    if r < 0.05:
        return sql_bytes(rng.choice(corpus.SQL_ATTACKS))
    if r < 0.08:
        return rng.choice(corpus.sql_examples()).encode()
    return mutate_sql(texts, rng, corpus.SQL_ATTACKS)


def _query_unchecked(w: SqlWorld, sql: str) -> Any:
    """The service's query without its statement check (the engine's own layer alone)."""
    if "check" in inspect.signature(w.svc.query).parameters:
        return w.svc.query(sql, check=False)
    return w.svc.query(sql)


def run_sql(data: bytes, *, check: bool = True, workers: int = 0) -> str:
    """Statement check, then the query; nothing in the store or outside may change, no
    secret may come back, and the JSON rendering must be strict JSON.

    ``check=False`` sends the text to the engine without the statement check: the layer
    below must hold on its own (a future parser gap still cannot write). ``workers=1`` runs
    the query in the service's pool of worker processes (what the web server uses).
    """
    from storage import sql as sqlmod

    w = sql_world(workers)
    text = w.resolve(sql_text(data))
    if check:
        checked = sqlmod.check_statement(text)  # a refusal here never reaches the engine
        text = getattr(checked, "sql", text)
    ran = False
    try:
        result = _query_unchecked(w, text)
        ran = True
    finally:
        # Files are compared after every case. The catalogue is queried after a statement
        # that ran, or one of several that failed (the first ones may have run): one failed
        # statement rolls back on its own.
        changed = _world_changed(w, catalogue=ran or ";" in text)
        if changed:
            w.reset()
    if changed:
        return "I:" + changed
    if result.num_rows * max(1, result.num_columns) <= 50_000 and w.token in str(
        result.to_pylist()
    ):
        return "I:a file outside the store came back in a result"
    to_json = getattr(sqlmod, "to_json", None)
    if to_json is not None:
        text_out = to_json(result)
        try:
            json.loads(text_out, parse_constant=_no_constant)
        except ValueError as exc:
            return f"I:result rendered as invalid JSON: {exc}"
    return "A"


def run_sql_engine(data: bytes) -> str:
    return run_sql(data, check=False)


def run_sql_pool(data: bytes) -> str:
    return run_sql(data, workers=1)


def _no_constant(name: str) -> Any:
    raise ValueError(f"bare {name} in JSON")


def _world_changed(w: SqlWorld, *, catalogue: bool = True) -> str | None:
    snap = w._snapshot()
    if snap != w.snapshot:
        added = sorted(set(snap) - set(w.snapshot))[:3]
        gone = sorted(set(w.snapshot) - set(snap))[:3]
        touched = sorted(k for k in set(snap) & set(w.snapshot) if snap[k] != w.snapshot[k])[:3]
        return f"files changed: added {added} removed {gone} modified {touched}"
    if not catalogue:
        return None
    try:
        now = w._canary()
    except Exception as exc:
        return f"the catalog changed: canary query fails: {exc}"
    if now != w.baseline:
        return f"the catalog or settings changed: {now} != {w.baseline}"
    return None


_SQL_REASONS: Final = (
    ("does not parse", "parse"),
    ("one statement", "multiple_statements"),
    ("only select", "not_select"),
    ("more than", "too_many_rows"),
    ("time limit", "timeout"),
    ("outside the store", "access"),
    ("query failed", "query_failed"),
)


def refusal_code(exc: BaseException) -> str:
    """The reason code of a refusal: its ``code`` attribute, else a class from the text."""
    code = getattr(exc, "code", None)
    if code:
        return str(code)
    if isinstance(exc, DecodeError):
        return "-"
    text = str(exc).lower()
    for needle, name in _SQL_REASONS:
        if needle in text:
            return "sql:" + name
    return "sql:other"


def _sql_refusals() -> tuple[type[BaseException], ...]:
    from storage.sql import SqlRefused

    return (SqlRefused,)


# ---- registry --------------------------------------------------------------------------


def all_targets() -> dict[str, Target]:
    """Every target by name, in groups: arrow, json, store, sql."""
    ts = [
        Target("gpu_frame", "arrow", _make_gpu, run_gpu_frame, doc="decode_gpu_frame"),
        Target("gpu_frames", "arrow", _make_gpu, run_gpu_frames, doc="decode_gpu_frames"),
        Target("points_frame", "arrow", _make_points, run_points_frame, doc="decode_points_frame"),
        Target("convert_json", "json", _make_json, run_convert_json, doc="convert_json"),
    ]
    ts += [
        Target(f"store_{t}", "store", _make_store(t), _make_run_store(t), doc="decode_message")
        for t in STORE_TABLES
    ]
    ts.append(
        Target(
            "sql",
            "sql",
            _make_sql,
            run_sql,
            hang_s=5.0,
            deadline_bound=False,
            weight=3,
            doc="SqlService.query",
        )
    )
    ts.append(
        Target(
            "sql_engine",
            "sql",
            _make_sql,
            run_sql_engine,
            hang_s=5.0,
            deadline_bound=False,
            weight=1,
            doc="the engine without the statement check",
        )
    )
    ts.append(Target("sql_pool", "sql", _make_sql, run_sql_pool, hang_s=5.0, doc="SqlService pool"))
    ts.append(Target("selfcheck", "self", _make_selfcheck, run_selfcheck, hang_s=2.0))
    return {t.name: t for t in ts}


# ---- a target that misbehaves on purpose, to test the runner ---------------------------

SELFCHECK_CASES: Final = (b"ok", b"refuse", b"raise", b"invariant", b"segv", b"hang")


def _make_selfcheck(rng: random.Random) -> bytes:
    return rng.choice(SELFCHECK_CASES)


def run_selfcheck(data: bytes) -> str:
    """Accept, refuse, raise, break an invariant, die of SIGSEGV or hang, as told."""
    import signal
    import time

    if data == b"refuse":
        raise DecodeError("refused on purpose", "invalid")
    if data == b"raise":
        raise ValueError("crash on purpose")
    if data == b"invariant":
        return "I:broken on purpose"
    if data == b"segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if data == b"hang":
        time.sleep(3600)
    return "A"


def refusal_types(t: Target) -> tuple[type[BaseException], ...]:
    """The exceptions that count as a refusal for ``t`` (SqlRefused is imported lazily)."""
    return t.refusals if t.group != "sql" else _sql_refusals()


def plan(group: str, cases: int) -> list[tuple[str, int]]:
    """``cases`` cases of a group shared among its targets by weight: (target, cases)."""
    ts = [all_targets()[n] for n in groups()[group]]
    total = sum(t.weight for t in ts)
    out = [(t.name, cases * t.weight // total) for t in ts]
    out[0] = (out[0][0], out[0][1] + cases - sum(n for _, n in out))
    return out


def groups() -> dict[str, list[str]]:
    """Target names by group (arrow, json, store, sql), without the runner's self-check."""
    out: dict[str, list[str]] = {}
    for t in all_targets().values():
        if t.group != "self":
            out.setdefault(t.group, []).append(t.name)
    return out
