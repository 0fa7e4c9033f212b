"""Facility water system (FWS) and heat rejection: heat-reuse heat pump to district heating,
dry coolers (effectiveness-NTU with airflow-dependent UA, cube-law fans) and the trim chiller
(COP as a fraction of Carnot). Dry-cooler arrays are shaped (n_dry_coolers,).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.gpu import _m

FloatArray = NDArray[np.float64]
KELVIN = 273.15


@dataclass(frozen=True)
class FwsParams:
    """Facility water loop. Defaults: docs/sources.md S8 ``fws``."""

    fluid: str = "PG35"  # docs/sources.md S8: freeze margin for Borlänge
    supply_setpoint_c: float = field(default=40.0, metadata=_m(-5.0, 80.0))  # sources.md S8 (W40)
    design_dt_k: float = field(default=10.0, metadata=_m(0.5, 40.0))  # docs/sources.md S8
    pump_dp_pa: float = field(default=300e3, metadata=_m(1.0))  # docs/sources.md S8 pump_dp_kPa
    pump_eff: float = field(default=0.75, metadata=_m(0.05, 1.0))  # docs/sources.md S8
    # loop water volume per MW of design IT (est.): ~2 min transport lag at design flow
    volume_m3_per_mw: float = field(default=3.0, metadata=_m(1e-3))
    min_flow_frac: float = field(default=0.2, metadata=_m(0.0, 1.0))  # est. pump floor


@dataclass(frozen=True)
class DryCoolerParams:
    """Dry coolers. Sources: docs/sources.md.

    Design point of one unit: rating_w with the FWS design range (design_range_k) on the
    fluid, design_approach_k (fluid out minus air in) at design_air_c; the air warms by
    design_air_rise_k at full airflow. Fan power at design is fan_power_frac_at_design of the
    rating (market data: ~1-3 % of rejected heat at design; Energies 16(9) 3661) and follows
    the affinity laws (airflow ~ N, P ~ N^fan_law_exponent).
    """

    rating_w: float = field(default=1.6e6, metadata=_m(1.0))  # est.: 8 units for 12.8 MW
    redundancy: int = field(default=1, metadata=_m(0))  # N+1 (est., as for CDUs)
    design_approach_k: float = field(default=10.0, metadata=_m(0.1, 50.0))  # Energies 16 3661
    design_air_c: float = field(default=30.0, metadata=_m(-50.0, 60.0))  # design dry bulb, est.
    design_range_k: float = field(default=10.0, metadata=_m(0.1, 50.0))  # = FWS design dT
    # air temperature rise at full airflow (est.): air capacity 0.83 of the fluid's
    design_air_rise_k: float = field(default=12.0, metadata=_m(0.1, 50.0))
    fan_power_frac_at_design: float = field(default=0.015, metadata=_m(0.0, 0.5))  # 1-3 %
    fan_law_exponent: float = field(default=3.0, metadata=_m(1.0, 4.0))  # affinity law
    min_airflow_frac: float = field(default=0.1, metadata=_m(0.0, 1.0))  # EC fan floor, est.
    # air-side film coefficient ~ airflow^0.6 for finned coils (est.)
    ua_airflow_exponent: float = field(default=0.6, metadata=_m(0.0, 2.0))


@dataclass(frozen=True)
class ChillerParams:
    """Trim chiller. Defaults: docs/sources.md S4 and S8 ``trim_chiller``."""

    capacity_frac_it: float = field(default=0.2, metadata=_m(0.0, 2.0))  # docs/sources.md S8
    eta_carnot: float = field(default=0.5, metadata=_m(0.01, 1.0))  # docs/sources.md S4: 35-70 %
    t_evap_offset_k: float = field(default=-2.0, metadata=_m(-30.0, 30.0))  # docs/sources.md S8
    t_cond_offset_k: float = field(default=8.0, metadata=_m(-30.0, 30.0))  # docs/sources.md S8
    cop_max: float = field(default=10.0, metadata=_m(0.1, 100.0))  # docs/sources.md S8


@dataclass(frozen=True)
class HeatPumpParams:
    """Heat-reuse heat pump to district heating. Defaults: docs/sources.md S4 and S8."""

    eta_carnot: float = field(default=0.45, metadata=_m(0.01, 1.0))  # docs/sources.md S8
    source_out_c: float = field(default=40.0, metadata=_m(-20.0, 80.0))  # docs/sources.md S8
    dh_supply_winter_c: float = field(default=75.0, metadata=_m(0.0, 150.0))  # docs/sources.md S8
    dh_supply_summer_c: float = field(default=65.0, metadata=_m(0.0, 150.0))  # docs/sources.md S8
    dh_return_c: float = field(default=45.0, metadata=_m(0.0, 150.0))  # docs/sources.md S8
    # heating capacity of the heat-pump plant for the site file's hall (8 MW for 64 racks,
    # the suggested winter offtake); equipment, so it scales with the racks. What the
    # network takes is its demand (twin.district_heat), up to this capacity.
    capacity_w: float = field(default=8.0e6, metadata=_m(0.0))
    # refrigerant vs water temperature differences in evaporator/condenser (est.); they put
    # the COP at 3.9 (winter) to 5.0 (summer), near docs/sources.md S8's 3.5-4.4
    hx_pinch_k: float = field(default=3.0, metadata=_m(0.0, 20.0))
    cop_max: float = field(default=8.0, metadata=_m(1.0, 50.0))  # est.
    # docs/sources.md S8 boundary: utility_owned puts the heat pump's power outside the PUE
    boundary: str = field(default="utility_owned", metadata={"choices": {"utility_owned", "site"}})


def season_weight(day_of_year: Any) -> FloatArray:
    """Winter weight [1]: 1 at mid-January (day 15), 0 at mid-July, cosine in between."""
    d = np.asarray(day_of_year, dtype=np.float64)
    return 0.5 * (1.0 + np.cos(2.0 * np.pi * (d - 15.0) / 365.25))


def carnot_cop_heating(t_cold_c: Any, t_hot_c: Any) -> FloatArray:
    """Carnot heating COP T_hot / (T_hot - T_cold) [1], temperatures in [C]."""
    th = np.asarray(t_hot_c, dtype=np.float64) + KELVIN
    lift = np.maximum(th - (np.asarray(t_cold_c) + KELVIN), 1e-3)
    return th / lift


def heat_pump_cop(dh_supply_c: Any, p: HeatPumpParams) -> FloatArray:
    """Heating COP [1] = eta_carnot * Carnot between source out - pinch and DH supply + pinch."""
    cop = p.eta_carnot * carnot_cop_heating(
        p.source_out_c - p.hx_pinch_k, np.asarray(dh_supply_c) + p.hx_pinch_k
    )
    return np.minimum(np.maximum(cop, 1.0), p.cop_max)  # clip, without its ~4 us wrapper


def heat_pump(
    available_w: Any, offtake_max_w: Any, cop: Any
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(heat delivered to DH [W], heat taken from the source [W], electric power [W]).

    Delivered = source + power = source * COP/(COP-1), capped at the DH offtake.
    """
    c = np.asarray(cop, dtype=np.float64)
    src_max = np.asarray(offtake_max_w) * (c - 1.0) / c
    src = np.minimum(np.maximum(np.asarray(available_w, dtype=np.float64), 0.0), src_max)
    delivered = src * c / (c - 1.0)
    return delivered, src, delivered - src


