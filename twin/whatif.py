"""What-if: run the facility model forward from a given state under a changed condition.

``run_whatif(site, state, scenarios, horizon_s, dt_s)`` steps twin/step.py from ``state``
(a live twin's snapshot, or a warmed-up simulator state) with the inputs held as they are
now, except for the scenarios, and reports when and where limits are crossed, PUE and heat
reuse over the horizon (docs/whatif.md). Scenarios (:data:`SCENARIO_KINDS`):

- ``pump_trip:CDU02`` (and any physical fault of twin/faults.py as ``KIND:TARGET[@T]``,
  T seconds into the horizon, default 0): the fault acts through the model's fault inputs;
- ``heatwave:+8K``: outdoor dry bulb offset [K] over the whole horizon;
- ``load:+20%``: GPU utilisation scaled by 1.2 (capped at 100 %, so IT power rises less);
- ``supply_setpoint:47``: technology-loop (rack) supply setpoint [C];
- ``fws_setpoint:42``: facility-water supply setpoint [C];
- ``ups_module_lost:UPS01``: the module is out of service; its hall's load shares over the
  remaining modules.

Inputs held from the starting state (a persistence forecast): GPU utilisation and power
limits (``workload="hold"``; ``"plan"`` replays the simulator's seeded workload plan), the
outdoor temperature anomaly over climatology, CDU pump health (inferred from speed and flow),
tripped pumps and UPS modules on battery.

Thermal protection acts as on real GPUs (twin/gpu.py): clocks fall at the slowdown
temperature, a GPU that still reaches its shutdown temperature trips, draws nothing and stays
off for the rest of the horizon (its job is lost; nobody restarts the node), and its compute
tray's other loads go with it. Heat that is not produced is not delivered: district heat and
dry-cooler heat follow the IT power that remains.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from twin.balance import NODES, EnergyLedger
from twin.errors import ConfigError
from twin.faults import FAULT_KINDS, ResolvedFault, apply_physical, parse_fault, resolve
from twin.gpu import SHUTDOWN_TOL_K
from twin.rack import gpu_coolant_c
from twin.site import Site
from twin.state import FacilityState
from twin.step import StepInputs, rack_design_flow_kg_s, step
from twin.weather import climatology_c, day_of_year, local_hour
from twin.workload import make_plan, utilisation

FloatArray = npt.NDArray[np.float64]

#: Longest model step of a what-if [s]; a longer --dt records every dt but steps this long.
MAX_MODEL_STEP_S = 5.0
#: ASHRAE TC9.9 W45: facility-water supply at most 45 C (docs/sources.md S3).
W45_SUPPLY_MAX_C = 45.0
#: NVML clock-event reasons that mean thermal slowdown (docs/sources.md S7: 0x20, 0x40).
_THERMAL_REASONS = np.uint64(0x20 | 0x40)
#: Physical fault kinds usable as scenarios (sensor faults change readings, not the plant).
FAULT_SCENARIOS = tuple(k for k, (form, _) in FAULT_KINDS.items() if form != "point")
_FAULT_TARGET_EXAMPLE = {"gpu": "R0001/G05", "cdu": "CDU01", "dc": "DC01", "ups": "UPS01"}
#: Scenario kinds with an example each (the error message for a wrong scenario lists them).
SCENARIO_KINDS: dict[str, str] = {
    "heatwave": "heatwave:+8K",
    "load": "load:+20%",
    "supply_setpoint": "supply_setpoint:47",
    "fws_setpoint": "fws_setpoint:42",
    "ups_module_lost": "ups_module_lost:UPS01",
} | {k: f"{k}:{_FAULT_TARGET_EXAMPLE[FAULT_KINDS[k][0]]}" for k in FAULT_SCENARIOS}
SCENARIO_KINDS["pump_trip"] = "pump_trip:CDU02"

_NUMBER = r"([+-]?[0-9]+(?:\.[0-9]*)?)"
_VALUE_RE = {
    "heatwave": re.compile(rf"^{_NUMBER}\s*K?$"),
    "load": re.compile(rf"^{_NUMBER}\s*%$"),
    "supply_setpoint": re.compile(rf"^{_NUMBER}\s*C?$"),
    "fws_setpoint": re.compile(rf"^{_NUMBER}\s*C?$"),
}
_HORIZON_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*(d|h|min|m|s)?")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0, None: 1.0}


class WhatIfError(ConfigError):
    """A what-if request is invalid; the one-line message says what was expected."""


def coolant_limit_c(site: Site) -> float:
    """Highest coolant temperature at the cold plates [C] at which a GPU at TDP on a clean
    plate stays at its max operating temperature: max_operating_c - R * TDP (the design
    bound of docs/sources.md S2, 87 - 0.018 x 1800 = 54.6 C for the default site)."""
    g = site.gpu
    return g.max_operating_c - g.r_die_coolant_k_w * g.tdp_w


@dataclass(frozen=True)
class Scenario:
    """One parsed change: ``kind``, a ``value`` (K, fraction or C) or a target."""

    text: str
    kind: str
    value: float = 0.0
    target: str = ""
    fault: ResolvedFault | None = None


def scenario_forms() -> str:
    """The accepted scenario forms, for help texts and error messages."""
    return ", ".join(SCENARIO_KINDS[k] for k in sorted(SCENARIO_KINDS))


def parse_scenario(text: str, site: Site) -> Scenario:
    """Parse one scenario (see the module docstring); WhatIfError names what was expected."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind not in SCENARIO_KINDS:
        raise WhatIfError(f"scenario {text!r}: expected one of {scenario_forms()}")
    if kind in _VALUE_RE:
        m = _VALUE_RE[kind].match(rest.strip())
        if m is None:
            raise WhatIfError(f"scenario {text!r}: expected e.g. {SCENARIO_KINDS[kind]}")
        value = float(m.group(1))
        if kind == "load":
            if value <= -100.0:
                raise WhatIfError(f"scenario {text!r}: expected a change above -100 %")
            value /= 100.0
        return Scenario(text, kind, value)
    if kind == "ups_module_lost":
        if rest not in site.ups_ids:
            raise WhatIfError(
                f"scenario {text!r}: expected a UPS module {site.ups_ids[0]}..{site.ups_ids[-1]}"
            )
        hall = site.ups_hall[site.ups_ids.index(rest)]
        if np.count_nonzero(site.ups_hall == hall) < 2:
            raise WhatIfError(f"scenario {text!r}: {rest} is the last module of its hall")
        return Scenario(text, kind, target=rest)
    spec_text = rest if "@" in rest else f"{rest}@0"
    try:
        spec = parse_fault(f"{kind}:{spec_text}")
        fault = resolve(spec, site)
    except ConfigError as exc:
        raise WhatIfError(f"scenario {text!r}: {exc}") from None
    return Scenario(text, kind, target=spec.target, fault=fault)


