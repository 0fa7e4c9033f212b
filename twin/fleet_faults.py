"""Fleet faults: the failures that dominate large GPU fleets, for the simulator.

In Meta's Llama 3 training run (16,384 GPUs, 54 days, 419 interruptions; "The Llama 3 Herd
of Models", section 3.3.4) faulty GPUs caused 30 % of interruptions, HBM 17 %, network 8 %.
These kinds put those fingerprints into the telemetry the sensors publish, with the fault
as ground truth on twin.faults. They register into ``twin.faults.FAULT_KINDS`` (same
``KIND:TARGET@T[,name=value]`` syntax, GPUs named by NVML index from 0):

- ``xid:R0003/G05@T,code=79``: an XID event. Critical classes (48 double-bit ECC, 64 row
  remapper failure, 74 NVLink, 79 fallen off the bus, 94 contained and 95 uncontained ECC)
  kill the GPU's job: from T it idles (utilisation 0, idle power, cooling die) and reports
  the XID; ECC classes add an uncorrected error, 64 sets the remap-failure flag, 74 adds a
  burst of NVLink CRC errors. Warnings keep the GPU working: 63 records a row remap
  (pending), 92 adds a burst of corrected errors.
- ``hbm_decay:R0003/G05@T``: HBM wearing out: corrected ECC errors grow exponentially
  (``sbe_rate_per_s`` at T, e-folding ``fail_s / 4``), rows are remapped every
  ``remap_every_s`` from ``fail_s / 2``, and at ``fail_s`` an uncorrectable error with XID
  ``xid`` (48, or 94 where errors are contained) kills the job.
- ``fail_slow:R0003/G05@T``: a straggler: its power (and so its clock) sags to
  ``1 - frac`` of its power limit while its neighbours hold. It reports no throttle reason
  (``reason=0``: the silent case; 128 would report a power brake) and its enforced limit
  unchanged.
- ``leak:CDU01@T``: the CDU's secondary loop leaks ``rate_kg_s``: its reservoir level and
  loop pressure fall; below ``cavitate_frac`` of the reservoir the pump cavitates and flow
  falls; the CDU's leak-detection rope trips ``detect_s`` after T (inf: the leak is not
  over a rope).
- ``cascade:UPS01@T``: a voltage sag on the UPS input: the UPS rides through on battery for
  ``sag_s``, the sag trips the dry-cooler fans (their drives stop on undervoltage;
  ``trips=1``), the trim chiller (``trips=2``) or both (``3``), the standby does not start,
  so the facility supply temperature climbs.

- ``ups_degrade:UPS01@T,factor=1.5,ramp_s=300``: a UPS module whose losses grow over its
  efficiency curve (ageing DC-link capacitors, a failed module fan, a rectifier running
  hot: the module draws more from the mains for the same output); the losses reach
  ``factor`` times the curve's ``ramp_s`` after T. Nothing else changes: no alarm of its
  own, only measured input against output shows it.

Every CDU also publishes ``reservoir_level_frac``, ``loop_pressure_pa`` and
``leak_detected_bool``; every UPS ``input_voltage_v``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from twin.errors import ConfigError

if TYPE_CHECKING:
    from twin.faults import FaultSpec, ResolvedFault
    from twin.site import Site
    from twin.step import StepInputs

#: kind -> (target form, default parameters); merged into twin.faults.FAULT_KINDS. Values
#: are estimates that make each fingerprint visible within minutes.
FLEET_FAULT_KINDS: Final[dict[str, tuple[str, dict[str, float]]]] = {
    "xid": ("gpu", {"code": 79.0}),
    "hbm_decay": (
        "gpu",
        {"fail_s": 600.0, "sbe_rate_per_s": 0.02, "remap_every_s": 60.0, "xid": 48.0},
    ),
    "fail_slow": ("gpu", {"frac": 0.3, "reason": 0.0}),
    "leak": ("cdu", {"rate_kg_s": 0.05, "detect_s": 30.0, "cavitate_frac": 0.25}),
    # trips: 1 the dry-cooler fans, 2 the trim chiller, 3 both
    "cascade": ("ups", {"sag_s": 2.0, "sag_frac": 0.3, "trips": 1.0}),
    # losses over the curve x factor, reached after ramp_s
    "ups_degrade": ("ups", {"factor": 1.5, "ramp_s": 300.0}),
}

#: XID classes (streams/schema.py XID_CRITICAL / XID_WARNING, NVIDIA's XID catalogue).
XID_CRITICAL: Final = frozenset({48, 64, 74, 79, 94, 95})
XID_WARNING: Final = frozenset({63, 92})
_XID_ECC_UNCORRECTED: Final = frozenset({48, 94, 95})
#: Bursts a single XID event adds [count] (est.): an NVLink error comes with a burst of CRC
#: errors; XID 92 is raised for a high rate of corrected errors.
NVLINK_BURST: Final = 1000
SBE_BURST: Final = 500

#: CDU secondary loop (est., an in-row CDU such as a 1-2 MW unit): reservoir water [kg],
#: level at fill [1], static loop pressure [Pa] at fill and with the reservoir empty.
RESERVOIR_KG: Final = 60.0
LEVEL_FULL: Final = 0.8
PRESSURE_FULL_PA: Final = 200_000.0
PRESSURE_EMPTY_PA: Final = 40_000.0
#: UPS input voltage, line to line [V] (400 V three-phase).
MAINS_V: Final = 400.0

#: The telemetry.gpu/v2 counters and flags (zero on a healthy GPU) and their dtypes.
V2_COUNTERS: Final = {
    "ecc_corrected": np.uint64,
    "ecc_uncorrected": np.uint64,
    "remapped_rows": np.uint32,
    "row_remap_flags": np.uint8,
    "nvlink_errors": np.uint64,
}

#: Points only the sensors have (the facility model has no expectation of them).
SENSOR_ONLY_POINTS: Final = frozenset(
    {"reservoir_level_frac", "loop_pressure_pa", "leak_detected_bool", "input_voltage_v"}
)


def check(spec: FaultSpec) -> None:
    """Refuse (ConfigError, one line) parameters outside what a kind can mean."""
    where = f"fault {spec.kind}:{spec.target}"
    if spec.kind == "xid":
        code = spec.param("code")
        if code not in XID_CRITICAL | XID_WARNING:
            raise ConfigError(
                f"{where}: code={code:g}: expected an XID of {sorted(XID_CRITICAL | XID_WARNING)}"
            )
    elif spec.kind == "hbm_decay":
        if spec.param("xid") not in (48, 94):
            raise ConfigError(f"{where}: xid={spec.param('xid'):g}: expected 48 or 94")
        if not spec.param("fail_s") > 0 or not spec.param("remap_every_s") > 0:
            raise ConfigError(f"{where}: fail_s and remap_every_s must be > 0")
    elif spec.kind == "fail_slow" and not 0.0 < spec.param("frac") < 1.0:
        raise ConfigError(f"{where}: frac={spec.param('frac'):g}: expected 0 < frac < 1")
    elif spec.kind == "leak" and not spec.param("rate_kg_s") > 0:
        raise ConfigError(f"{where}: rate_kg_s must be > 0")
    elif spec.kind == "ups_degrade" and not (
        spec.param("factor") >= 1.0 and spec.param("ramp_s") >= 0.0
    ):
        raise ConfigError(f"{where}: expected factor >= 1 and ramp_s >= 0")
    elif spec.kind == "cascade" and spec.param("trips") not in (1, 2, 3):
        raise ConfigError(
            f"{where}: trips={spec.param('trips'):g}: expected 1 (dry-cooler fans), "
            "2 (trim chiller) or 3 (both)"
        )


def record_extra(spec: FaultSpec, start_ms: int) -> dict[str, Any]:
    """Ground-truth fields beyond kind, target, start and params: the XID class, the
    instant the HBM chain ends in an uncorrectable error [ms since epoch]."""
    if spec.kind == "xid":
        code = int(spec.param("code"))
        return {"xid": code, "severity": "critical" if code in XID_CRITICAL else "warning"}
    if spec.kind == "hbm_decay":
        fail_ms = start_ms + round((spec.at_s + spec.param("fail_s")) * 1000)
        return {"xid": int(spec.param("xid")), "severity": "critical", "fail_ts_ms": fail_ms}
    return {}


def _job_dead(spec: FaultSpec, age_s: float) -> bool:
    """True once the fault has killed the GPU's job (a critical XID has fired)."""
    if spec.kind == "xid":
        return spec.param("code") in XID_CRITICAL
    return spec.kind == "hbm_decay" and age_s >= spec.param("fail_s")


