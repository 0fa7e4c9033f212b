"""The Modbus map of ``twin collect modbus``: devices, registers and the twin points they feed.

A map is a TOML file (compose/modbus-plant.example.toml is the commented example). It is
untrusted input: :func:`load_map` validates all of it before anything is polled and raises
:class:`~twin.errors.ConfigError` with one line naming the bad key
(``plant.toml: device[2].point[1].type: ...``).

Each point's registers are decoded (:func:`decode_registers`), then
``value = raw x scale + offset`` in the device's unit, then converted to the twin's SI unit
(:data:`UNITS`). Which units and points exist is :data:`UNIT_KINDS`, the same names the
simulator publishes (twin/sensors.py; a test compares the two).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from twin.errors import ConfigError
from twin.fluids import FLUIDS, density_kg_m3

Topic = Literal["thermal", "power"]


class UnitKind(NamedTuple):
    """A kind of plant unit the twin knows: id pattern, topic and the points it reads."""

    name: str
    pattern: str  # full-match regex of the unit id
    topic: Topic
    points: tuple[str, ...]


#: The plant units and points of telemetry.thermal / telemetry.power (docs/topics.md), as
#: twin/sensors.py ``point_groups`` publishes them. SITE's KPI points (pue, ere...) are the
#: worker's own results, not meter readings, so a map cannot feed them.
UNIT_KINDS: Final[tuple[UnitKind, ...]] = (
    UnitKind("rack manifold", r"R\d{4,}", "thermal", (
        "inlet_temp_c", "outlet_temp_c", "flow_kg_s", "heat_to_liquid_w", "heat_to_air_w",
    )),
    UnitKind("CDU", r"CDU\d{2,}", "thermal", (
        "supply_temp_c", "return_temp_c", "facility_supply_temp_c", "facility_return_temp_c",
        "flow_kg_s", "pump_speed_frac", "pump_power_w",
        # sensor-only points (twin/fleet_faults.py): reservoir, loop pressure, leak rope
        "reservoir_level_frac", "loop_pressure_pa", "leak_detected_bool",
    )),
    UnitKind("dry cooler", r"DC\d{2,}", "thermal", (
        "fan_speed_frac", "fan_power_w", "heat_rejected_w",
    )),
    UnitKind("facility water", r"FWS", "thermal", (
        "supply_temp_c", "return_temp_c", "flow_kg_s", "pump_power_w",
    )),
    UnitKind("chiller", r"CH\d{2,}", "thermal", ("cooling_w", "power_w", "cop")),
    UnitKind("heat pump", r"HP\d{2,}", "thermal", ("heat_delivered_w", "power_w", "cop")),
    UnitKind("outdoor", r"OUTDOOR", "thermal", ("air_temp_c",)),
    UnitKind("transformer", r"TX\d{2,}", "power", ("input_power_w", "loss_w")),
    UnitKind("UPS", r"UPS\d{2,}", "power", (
        "input_power_w", "output_power_w", "loss_w", "on_battery_bool", "battery_soc_frac",
        "input_voltage_v",
    )),
    UnitKind("PDU", r"PDU\d{2,}", "power", ("power_w", "loss_w")),
    UnitKind("site meter", r"SITE", "power", ("it_power_w", "facility_power_w", "mech_power_w")),
)  # fmt: skip

#: The point the collector adds to every unit it feeds: 1 while a point of that unit could
#: not be read at the last poll (its device stopped answering), else 0. Reserved in maps.
STALE_POINT: Final = "stale_bool"


class UnitConv(NamedTuple):
    """SI value = (device value x factor + offset) [x fluid density for volume flows]."""

    suffix: str  # point-name suffix of the SI quantity
    factor: float
    offset: float
    volumetric: bool = False  # a volume flow: x density [kg/m^3] of the point's fluid


_GAL_US_M3: Final = 3.785411784e-3  # NIST SP 811 (2008) B.8: gallon (US) = 3.785 411 784 L
_BTU_H_W: Final = 0.29307107  # NIST SP 811 B.8: Btu_IT per hour = 0.293 071 07 W
_TON_REFRIG_W: Final = 3516.853  # NIST SP 811 B.8: ton of refrigeration (12 000 Btu_IT/h)
_PSI_PA: Final = 6894.757  # NIST SP 811 B.8: pound-force per square inch = 6.894 757 kPa

#: Units a map may read a point in, with the conversion to the twin's SI unit. The SI unit
#: itself is the default where a point names none.
UNITS: Final[dict[str, UnitConv]] = {
    "C": UnitConv("_c", 1.0, 0.0),
    "degC": UnitConv("_c", 1.0, 0.0),
    "degF": UnitConv("_c", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
    "F": UnitConv("_c", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
    "K": UnitConv("_c", 1.0, -273.15),
    "W": UnitConv("_w", 1.0, 0.0),
    "kW": UnitConv("_w", 1e3, 0.0),
    "MW": UnitConv("_w", 1e6, 0.0),
    "BTU/h": UnitConv("_w", _BTU_H_W, 0.0),
    "TR": UnitConv("_w", _TON_REFRIG_W, 0.0),
    "kg/s": UnitConv("_kg_s", 1.0, 0.0),
    "kg/h": UnitConv("_kg_s", 1.0 / 3600.0, 0.0),
    "t/h": UnitConv("_kg_s", 1000.0 / 3600.0, 0.0),
    "m3/s": UnitConv("_kg_s", 1.0, 0.0, True),
    "m3/h": UnitConv("_kg_s", 1.0 / 3600.0, 0.0, True),
    "L/s": UnitConv("_kg_s", 1e-3, 0.0, True),
    "L/min": UnitConv("_kg_s", 1e-3 / 60.0, 0.0, True),
    "gpm": UnitConv("_kg_s", _GAL_US_M3 / 60.0, 0.0, True),
    "1": UnitConv("_frac", 1.0, 0.0),
    "%": UnitConv("_frac", 0.01, 0.0),
    "0/1": UnitConv("_bool", 1.0, 0.0),
    "Pa": UnitConv("_pa", 1.0, 0.0),
    "kPa": UnitConv("_pa", 1e3, 0.0),
    "bar": UnitConv("_pa", 1e5, 0.0),
    "psi": UnitConv("_pa", _PSI_PA, 0.0),
    "V": UnitConv("_v", 1.0, 0.0),
    "kV": UnitConv("_v", 1e3, 0.0),
}

#: The SI unit of each point suffix (the default unit of a point); "" = dimensionless (cop).
SI_UNIT: Final = {"_c": "C", "_w": "W", "_kg_s": "kg/s", "_frac": "1", "_bool": "0/1",
                  "_pa": "Pa", "_v": "V", "": "1"}  # fmt: skip

#: Temperature [C] at which a volume flow's density is taken unless the point says: the
#: middle of the 30-50 C range of liquid-cooling loops (docs/sources.md S4 rows); water's
#: density moves 0.8 % over that range (twin/fluids.py, CoolProp).
DEFAULT_FLUID_TEMP_C: Final = 40.0

#: Register data types: numpy big-endian dtype and 16-bit registers per value.
DATA_TYPES: Final[dict[str, tuple[str, int]]] = {
    "int16": (">i2", 1),
    "uint16": (">u2", 1),
    "int32": (">i4", 2),
    "uint32": (">u4", 2),
    "float32": (">f4", 2),
    "float64": (">f8", 4),
}

REGISTER_KINDS: Final = ("holding", "input")
ORDERS: Final = ("big", "little")
#: Most registers one read may return (Modbus Application Protocol v1.1b3, 6.3 and 6.4).
MAX_READ_REGISTERS: Final = 125


def decode_registers(
    regs: NDArray[np.integer[Any]], data_type: str, word_order: str = "big", byte_order: str = "big"
) -> NDArray[np.float64]:
    """Values of rows of registers: ``regs`` is (n, words) of 16-bit register values.

    ``byte_order`` is the order of the two bytes within each register (Modbus sends the
    high byte first: "big"); ``word_order`` the order of the registers of one value ("big":
    the most significant register at the lowest address; "little": swapped words, as many
    meters send 32-bit values). Returns float64 (n,).
    """
    dtype, words = DATA_TYPES[data_type]
    r: NDArray[Any] = np.asarray(regs, dtype=np.uint16).reshape(-1, words)
    if byte_order == "little":
        r = (r >> 8) | (r << 8)  # uint16 arithmetic: swaps the bytes of each register
    if word_order == "little":
        r = r[:, ::-1]
    raw = np.ascontiguousarray(r).astype(">u2").tobytes()
    return np.frombuffer(raw, dtype=dtype).astype(np.float64)


@dataclass(frozen=True)
class MapPoint:
    """One twin point read from one device's registers."""

    unit: str  # twin unit id (the message key)
    point: str  # twin point name with its SI suffix
    topic: Topic
    address: int  # first register, 0-based protocol address
    kind: str  # "holding" or "input"
    data_type: str  # a key of DATA_TYPES
    word_order: str
    byte_order: str
    scale: float
    offset: float
    source_unit: str  # a key of UNITS
    #: SI value = device value x si_factor + si_offset (density included for volume flows)
    si_factor: float
    si_offset: float

    @property
    def words(self) -> int:
        """Registers the value spans."""
        return DATA_TYPES[self.data_type][1]

    @property
    def key(self) -> str:
        """``unit/point``, as logs and metrics name it."""
        return f"{self.unit}/{self.point}"


