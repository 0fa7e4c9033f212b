"""Fault specifications (``KIND:TARGET@T``), their parsing, and their physical effect on a
step's inputs. Sensor faults (stuck, drift) act on readings and are applied by the simulator.

Kinds and targets (T = seconds after the simulator's start). A GPU is named by its NVML
device index, counted from 0 (``G00``..``G71`` in a 72-GPU rack), the same numbering as the
``gpu`` column of telemetry.gpu and the residual entities (``R0003/G12`` is index 12):

- ``fouling:R0003/G12@600``: cold-plate resistance creeps up (a whole rack: ``R0003``)
- ``pump_degrade:CDU01@120``: pump head/flow factor falls linearly to a floor
- ``pump_trip:CDU02@300``: the CDU pump stops
- ``fan_fail:DC01@60``: a dry cooler's fans stop (the BMS isolates the unit)
- ``sensor_stuck:R0002/inlet_temp_c@30``: the reading freezes at its value at T
- ``sensor_drift:CDU01/supply_temp_c@30``: the reading drifts at a constant rate
- ``ups_on_battery:UPS01@10``: the module's mains input fails; its battery carries the load
- ``gpu_throttle_stuck:R0001/G05@5``: the GPU is stuck in hardware slowdown
- fleet faults (``twin/fleet_faults.py``): ``xid:R0003/G05@T,code=79``,
  ``hbm_decay:R0003/G05@T``, ``fail_slow:R0003/G05@T``, ``leak:CDU01@T``,
  ``cascade:UPS01@T``

Optional parameters follow T: ``fouling:R0003/G12@600,rate_per_s=0.002,max=3``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twin import fleet_faults
from twin.errors import ConfigError
from twin.site import Site
from twin.step import StepInputs

#: kind -> (target form, default parameters). Values are estimates chosen to make each fault
#: visible within minutes, as a detection test needs.
FAULT_KINDS: dict[str, tuple[str, dict[str, float]]] = {
    # R multiplier grows by rate_per_s each second up to max: x2 after 15 min
    "fouling": ("gpu", {"rate_per_s": 1.0 / 900.0, "max": 4.0}),
    # impeller wear: health 1 -> floor over ramp_s
    "pump_degrade": ("cdu", {"floor": 0.5, "ramp_s": 600.0}),
    "pump_trip": ("cdu", {}),
    "fan_fail": ("dc", {}),
    "sensor_stuck": ("point", {}),
    # drift in the point's unit per second: 0.3 K/min for a temperature
    "sensor_drift": ("point", {"rate_per_s": 0.005}),
    "ups_on_battery": ("ups", {"duration_s": float("inf")}),
    "gpu_throttle_stuck": ("gpu", {}),
}
FAULT_KINDS.update(fleet_faults.FLEET_FAULT_KINDS)

_FAULT_RE = re.compile(r"^([a-z_]+):([^@\s]+)@([0-9]+(?:\.[0-9]*)?)((?:,[a-z_]+=[^,\s]+)*)$")
_GPU_RE = re.compile(r"^(R\d{4,})(?:/G(\d+))?$")
_POINT_RE = re.compile(r"^([A-Za-z0-9_]+)(?:/(G\d+))?/([a-z0-9_]+)$")


@dataclass(frozen=True)
class FaultSpec:
    """One fault: ``kind`` (a key of FAULT_KINDS), ``target``, start ``at_s`` [s after start],
    ``params`` overriding the kind's defaults."""

    kind: str
    target: str
    at_s: float
    params: tuple[tuple[str, float], ...] = ()

    def param(self, name: str) -> float:
        """The parameter ``name``: the override if given, else the kind's default."""
        return dict(self.params).get(name, FAULT_KINDS[self.kind][1][name])

    def record(self, start_ms: int) -> dict[str, Any]:
        """Ground-truth record of this fault for a simulator started at ``start_ms``."""
        merged = FAULT_KINDS[self.kind][1] | dict(self.params)
        return {
            "kind": self.kind,
            "target": self.target,
            "start_ts_ms": start_ms + round(self.at_s * 1000),
            "params": merged,
        } | fleet_faults.record_extra(self, start_ms)


