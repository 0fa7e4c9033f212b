"""An attack corpus against the read-only SQL service, grouped by class.

Every case runs three ways: through the service with the statement check (layer 1), and
with the check switched off both in this process (layer 2, the sandboxed engine) and in a
worker process of the pool (layers 2 and 3). After every case the store's files are
byte-identical, nothing appeared outside it, and the views still answer as before.

``checked``: what the full service must do ("refuse", or "allow" for read-only edge cases
that must succeed and render as strict JSON, or "either"). ``unchecked``: "refuse" when the
engine alone must refuse it (every write and file access), "either" when running it is
harmless (a temporary object of the query's own connection, a no-op).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.site_tables import write_site_tables
from storage.sql import SqlRefused, SqlService, result_json, sql_from_body
from storage.writer import write_file

START_MS = 1_790_000_000_000


@dataclass(frozen=True)
class Case:
    cls: str
    sql: str
    checked: str = "refuse"
    unchecked: str = "refuse"


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(cls: str, sqls: list[str], checked: str = "refuse", unchecked: str = "refuse") -> None:
        c.extend(Case(cls, s, checked, unchecked) for s in sqls)

    part = "{part}"  # an existing Parquet file of the store
    # -- writes hidden in wrappers (EXPLAIN ANALYZE ran them before) -----------------------
    add(
        "write via wrappers",
        [
            f"EXPLAIN ANALYZE COPY (SELECT * FROM gpu LIMIT 1) TO '{part}' (FORMAT parquet)",
            f"explain analyze copy gpu to '{part}'",
            f"EXPLAIN /* x */ ANALYZE COPY gpu TO '{part}'",
            f"EXPLAIN\n\tANALYSE COPY gpu TO '{part}'",
            f"EXPLAIN (ANALYZE) COPY gpu TO '{part}'",
            f"EXPLAIN (FORMAT json, ANALYZE) COPY gpu TO '{part}'",
            f"EXPLAIN COPY gpu TO '{part}'",
            "EXPLAIN ANALYZE COPY gpu TO '{store}/gpu/date=2026-09-21/evil.parquet'",
            "EXPLAIN ANALYZE COPY gpu TO '{out}/leak.csv'",
            "EXPLAIN ANALYZE EXPORT DATABASE '{out}/export'",
            "EXPLAIN ANALYZE ATTACH '{out}/evil.db' AS evil",
            "EXPLAIN ANALYZE INSTALL httpfs",
            "EXPLAIN ANALYZE LOAD '{out}/evil.duckdb_extension'",
            "EXPLAIN ANALYZE SET enable_external_access = true",
            "EXPLAIN ANALYZE SELECT * FROM read_csv('/etc/passwd')",
            "EXPLAIN SELECT * FROM read_csv('/etc/passwd')",
        ],
    )
    add(
        "write via wrappers",
        [
            "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
            "EXPLAIN ANALYZE CREATE MACRO m(x) AS x + 1",
            "EXPLAIN ANALYZE INSERT INTO gpu SELECT * FROM gpu",
            "EXPLAIN ANALYZE CREATE OR REPLACE VIEW gpu AS SELECT 149.0 AS temp_gpu_c",
            "EXPLAIN ANALYZE DROP VIEW kpi",
            "EXPLAIN ANALYZE UPDATE gpu SET power_w = 0",
            "EXPLAIN ANALYZE DELETE FROM gpu",
            "EXPLAIN CREATE TABLE t AS SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "PIVOT gpu ON rack USING sum(power_w)",
            "PIVOT_WIDER gpu ON rack USING max(temp_gpu_c)",
            "WITH p AS (PIVOT gpu ON rack USING sum(power_w)) SELECT * FROM p",
        ],
        unchecked="either",
    )
    add(
        "write via wrappers",
        [
            "PIVOT gpu ON rack IN ('R0000', 'R0001') USING sum(power_w) GROUP BY gpu",
            "UNPIVOT (SELECT 1 AS a, 2 AS b) ON a, b",
            "SUMMARIZE gpu",
            "DESCRIBE gpu",
            "SHOW TABLES",
            "EXPLAIN SELECT * FROM gpu WHERE rack = 'R0000'",
        ],
        checked="allow",
        unchecked="either",
    )
    # -- files inside and outside the store ------------------------------------------------
    reads = [
        "read_csv('/etc/passwd')",
        "read_csv_auto('/etc/passwd')",
        "read_text('/etc/hostname')",
        "read_blob('/etc/hostname')",
        "read_text('/proc/self/environ')",
        "read_json('/etc/hostname')",
        "read_json_auto('{out}/secret.json')",
        "read_ndjson_objects('{out}/secret.json')",
        "glob('/etc/*')",
        "glob('{store}/**')",
        "read_parquet('{out}/secret.parquet')",
        "read_parquet('{store}/gpu/*/*.parquet')",
        "read_parquet('{store}/../outside/secret.parquet')",
        "parquet_metadata('{part}')",
        "parquet_schema('{part}')",
        "parquet_kv_metadata('{part}')",
        "parquet_file_metadata('{part}')",
        "sniff_csv('/etc/passwd')",
        "read_csv(['/etc/passwd', '/etc/group'])",
        "read_csv('/etc/pass' || 'wd')",
        "query_table('{out}/secret.csv')",
        "query('SELECT * FROM read_csv(''/etc/passwd'')')",
        "read_csv('file:///etc/passwd')",
        "read_csv('/etc/passwd', header = false, columns = {'a': 'VARCHAR'})",
    ]
    add("file access", [f"SELECT * FROM {r}" for r in reads])
    add(
        "file access",
        [
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM '{part}'",
            "SELECT * FROM '{out}/secret.csv'",
            'SELECT * FROM "{out}/secret.parquet"',
            "FROM '/etc/hostname'",
            "SELECT (SELECT content FROM read_text('/etc/hostname'))",
            "SELECT * FROM range(1), LATERAL (SELECT * FROM read_text('/etc/hostname'))",
            "SELECT * FROM gpu WHERE rack IN (SELECT content FROM read_text('/etc/hostname'))",
            "WITH f AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM f",
            "SELECT * FROM read_text('/etc/hostname') UNION ALL SELECT 'x', 1, NULL, NULL",
            "SELECT * FROM '{out}/secret.duckdb'",
        ],
    )
    add(
        "file access",
        ["SELECT getenv('HOME')", "SELECT current_setting('home_directory')"],
        checked="either",
        unchecked="either",
    )
    # -- statements that write or change the catalogue -------------------------------------
    add(
        "write statements",
        [
            f"COPY gpu TO '{part}' (FORMAT parquet)",
            "COPY (SELECT 1 AS x) TO '{out}/x.csv'",
            "COPY gpu TO '{store}/gpu' (FORMAT parquet, PARTITION_BY (date), OVERWRITE)",
            "COPY gpu FROM '/etc/passwd'",
            "EXPORT DATABASE '{out}/export'",
            "IMPORT DATABASE '{out}'",
            "ATTACH '{out}/evil.db' AS evil",
            "ATTACH '{store}/gpu.db'",
            "ATTACH ':memory:' AS m",
            "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
            "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
        ],
    )
    add(
        "write statements",
        [
            "CREATE TABLE t AS SELECT * FROM gpu",
            "CREATE TABLE t (a INT)",
            "CREATE SEQUENCE s",
            "CREATE SCHEMA s",
            "CREATE TYPE mood AS ENUM ('a')",
            "CREATE MACRO m(x) AS x",
            "CREATE INDEX i ON gpu (rack)",
            "INSERT INTO gpu SELECT * FROM gpu",
            "INSERT INTO gpu (rack) VALUES ('R9999')",
            "UPDATE gpu SET temp_gpu_c = 149",
            "DELETE FROM gpu",
            "TRUNCATE gpu",
            "MERGE INTO gpu USING gpu AS s ON false WHEN NOT MATCHED THEN INSERT BY NAME",
            "DROP TABLE gpu",
            "DROP VIEW gpu",
            "DROP VIEW IF EXISTS kpi",
            "ALTER VIEW gpu RENAME TO g2",
            "ALTER TABLE gpu ADD COLUMN x INT",
            "COMMENT ON VIEW gpu IS 'x'",
            "CHECKPOINT",
            "FORCE CHECKPOINT",
            "VACUUM",
            "ANALYZE",
            "BEGIN TRANSACTION",
            "COMMIT",
            "ROLLBACK",
            "DETACH memory",
            "USE system",
        ],
        unchecked="either",
    )
    # -- extensions ------------------------------------------------------------------------
    add(
        "extensions",
        [
            "INSTALL httpfs",
            "FORCE INSTALL httpfs",
            "INSTALL evil FROM 'http://127.0.0.1:9/'",
            "LOAD httpfs",
            "LOAD '{out}/evil.duckdb_extension'",
            "SELECT * FROM read_csv('https://example.com/x.csv')",
            "SELECT * FROM 's3://bucket/x.parquet'",
            "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
            "SELECT * FROM 'hf://datasets/x/y.parquet'",
            "SET custom_extension_repository = 'http://127.0.0.1:9'",
            "SET extension_directory = '{store}'",
            "SET allow_unsigned_extensions = true",
            "SET autoinstall_known_extensions = true",
            "UPDATE EXTENSIONS",
        ],
    )
    add(
        "extensions",
        ["SELECT * FROM duckdb_extensions()", "LOAD json", "LOAD parquet"],
        unchecked="either",
    )
    # -- configuration ---------------------------------------------------------------------
    add(
        "config changes",
        [
            "SET enable_external_access = true",
            "SET GLOBAL enable_external_access = true",
            "SET allowed_directories = ['/']",
            "SET allowed_paths = ['/etc/passwd']",
            "SET lock_configuration = false",
            "RESET lock_configuration",
            "RESET ALL",
            "SET memory_limit = '100GB'",
            "PRAGMA memory_limit = '100GB'",
            "SET threads = 64",
            "PRAGMA threads = 64",
            "SET temp_directory = '{store}'",
            "SET profiling_output = '{store}/profile.json'",
            "PRAGMA enable_profiling = 'json'",
            "SET log_query_path = '{store}/queries.log'",
            "SET python_enable_replacements = true",
            "SET disabled_filesystems = ''",
            "SET access_mode = 'READ_WRITE'",
            "SET file_search_path = '/etc'",
            "SELECT set_config('enable_external_access', 'true')",
        ],
    )
    add(
        "config changes",
        [
            "SET VARIABLE x = 1",
            "SET search_path = 'main'",
            "SET TimeZone = 'America/New_York'",
            "CALL enable_logging()",
            "SELECT * FROM duckdb_settings()",
        ],
        unchecked="either",
    )
    add(
        "config changes",
        ["SELECT current_setting('enable_external_access') AS v"],
        checked="allow",
        unchecked="either",
    )
    # -- prepared statements and CALL ------------------------------------------------------
    add(
        "prepared statements",
        [
            f"PREPARE p AS COPY gpu TO '{part}'",
            "PREPARE p AS SELECT 1",
            "PREPARE p AS SELECT * FROM read_csv($1)",
            "EXECUTE p",
            "EXECUTE p('/etc/passwd')",
            "DEALLOCATE p",
            "PREPARE p AS CREATE TABLE t AS SELECT 1",
            "CALL pragma_version()",
            "CALL checkpoint()",
            "CALL force_checkpoint()",
            "CALL duckdb_settings()",
            "CALL read_csv('/etc/passwd')",
            "PRAGMA version",
            "PRAGMA show_tables",
            "PRAGMA database_list",
        ],
        unchecked="either",
    )
    # -- more than one statement -----------------------------------------------------------
    add(
        "multi-statement",
        [
            "SELECT 1; COPY gpu TO '{out}/x.csv'",
            f"SELECT 1;COPY gpu TO '{part}'",
            "SELECT 1;\nDROP VIEW gpu",
            "SELECT 1; -- hello\nCREATE TABLE t AS SELECT 1",
            "/* a */ SELECT 1; ATTACH '{out}/evil.db'",
            "SELECT 1; SELECT 2",
            "BEGIN; DROP VIEW gpu; COMMIT",
            "SELECT 1;;SET threads = 1",
            "SELECT 'a;'; INSTALL httpfs",
            "SELECT $$;$$; LOAD httpfs",
            ";;",
            "",
            "   \n\t ",
            "-- only a comment",
        ],
        unchecked="either",
    )
    add(
        "multi-statement",
        ["SELECT 1;", "SELECT 1 ; ", "SELECT 'x; COPY gpu TO ''y''' AS s"],
        checked="allow",
        unchecked="either",
    )
    # -- comments and encoding tricks ------------------------------------------------------
    add(
        "comment/encoding tricks",
        [
            "/* SELECT */ COPY gpu TO '{out}/x.csv'",
            "-- SELECT\nCOPY gpu TO '{out}/x.csv'",
            "CoPy gpu TO '{out}/x.csv'",
            "COPY\r\ngpu\r\nTO '{out}/x.csv'",
            "SEL/**/ECT 1",
            "ＳＥＬＥＣＴ 1",
            "CO\u200bPY gpu TO 'x'",
            "SELECT 1\x00; COPY gpu TO 'x'",
            "SELECT '\ud800'",
            "SELECT 1 -- \ud83d",
            "\ufeffCOPY gpu TO '{out}/x.csv'",
            "SELECT 1 " + "/*" * 3 + " COPY gpu TO 'x'",
            "SELECT " + "(" * 5000 + "1" + ")" * 5000,
            "SELECT " + "1+" * 60_000 + "1",
            "SELECT 1 \u202e; YPOC",
        ],
        unchecked="either",
    )
    add(
        "comment/encoding tricks",
        [
            "SELECT 1 /*; COPY gpu TO 'x' */",
            "SELECT 1 -- ; COPY gpu TO 'x'",
            "select count(*) from gpu",
            "SELECT $$; DROP VIEW gpu$$ AS s",
            "SELECT E'\\x41' AS s",
            "SELECT 'a''; COPY gpu TO ''x''; --' AS s",
            "SELECT '\u202e\u0000'::VARCHAR IS NULL AS s",
            "SELECT '💥' AS s",
        ],
        checked="either",
        unchecked="either",
    )
    # -- replacing or hiding the views -----------------------------------------------------
    add(
        "view replacement",
        [
            "CREATE OR REPLACE VIEW gpu AS SELECT 149.0 AS temp_gpu_c",
            "CREATE OR REPLACE TEMP VIEW gpu AS SELECT 149.0 AS temp_gpu_c",
            "CREATE VIEW temp.main.kpi2 AS SELECT 1",
            "CREATE TEMP TABLE gpu AS SELECT 1",
            "CREATE OR REPLACE MACRO temp_gpu_c() AS 149",
            "CREATE TEMP MACRO avg(x) AS 0",
            "DROP VIEW rack",
            "ALTER VIEW kpi RENAME TO kpi_old",
            "CREATE SCHEMA temp.evil",
            "USE temp",
        ],
        unchecked="either",
    )
    add(
        "view replacement",
        [
            "WITH gpu AS (SELECT 149.0 AS temp_gpu_c) SELECT * FROM gpu",
            "SELECT * FROM temp.main.gpu LIMIT 1",
            "SELECT count(*) AS n FROM main.gpu",
        ],
        checked="either",
        unchecked="either",
    )
    # -- resource exhaustion: each must end by its deadline --------------------------------
    add(
        "resource exhaustion",
        [
            "SELECT count(*) FROM range(1000000000000) a, range(1000) b "
            "WHERE a.range % 7 = b.range",
            "SELECT count(*) FROM range(10000000000000)",
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT max(n) FROM t",
            "SELECT max(length(repeat('x', 100000000) || range)) FROM range(100)",
            "SELECT list(range) FROM range(2000000000)",
            "SELECT string_agg(repeat('x', 1000), ',') FROM range(10000000)",
            "SELECT count(*) FROM (SELECT * FROM range(1000000000) ORDER BY random())",
            "SELECT count(DISTINCT range) FROM range(3000000000)",
            "SELECT count(*) FROM gpu a, gpu b, gpu c",
            "SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b",
        ],
        checked="either",
        unchecked="either",
    )
    add(
        "resource exhaustion",
        ["SELECT regexp_matches(repeat('a', 100000), '(a*)*b') AS m"],
        checked="allow",
        unchecked="either",
    )
    # -- huge results ----------------------------------------------------------------------
    add(
        "huge results",
        [
            "SELECT * FROM range(100000)",
            "SELECT * FROM gpu, range(10)",
            "SELECT repeat('x', 10000000) AS s FROM range(10)",
            "SELECT range, repeat('x', 100000) AS s FROM range(900)",
            "SELECT list(range) AS l FROM range(20000000)",
            "SELECT * FROM generate_series(1, 1000000)",
        ],
    )
    add(
        "huge results",
        [
            "SELECT " + ", ".join(f"{i} AS c{i}" for i in range(3000)),
            "SELECT * FROM range(1000)",
            "SELECT * FROM gpu LIMIT 1000",
        ],
        checked="allow",
        unchecked="either",
    )
    # -- values JSON cannot hold as they are -----------------------------------------------
    add(
        "JSON edge values",
        [
            "SELECT 'nan'::DOUBLE AS v",
            "SELECT 'inf'::DOUBLE AS v, '-inf'::FLOAT AS w",
            "SELECT [1.0, 'nan'::DOUBLE, 'inf'::DOUBLE] AS v",
            "SELECT {'a': 'nan'::FLOAT, 'b': '\\xFF'::BLOB} AS v",
            "SELECT '\\x00\\xFF\\x80'::BLOB AS v",
            "SELECT 'infinity'::DATE AS v, '-infinity'::TIMESTAMP AS w",
            "SELECT 'infinity'::TIMESTAMPTZ AS v",
            "SELECT '294246-01-01'::TIMESTAMP AS v",
            "SELECT 170141183460469231731687303715884105727::HUGEINT AS v",
            "SELECT 12345678901234567890.123456789::DECIMAL(38, 9) AS v",
            "SELECT -INTERVAL '3 years 2 days 1 second' AS v",
            "SELECT MAP {'\\x00'::BLOB: 'nan'::DOUBLE} AS v",
            "SELECT chr(0) || 'x' AS v",
            "SELECT '1010'::BIT AS v",
            "SELECT union_value(k := 1) AS v",
            "SELECT (2::BIGNUM ** 300) AS v",
            "SELECT -0.0::DOUBLE AS v",
            "SELECT 1e308 * 10 AS v",
            "SELECT uuid() AS v",
            "SELECT TIMETZ '01:02:03+05' AS v",
            "SELECT [[[[[[[[[[1]]]]]]]]]] AS v",
            "SELECT 'a'::ENUM('a', 'b') AS v",
            "SELECT NULL AS v",
            "SELECT avg(power_w) FILTER (WHERE false) AS v FROM gpu",
        ],
        checked="allow",
        unchecked="either",
    )
    return c


CASES = _cases()
BODIES = [
    b"\xff\xfe",
    b"SELECT '\xc3\x28'",
    b'{"sql": "SELECT \\ud800"}',
    b'{"sql": "SELECT 1 \\u0000; COPY gpu TO \'x\'"}',
    b'{"sql": 5}',
    b'{"sql": ["SELECT 1"]}',
    b'{"sql": null}',
    b'{"query": "SELECT 1"}',
    b"[1, 2]",
    b"{bad json",
    b"[" * 100_000,
    b'{"sql": "' + b"x" * 200_000 + b'"}',
    b"",
    b'{"sql": ""}',
]


def _ids(c: Case) -> str:
    return f"{c.cls}: {c.sql[:60]!r}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("attack")
    store = root / "store"
    out = root / "outside"
    out.mkdir()
    tables = default_tables()
    gpu = synth.gpu_table(2, 4, 60, start_ms=START_MS, seed=5)
    part_dir = date_dir(store, "gpu", day_of_ms(START_MS))
    path = write_file(tables["gpu"], gpu, part_dir)
    write_site_tables(store, {"R0000": "CDU-A", "R0001": "CDU-B"})
    for name in ("secret.csv", "secret.json"):
        (out / name).write_text('{"a": 1}\n' if name.endswith("json") else "a\n1\n")
    (out / "secret.parquet").write_bytes(Path(path).read_bytes())
    return {"root": root, "store": store, "out": out, "part": Path(path)}


def _fmt(sql: str, world: dict[str, Path]) -> str:
    for key in ("store", "out", "part"):
        sql = sql.replace("{" + key + "}", str(world[key]))
    return sql


def _tree(root: Path) -> dict[str, str]:
    """Every file under root (dot files included) -> sha256 of its bytes."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def _views(svc: SqlService) -> tuple[object, ...]:
    g = svc.query("SELECT count(*) AS n, max(temp_gpu_c) AS t FROM gpu").to_pylist()
    r = svc.query("SELECT count(*) AS n FROM rack").to_pylist()
    k = svc.query("SELECT * FROM kpi").column_names
    s = svc.query("SELECT count(*) AS n FROM site_racks").to_pylist()
    return (g, r, k, s)