@dataclass(frozen=True)
class Device:
    """One Modbus TCP device (a CDU controller, a meter, a UPS card) and its points."""

    name: str
    host: str
    port: int
    unit_id: int  # Modbus unit identifier (pymodbus ``device_id``)
    poll_interval_s: float
    timeout_s: float
    points: tuple[MapPoint, ...]


@dataclass(frozen=True)
class PlantMap:
    """A validated map: every device, at least one."""

    devices: tuple[Device, ...]

    def units(self) -> dict[str, Topic]:
        """Every twin unit fed, and its topic kind."""
        return {p.unit: p.topic for d in self.devices for p in d.points}


_DEVICE_KEYS: Final = {"name", "host", "port", "unit_id", "poll_interval_s", "timeout_s"}
_DEFAULT_KEYS: Final = {"port", "unit_id", "poll_interval_s", "timeout_s", "word_order",
                        "byte_order", "kind"}  # fmt: skip
_POINT_KEYS: Final = {"feeds", "address", "kind", "type", "word_order", "byte_order", "scale",
                      "offset", "unit", "fluid", "fluid_temp_c"}  # fmt: skip
_BUILTIN_DEFAULTS: Final[dict[str, Any]] = {
    "port": 502,  # Modbus TCP's registered port
    "unit_id": 1,
    "poll_interval_s": 5.0,  # BMS points are polled every few seconds (streams/sim_source.py)
    "timeout_s": 1.0,
    "word_order": "big",
    "byte_order": "big",
    "kind": "holding",
}
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def unit_kind(unit: str) -> UnitKind | None:
    """The kind of a twin unit id (``CDU01`` is a CDU); None when the twin has none."""
    for kind in UNIT_KINDS:
        if re.fullmatch(kind.pattern, unit):
            return kind
    return None


