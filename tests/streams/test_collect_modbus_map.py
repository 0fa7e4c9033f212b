"""The Modbus map: register decoding (each type, word and byte order), scale, offset and
units to SI, the map's validation errors, read planning, and the twin points it may feed."""

from __future__ import annotations

import copy
import re
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose

from streams.codec import decode_points_frame
from streams.collect_modbus import checked_frames
from streams.modbus_map import (
    DATA_TYPES,
    MAX_READ_REGISTERS,
    STALE_POINT,
    UNIT_KINDS,
    block_values,
    decode_registers,
    load_map,
    parse_map,
    read_blocks,
    si_value,
    unit_kind,
    units_markdown,
)
from twin.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# -- register decoding -------------------------------------------------------------------

#: (type, value, registers as sent in the Modbus convention: high word first, high byte
#: first). Worked by hand from IEEE 754 and two's complement, not with the code under test.
KNOWN = [
    ("int16", -2.0, [0xFFFE]),
    ("int16", 452.0, [0x01C4]),
    ("uint16", 65535.0, [0xFFFF]),
    ("int32", -2.0, [0xFFFF, 0xFFFE]),
    ("uint32", float(0x12345678), [0x1234, 0x5678]),
    ("float32", 25.0, [0x41C8, 0x0000]),
    ("float32", -1.5, [0xBFC0, 0x0000]),
    ("float64", 1.0, [0x3FF0, 0x0000, 0x0000, 0x0000]),
    ("float64", -2.5, [0xC004, 0x0000, 0x0000, 0x0000]),
]


def _swap_bytes(regs: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


@pytest.mark.parametrize(("dtype", "value", "regs"), KNOWN)
def test_each_type_decodes_in_every_word_and_byte_order(
    dtype: str, value: float, regs: list[int]
) -> None:
    cases = {
        ("big", "big"): regs,
        ("little", "big"): regs[::-1],
        ("big", "little"): _swap_bytes(regs),
        ("little", "little"): _swap_bytes(regs[::-1]),
    }
    for (word, byte), sent in cases.items():
        got = decode_registers(np.array([sent]), dtype, word, byte)
        assert got.tolist() == [value], (dtype, word, byte)


def test_decoding_is_per_row_and_matches_struct_for_random_values() -> None:
    rng = np.random.default_rng(7)
    for dtype, (fmt, words) in DATA_TYPES.items():
        code = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f",
                "float64": "d"}[dtype]  # fmt: skip
        raw = rng.integers(0, 1 << 16, size=(50, words))
        values = [struct.unpack(">" + code, struct.pack(">" + "H" * words, *r))[0] for r in raw]
        got = decode_registers(raw, dtype)
        assert_allclose(got, np.array(values, dtype=np.float64), equal_nan=True)
        assert fmt.startswith(">")


def _point(**kw: Any) -> dict[str, Any]:
    return {"feeds": "CDU01/supply_temp_c", "address": 0, "type": "int16"} | kw


def _map(*points: dict[str, Any], **device: Any) -> dict[str, Any]:
    return {"device": [{"name": "d1", "host": "127.0.0.1", "point": list(points)} | device]}


def _only(doc: dict[str, Any]) -> Any:
    return parse_map(doc).devices[0].points[0]


@pytest.mark.parametrize(
    ("point", "raw", "si"),
    [
        (_point(scale=0.1, unit="degC"), 452, 45.2),
        (_point(unit="degF"), 212, 100.0),
        (_point(unit="K", scale=0.01), 30315, 30.0),  # 303.15 K
        (_point(scale=0.5, offset=-10.0), 100, 40.0),  # raw x scale + offset, then the unit
        (_point(feeds="UPS01/input_power_w", unit="kW", scale=0.1), 1234, 123_400.0),
        (_point(feeds="PDU01/power_w", unit="MW", scale=0.001), 2, 2_000.0),
        (_point(feeds="CH01/cooling_w", unit="TR"), 100, 351_685.3),
        (_point(feeds="CH01/cooling_w", unit="BTU/h"), 12_000, 3_516.85284),
        (_point(feeds="UPS01/battery_soc_frac", unit="%"), 87, 0.87),
        (_point(feeds="UPS01/on_battery_bool", unit="0/1"), 4, 1.0),  # a set status bit
        (_point(feeds="UPS01/on_battery_bool", unit="0/1"), 0, 0.0),
        (_point(feeds="CDU01/flow_kg_s", unit="kg/h"), 3600, 1.0),
        (_point(feeds="CH01/cop"), 5, 5.0),
    ],
)
def test_scale_offset_and_units_give_the_twin_si_value(
    point: dict[str, Any], raw: float, si: float
) -> None:
    assert si_value(_only(_map(point)), raw) == pytest.approx(si, rel=1e-6)