@pytest.fixture(scope="module")
def inline(world: dict[str, Path]) -> Iterator[SqlService]:
    svc = SqlService(world["store"], timeout_s=2.0, max_rows=1000, memory_limit="512MB")
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def pooled(world: dict[str, Path]) -> Iterator[SqlService]:
    svc = SqlService(world["store"], timeout_s=2.0, max_rows=1000, memory_limit="512MB", workers=1)
    assert svc.pool is not None
    svc.pool.wait_ready()
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def baseline(
    world: dict[str, Path], inline: SqlService
) -> tuple[dict[str, str], tuple[object, ...]]:
    return _tree(world["root"]), _views(inline)


def _attempt(svc: SqlService, sql: str, check: bool) -> Exception | None:
    """The refusal, or None after checking the result renders as strict JSON.

    Every case ends by its deadline (2 s) plus the pool's grace (2 s) and rendering.
    """
    t0 = time.monotonic()
    try:
        table = svc.query(sql, check=check)
    except SqlRefused as exc:
        return exc
    finally:
        assert time.monotonic() - t0 < svc.timeout_s + 4.0, "ran past its deadline"
    json.loads(result_json(table))  # strict JSON always (allow_nan=False inside)
    return None


def _assert_intact(
    world: dict[str, Path], svc: SqlService, baseline: tuple[dict[str, str], tuple[object, ...]]
) -> None:
    assert _tree(world["root"]) == baseline[0], "a file changed, appeared or vanished"
    if svc.pool is not None:
        svc.pool.wait_ready()  # a worker recycled after the case may still be starting
    assert _views(svc) == baseline[1], "the views answer differently"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_attack_with_the_check(
    case: Case,
    world: dict[str, Path],
    pooled: SqlService,
    baseline: tuple[dict[str, str], tuple[object, ...]],
) -> None:
    """The service as POST /api/sql runs it: the check, then a worker process."""
    err = _attempt(pooled, _fmt(case.sql, world), check=True)
    if case.checked == "refuse":
        assert err is not None, "accepted"
    elif case.checked == "allow":
        assert err is None, f"refused: {err}"
    _assert_intact(world, pooled, baseline)


