"""``twin detect``: detectors over a CSV or a SQL result, row by row, no look-ahead."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.backtest import detect_rows
from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.writer import write_file
from streams.cli_detect import run_detect

ROOT = Path(__file__).resolve().parents[2]
START_MS = 1_790_000_000_000


def _wide(path: Path, n: int = 600, seed: int = 0) -> np.ndarray:
    """A wide CSV: ISO times 1-7 s apart, two series (one with gaps), a spike at sample n - 100."""
    rng = np.random.default_rng(seed)
    t = 1.79e9 + np.cumsum(rng.choice([1.0, 1.0, 2.0, 7.0], n))
    a = 50.0 + rng.normal(0.0, 0.5, n)
    a[n - 100] += 10.0
    b = 1000.0 + np.cumsum(rng.normal(0.0, 1.0, n))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "temp_c", "power_w"])
        for i in range(n):
            iso = np.datetime_as_string(np.datetime64(int(t[i]), "s")) + "Z"
            w.writerow([iso, f"{a[i]:.3f}", "" if i % 10 == 3 else f"{b[i]:.3f}"])
    return t


def _read(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_wide_csv_gets_one_score_per_cell_and_finds_the_spike(tmp_path: Path) -> None:
    _wide(tmp_path / "in.csv")
    assert run_detect(input=tmp_path / "in.csv", output=tmp_path / "out.csv") == 0
    out = _read(tmp_path / "out.csv")
    src = _read(tmp_path / "in.csv")
    assert out[0] == ["timestamp", "temp_c", "power_w"]
    assert len(out) == len(src)
    assert [r[0] for r in out] == [r[0] for r in src]
    temp = np.array([float(r[1]) for r in out[1:]])
    assert ((temp >= 0.0) & (temp <= 1.0)).all()
    assert temp[500] > 0.9 and np.argmax(temp[100:]) + 100 == 500
    assert all((r[2] == "") == (s[2] == "") for r, s in zip(out[1:], src[1:], strict=True))


def test_long_format_gives_the_same_scores_as_wide(tmp_path: Path) -> None:
    _wide(tmp_path / "in.csv")
    src = _read(tmp_path / "in.csv")
    with (tmp_path / "long.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "series", "value"])
        for r in src[1:]:
            w.writerow([r[0], "temp_c", r[1]])
            if r[2]:
                w.writerow([r[0], "power_w", r[2]])
    assert run_detect(input=tmp_path / "in.csv", output=tmp_path / "w.csv") == 0
    assert run_detect(input=tmp_path / "long.csv", output=tmp_path / "l.csv") == 0
    wide = _read(tmp_path / "w.csv")[1:]
    long = _read(tmp_path / "l.csv")
    assert long[0] == ["ts", "series", "value", "score"]
    by = {(r[0], r[1]): r[3] for r in long[1:]}
    for r in wide:
        assert by[(r[0], "temp_c")] == r[1]
        if r[2]:
            assert by[(r[0], "power_w")] == r[2]


def test_no_look_ahead_a_prefix_scores_the_same() -> None:
    rng = np.random.default_rng(2)
    rows = [(i + 2, [str(i), f"{rng.normal():.4f}", f"{rng.normal():.4f}"]) for i in range(400)]
    full = list(detect_rows(["t", "a", "b"], rows))
    part = list(detect_rows(["t", "a", "b"], rows[:250]))
    assert full[:251] == part


def test_series_hours_apart_and_late_series(tmp_path: Path) -> None:
    rows = [["ts", "series", "value"]]
    for i in range(300):
        rows.append([str(1000 + i), "fast", str(20.0 + (i % 3))])
        if i % 60 == 0:
            rows.append([str(1000 + i), "hourly", str(5.0 + i / 1000)])
        if i >= 200:
            rows.append([str(1000 + i), "late", str(7.0)])
    rows.append([str(1000 + 3 * 3600), "hourly", "5.3"])
    (tmp_path / "in.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    assert run_detect(input=tmp_path / "in.csv", output=tmp_path / "out.csv") == 0
    out = _read(tmp_path / "out.csv")
    assert len(out) == len(rows)
    assert all(0.0 <= float(r[3]) <= 1.0 for r in out[1:])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "row 1: no timestamp column"),
        ("ts,a\n1,2\n2,x\n", "row 3, column 'a': cannot parse 'x' as a number"),
        ("ts,a\n5,2\n4,3\n", "row 3: time goes backwards"),
        ("ts,a\n5,2\nsoon,3\n", "row 3: cannot parse timestamp 'soon'"),
        ("ts,a\n5,2\n6,3,4\n", "row 3: 3 fields, the header has 2"),
        ("ts,series,value\n5,a,2\n5,a,3\n", "row 3: second sample of series 'a'"),
        ("", "row 1: empty input"),
    ],
)
def test_bad_input_is_one_line_naming_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    (tmp_path / "in.csv").write_text(text)
    assert run_detect(input=tmp_path / "in.csv", output=tmp_path / "out.csv") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "out.csv.partial").exists()


def test_unwritable_output_is_a_runtime_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.csv").write_text("ts,a\n1,2\n")
    assert run_detect(input=tmp_path / "in.csv", output=tmp_path / "no" / "out.csv") == 1
    assert "cannot write" in capsys.readouterr().err


def test_from_sql_scores_exported_history(tmp_path: Path) -> None:
    gpu = synth.gpu_table(1, 3, 120, start_ms=START_MS, seed=4)
    write_file(default_tables()["gpu"], gpu, date_dir(tmp_path, "gpu", day_of_ms(START_MS)))
    query = "SELECT ts, rack || '/' || gpu AS series, temp_gpu_c AS value FROM gpu ORDER BY ts, gpu"
    out = tmp_path / "out.csv"
    assert run_detect(from_sql=query, data_dir=tmp_path, output=out) == 0
    rows = _read(out)
    assert rows[0] == ["ts", "series", "value", "score"]
    assert len(rows) == 1 + 3 * 120
    assert len({r[1] for r in rows[1:]}) == 3
    assert all(0.0 <= float(r[3]) <= 1.0 for r in rows[1:])


def test_cli_through_subprocess(tmp_path: Path) -> None:
    _wide(tmp_path / "in.csv", n=200)
    base = [sys.executable, "-m", "streams", "detect"]
    ok = subprocess.run(
        [
            *base,
            "--input",
            str(tmp_path / "in.csv"),
            "--output",
            str(tmp_path / "o.csv"),
            "--detector",
            "zscore",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(_read(tmp_path / "o.csv")) == 201
    bad = subprocess.run(
        [*base, "--input", str(tmp_path / "in.csv"), "--detector", "forest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_a_refused_query_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_detect(from_sql="DELETE FROM gpu", data_dir=tmp_path, output="-") == 2
    err = capsys.readouterr().err
    assert err.startswith("twin detect: error:") and err.count("\n") == 1
