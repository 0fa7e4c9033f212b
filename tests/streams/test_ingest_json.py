from __future__ import annotations

import json

import numpy as np
import pytest

from streams.ingest_json import convert_json, parse_ts_ms
from streams.schema import TOPIC_GPU, TOPIC_THERMAL
from twin.errors import DecodeError


def test_gpu_readings_of_one_instant_become_one_frame() -> None:
    readings = [
        {
            "kind": "gpu",
            "rack": "R7",
            "gpu": g,
            "ts": "2026-11-28T12:00:00Z",
            "power_w": 100.0 + g,
            "energy_mj": 5,
            "temp_gpu_c": 50,
            "temp_mem_c": 60,
            "sm_clock_mhz": 1500,
            "util_pct": 40,
        }
        for g in (3, 1)
    ]
    frames = convert_json(json.dumps(readings).encode())
    assert len(frames) == 1
    f = frames[0]
    assert (f.topic, f.key, f.batch.num_rows) == (TOPIC_GPU, "R7", 2)
    np.testing.assert_array_equal(f.batch.column("gpu").to_numpy(), [3, 1])
    np.testing.assert_array_equal(f.batch.column("power_w").to_numpy(), [103.0, 101.0])
    assert f.batch.column("ts").cast("int64")[0].as_py() == 1_795_867_200_000


def test_point_reading() -> None:
    doc = {"kind": "thermal", "unit": "CDU01", "point": "supply_temp_c", "value": 45.1, "ts": 17}
    (f,) = convert_json(json.dumps(doc).encode())
    assert (f.topic, f.key) == (TOPIC_THERMAL, "CDU01")
    assert f.batch.column("value").to_pylist() == [45.1]


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "empty list"),
        (b'{"kind": "gas", "ts": 1}', "kind must be gpu, thermal or power"),
        (b'{"kind": "gpu", "rack": "R1", "gpu": 1, "ts": "yesterday"}', "not ISO 8601"),
        (b'{"kind": "gpu", "rack": "R1", "gpu": 1, "ts": "2026-01-01T00:00:00"}', "no time zone"),
        (b'{"kind": "gpu", "rack": "R1", "gpu": -1, "ts": 1}', "gpu must be an integer"),
        (b'{"kind": "gpu", "rack": "R1", "gpu": 1, "ts": 1, "power_w": "hot"}', "must be a number"),
        (b'{"kind": "power", "unit": "", "point": "p_w", "value": 1, "ts": 1}', "non-empty"),
    ],
)
def test_bad_json_is_refused_with_reason(doc: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        convert_json(doc)


def test_parse_ts_forms() -> None:
    assert parse_ts_ms(1000) == 1000
    assert parse_ts_ms("1970-01-01T00:00:01+00:00") == 1000