def test_volume_flows_become_mass_flows_with_the_fluid_density() -> None:
    # water at 40 C: 992.3 kg/m^3 (twin/fluids.py, CoolProp); PG25 at 30 C: 1014.9
    water = _only(_map(_point(feeds="CDU01/flow_kg_s", unit="L/min")))
    assert si_value(water, 60.0) == pytest.approx(1e-3 * 992.3)
    pg25 = _only(_map(_point(feeds="CDU01/flow_kg_s", unit="m3/h", fluid="PG25",
                             fluid_temp_c=30)))  # fmt: skip
    assert si_value(pg25, 3.6) == pytest.approx(1e-3 * 1014.9)
    gpm = _only(_map(_point(feeds="FWS/flow_kg_s", unit="gpm", fluid_temp_c=20)))
    assert si_value(gpm, 100.0) == pytest.approx(100 * 3.785411784e-3 / 60 * 998.3)


# -- validation --------------------------------------------------------------------------


def _bad(path: str, value: Any) -> dict[str, Any]:
    """A good two-device map with one key set (``value`` None: removed)."""
    doc: dict[str, Any] = {
        "defaults": {"timeout_s": 1.0},
        "device": [
            {"name": "cdu01", "host": "10.0.0.1", "point": [_point(), _point(
                feeds="CDU01/flow_kg_s", address=1, type="float32", unit="L/min")]},
            {"name": "ups01", "host": "10.0.0.2", "point": [
                _point(feeds="UPS01/input_power_w", unit="kW")]},
        ],
    }  # fmt: skip
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        name, _, index = part.partition("[")
        node = node[name]
        if index:
            node = node[int(index.rstrip("]"))]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