def parse_fault(text: str) -> FaultSpec:
    """Parse ``KIND:TARGET@T[,name=value...]``; ConfigError (one line) names what is wrong."""
    m = _FAULT_RE.match(text.strip())
    if m is None:
        raise ConfigError(f"fault {text!r}: expected KIND:TARGET@SECONDS, e.g. pump_trip:CDU02@300")
    kind, target, at, extra = m.groups()
    if kind not in FAULT_KINDS:
        raise ConfigError(
            f"fault {text!r}: unknown kind {kind!r}; expected one of {sorted(FAULT_KINDS)}"
        )
    form, defaults = FAULT_KINDS[kind]
    ok = {
        "gpu": _GPU_RE.match(target) is not None,
        "cdu": re.fullmatch(r"CDU\d{2,}", target) is not None,
        "dc": re.fullmatch(r"DC\d{2,}", target) is not None,
        "ups": re.fullmatch(r"UPS\d{2,}", target) is not None,
        "point": _POINT_RE.match(target) is not None,
    }[form]
    if not ok:
        example = {
            "gpu": "R0001/G05 or R0001",
            "cdu": "CDU01",
            "dc": "DC01",
            "ups": "UPS01",
            "point": "R0002/inlet_temp_c or R0001/G03/temp_gpu_c",
        }[form]
        raise ConfigError(f"fault {text!r}: target {target!r} for {kind}: expected {example}")
    params: list[tuple[str, float]] = []
    for item in filter(None, extra.split(",")):
        name, _, value = item.partition("=")
        if name not in defaults:
            raise ConfigError(
                f"fault {text!r}: unknown parameter {name!r} for {kind}; "
                f"expected one of {sorted(defaults)}"
            )
        try:
            params.append((name, float(value)))
        except ValueError:
            raise ConfigError(
                f"fault {text!r}: parameter {name}: expected a number, got {value!r}"
            ) from None
    return FaultSpec(kind, target, float(at), tuple(params))


@dataclass(frozen=True)
class ResolvedFault:
    """A fault bound to a site: indices into the arrays it acts on (gpu = -1: whole rack)."""

    spec: FaultSpec
    index: int = -1  # rack, CDU, dry-cooler or UPS index
    gpu: int = -1
    unit: str = ""  # sensor faults: unit id
    point: str = ""  # sensor faults: point name


def _lookup(ids: tuple[str, ...], target: str, spec: FaultSpec) -> int:
    try:
        return ids.index(target)
    except ValueError:
        raise ConfigError(
            f"fault {spec.kind}:{spec.target}: no unit {target!r} in this site "
            f"({ids[0]}..{ids[-1]})"
        ) from None


def resolve(spec: FaultSpec, site: Site) -> ResolvedFault:
    """Bind ``spec`` to ``site``; ConfigError when the target does not exist. Sensor points
    are checked by the simulator, which knows its frame."""
    fleet_faults.check(spec)
    form = FAULT_KINDS[spec.kind][0]
    if form == "gpu":
        m = _GPU_RE.match(spec.target)
        assert m is not None
        rack = _lookup(site.rack_ids, m.group(1), spec)
        # NVML device index, from 0: the numbering of telemetry and residual entities
        gpu = -1 if m.group(2) is None else int(m.group(2))
        if gpu >= site.n_gpus:
            raise ConfigError(
                f"fault {spec.kind}:{spec.target}: expected a GPU from G00 to "
                f"G{site.n_gpus - 1:02d} (NVML index, from 0)"
            )
        return ResolvedFault(spec, rack, gpu)
    if form in ("cdu", "dc", "ups"):
        ids = {"cdu": site.cdu_ids, "dc": site.dc_ids, "ups": site.ups_ids}[form]
        return ResolvedFault(spec, _lookup(ids, spec.target, spec))
    m = _POINT_RE.match(spec.target)
    assert m is not None
    unit, gpu_s, point = m.groups()
    gpu = -1 if gpu_s is None else int(gpu_s[1:])  # NVML index, from 0
    return ResolvedFault(spec, -1, gpu, unit, point)


def apply_physical(faults: list[ResolvedFault], t_s: float, inputs: StepInputs) -> None:
    """Apply the physical faults active at ``t_s`` [s] to ``inputs`` (arrays edited in place;
    the caller passes fresh arrays each step)."""
    for f in faults:
        s = f.spec
        age = t_s - s.at_s
        if age < 0.0:
            continue
        gsel: Any = slice(None) if f.gpu < 0 else f.gpu
        if s.kind == "fouling":
            inputs.fouling[f.index, gsel] *= min(1.0 + s.param("rate_per_s") * age, s.param("max"))
        elif s.kind == "gpu_throttle_stuck":
            inputs.gpu_stuck[f.index, gsel] = True
        elif s.kind == "pump_degrade":
            ramp = min(age / max(s.param("ramp_s"), 1e-9), 1.0)
            inputs.pump_health[f.index] *= 1.0 - ramp * (1.0 - s.param("floor"))
        elif s.kind == "pump_trip":
            inputs.pump_on[f.index] = False
        elif s.kind == "fan_fail":
            inputs.dc_fan_ok[f.index] = False
        elif s.kind == "ups_on_battery" and age < s.param("duration_s"):
            inputs.ups_mains_ok[f.index] = False
        elif s.kind in fleet_faults.FLEET_FAULT_KINDS:
            fleet_faults.apply_physical(f, age, inputs)


def sensor_reading(f: ResolvedFault, t_s: float, value: float, stuck_value: float) -> float:
    """The faulty reading of a sensor fault: frozen at ``stuck_value`` or drifted."""
    if f.spec.kind == "sensor_stuck":
        return stuck_value
    return value + f.spec.param("rate_per_s") * (t_s - f.spec.at_s)


def is_sensor_fault(spec: FaultSpec) -> bool:
    """True for faults that act on readings, not on the physics."""
    return FAULT_KINDS[spec.kind][0] == "point"