def leak_level(spec: FaultSpec, age_s: float) -> float:
    """Reservoir level [1 of full tank] ``age_s`` [s] into a leak."""
    lost = spec.param("rate_kg_s") * max(age_s, 0.0) / RESERVOIR_KG
    return max(LEVEL_FULL - lost, 0.0)


def apply_physical(f: ResolvedFault, age_s: float, inputs: StepInputs) -> None:
    """The physical effect of an active fleet fault ``age_s`` [s] after its start on one
    step's ``inputs`` (fresh arrays each step, edited in place)."""
    s = f.spec
    gsel: Any = slice(None) if f.gpu < 0 else f.gpu  # a rack target: all its GPUs
    if s.kind in ("xid", "hbm_decay"):
        if _job_dead(s, age_s):
            inputs.util[f.index, gsel] = 0.0
    elif s.kind == "fail_slow":
        inputs.power_limit_w[f.index, gsel] *= 1.0 - s.param("frac")
    elif s.kind == "leak":
        # the pump draws air below the cavitation level: head and flow fall with the level
        level = leak_level(s, age_s) / LEVEL_FULL
        cav = s.param("cavitate_frac")
        if level < cav:
            inputs.pump_health[f.index] *= max(level / cav, 0.05)
    elif s.kind == "ups_degrade":
        if inputs.ups_loss_factor is None:
            inputs.ups_loss_factor = np.ones(inputs.ups_mains_ok.shape)
        ramp = min(age_s / s.param("ramp_s"), 1.0) if s.param("ramp_s") > 0 else 1.0
        inputs.ups_loss_factor[f.index] *= 1.0 + ramp * (s.param("factor") - 1.0)
    elif s.kind == "cascade":
        if age_s < s.param("sag_s"):
            inputs.ups_mains_ok[f.index] = False
        # tripped on undervoltage; the standby does not start
        trips = int(s.param("trips"))
        if trips & 1:
            inputs.dc_fan_ok[:] = False
        if trips & 2:
            inputs.chiller_ok = False