def _suffix(point: str) -> str:
    return next((s for s in SI_UNIT if s and point.endswith(s)), "")


class _Where:
    """Builds ``file: key: problem`` errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")


def _get(where: _Where, table: dict[str, Any], key: str, name: str, want: type | tuple[type, ...],
         default: Any = None) -> Any:  # fmt: skip
    value = table.get(name, default)
    if value is None:
        raise where.error(f"{key}.{name}", "missing")
    # bool is an int in Python: a map saying port = true is wrong, not port 1
    if isinstance(value, bool) and bool not in (want if isinstance(want, tuple) else (want,)):
        raise where.error(f"{key}.{name}", f"expected a number, got {value!r}")
    if not isinstance(value, want):
        kinds = want if isinstance(want, tuple) else (want,)
        expected = " or ".join("a number" if k in (int, float) else "a string" for k in kinds)
        raise where.error(f"{key}.{name}", f"expected {expected}, got {value!r}")
    return value


def _int_in(where: _Where, table: dict[str, Any], key: str, name: str, lo: int, hi: int,
            default: Any = None) -> int:  # fmt: skip
    value = _get(where, table, key, name, int, default)
    if not lo <= value <= hi:
        raise where.error(f"{key}.{name}", f"{value} is outside {lo}..{hi}")
    return int(value)


def _positive(where: _Where, table: dict[str, Any], key: str, name: str, hi: float,
              default: Any = None) -> float:  # fmt: skip
    value = float(_get(where, table, key, name, (int, float), default))
    if not 0 < value <= hi:  # NaN fails too
        raise where.error(f"{key}.{name}", f"{value:g} must be > 0 and <= {hi:g}")
    return value


def _choice(where: _Where, table: dict[str, Any], key: str, name: str, choices: Any,
            default: Any = None) -> str:  # fmt: skip
    value = _get(where, table, key, name, str, default)
    if value not in choices:
        raise where.error(f"{key}.{name}", f"{value!r} is not one of {', '.join(choices)}")
    return str(value)


def _unknown(where: _Where, table: dict[str, Any], key: str, allowed: set[str]) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise where.error(
            f"{key}.{extra[0]}" if key else extra[0],
            f"unknown key (expected {', '.join(sorted(allowed))})",
        )


def _point(where: _Where, raw: Any, key: str, defaults: dict[str, Any]) -> MapPoint:
    if not isinstance(raw, dict):
        raise where.error(key, "expected a table ([[device.point]])")
    _unknown(where, raw, key, _POINT_KEYS)
    feeds = _get(where, raw, key, "feeds", str)
    unit, _, point = feeds.partition("/")
    kind = unit_kind(unit)
    if kind is None:
        names = ", ".join(f"{k.name} {k.pattern}" for k in UNIT_KINDS)
        raise where.error(f"{key}.feeds", f"unit {unit!r} is no twin unit ({names})")
    if point not in kind.points:
        raise where.error(
            f"{key}.feeds",
            f"{point!r} is no point of a {kind.name} (expected {', '.join(kind.points)})",
        )
    data_type = _choice(where, raw, key, "type", DATA_TYPES)
    words = DATA_TYPES[data_type][1]
    address = _int_in(where, raw, key, "address", 0, 65536 - words)
    suffix = _suffix(point)
    source_unit = _get(where, raw, key, "unit", str, SI_UNIT[suffix])
    conv = UNITS.get(source_unit)
    # a dimensionless figure (cop) is read as it is: only "1" fits
    fits = [u for u, c in UNITS.items() if c.suffix == suffix] if suffix else ["1"]
    if conv is None or source_unit not in fits:
        raise where.error(
            f"{key}.unit", f"{source_unit!r} cannot feed {point} (expected {', '.join(fits)})"
        )
    factor, offset = conv.factor, conv.offset
    if conv.volumetric:
        fluid = _choice(where, raw, key, "fluid", FLUIDS, "water")
        temp = float(_get(where, raw, key, "fluid_temp_c", (int, float), DEFAULT_FLUID_TEMP_C))
        if not -20.0 <= temp <= 100.0:
            raise where.error(f"{key}.fluid_temp_c", f"{temp:g} is outside -20..100 C")
        density = float(density_kg_m3(FLUIDS[fluid], temp))
        factor, offset = factor * density, offset * density
    elif "fluid" in raw or "fluid_temp_c" in raw:
        bad = "fluid" if "fluid" in raw else "fluid_temp_c"
        raise where.error(f"{key}.{bad}", f"only for a volume flow unit, not {source_unit!r}")
    scale = float(_get(where, raw, key, "scale", (int, float), 1.0))
    shift = float(_get(where, raw, key, "offset", (int, float), 0.0))
    if not (np.isfinite(scale) and scale != 0.0):
        raise where.error(f"{key}.scale", f"{scale:g} must be finite and not 0")
    if not np.isfinite(shift):
        raise where.error(f"{key}.offset", f"{shift:g} must be finite")
    return MapPoint(
        unit=unit,
        point=point,
        topic=kind.topic,
        address=address,
        kind=_choice(where, raw, key, "kind", REGISTER_KINDS, defaults["kind"]),
        data_type=data_type,
        word_order=_choice(where, raw, key, "word_order", ORDERS, defaults["word_order"]),
        byte_order=_choice(where, raw, key, "byte_order", ORDERS, defaults["byte_order"]),
        scale=scale,
        offset=shift,
        source_unit=source_unit,
        si_factor=factor,
        si_offset=offset,
    )


def _device(where: _Where, raw: Any, key: str, defaults: dict[str, Any]) -> Device:
    if not isinstance(raw, dict):
        raise where.error(key, "expected a table ([[device]])")
    _unknown(where, raw, key, _DEVICE_KEYS | {"point", "word_order", "byte_order", "kind"})
    name = _get(where, raw, key, "name", str)
    if not _NAME_RE.fullmatch(name):
        raise where.error(f"{key}.name", f"{name!r}: use 1-64 of A-Z a-z 0-9 _ . : -")
    host = _get(where, raw, key, "host", str)
    if not host or any(c.isspace() for c in host):
        raise where.error(f"{key}.host", f"{host!r} is not a host name or address")
    # a device's own word/byte order and register kind are defaults for its points
    own = {k: raw[k] for k in ("word_order", "byte_order", "kind") if k in raw}
    point_defaults = defaults | own
    for k in ("word_order", "byte_order"):
        _choice(where, point_defaults, key, k, ORDERS)
    _choice(where, point_defaults, key, "kind", REGISTER_KINDS)
    raw_points = raw.get("point")
    if not isinstance(raw_points, list) or not raw_points:
        raise where.error(f"{key}.point", "missing: a device needs at least one [[device.point]]")
    points = tuple(
        _point(where, p, f"{key}.point[{i}]", point_defaults) for i, p in enumerate(raw_points)
    )
    seen: dict[str, int] = {}
    for i, p in enumerate(points):
        if p.key in seen:
            raise where.error(
                f"{key}.point[{i}].feeds", f"{p.key} is fed by point[{seen[p.key]}] too"
            )
        seen[p.key] = i
    timeout_s = _positive(where, raw, key, "timeout_s", 60.0, defaults["timeout_s"])
    interval_s = _positive(where, raw, key, "poll_interval_s", 3600.0, defaults["poll_interval_s"])
    return Device(
        name=name,
        host=host,
        port=_int_in(where, raw, key, "port", 1, 65535, defaults["port"]),
        unit_id=_int_in(where, raw, key, "unit_id", 0, 255, defaults["unit_id"]),
        poll_interval_s=interval_s,
        timeout_s=timeout_s,
        points=points,
    )


def parse_map(doc: dict[str, Any], source: str = "map") -> PlantMap:
    """Validate a parsed map document; ConfigError names the first bad key."""
    where = _Where(source)
    _unknown(where, doc, "", {"defaults", "device"})
    raw_defaults = doc.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise where.error("defaults", "expected a table ([defaults])")
    _unknown(where, raw_defaults, "defaults", _DEFAULT_KEYS)
    defaults = _BUILTIN_DEFAULTS | raw_defaults
    # checked here, so that a bad default is named as such and not as a device's key
    _int_in(where, defaults, "defaults", "port", 1, 65535)
    _int_in(where, defaults, "defaults", "unit_id", 0, 255)
    _positive(where, defaults, "defaults", "timeout_s", 60.0)
    _positive(where, defaults, "defaults", "poll_interval_s", 3600.0)
    for k, choices in (("word_order", ORDERS), ("byte_order", ORDERS), ("kind", REGISTER_KINDS)):
        _choice(where, defaults, "defaults", k, choices)
    raw_devices = doc.get("device")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise where.error("device", "missing: the map needs at least one [[device]]")
    devices = tuple(_device(where, d, f"device[{i}]", defaults) for i, d in enumerate(raw_devices))
    names: dict[str, int] = {}
    feeds: dict[str, str] = {}
    for i, d in enumerate(devices):
        if d.name in names:
            raise where.error(f"device[{i}].name", f"{d.name!r} is device[{names[d.name]}] too")
        names[d.name] = i
        for j, p in enumerate(d.points):
            if p.key in feeds:
                raise where.error(
                    f"device[{i}].point[{j}].feeds", f"{p.key} is fed by device {feeds[p.key]!r}"
                )
            feeds[p.key] = d.name
    return PlantMap(devices=devices)


def load_map(path: Path) -> PlantMap:
    """Read and validate a map file; ConfigError (one line) when it is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the Modbus map: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the Modbus map is not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_map(doc, str(path))