def crossflow_effectiveness(ntu: float, cr: float) -> float:
    """Effectiveness [1] of a single-pass cross-flow exchanger, both fluids unmixed
    (Incropera & DeWitt, Fundamentals of Heat and Mass Transfer, Table 11.3, eq. 11.32):
    eps = 1 - exp((NTU^0.22 / Cr) (exp(-Cr NTU^0.78) - 1)); Cr -> 0 gives 1 - exp(-NTU)."""
    if ntu <= 0.0:
        return 0.0
    if cr < 1e-9:
        return 1.0 - math.exp(-ntu)
    return 1.0 - math.exp(ntu**0.22 / cr * (math.exp(-cr * ntu**0.78) - 1.0))


@functools.cache
def design_ua_w_k(p: DryCoolerParams) -> float:
    """UA [W/K] of one unit at full airflow, from its design point (bisection on NTU)."""
    c_w = p.rating_w / p.design_range_k
    c_a = p.rating_w / p.design_air_rise_k
    c_min, c_max = min(c_w, c_a), max(c_w, c_a)
    eps = p.rating_w / (c_min * (p.design_range_k + p.design_approach_k))
    if not 0.0 < eps < 1.0:
        raise ValueError(f"dry-cooler design point infeasible: effectiveness {eps:.3f}")
    lo, hi = 0.0, 1.0
    while crossflow_effectiveness(hi, c_min / c_max) < eps:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if crossflow_effectiveness(mid, c_min / c_max) < eps:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi) * c_min


def _unit_heat_w(
    speed: float, m_cp: float, dt_k: float, ua_d: float, c_a_d: float, n: float
) -> float:
    """dry_cooler_heat_w with the design constants passed in (no per-call hashing)."""
    c_a = speed * c_a_d
    c_min, c_max = (c_a, m_cp) if c_a < m_cp else (m_cp, c_a)
    return crossflow_effectiveness(ua_d * speed**n / c_min, c_min / c_max) * c_min * dt_k


def dry_cooler_heat_w(
    speed: float, m_cp_w_k: float, inlet_c: float, air_c: float, p: DryCoolerParams
) -> float:
    """Heat [W] one unit rejects at fan speed ``speed`` [1] with fluid capacity rate
    ``m_cp_w_k`` [W/K] entering at ``inlet_c`` [C] and air at ``air_c`` [C]:
    eps(NTU, Cr) C_min (T_in - T_air), air capacity = speed x design, UA = UA_d speed^n."""
    dt = inlet_c - air_c
    if speed <= 0.0 or m_cp_w_k <= 0.0 or dt <= 0.0:
        return 0.0
    c_a_d = p.rating_w / p.design_air_rise_k
    return _unit_heat_w(speed, m_cp_w_k, dt, design_ua_w_k(p), c_a_d, p.ua_airflow_exponent)