def gpu_readings(
    faults: list[ResolvedFault], t_s: float, gpu: dict[str, np.ndarray], slowdown_c: float
) -> None:
    """Add the v2 columns to the GPU readings ``gpu`` ((R, G) arrays) at ``t_s`` [s]: zero
    counters, the thermal margin [K] to ``slowdown_c`` [C] of the die reading, and each
    active GPU fault's fingerprint (counters, flags, XID, a straggler's reported limit)."""
    shape = gpu["temp_gpu_c"].shape
    # columns the caller already holds are kept (the simulator passes shared zeros while no
    # GPU fault is active)
    for name, dtype in V2_COUNTERS.items():
        if name not in gpu:
            gpu[name] = np.zeros(shape, dtype=dtype)
    if "thermal_margin_k" not in gpu:
        gpu["thermal_margin_k"] = (np.float32(slowdown_c) - gpu["temp_gpu_c"]).astype(np.float32)
    for f in faults:
        s = f.spec
        age = t_s - s.at_s
        if age < 0.0 or s.kind not in ("xid", "hbm_decay", "fail_slow"):
            continue
        at = (f.index, slice(None) if f.gpu < 0 else f.gpu)  # a rack target: all its GPUs
        if s.kind == "fail_slow":
            # the physics ran under a sagging limit; the GPU reports its enforced limit and
            # no throttle reason of its own (or ``reason``)
            gpu["power_limit_w"][at] = gpu["power_limit_w"][at] / np.float32(1.0 - s.param("frac"))
            gpu["clock_event_reasons"][at] = (
                gpu["clock_event_reasons"][at] & ~np.uint64(0x4)
            ) | np.uint64(int(s.param("reason")))
            continue
        if s.kind == "xid":
            code = int(s.param("code"))
            gpu["xid"][at] = code
            if code in _XID_ECC_UNCORRECTED:
                gpu["ecc_uncorrected"][at] += 1
            elif code == 64:
                gpu["row_remap_flags"][at] |= 0x2
            elif code == 74:
                gpu["nvlink_errors"][at] += NVLINK_BURST
            elif code == 63:
                gpu["remapped_rows"][at] += 1
                gpu["row_remap_flags"][at] |= 0x1
            elif code == 92:
                gpu["ecc_corrected"][at] += SBE_BURST
            continue
        # hbm_decay: corrected errors grow as rate * tau * (e^(age/tau) - 1), tau = fail/4
        fail = s.param("fail_s")
        tau = fail / 4.0
        sbe = s.param("sbe_rate_per_s") * tau * math.expm1(min(age, fail) / tau)
        gpu["ecc_corrected"][at] += np.uint64(int(sbe))
        if age >= fail / 2.0:
            remaps = 1 + int((min(age, fail) - fail / 2.0) // s.param("remap_every_s"))
            gpu["remapped_rows"][at] += remaps
            gpu["row_remap_flags"][at] |= 0x1  # applied at the next GPU reset
        if age >= fail:
            gpu["ecc_uncorrected"][at] += 1
            gpu["remapped_rows"][at] += 1  # the failing row, remapped as uncorrectable
            gpu["xid"][at] = int(s.param("xid"))


def plant_points(
    faults: list[ResolvedFault], t_s: float, site: Site, rng: np.random.Generator | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The leak-detection points of every CDU and the supply-voltage point of every UPS at
    ``t_s`` [s], with the active leaks and sags in them: (point -> array over
    ``site.cdu_ids``, point -> array over ``site.ups_ids``); ``rng`` draws the sensor noise
    (None: exact readings)."""
    n_cdu, n_ups = len(site.cdu_ids), len(site.ups_ids)
    level = np.full(n_cdu, LEVEL_FULL)
    detected = np.zeros(n_cdu)
    volts = np.full(n_ups, MAINS_V)
    for f in faults:
        s = f.spec
        age = t_s - s.at_s
        if age < 0.0:
            continue
        if s.kind == "leak":
            level[f.index] = min(level[f.index], leak_level(s, age))
            if age >= s.param("detect_s"):
                detected[f.index] = 1.0
        elif s.kind == "cascade" and age < s.param("sag_s"):
            volts[f.index] = MAINS_V * (1.0 - s.param("sag_frac"))
    pressure = PRESSURE_EMPTY_PA + (PRESSURE_FULL_PA - PRESSURE_EMPTY_PA) * level / LEVEL_FULL
    if rng is not None:
        # level gauge +-0.5 % of span, pressure transmitter +-0.5 kPa, voltage +-0.5 V (est.)
        level = np.clip(level + rng.normal(0.0, 0.005, n_cdu), 0.0, 1.0)
        pressure = np.maximum(pressure + rng.normal(0.0, 500.0, n_cdu), 0.0)
        volts = volts + rng.normal(0.0, 0.5, n_ups)
    cdu_points = {
        "reservoir_level_frac": level,
        "loop_pressure_pa": pressure,
        "leak_detected_bool": detected,
    }
    return cdu_points, {"input_voltage_v": volts}
