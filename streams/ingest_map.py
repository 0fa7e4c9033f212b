"""Map Telegraf/InfluxDB metrics (measurement, tags, fields) to the twin's readings.

Line protocol posted to ``/api/v2/write`` (streams/lineproto_views.py) and Telegraf's JSON
serializer output on telemetry.ingest (streams/ingest_json.py) carry one *metric* per line or
object: a measurement name, string tags, typed fields and a time. A mapping file (TOML) says
which metrics are which readings of the twin: the shipped ``ingest_map.toml`` covers
Telegraf's ``nvidia_smi``, ``ipmi_sensor``, ``modbus`` and ``snmp`` inputs, and a site adds or
replaces measurements with ``twin worker --ingest-map FILE`` (docs/collectors.md describes
the format). Two kinds of measurement:

- ``kind = "gpu"``: one metric is one GPU; ``rack_tag`` names the rack, ``gpu_tag`` the GPU
  index on its host, plus ``gpu_offset_tag`` (several hosts in one rack); ``fields`` maps
  fields to telemetry.gpu columns. What a GPU does not report is filled as the dcgm collector
  fills it (streams/collect_dcgm.py): ``temp_mem_c`` = ``temp_gpu_c``, ``energy_mj`` = power
  integrated over the readings this worker received (from 0), the rest by the JSON defaults.
- ``kind = "thermal" | "power"``: plant points. The plant unit comes from the first of
  ``unit_tags`` present; either ``point_tag`` names the point (one sensor a metric, its
  value in ``value_field``, the unit suffix from ``unit_suffix_tag`` through ``tag_units``,
  as ipmi_sensor reports) or each field is a point (``fields``, and with ``pass_suffixed``
  every field already named with a twin unit suffix, ``supply_temp_c``). ``kind_tag`` lets a
  metric choose its topic.

A metric the mapping does not know is *unmapped*: counted by :class:`IngestStats` (the
``/metrics`` counters and ``GET /api/ingest/unmapped``), never an error. A mapped metric
that cannot be a reading (a missing rack tag, a string where a number must be) raises
DecodeError with a reason code.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import threading
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from streams.schema import GPU_SCHEMA, POINT_UNIT_SUFFIXES
from twin.errors import ConfigError, DecodeError

log = logging.getLogger(__name__)

#: The GPU columns a mapped GPU metric may feed (telemetry.gpu, without ts/rack/gpu).
GPU_COLUMNS: Final = frozenset(f.name for f in GPU_SCHEMA if f.name not in ("ts", "rack", "gpu"))
#: Columns without which a GPU metric is no reading (as for the dcgm collector).
GPU_REQUIRED: Final = ("power_w", "temp_gpu_c", "sm_clock_mhz", "util_pct")
#: Integer columns: a scaled value is rounded to the nearest integer.
_GPU_INTEGER: Final = frozenset(
    f.name for f in GPU_SCHEMA if f.name in GPU_COLUMNS and pa.types.is_integer(f.type)
)
KINDS: Final = ("gpu", "thermal", "power")
#: Telegraf's json_timestamp_units -> twin/timeparse.py unit.
TELEGRAF_UNITS: Final = {"1ns": "ns", "1us": "us", "1µs": "us", "1ms": "ms", "1s": "s"}
#: Distinct unmapped names remembered for the report (a flood of names stays bounded).
MAX_REPORTED_NAMES: Final = 200
_POINT_CHARS: Final = re.compile(r"[^a-z0-9_]+")
DEFAULT_MAP: Final = "ingest_map.toml"
#: GPUs whose energy is integrated at once: the campus's 90,000 with room to spare.
MAX_INTEGRATED_GPUS: Final = 250_000

FieldValue = float | int | bool | str


@dataclass(frozen=True)
class Metric:
    """One Telegraf/InfluxDB metric: measurement, tags, fields, time [ns] (None: not given)."""

    name: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts_ns: int | None = None


@dataclass(frozen=True)
class Target:
    """Where a field goes: a GPU column or a point name, times ``scale``, on ``kind``."""

    name: str
    scale: float = 1.0
    kind: str | None = None  # points: overrides the measurement's kind


@dataclass(frozen=True)
class MeasurementMap:
    """The mapping of one measurement (module docstring)."""

    measurement: str
    kind: str
    fields: dict[str, Target]
    ignore: frozenset[str] = frozenset()
    rack_tag: str = "rack"
    gpu_tag: str = "index"
    gpu_offset_tag: str | None = None
    unit_tags: tuple[str, ...] = ()
    kind_tag: str | None = None
    point_tag: str | None = None
    value_field: str = "value"
    unit_suffix_tag: str | None = None
    tag_units: dict[str, Target] = field(default_factory=dict)
    pass_suffixed: bool = False


@dataclass(frozen=True)
class IngestMap:
    """All measurement mappings and the unit of Telegraf JSON timestamps."""

    measurements: dict[str, MeasurementMap]
    json_timestamp_unit: str = "s"


@dataclass
class IngestStats:
    """What came in and what became of it (bounded: at most MAX_REPORTED_NAMES names)."""

    metrics_mapped: int = 0
    metrics_unmapped: int = 0
    fields_unmapped: int = 0
    unmapped_measurements: Counter[str] = field(default_factory=Counter)
    unmapped_fields: Counter[str] = field(default_factory=Counter)

    def _note(self, names: Counter[str], name: str) -> None:
        if name in names or len(names) < MAX_REPORTED_NAMES:
            names[name] += 1
        else:
            names["(other)"] += 1

    def unmapped(self, measurement: str) -> None:
        """Count a metric of a measurement the mapping does not know (logged the first time
        a name is seen, up to MAX_REPORTED_NAMES names)."""
        self.metrics_unmapped += 1
        name = measurement[:100]
        if name not in self.unmapped_measurements and len(self.unmapped_measurements) < (
            MAX_REPORTED_NAMES
        ):
            log.warning(
                "ingest: measurement %r has no mapping; its metrics are counted, not used "
                "(GET /api/ingest/unmapped; add it with --ingest-map)",
                name,
            )
        self._note(self.unmapped_measurements, name)

    def unmapped_field(self, measurement: str, name: str) -> None:
        """Count a field of a mapped measurement that maps nowhere (and is not ignored)."""
        self.fields_unmapped += 1
        self._note(self.unmapped_fields, f"{measurement[:100]}.{name[:100]}")

    def report(self) -> dict[str, Any]:
        """JSON of the counts, the most frequent unmapped names first."""
        return {
            "metrics_mapped": self.metrics_mapped,
            "metrics_unmapped": self.metrics_unmapped,
            "fields_unmapped": self.fields_unmapped,
            "unmapped_measurements": dict(self.unmapped_measurements.most_common()),
            "unmapped_fields": dict(self.unmapped_fields.most_common()),
        }


# --- loading --------------------------------------------------------------------------------


def _target(where: str, spec: Any, kind: str) -> Target:
    if isinstance(spec, str):
        spec = {"to": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a name or a table {{to, scale, kind}}")
    unknown = set(spec) - {"to", "scale", "kind"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (expected to, scale, kind)")
    name, scale, tkind = spec.get("to"), spec.get("scale", 1.0), spec.get("kind")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.to: expected a column or point name")
    if kind == "gpu" and name not in GPU_COLUMNS:
        raise ConfigError(f"{where}.to: {name!r} is not a telemetry.gpu column")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ConfigError(f"{where}.scale: expected a finite number, got {scale!r}")
    if tkind is not None and (kind == "gpu" or tkind not in ("thermal", "power")):
        raise ConfigError(f"{where}.kind: expected thermal or power (points only)")
    return Target(name, float(scale), tkind)


def _strs(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: expected a list of names")
    return tuple(value)


def _opt_str(where: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: expected a name")
    return value


_KEYS: Final = {
    "kind", "fields", "ignore", "rack_tag", "gpu_tag", "gpu_offset_tag", "unit_tags",
    "kind_tag", "point_tag", "value_field", "unit_suffix_tag", "tag_units", "pass_suffixed",
}  # fmt: skip


def _measurement(where: str, name: str, spec: Any) -> MeasurementMap:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    fields_spec = spec.get("fields", {})
    if not isinstance(fields_spec, dict):
        raise ConfigError(f"{where}.fields: expected a table field = target")
    fields = {f: _target(f"{where}.fields.{f}", t, kind) for f, t in fields_spec.items()}
    tag_units_spec = spec.get("tag_units", {})
    if not isinstance(tag_units_spec, dict):
        raise ConfigError(f"{where}.tag_units: expected a table unit = {{to = suffix}}")
    tag_units = {u: _target(f"{where}.tag_units.{u}", t, kind) for u, t in tag_units_spec.items()}
    pass_suffixed = spec.get("pass_suffixed", False)
    if not isinstance(pass_suffixed, bool):
        raise ConfigError(f"{where}.pass_suffixed: expected true or false")
    mm = MeasurementMap(
        measurement=name,
        kind=kind,
        fields=fields,
        ignore=frozenset(_strs(f"{where}.ignore", spec.get("ignore", []))),
        rack_tag=_opt_str(f"{where}.rack_tag", spec.get("rack_tag")) or "rack",
        gpu_tag=_opt_str(f"{where}.gpu_tag", spec.get("gpu_tag")) or "index",
        gpu_offset_tag=_opt_str(f"{where}.gpu_offset_tag", spec.get("gpu_offset_tag")),
        unit_tags=_strs(f"{where}.unit_tags", spec.get("unit_tags", [])),
        kind_tag=_opt_str(f"{where}.kind_tag", spec.get("kind_tag")),
        point_tag=_opt_str(f"{where}.point_tag", spec.get("point_tag")),
        value_field=_opt_str(f"{where}.value_field", spec.get("value_field")) or "value",
        unit_suffix_tag=_opt_str(f"{where}.unit_suffix_tag", spec.get("unit_suffix_tag")),
        tag_units=tag_units,
        pass_suffixed=pass_suffixed,
    )
    if kind == "gpu":
        missing = [c for c in GPU_REQUIRED if c not in {t.name for t in fields.values()}]
        if missing:
            raise ConfigError(f"{where}.fields: no field feeds {', '.join(missing)} (required)")
    elif not mm.unit_tags:
        raise ConfigError(f"{where}.unit_tags: a points measurement needs the unit's tag(s)")
    elif not (mm.fields or mm.point_tag or mm.pass_suffixed):
        raise ConfigError(f"{where}: give fields, point_tag or pass_suffixed = true")
    return mm


def parse_map(doc: dict[str, Any], source: str, base: IngestMap | None = None) -> IngestMap:
    """An IngestMap from a parsed TOML document; ``base``'s measurements are kept unless
    ``doc`` names them again (a site file adds to or replaces the shipped defaults)."""
    unknown = set(doc) - {"telegraf_json", "measurements"}
    if unknown:
        raise ConfigError(f"{source}: unknown tables {sorted(unknown)}")
    measurements = dict(base.measurements) if base else {}
    specs = doc.get("measurements", {})
    if not isinstance(specs, dict):
        raise ConfigError(f"{source}: [measurements.NAME] tables expected")
    for name, spec in specs.items():
        measurements[name] = _measurement(f"{source}: measurements.{name}", name, spec)
    unit = base.json_timestamp_unit if base else "s"
    tj = doc.get("telegraf_json", {})
    if not isinstance(tj, dict) or set(tj) - {"timestamp_units"}:
        raise ConfigError(f"{source}: [telegraf_json] takes only timestamp_units")
    if "timestamp_units" in tj:
        given = tj["timestamp_units"]
        if given not in TELEGRAF_UNITS:
            raise ConfigError(
                f"{source}: telegraf_json.timestamp_units must be one of "
                f"{', '.join(TELEGRAF_UNITS)} (Telegraf's json_timestamp_units), got {given!r}"
            )
        unit = TELEGRAF_UNITS[given]
    return IngestMap(measurements, unit)


def load_map(path: Path | None = None) -> IngestMap:
    """The shipped mapping, with the measurements of the site file ``path`` added over it."""
    text = resources.files("streams").joinpath(DEFAULT_MAP).read_text(encoding="utf-8")
    base = parse_map(tomllib.loads(text), f"streams/{DEFAULT_MAP}")
    if path is None:
        return base
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--ingest-map {path}: cannot read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--ingest-map {path}: not TOML ({exc})") from None
    return parse_map(doc, str(path), base)


def ingest_map_arg(text: str) -> Path:
    """argparse type of ``--ingest-map``: the path, once the file loads over the shipped
    mapping (a wrong file is a usage error, said in one line before anything starts)."""
    path = Path(text)
    try:
        load_map(path)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--ingest-map ")) from None
    return path


# --- mapping --------------------------------------------------------------------------------


def _number(m: Metric, name: str, value: FieldValue) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        raise DecodeError(f"{m.name}: field {name} is a string, expected a number", "bad_field")
    try:
        return float(value)
    except OverflowError:  # an unsigned 64-bit integer is fine; 10**400 is not
        raise DecodeError(f"{m.name}: field {name} is out of range", "out_of_range") from None


def _tag(m: Metric, tag: str, what: str) -> str:
    value = m.tags.get(tag)
    if not value:
        raise DecodeError(f"{m.name}: no {tag!r} tag naming the {what}", "bad_field")
    return value


def _index(m: Metric, tag: str, what: str) -> int:
    text = _tag(m, tag, what)
    if not text.isdigit() or int(text) > 65_535:
        raise DecodeError(f"{m.name}: tag {tag}={text[:20]!r} is not a {what}", "bad_field")
    return int(text)


def point_name(text: str) -> str:
    """A point name from a sensor's name: lower case, anything but a-z 0-9 _ as ``_``."""
    return _POINT_CHARS.sub("_", text.lower()).strip("_")