def parse_horizon(text: str) -> float:
    """Seconds in ``2h``, ``30m``, ``90min``, ``3600s``, ``1h30m`` or a bare number of seconds."""
    s = text.strip().lower().replace(" ", "")
    total, pos = 0.0, 0
    for m in _HORIZON_RE.finditer(s):
        if m.start() != pos or not m.group(0):
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s or total <= 0.0:
        raise WhatIfError(f"horizon {text!r}: expected a duration like 2h, 30m, 90min or 3600s")
    return total


@dataclass(frozen=True)
class LimitCrossing:
    """A limit crossed during the run: where (unit ids, earliest first) and when."""

    limit: str  # name, e.g. "gpu_slowdown"
    description: str  # e.g. "GPU slowdown 89.0 C"
    units: tuple[str, ...]  # units that crossed, earliest first
    first_s: tuple[float, ...]  # [s after start] per unit
    worst: float  # worst value reached (unit of the limit)
    # compact: neighbours that crossed together, ("R0009-R0016", first [s]), earliest first
    groups: tuple[tuple[str, float], ...] = ()

    @property
    def first_min(self) -> float:
        """Minute of the first crossing [min after start]."""
        return self.first_s[0] / 60.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form: minutes after the start, units and compact groups."""
        return {
            "limit": self.limit,
            "description": self.description,
            "crossed": True,
            "first_min": round(self.first_min, 3),
            "units": list(self.units),
            "first_min_per_unit": [round(t / 60.0, 3) for t in self.first_s],
            "groups": [{"units": u, "first_min": round(t / 60.0, 3)} for u, t in self.groups],
            "worst": self.worst,
        }


def compact_units(
    ids: Sequence[str], index: npt.NDArray[np.int64], first_s: FloatArray, resolution_s: float
) -> tuple[tuple[str, float], ...]:
    """Units that crossed at the same time (within ``resolution_s`` [s]) and are neighbours in
    ``ids`` as ranges: (("R0009-R0016", first [s]), ...), earliest first. ``index``: positions
    in ``ids`` of the units that crossed; ``first_s``: their first crossing [s]."""
    if index.size == 0:
        return ()
    bucket = np.floor(first_s / resolution_s + 1e-9)
    order = np.lexsort((index, bucket))
    idx, b, t = index[order], bucket[order], first_s[order]
    # a new group where the time bucket changes or the ids are not consecutive
    brk = np.flatnonzero((np.diff(b) != 0) | (np.diff(idx) != 1)) + 1
    out = []
    for lo, hi in zip(np.r_[0, brk], np.r_[brk, idx.size], strict=True):
        a, z = ids[idx[lo]], ids[idx[hi - 1]]
        out.append((a if hi - lo == 1 else f"{a}-{z}", float(t[lo:hi].min())))
    out.sort(key=lambda g: g[1])
    return tuple(out)


@dataclass
class WhatIfSeries:
    """Time series of one run; every array is shaped (n_steps,), t_s [s after start]."""

    t_s: FloatArray
    it_power_w: FloatArray
    facility_power_w: FloatArray
    cooling_power_w: FloatArray  # pumps, dry-cooler fans, chiller [W]
    heat_to_dh_w: FloatArray  # heat delivered to district heating [W]
    max_gpu_temp_c: FloatArray
    gpus_throttling: FloatArray  # count of GPUs in thermal slowdown (and still on)
    gpus_off: FloatArray  # count of GPUs shut down (tripped at shutdown, off for good)
    heat_to_dc_w: FloatArray  # heat rejected by the dry coolers [W]
    max_coolant_c: FloatArray  # hottest coolant at any rack's cold plates [C]
    fws_supply_c: FloatArray
    max_rack_inlet_c: FloatArray
    max_ups_load_frac: FloatArray  # of module rating [1]
    max_cdu_load_frac: FloatArray  # of CDU rating [1]
    outdoor_c: FloatArray

    @property
    def pue(self) -> FloatArray:
        """Instantaneous PUE [1]."""
        return self.facility_power_w / np.maximum(self.it_power_w, 1e-9)

    def energy_j(self, name: str) -> float:
        """Energy [J] of power series ``name`` over the run (each step's power x its dt)."""
        dt = np.diff(self.t_s, prepend=0.0)
        return float(np.sum(getattr(self, name) * dt))

    @property
    def pue_over_horizon(self) -> float:
        """Energy-weighted PUE [1] over the run."""
        return self.energy_j("facility_power_w") / max(self.energy_j("it_power_w"), 1e-9)


@dataclass
class WhatIfResult:
    """Outcome of :func:`run_whatif`; ``baseline`` is the same run without the scenarios."""

    scenarios: tuple[Scenario, ...]
    horizon_s: float
    dt_s: float
    start_ms: int
    n_racks: int
    series: WhatIfSeries
    crossings: list[LimitCrossing]
    limits: dict[str, str]
    slowdown_c: float  # GPU slowdown temperature of the site [C]
    baseline: WhatIfSeries | None = None
    notes: list[str] = field(default_factory=list)
    #: per energy node (twin/balance.py NODES): largest |in - out - stored| / in [1] of any
    #: unit over the run; ~1e-15 when the books close
    energy_residual: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable text report."""
        from twin.plot import format_summary

        return format_summary(self)

    def as_dict(self) -> dict[str, object]:
        """The result as JSON-ready data: every limit (crossed or not, with the minute of the
        first crossing and the units, also as compact ranges) and the KPIs over the horizon,
        beside the baseline's."""
        crossed = {c.limit: c for c in self.crossings}
        limits = [
            crossed[name].as_dict()
            if name in crossed
            else {"limit": name, "description": desc, "crossed": False}
            for name, desc in self.limits.items()
        ]
        return {
            "scenarios": [sc.text for sc in self.scenarios],
            "start_ms": self.start_ms,
            "horizon_s": self.horizon_s,
            "dt_s": self.dt_s,
            "racks": self.n_racks,
            "limits": limits,
            "kpis": series_kpis(self.series),
            "baseline_kpis": None if self.baseline is None else series_kpis(self.baseline),
            "energy_residual": dict(self.energy_residual),
            "notes": list(self.notes),
        }


def series_kpis(s: WhatIfSeries) -> dict[str, float]:
    """KPIs of one run over its horizon: energy-weighted PUE [1], IT energy, heat to district
    heating and to the dry coolers [MWh], mean cooling power [MW], hottest GPU die and
    coolant [C], and GPUs in slowdown (most at once) and shut down (at the end)."""
    mwh = 3.6e9
    hours = max(float(s.t_s[-1]), 1e-9) / 3600.0
    return {
        "pue": s.pue_over_horizon,
        "it_energy_mwh": s.energy_j("it_power_w") / mwh,
        "heat_to_dh_mwh": s.energy_j("heat_to_dh_w") / mwh,
        "heat_to_dry_coolers_mwh": s.energy_j("heat_to_dc_w") / mwh,
        "cooling_power_mean_mw": s.energy_j("cooling_power_w") / mwh / hours,
        "max_gpu_temp_c": float(s.max_gpu_temp_c.max()),
        "max_coolant_c": float(s.max_coolant_c.max()),
        "gpus_slowdown_max": float(s.gpus_throttling.max()),
        "gpus_off_end": float(s.gpus_off[-1]),
    }


# ---------------------------------------------------------------- the run


@dataclass
class _Setup:
    site: Site
    state: FacilityState
    faults: list[ResolvedFault]
    heat_offset_k: float = 0.0
    load_factor: float = 1.0
    tcs_setpoint_c: float | None = None
    fws_setpoint_c: float | None = None


def _drop_ups(site: Site, state: FacilityState, ups_id: str) -> tuple[Site, FacilityState]:
    i = site.ups_ids.index(ups_id)
    ids = site.ups_ids[:i] + site.ups_ids[i + 1 :]
    new_site = replace(site, ups_ids=ids, ups_hall=np.delete(site.ups_hall, i))
    st = state.copy()
    for name in ("ups_in_w", "ups_out_w", "ups_loss_w", "ups_on_battery", "ups_soc"):
        setattr(st, name, np.delete(getattr(st, name), i))
    return new_site, st


def _setup(site: Site, state: FacilityState, scenarios: Sequence[Scenario]) -> _Setup:
    s = _Setup(site, state.copy(), [])
    for sc in scenarios:
        if sc.kind == "heatwave":
            s.heat_offset_k += sc.value
        elif sc.kind == "load":
            s.load_factor *= 1.0 + sc.value
        elif sc.kind == "supply_setpoint":
            s.tcs_setpoint_c = sc.value
        elif sc.kind == "fws_setpoint":
            s.fws_setpoint_c = sc.value
        elif sc.kind == "ups_module_lost":
            s.site, s.state = _drop_ups(s.site, s.state, sc.target)
        elif sc.fault is not None:
            # fault times count from the what-if start: shift to the state's clock
            spec = replace(sc.fault.spec, at_s=sc.fault.spec.at_s + state.t_s)
            s.faults.append(resolve(spec, s.site))
    return s


def _held_inputs(site: Site, state: FacilityState) -> StepInputs:
    """Inputs that keep the plant as the state shows it: pump health from speed vs flow."""
    n_c = len(site.cdu_ids)
    served = np.bincount(site.rack_cdu, minlength=n_c).astype(np.float64)
    design = served * rack_design_flow_kg_s(site)
    on = state.cdu_pump_speed > 0.0
    flow_frac = state.cdu_flow_kg_s / np.maximum(design, 1e-9)
    rated_frac = np.maximum(state.cdu_pump_speed, 1e-9) * site.cdu.flow_max_frac
    health = np.where(on, np.clip(flow_frac / rated_frac, 0.05, 1.0), 1.0)
    shape = state.gpu_util.shape
    return StepInputs(
        util=state.gpu_util.copy(),
        power_limit_w=state.gpu_power_limit_w.copy(),
        outdoor_c=state.outdoor_c,
        day_of_year=0.0,
        fouling=np.ones(shape),
        gpu_stuck=np.zeros(shape, dtype=bool),
        pump_health=health,
        pump_on=on,
        dc_fan_ok=np.ones(len(site.dc_ids), dtype=bool),
        ups_mains_ok=~state.ups_on_battery,
    )


class _Recorder:
    """Collects the series and the first crossing time of every limit per unit."""

    def __init__(self, site: Site, n: int) -> None:
        self.site = site
        self.cols: dict[str, FloatArray] = {
            f: np.zeros(n) for f in WhatIfSeries.__dataclass_fields__
        }
        self.design_flow_kg_s = rack_design_flow_kg_s(site)
        self.coolant_max_c = coolant_limit_c(site)
        self.first: dict[str, FloatArray] = {
            "gpu_slowdown": np.full(site.n_racks, np.inf),
            "gpu_shutdown": np.full(site.n_racks, np.inf),
            "coolant_supply": np.full(site.n_racks, np.inf),
            "fws_w45": np.full(1, np.inf),
            "ups_overload": np.full(len(site.ups_ids), np.inf),
            "cdu_capacity": np.full(len(site.cdu_ids), np.inf),
        }
        self.worst = dict.fromkeys(self.first, -np.inf)
        self.energy_residual: dict[str, float] = {}

    def record(self, k: int, t_s: float, st: FacilityState) -> None:
        site = self.site
        slow = (st.gpu_temp_c >= site.gpu.slowdown_c - 0.05) | (
            (st.gpu_reasons & _THERMAL_REASONS) != 0
        )
        off = st.gpu_off | (st.gpu_temp_c >= site.gpu.shutdown_c - SHUTDOWN_TOL_K)
        coolant = gpu_coolant_c(
            st.rack_inlet_c, st.rack_coolant_c, st.rack_flow_kg_s / self.design_flow_kg_s
        )
        ups_frac = st.ups_out_w / site.power.ups_rated_w
        cdu_frac = st.cdu_heat_w / site.cdu.rating_w
        c = self.cols
        c["t_s"][k] = t_s
        c["it_power_w"][k] = st.it_power_w
        c["facility_power_w"][k] = st.facility_power_w
        c["cooling_power_w"][k] = (
            st.cdu_pump_power_w.sum() + st.fws_pump_power_w + st.dc_fan_power_w.sum()
        ) + st.chiller_power_w
        c["heat_to_dh_w"][k] = st.hp_heat_w
        c["max_gpu_temp_c"][k] = st.gpu_temp_c.max()
        c["gpus_throttling"][k] = np.count_nonzero(slow & ~off)
        c["gpus_off"][k] = np.count_nonzero(off)
        c["heat_to_dc_w"][k] = st.dc_heat_w.sum()
        c["max_coolant_c"][k] = coolant.max()
        c["fws_supply_c"][k] = st.fws_supply_c
        c["max_rack_inlet_c"][k] = st.rack_inlet_c.max()
        c["max_ups_load_frac"][k] = ups_frac.max(initial=0.0)
        c["max_cdu_load_frac"][k] = cdu_frac.max(initial=0.0)
        c["outdoor_c"][k] = st.outdoor_c
        checks = {
            "gpu_slowdown": (slow.any(axis=1), float(st.gpu_temp_c.max())),
            "gpu_shutdown": (off.any(axis=1), float(st.gpu_temp_c.max())),
            "coolant_supply": (coolant > self.coolant_max_c, float(coolant.max())),
            "fws_w45": (np.array([st.fws_supply_c > W45_SUPPLY_MAX_C]), st.fws_supply_c),
            "ups_overload": (ups_frac > 1.0, float(ups_frac.max(initial=0.0))),
            "cdu_capacity": (cdu_frac > 1.0, float(cdu_frac.max(initial=0.0))),
        }
        for name, (crossed, value) in checks.items():
            first = self.first[name]
            first[crossed & np.isinf(first)] = t_s
            self.worst[name] = max(self.worst[name], value)

    def series(self) -> WhatIfSeries:
        return WhatIfSeries(**self.cols)

    def crossings(self, limits: dict[str, str]) -> list[LimitCrossing]:
        site = self.site
        ids = {
            "gpu_slowdown": site.rack_ids,
            "gpu_shutdown": site.rack_ids,
            "coolant_supply": site.rack_ids,
            "fws_w45": ("FWS",),
            "ups_overload": site.ups_ids,
            "cdu_capacity": site.cdu_ids,
        }
        out = []
        for name, first in self.first.items():
            hit = np.flatnonzero(np.isfinite(first))
            if hit.size:
                order = hit[np.argsort(first[hit], kind="stable")]
                # groups of a minute's tenth: "R0009-R0016 at +0.2 min"
                groups = compact_units(ids[name], hit, first[hit], 6.0)
                out.append(
                    LimitCrossing(
                        name,
                        limits[name],
                        tuple(ids[name][i] for i in order),
                        tuple(float(first[i]) for i in order),
                        self.worst[name],
                        groups,
                    )
                )
        return out


def _limits(site: Site) -> dict[str, str]:
    return {
        "gpu_slowdown": f"GPU slowdown {site.gpu.slowdown_c:.1f} C",
        "gpu_shutdown": f"GPU shutdown {site.gpu.shutdown_c:.1f} C",
        "coolant_supply": f"coolant to the GPUs above {coolant_limit_c(site):.1f} C "
        f"(max operating {site.gpu.max_operating_c:.0f} C at TDP)",
        "fws_w45": f"facility water supply above W45 ({W45_SUPPLY_MAX_C:.0f} C)",
        "ups_overload": f"UPS module overload ({site.power.ups_rated_w / 1e6:.2f} MW)",
        "cdu_capacity": f"CDU capacity ({site.cdu.rating_w / 1e6:.2f} MW)",
    }


def _progress(n: int, label: str, enabled: bool) -> Iterator[int]:
    if not enabled:
        yield from range(n)
        return
    from rich.progress import track

    yield from track(range(n), description=label, transient=True)


def _run(
    setup: _Setup,
    horizon_s: float,
    dt_s: float,
    start_ms: int,
    workload: Literal["hold", "plan"],
    seed: int,
    progress: bool,
    label: str,
) -> tuple[WhatIfSeries, _Recorder]:
    site, state = setup.site, setup.state
    n = max(1, round(horizon_s / dt_s))
    held = _held_inputs(site, state)
    t0 = state.t_s
    ts0_ms = start_ms - round(t0 * 1000)  # wall time of the state's t_s = 0
    anomaly_k = state.outdoor_c - float(climatology_c(start_ms, site.weather))
    plan = make_plan(site.n_racks, site.gpu.tdp_w, site.workload, np.random.default_rng(seed))
    z_rng = np.random.default_rng([seed, 2])
    rec = _Recorder(site, n)
    ledger = EnergyLedger()
    # thermal protection acts within seconds: a longer model step would let stagnant coolant
    # heat past the GPUs' shutdown temperature before the trip is seen, so the model steps at
    # most MAX_MODEL_STEP_S and the series keeps one record per dt_s
    sub = max(1, math.ceil(dt_s / MAX_MODEL_STEP_S - 1e-9))
    h = dt_s / sub
    for k in _progress(n * sub, label, progress):
        t_end = state.t_s + h
        ts_ms = ts0_ms + round(t_end * 1000)
        if workload == "plan":
            hour = float(local_hour(ts_ms, site.weather.utc_offset_h))
            z = z_rng.standard_normal(held.util.shape)
            util = utilisation(plan, t_end, hour, z, site.workload)
        else:
            util = held.util
        inputs = replace(
            held,
            util=np.minimum(util * setup.load_factor, 1.0),
            outdoor_c=float(climatology_c(ts_ms, site.weather)) + anomaly_k + setup.heat_offset_k,
            day_of_year=float(day_of_year(ts_ms)),
            fouling=np.ones_like(held.fouling),
            gpu_stuck=np.zeros_like(held.gpu_stuck),
            pump_health=held.pump_health.copy(),
            pump_on=held.pump_on.copy(),
            dc_fan_ok=held.dc_fan_ok.copy(),
            ups_mains_ok=held.ups_mains_ok.copy(),
            tcs_setpoint_c=setup.tcs_setpoint_c,
            fws_setpoint_c=setup.fws_setpoint_c,
            gpu_latch_off=True,  # a GPU that shuts down stays off for the horizon
        )
        apply_physical(setup.faults, t_end, inputs)
        prev, state = state, step(site, state, inputs, h)
        ledger.record(site, prev, state, h)
        if k % sub == sub - 1:
            rec.record(k // sub, state.t_s - t0, state)
    rec.energy_residual = {
        name: float(np.abs(ledger.residual(name)).max(initial=0.0)) for name in NODES
    }
    return rec.series(), rec


def run_whatif(
    site: Site,
    start_state: FacilityState,
    scenario: str | Sequence[str],
    horizon_s: float,
    dt_s: float = 5.0,
    progress: bool = True,
    *,
    start_ms: int,
    baseline: bool = True,
    workload: Literal["hold", "plan"] = "hold",
    seed: int = 0,
) -> WhatIfResult:
    """Run the model from ``start_state`` for ``horizon_s`` [s] in steps of ``dt_s`` [s].

    scenario: one scenario text or several (applied together; none = baseline only).
    start_ms: wall time of ``start_state`` [ms since epoch, UTC] (weather, season, time of
    day). baseline: also run without the scenarios, for comparison. workload: ``"hold"``
    keeps every GPU's utilisation as in the state; ``"plan"`` replays the simulator's
    workload plan drawn from ``seed``.
    """
    texts = [scenario] if isinstance(scenario, str) else list(scenario)
    if not (horizon_s > 0.0 and dt_s > 0.0):
        raise WhatIfError(f"horizon and dt: expected > 0 s, got {horizon_s} and {dt_s}")
    if workload not in ("hold", "plan"):
        raise WhatIfError(f"workload: expected 'hold' or 'plan', got {workload!r}")
    if start_state.gpu_temp_c.shape != (site.n_racks, site.n_gpus):
        raise WhatIfError(
            f"start state: expected {site.n_racks} racks x {site.n_gpus} GPUs for this site, "
            f"got {start_state.gpu_temp_c.shape}"
        )
    parsed = tuple(parse_scenario(t, site) for t in texts)
    setup = _setup(site, start_state, parsed)
    label = ", ".join(texts) or "baseline"
    series, rec = _run(setup, horizon_s, dt_s, start_ms, workload, seed, progress, label)
    base = None
    if baseline and parsed:
        base, _ = _run(
            _setup(site, start_state, ()),
            horizon_s,
            dt_s,
            start_ms,
            workload,
            seed,
            progress,
            "baseline",
        )
    limits = _limits(setup.site)
    notes = []
    if setup.load_factor != 1.0:
        it0 = float(start_state.it_power_w)
        it1 = float(series.it_power_w[0])
        notes.append(
            f"load x{setup.load_factor:.2f}: GPU utilisation capped at 100 %, IT power "
            f"{it0 / 1e6:.2f} -> {it1 / 1e6:.2f} MW ({(it1 / max(it0, 1e-9) - 1) * 100:+.1f} %)"
        )
    if base is not None:
        mwh = 3.6e9
        d_it = (base.energy_j("it_power_w") - series.energy_j("it_power_w")) / mwh
        d_dh = (base.energy_j("heat_to_dh_w") - series.energy_j("heat_to_dh_w")) / mwh
        d_dc = (base.energy_j("heat_to_dc_w") - series.energy_j("heat_to_dc_w")) / mwh
        if d_it > 0.01 and abs(d_dh) < 0.1 * d_it:
            # the operator sees district heat unchanged under a trip: say why
            notes.append(
                f"IT energy {d_it:.2f} MWh lower; district heat is held at the town's demand "
                f"(it takes less than the site makes), so the heat not produced comes off the "
                f"dry coolers ({d_dc:.2f} MWh less)"
            )
    return WhatIfResult(
        parsed,
        horizon_s,
        dt_s,
        start_ms,
        site.n_racks,
        series,
        rec.crossings(limits),
        limits,
        site.gpu.slowdown_c,
        base,
        notes,
        rec.energy_residual,
    )
