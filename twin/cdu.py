"""CDUs and the technology cooling loop (TCS): pump by the affinity laws, supply-temperature
control through a liquid-to-liquid heat exchanger with a load-proportional approach, and the
loop's thermal mass. Arrays are shaped (n_cdus,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.gpu import _m
from twin.state import exp_relax

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class TcsParams:
    """Rack-side (technology) loop. Defaults: docs/sources.md S8 ``tcs``."""

    fluid: str = "PG25"  # docs/sources.md S8: 25 % propylene glycol
    supply_temp_c: float = field(default=45.0, metadata=_m(-5.0, 80.0))  # sources.md S8 supply_C
    design_dt_k: float = field(default=10.0, metadata=_m(0.5, 40.0))  # sources.md S8 design_dT_K
    flow_l_min_per_kw: float = field(default=1.5, metadata=_m(0.1, 10.0))  # docs/sources.md S2, S8


@dataclass(frozen=True)
class CduParams:
    """One CDU. Defaults: docs/sources.md S8 ``cdu``."""

    rating_w: float = field(default=2.0e6, metadata=_m(1.0))  # docs/sources.md S8 rating_MW 2.0
    approach_k: float = field(default=3.0, metadata=_m(0.0, 30.0))  # sources.md S2, S8, at rating
    pump_dp_pa: float = field(default=250e3, metadata=_m(1.0))  # docs/sources.md S8 pump_dp_kPa
    pump_eff: float = field(default=0.70, metadata=_m(0.05, 1.0))  # docs/sources.md S8 pump_eff
    thermal_mass_j_k: float = field(default=2.5e6, metadata=_m(1.0))  # docs/sources.md S8 2500 kJ/K
    # pump sized for 125 % of design flow, so it runs at 80 % speed at design (est.)
    flow_max_frac: float = field(default=1.25, metadata=_m(1.0, 5.0))
    min_speed_frac: float = field(default=0.2, metadata=_m(0.0, 1.0))  # est. VFD floor
    # facility-side valve floor, keeps the HX warm (est.)
    fac_min_flow_frac: float = field(default=0.05, metadata=_m(0.0, 1.0))


def pump_speed_frac(target_flow_frac: Any, health: Any, p: CduParams) -> FloatArray:
    """Pump speed [1 of rated] that delivers ``target_flow_frac`` [1 of design flow].

    Affinity law Q ~ N: at rated speed a pump of ``health`` [1] (1 = new, lower = worn
    impeller) delivers health * flow_max_frac of design flow.
    """
    h = np.maximum(np.asarray(health, dtype=np.float64), 1e-6)
    speed = np.asarray(target_flow_frac) / (h * p.flow_max_frac)
    return np.minimum(np.maximum(speed, p.min_speed_frac), 1.0)


def pump_flow_frac(speed: Any, health: Any, running: Any, p: CduParams) -> FloatArray:
    """Delivered flow [1 of design flow] at ``speed`` [1]; zero when not ``running``."""
    q = np.asarray(speed) * np.asarray(health) * p.flow_max_frac
    return np.where(np.asarray(running, dtype=bool), np.maximum(q, 0.0), 0.0)


def pump_power_w(speed: Any, running: Any, design_flow_m3_s: Any, p: CduParams) -> FloatArray:
    """Pump shaft power [W] by the affinity law P ~ N^3 from the design point
    dp * V_dot / eta at the speed that gives design flow."""
    design_speed = 1.0 / p.flow_max_frac
    p_design = p.pump_dp_pa * np.asarray(design_flow_m3_s) / p.pump_eff
    pw = p_design * (np.asarray(speed) / design_speed) ** 3
    return np.where(np.asarray(running, dtype=bool), pw, 0.0)


def supply_target_c(setpoint_c: Any, fac_supply_c: Any, heat_w: Any, p: CduParams) -> FloatArray:
    """Lowest supply [C] the CDU can hold: the setpoint, or facility supply plus the HX
    approach when the facility water is too warm. Approach grows with load: at fixed UA the
    terminal difference scales with Q (approach_k at rating_w)."""
    approach = p.approach_k * np.maximum(np.asarray(heat_w), 0.0) / p.rating_w
    return np.maximum(np.asarray(setpoint_c), np.asarray(fac_supply_c) + approach)


def supply_step(
    supply_c: Any, target_c: Any, flow_kg_s: Any, cp_j_kgk: Any, dt_s: float, p: CduParams
) -> FloatArray:
    """Supply temperature [C] after dt_s [s]: relaxes toward target with the loop's mixing time
    constant C_loop / (m_dot cp); frozen when the pump stands still."""
    rate = np.maximum(np.asarray(flow_kg_s), 0.0) * np.asarray(cp_j_kgk) / p.thermal_mass_j_k
    return exp_relax(supply_c, target_c, rate, dt_s)


def facility_side(
    heat_w: Any,
    fac_supply_c: Any,
    fac_cp_j_kgk: Any,
    fac_design_dt_k: float,
    fac_design_flow_kg_s: Any,
    p: CduParams,
) -> tuple[FloatArray, FloatArray]:
    """(facility-water flow [kg/s], facility return [C]) of each CDU's HX.

    The valve holds the facility-side rise at its design value, between fac_min_flow_frac and
    100 % of design flow; return = supply + Q / (m_dot cp).
    """
    q = np.maximum(np.asarray(heat_w, dtype=np.float64), 0.0)
    design = np.asarray(fac_design_flow_kg_s, dtype=np.float64)
    flow = np.clip(
        q / (np.asarray(fac_cp_j_kgk) * fac_design_dt_k), p.fac_min_flow_frac * design, design
    )
    ret = np.asarray(fac_supply_c) + q / (flow * np.asarray(fac_cp_j_kgk))
    return flow, ret
