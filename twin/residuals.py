"""Steady-state expectations of each sensor from the others, and residuals (measured - expected).

Pure vectorised functions over whole arrays (GPUs ``(n_racks, n_gpus)``, racks ``(n_racks,)``,
CDUs ``(n_cdus,)``). Each expectation uses one physical relation and other sensors, chained
so that a fault shows on the residual of the sensor or component it affects
(:func:`compute_residuals`):

- GPU die: ``T_die = T_coolant + R * P`` (cold-plate fouling raises R: that GPU's residual
  grows; a stuck or drifting die sensor moves that GPU only);
- rack inlet: its CDU's supply;
- rack outlet and CDU return: ``T_out = T_in + Q_liquid / (m_dot * cp)`` with the loop
  fluid's properties at the mean temperature (twin/fluids.py, docs/sources.md S4);
- CDU flow: affinity law ``Q ~ N`` of a healthy pump at the measured speed (a worn pump
  delivers less at the same speed: negative residual).

These are steady-state relations: after a step change they settle with the rack coolant
transit (~12 s) or the die time constant (~7 s). The dynamic die expectation is
twin/estimator.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from twin import gpu as gpu_m
from twin import rack as rack_m
from twin.fluids import FluidTable, cp_j_kgk, get_fluid
from twin.site import Site
from twin.step import rack_design_flow_kg_s

FloatArray = npt.NDArray[np.float64]

#: Fluid of the technology cooling loop (docs/sources.md S8 ``tcs.fluid``).
DEFAULT_TCS_FLUID = "PG25"


def _f(x: Any) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def expected_gpu_temp_c(temp_coolant_c: Any, power_w: Any, r_k_w: Any) -> FloatArray:
    """Steady die temperature [C] of a GPU drawing ``power_w`` [W] behind ``r_k_w`` [K/W]
    from coolant at ``temp_coolant_c`` [C]; broadcasts (racks ``(R, 1)`` vs GPUs ``(R, G)``)."""
    return _f(temp_coolant_c) + _f(r_k_w) * _f(power_w)


def expected_rack_outlet_c(
    temp_inlet_c: Any,
    heat_liquid_w: Any,
    flow_kg_s: Any,
    fluid: FluidTable | None = None,
) -> FloatArray:
    """Rack outlet [C] from inlet ``temp_inlet_c`` [C], heat into the liquid ``heat_liquid_w`` [W]
    and flow ``flow_kg_s`` [kg/s]: ``T_in + Q / (m_dot * cp(T_mean))``.

    cp is taken at the mean of inlet and outlet (one fixed-point pass from the inlet cp; cp of
    PG25 changes 0.3 % per 10 K, so a second pass changes the result by < 1 mK). NaN where
    the flow is not positive: without flow the balance does not fix the outlet.
    """
    fl = fluid if fluid is not None else get_fluid(DEFAULT_TCS_FLUID)
    t_in = _f(temp_inlet_c)
    q = _f(heat_liquid_w)
    m = _f(flow_kg_s)
    m_safe = np.where(m > 0.0, m, np.nan)
    rise = q / (m_safe * cp_j_kgk(fl, t_in))
    return t_in + q / (m_safe * cp_j_kgk(fl, t_in + 0.5 * rise))


def expected_cdu_return_c(
    rack_outlet_c: Any,
    rack_flow_kg_s: Any,
    rack_cdu: npt.NDArray[np.int64],
    n_cdus: int,
    fluid: FluidTable | None = None,
) -> FloatArray:
    """CDU return [C]: enthalpy-weighted mix of the outlets of the racks it serves.

    rack_outlet_c [C] and rack_flow_kg_s [kg/s] shaped (n_racks,); rack_cdu (n_racks,) the
    CDU index of each rack. NaN for a CDU with no flow.
    """
    fl = fluid if fluid is not None else get_fluid(DEFAULT_TCS_FLUID)
    t = _f(rack_outlet_c)
    m_cp = np.maximum(_f(rack_flow_kg_s), 0.0) * cp_j_kgk(fl, t)
    num = np.bincount(rack_cdu, weights=m_cp * t, minlength=n_cdus)
    den = np.bincount(rack_cdu, weights=m_cp, minlength=n_cdus)
    return num / np.where(den > 0.0, den, np.nan)


def expected_cdu_flow_kg_s(
    pump_speed: Any, design_flow_kg_s: Any, flow_max_frac: float
) -> FloatArray:
    """Flow [kg/s] a healthy pump delivers at ``pump_speed`` [1 of rated]: affinity law
    ``Q ~ N``, ``flow_max_frac`` [1] of design flow at rated speed (twin/cdu.py CduParams)."""
    return np.maximum(_f(pump_speed), 0.0) * flow_max_frac * _f(design_flow_kg_s)


def rack_heat_to_liquid_w(
    rack_power_w: Any, gpu_power_sum_w: Any, non_gpu_air_frac: float
) -> FloatArray:
    """Heat a rack passes to its coolant [W] at steady state, from the rack's input power
    ``rack_power_w`` [W] and the sum of its GPUs' power ``gpu_power_sum_w`` [W].

    GPU heat goes to the cold plates; the rest (CPUs, switches, PSU losses: input power minus
    GPU power) splits between liquid and air by ``non_gpu_air_frac`` [1] (twin/rack.py
    RackParams; docs/sources.md S8 liquid_capture_fraction).
    """
    gpu = _f(gpu_power_sum_w)
    return gpu + (_f(rack_power_w) - gpu) * (1.0 - non_gpu_air_frac)


@dataclass(frozen=True)
class Residuals:
    """Measured minus expected, per sensor. NaN where an expectation is undefined."""

    gpu_temp_k: FloatArray  # (R, G) die temperature [K]
    rack_inlet_k: FloatArray  # (R,) rack coolant inlet [K]
    rack_outlet_k: FloatArray  # (R,) rack coolant outlet [K]
    cdu_return_k: FloatArray  # (C,) CDU return [K]
    cdu_flow_kg_s: FloatArray  # (C,) CDU technology-loop flow [kg/s]

    def as_dict(self) -> dict[str, FloatArray]:
        """Residual arrays by name (for APIs and snapshots)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def compute_residuals(
    site: Site,
    *,
    gpu_temp_c: Any,
    gpu_power_w: Any,
    gpu_util: Any,
    rack_inlet_c: Any,
    rack_outlet_c: Any,
    rack_flow_kg_s: Any,
    cdu_supply_c: Any,
    cdu_return_c: Any,
    cdu_flow_kg_s: Any,
    cdu_pump_speed: Any,
    r_k_w: Any = None,
) -> Residuals:
    """Residuals of every sensor of ``site`` from one set of readings.

    GPU arrays (R, G): die ``gpu_temp_c`` [C], ``gpu_power_w`` [W], ``gpu_util`` [1]. Racks
    (R,): ``rack_inlet_c``, ``rack_outlet_c`` [C], ``rack_flow_kg_s`` [kg/s]. CDUs (C,):
    ``cdu_supply_c``, ``cdu_return_c`` [C], ``cdu_flow_kg_s`` [kg/s], ``cdu_pump_speed`` [1].
    ``r_k_w`` (R, G): die-to-coolant resistance [K/W] to expect; default the site's nominal
    cold plate at the measured flow (twin/gpu.py), so fouling shows; pass the estimator's
    fitted values to see only what the fit does not explain.

    The expectations are chained so that a faulty sensor moves its own residual only: the
    rack inlet is expected at its CDU's supply; the rack heat comes from GPU telemetry
    (GPU power, and the rack's other loads from utilisation, twin/rack.py); the rack outlet
    and the CDU return follow from the CDU supply by heat balance (not from the rack
    sensors); the GPUs see the coolant between CDU supply and the expected outlet.
    """
    fluid = get_fluid(site.tcs.fluid)
    rk = site.rack
    n_c = len(site.cdu_ids)
    power = _f(gpu_power_w)
    supply = _f(cdu_supply_c)
    rack_supply = supply[site.rack_cdu]
    flow = _f(rack_flow_kg_s)
    gpu_sum = power.sum(axis=1)
    other = rack_m.non_gpu_power_w(_f(gpu_util).mean(axis=1), rk)
    ac = rack_m.rack_input_power_w(gpu_sum, other, rk)
    q_liq, _ = rack_m.heat_split_w(gpu_sum, other, ac, rk)
    outlet_exp = expected_rack_outlet_c(rack_supply, q_liq, flow, fluid)
    cdu_q = np.bincount(site.rack_cdu, weights=q_liq, minlength=n_c)
    return_exp = expected_rack_outlet_c(supply, cdu_q, cdu_flow_kg_s, fluid)
    flow_frac = flow / rack_design_flow_kg_s(site)
    coolant = rack_m.gpu_coolant_c(rack_supply, outlet_exp, flow_frac)[:, None]
    if r_k_w is None:
        r_k_w = gpu_m.cold_plate_resistance_k_w(flow_frac[:, None], 1.0, site.gpu)
    served = np.bincount(site.rack_cdu, minlength=n_c) * rack_design_flow_kg_s(site)
    flow_exp = expected_cdu_flow_kg_s(cdu_pump_speed, served, site.cdu.flow_max_frac)
    return Residuals(
        gpu_temp_k=_f(gpu_temp_c) - expected_gpu_temp_c(coolant, power, r_k_w),
        rack_inlet_k=_f(rack_inlet_c) - rack_supply,
        rack_outlet_k=_f(rack_outlet_c) - outlet_exp,
        cdu_return_k=_f(cdu_return_c) - return_exp,
        cdu_flow_kg_s=_f(cdu_flow_kg_s) - flow_exp,
    )