BAD = [
    ("colour", "x", "map: colour: unknown key"),
    ("defaults.word_order", "middle", "defaults.word_order: 'middle' is not one of big, little"),
    ("defaults.timeout_s", 0, "defaults.timeout_s: 0 must be > 0"),
    ("device[0].host", None, "device[0].host: missing"),
    ("device[0].host", "a b", "device[0].host: 'a b' is not a host name"),
    ("device[0].name", "cdu 01", "device[0].name: 'cdu 01': use 1-64 of"),
    ("device[1].name", "cdu01", "device[1].name: 'cdu01' is device[0] too"),
    ("device[0].port", True, "device[0].port: expected a number, got True"),
    ("device[0].port", 70000, "device[0].port: 70000 is outside 1..65535"),
    ("device[0].unit_id", 256, "device[0].unit_id: 256 is outside 0..255"),
    ("device[0].poll_interval_s", "5", "device[0].poll_interval_s: expected a number"),
    ("device[0].timeout_s", -1, "device[0].timeout_s: -1 must be > 0"),
    ("device[0].point", [], "device[0].point: missing"),
    ("device[0].ip", "x", "device[0].ip: unknown key"),
    ("device[0].point[1].adress", 3, "device[0].point[1].adress: unknown key"),
    ("device[0].point[0].type", "float", "device[0].point[0].type: 'float' is not one of"),
    ("device[0].point[0].kind", "coil", "device[0].point[0].kind: 'coil' is not one of"),
    ("device[0].point[1].address", 65535, "device[0].point[1].address: 65535 is outside"),
    ("device[0].point[0].address", -1, "device[0].point[0].address: -1 is outside 0..65535"),
    ("device[0].point[0].feeds", "XYZ01/supply_temp_c", "point[0].feeds: unit 'XYZ01' is no"),
    ("device[0].point[0].feeds", "CDU01/power_w", "'power_w' is no point of a CDU (expected"),
    ("device[0].point[0].feeds", "CDU01/" + STALE_POINT, "'stale_bool' is no point of a CDU"),
    ("device[0].point[0].feeds", "CDU01/flow_kg_s", "point[1].feeds: CDU01/flow_kg_s is fed by"),
    (
        "device[0].point[0].feeds",
        "UPS01/input_power_w",
        "device[1].point[0].feeds: UPS01/input_power_w is fed by device 'cdu01'",
    ),
    ("device[0].point[0].unit", "kW", "point[0].unit: 'kW' cannot feed supply_temp_c (expected"),
    ("device[0].point[0].unit", "furlong", "point[0].unit: 'furlong' cannot feed"),
    ("device[0].point[0].scale", 0, "device[0].point[0].scale: 0 must be finite and not 0"),
    ("device[0].point[0].offset", float("nan"), "device[0].point[0].offset: nan must be finite"),
    ("device[0].point[0].fluid", "water", "point[0].fluid: only for a volume flow unit"),
    ("device[0].point[1].fluid", "glycol", "point[1].fluid: 'glycol' is not one of"),
    ("device[0].point[1].fluid_temp_c", 150, "point[1].fluid_temp_c: 150 is outside"),
    ("device[0].point[0].word_order", "swapped", "point[0].word_order: 'swapped' is not"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), BAD, ids=[b[0] + "=" + str(b[1]) for b in BAD]
)
def test_a_bad_map_is_one_line_naming_the_key(path: str, value: Any, message: str) -> None:
    parse_map(_bad("device[0].port", 502))  # the map itself is good
    with pytest.raises(ConfigError) as err:
        parse_map(_bad(path, value))
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_no_devices_and_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^map: device: missing"):
        parse_map({})
    bad = tmp_path / "plant.toml"
    bad.write_text("[[device]\nname = 1\n")
    with pytest.raises(ConfigError, match=r"plant.toml: not valid TOML"):
        load_map(bad)
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read the Modbus map"):
        load_map(tmp_path / "nope.toml")
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"not UTF-8"):
        load_map(bad)


def test_device_orders_and_kind_are_defaults_of_its_points() -> None:
    doc = _map(_point(), _point(feeds="CDU01/return_temp_c", address=1, word_order="big"),
               word_order="little", kind="input")  # fmt: skip
    a, b = parse_map(doc).devices[0].points
    assert (a.word_order, a.kind, b.word_order, b.kind) == ("little", "input", "big", "input")


def test_the_shipped_example_map_is_valid() -> None:
    plant = load_map(ROOT / "compose" / "modbus-plant.example.toml")
    assert [d.name for d in plant.devices] == ["cdu01", "meter-main", "ups01"]
    assert plant.units() == {
        "CDU01": "thermal", "SITE": "power", "PDU01": "power", "UPS01": "power"
    }  # fmt: skip
    meter = plant.devices[1]
    assert meter.unit_id == 3 and {p.word_order for p in meter.points} == {"little"}


# -- reads -------------------------------------------------------------------------------


def test_adjacent_registers_share_a_read_and_kinds_never_mix() -> None:
    doc = _map(
        _point(address=10, scale=0.1),
        _point(feeds="CDU01/return_temp_c", address=11),
        _point(feeds="CDU01/flow_kg_s", address=12, type="float32"),
        _point(feeds="CDU01/pump_power_w", address=20),  # a gap: its own read
        _point(feeds="CDU01/pump_speed_frac", address=11, kind="input"),
    )
    points = parse_map(doc).devices[0].points
    blocks = read_blocks(points)
    assert [(b.kind, b.address, b.size, len(b.points)) for b in blocks] == [
        ("holding", 10, 4, 3),
        ("holding", 20, 1, 1),
        ("input", 11, 1, 1),
    ]
    assert [(b.address, b.size) for b in read_blocks(points, max_gap=8)][:1] == [(10, 11)]
    values = block_values(blocks[0], [452, 0xFFFE, 0x41C8, 0])
    expected = [45.2, -2.0, 25.0]  # int16 x 0.1, int16, float32 (kg/s)
    assert [values[p] for p in blocks[0].points] == pytest.approx(expected)