def _suffixed(name: str) -> bool:
    return any(name.endswith(s) for s in POINT_UNIT_SUFFIXES)


@dataclass
class IngestMapper:
    """Turns metrics into twin readings (JSON-shaped dicts that streams/ingest_json.py
    converts and validates); keeps the GPU energy integrals and the :class:`IngestStats`."""

    mapping: IngestMap
    stats: IngestStats = field(default_factory=IngestStats)
    #: (rack, gpu) -> (ts [ms], energy [mJ]): power integrated over the readings received.
    _energy: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    #: The JSON agent maps on the event loop, HTTP writes on a thread of their own.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def knows(self, measurement: str) -> bool:
        """Whether ``measurement`` has a mapping."""
        return measurement in self.mapping.measurements

    def readings(self, m: Metric, now_ms: int) -> list[dict[str, Any]]:
        """The readings of one metric ([] when unmapped: counted); ``now_ms`` [ms] stamps a
        metric without a time. DecodeError (with a code) for a mapped metric gone wrong."""
        with self._lock:
            mm = self.mapping.measurements.get(m.name)
            if mm is None:
                self.stats.unmapped(m.name)
                return []
            ts_ms = now_ms if m.ts_ns is None else m.ts_ns // 1_000_000
            out = self._gpu(mm, m, ts_ms) if mm.kind == "gpu" else self._points(mm, m, ts_ms)
            self.stats.metrics_mapped += 1
            return out

    def _gpu(self, mm: MeasurementMap, m: Metric, ts_ms: int) -> list[dict[str, Any]]:
        rack = _tag(m, mm.rack_tag, "rack")
        gpu = _index(m, mm.gpu_tag, "GPU index")
        if mm.gpu_offset_tag and mm.gpu_offset_tag in m.tags:
            gpu += _index(m, mm.gpu_offset_tag, "GPU offset")
        r: dict[str, Any] = {"kind": "gpu", "rack": rack, "gpu": gpu, "ts": ts_ms}
        for name, value in m.fields.items():
            target = mm.fields.get(name)
            if target is None:
                if name not in mm.ignore:
                    self.stats.unmapped_field(m.name, name)
                continue
            number = _number(m, name, value) * target.scale
            if target.name in _GPU_INTEGER and math.isfinite(number):
                r[target.name] = round(number)
            else:
                r[target.name] = number
        missing = [c for c in GPU_REQUIRED if c not in r]
        if missing:
            raise DecodeError(
                f"{m.name} rack {rack} gpu {gpu}: no {', '.join(missing)} field", "bad_field"
            )
        r.setdefault("temp_mem_c", r["temp_gpu_c"])
        if "energy_mj" not in r:
            r["energy_mj"] = self._integrate(rack, gpu, ts_ms, r["power_w"])
        return [r]

    def _integrate(self, rack: str, gpu: int, ts_ms: int, power_w: float) -> int:
        last_ts, energy = self._energy.get((rack, gpu), (ts_ms, 0.0))
        if math.isfinite(power_w) and power_w > 0 and ts_ms > last_ts:
            energy += power_w * (ts_ms - last_ts)  # [W] x [ms] = [mJ]
        if (rack, gpu) not in self._energy and len(self._energy) >= MAX_INTEGRATED_GPUS:
            # a flood of made-up rack names must not grow this without end: forget the
            # GPU first seen longest ago
            self._energy.pop(next(iter(self._energy)))
        self._energy[(rack, gpu)] = (max(ts_ms, last_ts), energy)
        return int(energy)

    def _points(self, mm: MeasurementMap, m: Metric, ts_ms: int) -> list[dict[str, Any]]:
        unit = next((m.tags[t] for t in mm.unit_tags if m.tags.get(t)), None)
        if unit is None:
            raise DecodeError(
                f"{m.name}: no tag naming the plant unit ({', '.join(mm.unit_tags)})", "bad_field"
            )
        kind = mm.kind
        if mm.kind_tag and mm.kind_tag in m.tags:
            kind = m.tags[mm.kind_tag]
            if kind not in ("thermal", "power"):
                raise DecodeError(
                    f"{m.name}: tag {mm.kind_tag}={kind[:20]!r} is not thermal or power",
                    "bad_field",
                )
        out: list[dict[str, Any]] = []

        def add(point: str, value: float, target_kind: str | None) -> None:
            out.append(
                {
                    "kind": target_kind or kind,
                    "unit": unit,
                    "point": point,
                    "value": value,
                    "ts": ts_ms,
                }
            )

        if mm.point_tag is not None:
            self._tagged_point(mm, m, add)
            return out
        for name, value in m.fields.items():
            target = mm.fields.get(name)
            if target is not None:
                add(target.name, _number(m, name, value) * target.scale, target.kind)
            elif mm.pass_suffixed and _suffixed(name):
                add(name, _number(m, name, value), None)
            elif name not in mm.ignore:
                self.stats.unmapped_field(m.name, name)
        return out

    def _tagged_point(self, mm: MeasurementMap, m: Metric, add: Any) -> None:
        # one sensor a metric (ipmi_sensor): name from a tag, suffix from its unit tag
        sensor = point_name(_tag(m, str(mm.point_tag), "sensor"))
        unit_text = m.tags.get(mm.unit_suffix_tag or "", "")
        target = mm.tag_units.get(unit_text)
        value = m.fields.get(mm.value_field)
        if target is None or value is None or not sensor:
            # a discrete sensor (no unit) or a unit the mapping has no suffix for
            self.stats.unmapped_field(m.name, f"{unit_text or '(no unit)'}")
            return
        add(sensor + target.name, _number(m, mm.value_field, value) * target.scale, target.kind)
