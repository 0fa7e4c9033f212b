"""``twin sql`` end to end, as a user runs it: a subprocess over a store on disk."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from numpy.testing import assert_allclose

from storage import synth
from storage.layout import TEMP_PREFIX, date_dir, day_of_ms, default_tables
from storage.writer import write_file

ROOT = Path(__file__).resolve().parents[2]
START_MS = 1_789_999_200_000
QUERY = (
    "SELECT rack, count(*) AS n, max(temp_gpu_c) AS temp_max_c, sum(power_w) AS power_w "
    "FROM gpu GROUP BY rack ORDER BY rack"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    d = tmp_path_factory.mktemp("store")
    gpu = synth.gpu_table(3, 4, 5, start_ms=START_MS, seed=4)
    part = date_dir(d, "gpu", day_of_ms(START_MS))
    write_file(default_tables()["gpu"], gpu, part)
    # A file the sink is still writing (before its rename): never part of a query.
    (part / f"{TEMP_PREFIX}part-0.parquet").write_bytes(b"PAR1 half-written")
    return d, gpu


def _twin_sql(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", "sql", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _expected(gpu: pa.Table) -> dict[str, tuple[int, float, float]]:
    """Per rack: rows, max temperature [C], summed power [W], computed without DuckDB."""
    out = {}
    for rack in sorted(set(gpu["rack"].to_pylist())):
        t = gpu.filter(pc.equal(gpu["rack"], rack))
        power = t["power_w"].to_numpy().astype(np.float64)
        out[rack] = (t.num_rows, float(pc.max(t["temp_gpu_c"]).as_py()), float(power.sum()))
    return out


def _check(rows: list[dict[str, object]], gpu: pa.Table) -> None:
    want = _expected(gpu)
    assert [r["rack"] for r in rows] == list(want)
    for r in rows:
        n, temp_max_c, power_w = want[str(r["rack"])]
        assert int(str(r["n"])) == n == 20  # 4 GPUs x 5 samples
        assert_allclose(float(str(r["temp_max_c"])), temp_max_c)
        assert_allclose(float(str(r["power_w"])), power_w, rtol=1e-6)


def test_formats_to_file(store: tuple[Path, pa.Table], tmp_path: Path) -> None:
    d, gpu = store
    for fmt in ("csv", "json", "parquet"):
        out = tmp_path / f"r.{fmt}"
        r = _twin_sql("--data-dir", str(d), QUERY, "--format", fmt, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert r.stdout == "" and r.stderr == ""
        if fmt == "csv":
            rows: list[dict[str, object]] = list(csv.DictReader(io.StringIO(out.read_text())))
        elif fmt == "json":
            rows = json.loads(out.read_text())
        else:
            rows = pq.read_table(out).to_pylist()
        _check(rows, gpu)


def test_stdout_csv_and_plain_table(store: tuple[Path, pa.Table]) -> None:
    d, gpu = store
    r = _twin_sql("--data-dir", str(d), QUERY, "--format", "csv")
    assert r.returncode == 0, r.stderr
    _check(list(csv.DictReader(io.StringIO(r.stdout))), gpu)
    # Default format, stdout not a terminal: a plain text table, no colour codes.
    r = _twin_sql("--data-dir", str(d), "SELECT count(*) AS n FROM gpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["n", "--", "60"]
    assert "\x1b[" not in r.stdout


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    # Unknown options are reported by the top-level `twin` parser, the rest by `twin sql`.
    assert lines[0].startswith("twin")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["SELECT 1", "--format", "xml"], "invalid choice: 'xml'"),
        (["SELECT 1", "--max-rows", "abc"], "--max-rows"),
        (["SELECT 1", "--timeout", "0"], "must be > 0"),
        (["SELECT 1", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "required: query"),
    ],
)
def test_wrong_argument_is_one_line_and_exit_2(
    store: tuple[Path, pa.Table], args: list[str], says: str
) -> None:
    r = _twin_sql("--data-dir", str(store[0]), *args)
    assert r.returncode == 2
    assert says in _one_line_error(r)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("SELEC 1", "does not parse"),  # DuckDB's message spans three lines
        ("SELECT nope FROM gpu", "query failed"),
        ("COPY gpu TO 'x.csv'", "COPY statements are refused"),
        ("SELECT * FROM read_csv('/etc/passwd')", "table function 'read_csv' is not available"),
        ("ATTACH '/tmp/x.db'", "ATTACH statements are refused"),
        ("SELECT 1; SELECT 2", "one statement per query"),
        ("SELECT * FROM gpu", "more than 7 rows"),
    ],
)
def test_refused_query_is_one_line_and_fails(
    store: tuple[Path, pa.Table], tmp_path: Path, query: str, says: str
) -> None:
    out = tmp_path / "r.csv"
    r = _twin_sql("--data-dir", str(store[0]), "--max-rows", "7", query, "--out", str(out))
    assert r.returncode != 0
    assert says in _one_line_error(r)
    assert not out.exists()


def test_unwritable_out_is_one_line_error(store: tuple[Path, pa.Table], tmp_path: Path) -> None:
    out = tmp_path / "missing" / "r.csv"
    r = _twin_sql(
        "--data-dir", str(store[0]), "SELECT 1 AS a", "--format", "csv", "--out", str(out)
    )
    assert r.returncode == 1
    assert "cannot write" in _one_line_error(r)


def _twin_replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", "replay", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "yesterday", "--to", "2026-09-22"], "'yesterday'"),
        (["--from", "2026-09-22", "--to", "2026-09-21"], "must be after --from"),
        (["--from", "2026-09-21", "--to", "2026-09-22", "--speed", "-1"], "--speed must be >= 0"),
        (["--from", "2026-09-21", "--to", "2026-09-22", "--broker", "h:1"], "--broker"),
        (["--to", "2026-09-22"], "required: --from"),
    ],
)
def test_replay_wrong_argument_is_one_line_and_exit_2(
    store: tuple[Path, pa.Table], args: list[str], says: str
) -> None:
    r = _twin_replay("--data-dir", str(store[0]), *args)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("twin"), r.stderr
    assert says in lines[0]


def test_replay_of_an_empty_range_needs_no_broker(store: tuple[Path, pa.Table]) -> None:
    # Nothing is stored on 2026-09-23: said so, and no connection to the (absent) broker.
    args = (
        "--from",
        "2026-09-23T00:00",
        "--to",
        "2026-09-24T00:00",
        "--broker",
        "kafka://127.0.0.1:1",
    )
    r = _twin_replay("--data-dir", str(store[0]), *args)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "twin replay: nothing stored in [2026-09-23 00:00:00+00:00, 2026-09-24 00:00:00+00:00)"
    ]


def test_replay_to_an_unreachable_broker_fails_cleanly(store: tuple[Path, pa.Table]) -> None:
    args = (
        "--from",
        "2026-09-21T00:00",
        "--to",
        "2026-09-22T00:00",
        "--broker",
        "kafka://127.0.0.1:1",
    )
    r = _twin_replay("--data-dir", str(store[0]), *args)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "twin replay: cannot reach Kafka at 127.0.0.1:1 (connection refused): start a broker "
        "(twin broker, or twin demo for the whole twin) or point --broker (env TWIN_BROKER) at "
        "a running one"
    ]


@pytest.mark.parametrize("where", ["missing", "empty", "file"])
def test_sql_on_a_missing_store_names_the_path_and_exits_1(tmp_path: Path, where: str) -> None:
    path = tmp_path / where
    if where == "empty":
        path.mkdir()
        (path / "notes").mkdir()  # a directory, but none of the store's tables
    elif where == "file":
        path.write_text("not a store")
    r = _twin_sql("--data-dir", str(path), "SELECT count(*) FROM gpu")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == ""
    line = _one_line_error(r)
    assert line.startswith(f"twin sql: no twin store at {path}"), line
    assert "--data-dir" in line


def test_sql_with_a_relative_data_dir_from_another_directory(
    store: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    # "data" relative to a directory that has none: an error, not "0 rows"
    r = subprocess.run(
        [sys.executable, "-m", "streams", "sql", "--data-dir", "data", "SELECT count(*) FROM gpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert _one_line_error(r).startswith(f"twin sql: no twin store at {tmp_path / 'data'}")
    # ... while the same relative path from where the store is answers
    r = subprocess.run(
        [sys.executable, "-m", "streams", "sql", "--data-dir", store[0].name,
         "--format", "csv", "SELECT count(*) AS n FROM gpu"],
        cwd=store[0].parent, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ['"n"', str(store[1].num_rows)]


def test_replay_of_a_missing_store_names_the_path_and_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    r = _twin_replay(
        "--data-dir", str(missing), "--from", "2026-09-21", "--to", "2026-09-22",
        "--broker", "kafka://127.0.0.1:1",
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"twin replay: no twin store at {missing}")
