"""Message decoding, broker URLs and the `twin sql` command."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage import synth
from storage.cli_sql import main as sql_main
from storage.decode import decode_message, table_day
from storage.layout import date_dir, day_of_ms, default_tables
from storage.writer import write_file
from streams.settings import parse_broker_url
from twin.errors import ConfigError, DecodeError

TABLES = default_tables()
START_MS = 1_789_999_200_000


def test_arrow_frame_round_trip() -> None:
    t = synth.gpu_table(1, 3, 1, start_ms=START_MS)
    [(key, value)] = synth.frames(t, "rack")
    got = decode_message(TABLES["gpu"], key, value, 0)
    assert got.equals(t.cast(got.schema))
    assert table_day(got) == day_of_ms(START_MS)


@given(st.binary(max_size=64))
def test_garbage_is_a_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(TABLES["gpu"], b"R1", b"\xff\xff\xff\xff" + value, 0)


def test_json_rows() -> None:
    msg = json.dumps(
        [
            {"ts": "2026-09-21T10:00:00+00:00", "scope": "site", "name": "pue_frac", "value": 1.1},
            # a number is ms, whatever its size (twin/timeparse.py)
            {"ts": 1_790_000_000_000, "scope": "site", "name": "pue_frac", "value": 1.2},
        ]
    ).encode()
    got = decode_message(TABLES["kpi"], None, msg, 0)
    assert got["value"].to_pylist() == [1.1, 1.2]
    assert got["ts"].cast(pa.int64()).to_pylist() == [
        1_790_000_000_000 - 15_200_000,  # 1_790_000_000_000 ms is 14:13:20Z; 10:00Z 4:13:20 before
        1_790_000_000_000,
    ]


def test_json_state_keeps_payload_and_key() -> None:
    got = decode_message(TABLES["state"], b"R0001", b'{"b": 1, "a": 2}', 1_790_000_000_123)
    assert got.to_pylist()[0]["entity"] == "R0001"
    assert json.loads(got.to_pylist()[0]["payload"]) == {"a": 2, "b": 1}
    assert got["ts"].cast(pa.int64()).to_pylist() == [1_790_000_000_123]


@pytest.mark.parametrize(
    "value, match",
    [
        (b"{not json", "not JSON"),
        (b'{"scope": "site", "name": "x"}', "'value' is required"),
        (b'{"scope": "s", "name": "x", "value": "hot"}', "bad field value"),
        (b'{"ts": "2026-09-21T10:00:00", "scope": "s", "name": "x", "value": 1}', "time zone"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_json(value: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_message(TABLES["kpi"], None, value, START_MS)


def test_broker_urls() -> None:
    assert parse_broker_url("kafka://a:9092,b:9093") == "a:9092,b:9093"
    for bad in ("a:9092", "kafka://", "kafka://a", "kafka://a:99999", "http://a:1"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)


def test_twin_sql_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = synth.gpu_table(1, 2, 3, start_ms=START_MS)
    write_file(TABLES["gpu"], t, date_dir(tmp_path, "gpu", day_of_ms(START_MS)))
    q = "SELECT gpu, count(*) AS n FROM gpu GROUP BY gpu ORDER BY gpu"
    assert sql_main([q, "--data-dir", str(tmp_path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"gpu","n"', "0,3", "1,3"]
    assert sql_main([q, "--data-dir", str(tmp_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"gpu": 0, "n": 3}, {"gpu": 1, "n": 3}]
    out = tmp_path / "r.parquet"
    assert sql_main([q, "--data-dir", str(tmp_path), "--format", "parquet", "--out", str(out)]) == 0
    assert pq.read_table(out)["n"].to_pylist() == [3, 3]
    assert sql_main([q, "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["gpu", "n"]
    assert sql_main(["COPY gpu TO 'x.csv'", "--data-dir", str(tmp_path)]) == 2
    assert "only SELECT queries are allowed" in capsys.readouterr().err
