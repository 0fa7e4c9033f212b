"""A coolant reference for racks without manifold sensors: the coolant the cold plates see,
modelled from the rack's GPU power, for the thermal estimator (twin/estimator.py) to fit its
offset against.

The plates see about the mean of the rack's inlet and outlet (``twin.rack.gpu_coolant_c`` at
design flow), and the outlet sits above the inlet by the rack's heat over ``m_dot * cp``::

    T_ref = T_supply + 0.5 * rise,   d rise/dt = (k * sum(P_gpu) / (m_dot * cp) - rise) / tau

with ``tau = V * rho / m_dot`` the transit of the rack's coolant volume (the mixed node of
``twin.rack.coolant_step``), so that a load step reaches the plates as it does in the rack.

``T_supply`` is a guess (the loop's supply setpoint) and ``k`` (the rack's liquid heat per
GPU watt) an estimate, so ``T_ref`` is off by a nearly constant amount: the estimator's
fitted offset (``ThermalEstimator.coolant_offset_k``) takes that up. What it cannot take up
is a wrong ``m_dot`` or ``k``: that error scales with power like ``R`` does
(docs/estimator.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

#: Specific heat [J/(kg K)] of 25 % propylene glycol at 45 C: CoolProp 8.0.0
#: ``INCOMP::MPG[0.25]`` (the PG25 table of twin/fluids.py, docs/sources.md S4).
CP_PG25_J_KGK = 3_980.0
#: Heat a rack puts into its coolant per watt of GPU power [1]: the CPUs, NVLink switches
#: and NICs draw more as the GPUs work (twin/rack.py ``non_gpu_power_w``: 62 kW over the
#: GPUs' 115 kW swing, estimates), so a rack's liquid heat moves ~1.54 W per GPU watt; the
#: constant part is the offset's. On hardware the rack's own power meter is better.
RACK_HEAT_PER_GPU_W = 1.54
#: Its density [kg/m^3] at 45 C (same table).
RHO_PG25_KG_M3 = 1_007.0
#: Coolant volume of a rack [m^3] (twin/sites/borlange.toml: ~12 s transit at 5 L/s,
#: docs/sources.md S2).
RACK_COOLANT_VOLUME_M3 = 0.06


def plate_coolant_rise_step(
    rise_k: Any,
    gpu_power_w_sum: Any,
    dt_s: Any,
    flow_kg_s: float,
    volume_m3: float = RACK_COOLANT_VOLUME_M3,
    cp_j_kgk: float = CP_PG25_J_KGK,
    density_kg_m3: float = RHO_PG25_KG_M3,
    heat_per_gpu_w: float = RACK_HEAT_PER_GPU_W,
) -> npt.NDArray[np.float64]:
    """Outlet-over-inlet rise [K] of racks ``dt_s`` [s] after ``rise_k`` [K] (NaN: start at
    the steady rise), drawing ``gpu_power_w_sum`` [W] over the step (``heat_per_gpu_w`` [1]
    of coolant heat per GPU watt)."""
    if not flow_kg_s > 0.0 or not cp_j_kgk > 0.0 or not volume_m3 > 0.0:
        raise ValueError("flow_kg_s, cp_j_kgk and volume_m3: expected > 0")
    q_w = heat_per_gpu_w * np.asarray(gpu_power_w_sum, dtype=np.float64)
    steady = q_w / (flow_kg_s * cp_j_kgk)
    rise = np.asarray(rise_k, dtype=np.float64)
    decay = np.exp(-np.asarray(dt_s, dtype=np.float64) * flow_kg_s / (volume_m3 * density_kg_m3))
    return np.where(np.isnan(rise), steady, steady + (rise - steady) * decay)


def plate_coolant_reference_c(
    gpu_power_w_sum: Any,
    supply_c: float,
    flow_kg_s: float,
    cp_j_kgk: float = CP_PG25_J_KGK,
) -> npt.NDArray[np.float64]:
    """Modelled steady plate coolant [C] of racks drawing ``gpu_power_w_sum`` [W] of GPU
    power, fed at ``supply_c`` [C] with ``flow_kg_s`` [kg/s] of coolant of heat capacity
    ``cp_j_kgk`` [J/(kg K)] (:func:`plate_coolant_rise_step` for the lagged rise)."""
    if not flow_kg_s > 0.0 or not cp_j_kgk > 0.0:
        raise ValueError(f"flow_kg_s and cp_j_kgk: expected > 0, got {flow_kg_s}, {cp_j_kgk}")
    q = np.asarray(gpu_power_w_sum, dtype=np.float64)
    return supply_c + 0.5 * q / (flow_kg_s * cp_j_kgk)