# In-process, DuckDB's memory_limit is the only memory bound (aggregate states such as
# list() are allocated beside it), so memory-hungry cases run in worker processes only.
IN_PROCESS = [c for c in CASES if c.cls not in ("resource exhaustion", "huge results")]


@pytest.mark.parametrize("case", IN_PROCESS, ids=_ids)
def test_attack_on_the_engine_without_the_check(
    case: Case,
    world: dict[str, Path],
    inline: SqlService,
    baseline: tuple[dict[str, str], tuple[object, ...]],
) -> None:
    err = _attempt(inline, _fmt(case.sql, world), check=False)
    if case.unchecked == "refuse":
        assert err is not None, "the engine ran it"
    _assert_intact(world, inline, baseline)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_attack_on_a_worker_process_without_the_check(
    case: Case,
    world: dict[str, Path],
    pooled: SqlService,
    baseline: tuple[dict[str, str], tuple[object, ...]],
) -> None:
    err = _attempt(pooled, _fmt(case.sql, world), check=False)
    if case.unchecked == "refuse":
        assert err is not None, "the worker ran it"
    _assert_intact(world, pooled, baseline)


@pytest.mark.parametrize("body", BODIES, ids=lambda b: repr(b[:40]))
def test_bad_request_bodies_are_refused_with_one_line(body: bytes) -> None:
    with pytest.raises(SqlRefused) as info:
        sql_from_body(body)
    assert "\n" not in str(info.value)


def test_corpus_size_per_class() -> None:
    counts = Counter(c.cls for c in CASES)
    counts["HTTP body"] = len(BODIES)
    table = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    print(f"\n| class | cases |\n|---|---|\n{table}\n| total | {sum(counts.values())} |")
    assert sum(counts.values()) >= 150
    assert len(counts) >= 10