class ReadBlock(NamedTuple):
    """One read request: ``size`` registers of ``kind`` from ``address``, and its points."""

    kind: str
    address: int
    size: int
    points: tuple[MapPoint, ...]


def read_blocks(points: tuple[MapPoint, ...], max_gap: int = 0) -> list[ReadBlock]:
    """Group points into reads of adjacent registers (at most MAX_READ_REGISTERS each).

    Points of one kind whose registers are adjacent, overlapping or at most ``max_gap``
    apart share one read; with the default 0 no register outside a point is ever asked
    for (many devices answer an unmapped address with an exception, failing the read).
    """
    blocks: list[ReadBlock] = []
    for kind in REGISTER_KINDS:
        mine = sorted((p for p in points if p.kind == kind), key=lambda p: p.address)
        start = end = -1
        group: list[MapPoint] = []
        for p in mine:
            stop = p.address + p.words
            fits = max(end, stop) - start <= MAX_READ_REGISTERS
            if group and p.address <= end + max_gap and fits:
                end = max(end, stop)
                group.append(p)
                continue
            if group:
                blocks.append(ReadBlock(kind, start, end - start, tuple(group)))
            start, end, group = p.address, stop, [p]
        if group:
            blocks.append(ReadBlock(kind, start, end - start, tuple(group)))
    return blocks