def dry_cooler_speed(
    heat_w: float, m_cp_w_k: float, inlet_c: float, air_c: float, p: DryCoolerParams
) -> float:
    """Slowest fan speed [1] at which one unit rejects ``heat_w`` [W] (0 when no heat;
    min_airflow_frac when even that is enough, the rest by-passes the coil; 1 when even full
    speed is not). The heat rejected rises monotonically with speed: regula falsi with the
    Illinois modification, to 1e-9 of the heat (~5-10 evaluations instead of ~30 for
    bisection; this runs every step)."""
    dt = inlet_c - air_c
    if heat_w <= 0.0 or m_cp_w_k <= 0.0 or dt <= 0.0:
        return 0.0 if heat_w <= 0.0 else 1.0
    ua_d, c_a_d, n = design_ua_w_k(p), p.rating_w / p.design_air_rise_k, p.ua_airflow_exponent
    lo, hi = p.min_airflow_frac, 1.0
    f_lo = _unit_heat_w(lo, m_cp_w_k, dt, ua_d, c_a_d, n) - heat_w if lo > 0.0 else -heat_w
    if f_lo >= 0.0:
        return lo
    f_hi = _unit_heat_w(hi, m_cp_w_k, dt, ua_d, c_a_d, n) - heat_w
    if f_hi <= 0.0:
        return hi
    side = 0
    s = hi
    for _ in range(60):
        s = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        f = _unit_heat_w(s, m_cp_w_k, dt, ua_d, c_a_d, n) - heat_w
        if abs(f) <= 1e-9 * heat_w:
            break
        if f < 0.0:
            lo, f_lo = s, f
            if side == -1:
                f_hi *= 0.5
            side = -1
        else:
            hi, f_hi = s, f
            if side == 1:
                f_lo *= 0.5
            side = 1
    return s


def dry_coolers(
    heat_w: float,
    flow_kg_s: float,
    cp_j_kgk: float,
    inlet_c: float,
    air_c: float,
    setpoint_c: float,
    fan_ok: NDArray[np.bool_],
    p: DryCoolerParams,
) -> tuple[FloatArray, FloatArray, float]:
    """Dry-cooler bank: (fan speed [1] per unit, heat rejected [W] per unit, outlet [C]).

    The BMS isolates units with failed fans; the working units share flow ``flow_kg_s``
    [kg/s] entering at ``inlet_c`` [C] and run their fans as slowly as possible to bring the
    fluid down to ``setpoint_c`` [C] and to reject at most ``heat_w`` [W] (crossflow
    effectiveness-NTU with both capacity rates; by-pass below min airflow).
    """
    n_ok = int(np.count_nonzero(fan_ok))
    speed = np.zeros(fan_ok.shape, dtype=np.float64)
    rejected = np.zeros(fan_ok.shape, dtype=np.float64)
    if n_ok == 0 or heat_w <= 0.0 or flow_kg_s <= 0.0 or inlet_c <= air_c:
        return speed, rejected, inlet_c
    m_cp = flow_kg_s * cp_j_kgk / n_ok
    need = min(heat_w / n_ok, max(m_cp * (inlet_c - setpoint_c), 0.0))
    q = min(need, dry_cooler_heat_w(1.0, m_cp, inlet_c, air_c, p))
    s = dry_cooler_speed(q, m_cp, inlet_c, air_c, p)
    speed[fan_ok] = s
    rejected[fan_ok] = q
    return speed, rejected, inlet_c - q / m_cp


def dry_cooler_fan_power_w(speed: Any, p: DryCoolerParams) -> FloatArray:
    """Fan power [W] per unit: fan_power_frac_at_design * rating * speed^exponent."""
    return p.fan_power_frac_at_design * p.rating_w * np.asarray(speed) ** p.fan_law_exponent


def chiller_cop(evap_c: Any, cond_c: Any, p: ChillerParams) -> FloatArray:
    """Cooling COP [1] = eta * T_evap / (T_cond - T_evap), capped at cop_max (temps [C])."""
    te = np.asarray(evap_c, dtype=np.float64) + KELVIN
    lift = np.asarray(cond_c, dtype=np.float64) + KELVIN - te
    carnot = np.where(lift > 1e-3, te / np.maximum(lift, 1e-3), np.inf)
    return np.minimum(p.eta_carnot * carnot, p.cop_max)


def fws_pump_power_w(
    flow_kg_s: Any, design_flow_kg_s: float, density: float, p: FwsParams
) -> FloatArray:
    """FWS pump power [W]: dp * V_dot / eta at design flow, times (flow/design)^3."""
    p_design = p.pump_dp_pa * design_flow_kg_s / density / p.pump_eff
    return p_design * (np.asarray(flow_kg_s) / design_flow_kg_s) ** 3
