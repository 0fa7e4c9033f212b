"""The facility's dynamic state as numpy arrays, and the exact integrator of first-order lags.

Shapes: R = racks, G = GPUs per rack, C = CDUs, D = dry coolers, U = UPS modules,
T = transformers, P = PDUs. Temperatures [C], flows [kg/s], powers [W], energies [J].
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def exp_relax(x0: Any, x_inf: Any, rate_per_s: Any, dt_s: float) -> FloatArray:
    """Exact solution of dx/dt = rate * (x_inf - x) after dt_s, for constant inputs.

    x0, x_inf in any unit; rate_per_s [1/s] >= 0 (1/time constant); dt_s [s]. Stable for
    any dt_s: the result always lies between x0 and x_inf.
    """
    decay = np.exp(-np.asarray(rate_per_s, dtype=np.float64) * dt_s)
    out = np.subtract(x0, x_inf, dtype=np.float64)
    out *= decay
    out += x_inf
    return out


def linear_ode_step(x0: Any, a_per_s: Any, b: Any, dt_s: float) -> tuple[FloatArray, FloatArray]:
    """Exact step of dx/dt = -a*x + b (a >= 0, may be 0), returning (x_new, mean over step).

    a_per_s [1/s], b [unit/s]. With a = 0 the solution is x0 + b*dt (pure accumulation, as in
    a rack whose coolant stopped flowing).
    """
    a = np.asarray(a_per_s, dtype=np.float64)
    x0 = np.asarray(x0, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ad = a * dt_s
    small = ad < 1e-6
    if not small.any():
        # every element has flow: the general formulas alone (same values as below)
        phi = -np.expm1(-ad) / a
        b_a = b / a
        return x0 * np.exp(-ad) + b * phi, b_a + (x0 - b_a) * phi / dt_s
    safe_a = np.where(small, 1.0, a)
    # phi = (1 - e^{-a dt}) / a, -> dt as a -> 0
    phi = np.where(small, dt_s * (1.0 - 0.5 * ad), -np.expm1(-ad) / safe_a)
    x_new = x0 * np.exp(-ad) + b * phi
    # mean over the step: (1/dt) * integral = x_inf + (x0 - x_inf) * phi/dt, written without x_inf
    mean = np.where(
        small,
        x0 + 0.5 * b * dt_s - 0.5 * ad * x0,
        b / safe_a + (x0 - b / safe_a) * phi / dt_s,
    )
    return x_new, mean


@dataclass(eq=False)
class FacilityState:
    """True state of the facility at one instant (noise free). Every array is owned (copy on
    step); ``t_s`` counts simulated seconds since the simulator's start."""

    t_s: float
    # GPUs (R, G)
    gpu_temp_c: FloatArray  # die temperature [C]
    gpu_mem_temp_c: FloatArray  # HBM temperature [C]
    gpu_power_w: FloatArray  # board power over the last step [W]
    gpu_clock_frac: FloatArray  # SM clock / max clock [1]
    gpu_util: FloatArray  # utilisation [1] 0..1
    gpu_power_limit_w: FloatArray  # enforced power limit [W]
    gpu_energy_j: FloatArray  # energy since driver load [J]
    gpu_reasons: NDArray[np.uint64]  # NVML clock-event reason bits
    gpu_temp_rate_k_s: FloatArray  # die temperature trend over the last step [K/s]
    gpu_heat_to_coolant_w: FloatArray  # mean heat into the cold plate over the last step [W]
    gpu_off: NDArray[np.bool_]  # tripped at shutdown temperature, latched until cooled
    # racks (R,)
    rack_inlet_c: FloatArray  # coolant supply at the rack manifold [C]
    rack_coolant_c: FloatArray  # mixed coolant in the rack = outlet [C]
    rack_flow_kg_s: FloatArray  # coolant flow [kg/s]
    rack_power_w: FloatArray  # AC input power at the rack plug [W]
    rack_heat_liquid_w: FloatArray  # heat into the liquid over the last step [W]
    rack_heat_air_w: FloatArray  # heat to room air [W]
    # CDUs (C,)
    cdu_supply_c: FloatArray
    cdu_return_c: FloatArray
    cdu_fac_supply_c: FloatArray
    cdu_fac_return_c: FloatArray
    cdu_flow_kg_s: FloatArray  # technology-loop flow [kg/s]
    cdu_fac_flow_kg_s: FloatArray  # facility-water flow through the HX [kg/s]
    cdu_pump_speed: FloatArray  # [1] of rated speed
    cdu_pump_power_w: FloatArray
    cdu_heat_w: FloatArray  # heat passed to facility water [W]
    # facility water and heat rejection
    fws_supply_c: float
    fws_return_c: float
    fws_flow_kg_s: float
    fws_pump_power_w: float
    dc_fan_speed: FloatArray  # (D,) airflow fraction [1]
    dc_fan_power_w: FloatArray
    dc_heat_w: FloatArray
    chiller_cooling_w: float
    chiller_power_w: float
    chiller_cop: float
    hp_heat_w: float  # heat delivered to district heating [W]
    hp_source_w: float  # heat taken from facility water [W]
    hp_power_w: float
    hp_cop: float
    # power chain
    pdu_power_w: FloatArray  # (P,) output power [W]
    pdu_loss_w: FloatArray
    ups_in_w: FloatArray  # (U,)
    ups_out_w: FloatArray
    ups_loss_w: FloatArray
    ups_on_battery: NDArray[np.bool_]
    ups_soc: FloatArray  # battery state of charge [1]
    tx_in_w: FloatArray  # (T,)
    tx_loss_w: FloatArray
    mech_power_w: float  # pumps, fans, chiller, aux on the transformers [W]
    it_power_w: float
    facility_power_w: float
    # weather
    outdoor_c: float
    weather_noise_k: float
    # room air, district heating (defaults: states built before these existed)
    air_heat_w: float = 0.0  # heat into room air, taken by the CRAH coils [W]
    crah_fan_power_w: float = 0.0  # CRAH fans [W]
    air_chiller_cooling_w: float = 0.0  # CRAH coil heat the chiller takes [W]
    air_chiller_power_w: float = 0.0  # its compressor power [W]
    dh_demand_w: float = 0.0  # town network heat demand [W]
    dh_offtake_w: float = 0.0  # what the network takes from the campus at most [W]

    def copy(self) -> FacilityState:
        """Deep copy (arrays copied)."""
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.copy() if isinstance(v, np.ndarray) else v
        return replace(self, **kw)
