"""Write the regression seeds under tests/fuzz/seeds/<target>/: minimal inputs that crashed,
hung or broke a rule before the issue-8 hardening (each file name says what it is).

    .venv/bin/python -m tests.fuzz.make_seeds

Saved fuzzer findings (bench/fuzz_edges.py --save DIR) can be copied in beside them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from tests.fuzz import corpus
from tests.fuzz.mutate import ArrowSeed, Raw, dump_json

SEEDS = Path(__file__).parent / "seeds"


def _reading(**over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "kind": "gpu", "rack": corpus.RACK, "gpu": 0, "ts": corpus.SEED_TS_MS, "power_w": 1420.5,
        "energy_mj": 5, "temp_gpu_c": 61, "temp_mem_c": 70, "sm_clock_mhz": 1980,
        "util_pct": 97,
    }  # fmt: skip
    r.update(over)
    return r


def _plant(seed: ArrowSeed, column: str, kind: str, row: int, fmt: str, value: Any) -> bytes:
    slot = next(s for s in seed.slots if s.column == column and s.kind == kind)
    b = bytearray(seed.data)
    struct.pack_into(fmt, b, slot.offset + struct.calcsize(fmt) * row, value)
    return bytes(b)


def seeds() -> dict[str, dict[str, bytes]]:
    """target -> file stem -> input."""
    big = Raw("1" + "0" * 400)
    js = {
        "deep_array": b"[" * 100_000 + b"]" * 100_000,
        "deep_object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "int_5000_digits": dump_json(_reading(ts=Raw("9" * 5000))),
        "kind_is_a_list": b'{"kind": [1], "ts": 1}',
        "xid_is_a_list": dump_json(_reading(xid=[1])),
        "xid_is_a_date": dump_json(_reading(xid="9999-12-31T23:59:59Z")),
        "ts_1e400": dump_json(_reading(ts=Raw("1e400"))),
        "ts_1e300": dump_json(_reading(ts=1e300)),
        "ts_2_pow_70": dump_json(_reading(ts=2**70)),
        "ts_minus_1e15": dump_json(_reading(ts=-1e15)),
        "power_10_pow_400": dump_json(_reading(power_w=big)),
        "power_limit_empty_string": dump_json(_reading(power_limit_w="")),
        "power_nan": dump_json(_reading(power_w=Raw("NaN"))),
        "energy_2_pow_70": dump_json(_reading(energy_mj=2**70)),
        "clock_1e9_mhz": dump_json(_reading(sm_clock_mhz=10**9)),
        "rack_lone_surrogate": dump_json(_reading(rack="\ud800"), ascii_only=True),
        "duplicate_gpu": dump_json([_reading(), _reading()]),
        "pump_power_1e300": dump_json(
            {"kind": "thermal", "unit": "CDU01", "point": "pump_power_w", "value": 1e300, "ts": 1}
        ),
        "value_infinity": b'{"kind":"power","unit":"SITE","point":"it_power_w",'
        b'"value":Infinity,"ts":1}',
    }
    g72 = corpus.gpu_seeds()[3]
    frames = {
        # the SIGSEGV: a corrupt string offset read by column("rack").unique()
        "rack_offset_int32_max": _plant(g72, "rack", "offsets", 1, "<i", 2**31 - 1),
        "rack_offset_negative": _plant(g72, "rack", "offsets", 72, "<i", -1),
        "rack_offset_past_data": _plant(g72, "rack", "offsets", 72, "<i", 1 << 20),
        "ts_year_10000": _plant(g72, "ts", "ts", 0, "<q", 253_402_300_800_000),
        "ts_int64_min": _plant(g72, "ts", "ts", 5, "<q", -(2**63)),
        "power_nan": _plant(g72, "power_w", "f32", 3, "<f", float("nan")),
        "power_1e30": _plant(g72, "power_w", "f32", 3, "<f", 1e30),
        "temp_1000c": _plant(g72, "temp_gpu_c", "f32", 0, "<f", 1000.0),
        "duplicate_gpu": _plant(g72, "gpu", "u16", 1, "<H", 0),
        "gpu_index_65535": _plant(g72, "gpu", "u16", 71, "<H", 65535),
    }
    kpi = {"ts": corpus.SEED_TS_MS, "scope": "site", "name": "pue_frac", "value": 1.1}
    out: dict[str, dict[str, bytes]] = {
        "convert_json": js,
        "gpu_frame": frames,
        "gpu_frames": frames,
        "store_gpu": frames,
        "store_kpi": {
            "ts_minus_1e15": dump_json({**kpi, "ts": -1e15}),
            "ts_1e300": dump_json({**kpi, "ts": 1e300}),
            "ts_year_10000": dump_json({**kpi, "ts": 253_402_300_800_000}),
            "ts_9999_12_31": dump_json({**kpi, "ts": "9999-12-31T00:00:00+00:00"}),
            "ts_null_list": dump_json([{**kpi, "ts": None}, {**kpi, "ts": [1]}]),
            "value_nan": dump_json({**kpi, "value": Raw("NaN")}),
            "deep_object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        },
        "store_residual": {
            "residual_10_pow_400": dump_json(
                {"entity": "R0001", "quantity": "outlet_temp_c", "residual": big}
            ),
        },
        "store_state": {
            "payload_lone_surrogate": dump_json({"entity": "\ud800", "x": 1}, ascii_only=True),
            "ts_year_1": dump_json({"entity": "R0001", "ts": "0001-01-01T00:00:00+14:00"}),
        },
        "sql": {
            "explain_analyze_copy": b"EXPLAIN ANALYZE COPY gpu TO "
            b"'{STORE}/gpu/date=2026-09-21/evil.parquet'",
            "explain_analyze_replace_view": b"EXPLAIN ANALYZE CREATE OR REPLACE VIEW gpu AS "
            b"SELECT 1 AS x",
            "explain_analyze_drop_view": b"EXPLAIN ANALYZE DROP VIEW kpi",
            "pivot_copy": b"PIVOT (COPY gpu TO 'x.parquet') ON rack USING count(*)",
            "prepare_copy": b"PREPARE p AS COPY gpu TO 'x.parquet'",
            "read_secret": b"SELECT * FROM read_text('{SECRET}')",
            "lone_surrogate": "SELECT '\ud800' AS s".encode("utf-8", "surrogatepass"),
            "nan_result": b"SELECT 'NaN'::DOUBLE AS a, 'infinity'::DOUBLE AS b",
            "repeat_1e9": b"SELECT repeat('x', 1000000000)",
            "length_repeat_1e9": b"SELECT length(repeat('x', 1000000000))",
            "list_range_1e8": b"SELECT list(range(100000000))",
        },
        "sql_engine": {
            "copy_into_store": b"COPY gpu TO '{STORE}/gpu/date=2026-09-21/evil.parquet'",
            "create_or_replace_view": b"CREATE OR REPLACE VIEW gpu AS SELECT 1 AS x",
            "set_external_access": b"SET enable_external_access = true",
            "read_secret": b"SELECT * FROM read_text('{SECRET}')",
            "attach": b"ATTACH '{STORE}/evil.db' AS e",
            "copy_relative": b"COPY (SELECT 1) TO 'out.csv'",
        },
    }
    out["sql_pool"] = out["sql"]
    return out


def main() -> None:
    for target, files in seeds().items():
        d = SEEDS / target
        d.mkdir(parents=True, exist_ok=True)
        for stem, data in files.items():
            (d / f"{stem}.bin").write_bytes(data)
    print(json.dumps({t: len(f) for t, f in seeds().items()}))


if __name__ == "__main__":
    main()