def block_values(block: ReadBlock, registers: list[int]) -> dict[MapPoint, float]:
    """SI values of a block's points from the registers one read returned."""
    regs = np.asarray(registers, dtype=np.int64)
    if regs.size < block.size:
        raise ValueError(f"{regs.size} registers returned, {block.size} asked for")
    if ((regs < 0) | (regs > 0xFFFF)).any():
        raise ValueError("a register value outside 0..65535")
    out: dict[MapPoint, float] = {}
    for p in block.points:
        at = p.address - block.address
        raw = decode_registers(regs[at : at + p.words][None, :], p.data_type, p.word_order,
                               p.byte_order)[0]  # fmt: skip
        out[p] = si_value(p, raw)
    return out


def si_value(p: MapPoint, raw: float) -> float:
    """The twin's SI value of a decoded register value: scale, offset, then the unit."""
    device_value = raw * p.scale + p.offset
    if p.source_unit == "0/1":
        return 1.0 if device_value != 0.0 else 0.0  # any non-zero status word means "on"
    return device_value * p.si_factor + p.si_offset


def units_markdown() -> str:
    """docs/collectors.md's table of :data:`UNITS` (one source; a test compares)."""
    quantity = {
        "_c": "temperature `_c` [C]",
        "_w": "power, heat `_w` [W]",
        "_kg_s": "mass flow `_kg_s` [kg/s]",
        "_frac": "fraction `_frac` [1]",
        "_bool": "status `_bool` [0/1]",
        "_pa": "pressure `_pa` [Pa]",
        "_v": "voltage `_v` [V]",
    }
    lines = ["| unit | feeds | SI value |", "|---|---|---|"]
    for name, c in UNITS.items():
        if name == "0/1":
            rule = "1 where the value is not 0, else 0"
        else:
            rule = f"x {c.factor:.6g}" + (f" {c.offset:+.6g}" if c.offset else "")
            if c.volumetric:
                rule = f"x {c.factor:.6g} [m3/s] x the density [kg/m3] of `fluid`"
        lines.append(f"| `{name}` | {quantity[c.suffix]} | {rule} |")
    return "\n".join(lines) + "\n"