def test_a_read_never_asks_for_more_than_the_protocol_allows() -> None:
    kinds = [k for k in UNIT_KINDS if k.name == "rack manifold"]
    pts = [_point(feeds=f"R{i + 1:04d}/{kinds[0].points[0]}", address=i * 2, type="float32")
           for i in range(200)]  # fmt: skip
    blocks = read_blocks(parse_map(_map(*pts)).devices[0].points)
    assert max(b.size for b in blocks) <= MAX_READ_REGISTERS
    assert sum(len(b.points) for b in blocks) == 200 and len(blocks) == 4


def test_a_short_or_garbage_answer_is_refused() -> None:
    block = read_blocks(parse_map(_map(_point(type="float32"))).devices[0].points)[0]
    with pytest.raises(ValueError, match="1 registers returned, 2 asked for"):
        block_values(block, [1])
    with pytest.raises(ValueError, match=r"outside 0\.\.65535"):
        block_values(block, [1, 70000])


# -- the twin's points ---------------------------------------------------------------------


def test_the_map_feeds_exactly_the_points_the_simulator_publishes() -> None:
    from streams.sim_source import frames_of, make_simulator
    from twin.sensors import SITE_KPI_POINTS

    sim = make_simulator(racks=2, site_path=None, seed=1, faults=[], start_ms=1_780_000_000_000)
    seen: dict[str, set[str]] = {}
    for topic, unit, data in frames_of(sim.step(1.0)):
        if topic == "gpu":
            continue
        frame = decode_points_frame(data, key=unit.encode(), now_ms=None)
        kind = unit_kind(unit)
        assert kind is not None, unit
        assert kind.topic == topic, unit
        seen.setdefault(kind.name, set()).update(set(frame.points) - set(SITE_KPI_POINTS))
    assert seen == {k.name: set(k.points) for k in UNIT_KINDS}


def test_frames_hold_stale_bool_and_leave_out_values_the_worker_would_refuse() -> None:
    doc = _map(
        _point(),
        _point(feeds="CDU01/return_temp_c", address=1),
        _point(feeds="UPS01/input_power_w", address=2, unit="kW"),
    )
    sup, ret, ups = parse_map(doc).devices[0].points
    now_ms = time.time_ns() // 1_000_000
    frames, left_out = checked_frames(
        {sup: 45.0, ret: 900.0, ups: 120_000.0}, {}, now_ms, lambda unit: False
    )
    assert list(left_out) == [ret] and "out_of_range" in left_out[ret]
    decoded = {
        unit: decode_points_frame(data, key=unit.encode(), now_ms=now_ms)
        for _, unit, data in frames
    }
    assert [(t, u) for t, u, _ in frames] == [("thermal", "CDU01"), ("power", "UPS01")]
    cdu, ups_frame = decoded["CDU01"], decoded["UPS01"]
    assert dict(zip(cdu.points, cdu.values.tolist(), strict=True)) == {
        "supply_temp_c": 45.0, STALE_POINT: 1.0
    }  # fmt: skip
    assert dict(zip(ups_frame.points, ups_frame.values.tolist(), strict=True)) == {
        "input_power_w": 120_000.0, STALE_POINT: 0.0
    }  # fmt: skip
    # a unit none of whose points was read still says so
    frames, _ = checked_frames({}, {ups: "timeout"}, now_ms, lambda unit: True)
    only = decode_points_frame(frames[0][2], key=b"UPS01", now_ms=now_ms)
    assert only.points == [STALE_POINT] and only.values.tolist() == [1.0]


def test_docs_show_the_units_the_code_converts() -> None:
    doc = (ROOT / "docs" / "collectors.md").read_text()
    m = re.search(r"<!-- modbus-units:[^>]*-->\n(.*?)<!-- /modbus-units -->", doc, re.S)
    assert m is not None, "docs/collectors.md lacks the modbus-units markers"
    assert m.group(1) == units_markdown(), (
        "docs/collectors.md differs from UNITS: paste units_markdown() between the markers"
    )
