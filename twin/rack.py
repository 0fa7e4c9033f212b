"""Rack models: total power (GPUs, CPUs, NVLink switches, NICs and the rest, PSU losses),
the liquid/air heat split, and the rack's coolant as a mixed thermal node.

Arrays are shaped (n_racks,) unless stated; GPU arrays (n_racks, n_gpus).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.gpu import _m
from twin.state import linear_ode_step

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class RackParams:
    """One rack type. Defaults: Vera Rubin NVL144 (= VR NVL72), docs/sources.md S2 and S8.

    Non-GPU component powers are estimates chosen so that an idle rack draws ~30 kW and a rack
    at full load ~213 kW, inside docs/sources.md S8 rack_power_kW (idle 30, Max-Q 190, Max-P 227).
    """

    type: str = "vera_rubin_nvl144"
    gpus: int = field(default=72, metadata=_m(1, 1024))  # docs/sources.md S2: 72 packages
    cpus: int = field(default=36, metadata=_m(0))  # docs/sources.md S2: 36 Vera CPUs
    cpu_idle_w: float = field(default=100.0, metadata=_m(0.0))  # est.
    cpu_max_w: float = field(default=600.0, metadata=_m(0.0))  # est.
    switch_trays: int = field(default=9, metadata=_m(0))  # NVLink switch trays (est.)
    switch_idle_w: float = field(default=800.0, metadata=_m(0.0))  # est.
    switch_max_w: float = field(default=3500.0, metadata=_m(0.0))  # est.
    misc_idle_w: float = field(default=5000.0, metadata=_m(0.0))  # NICs, DPUs, LPDDR (est.)
    misc_max_w: float = field(default=25000.0, metadata=_m(0.0))  # est.
    psu_eff: float = field(default=0.975, metadata=_m(0.5, 1.0))  # docs/sources.md S8 rack_psu_eff
    # share of non-GPU heat to room air; with GPUs fully on cold plates the rack sends ~2 % to
    # air (docs/sources.md S8 liquid_capture_fraction 0.98)
    non_gpu_air_frac: float = field(default=0.05, metadata=_m(0.0, 1.0))
    # coolant in manifolds and cold plates: 60 L gives ~12 s transit at 5 L/s (docs/sources.md S2:
    # "coolant transit time about 10 s per rack loop")
    coolant_volume_m3: float = field(default=0.06, metadata=_m(1e-6))
    design_power_w: float = field(default=200e3, metadata=_m(1.0))  # sources.md S8 design 200 kW


def non_gpu_power_w(util_mean: Any, p: RackParams) -> FloatArray:
    """DC power [W] of CPUs, switches and the rest, linear in the rack's mean GPU util [1]."""
    u = np.minimum(np.maximum(np.asarray(util_mean, dtype=np.float64), 0.0), 1.0)
    idle = p.cpus * p.cpu_idle_w + p.switch_trays * p.switch_idle_w + p.misc_idle_w
    full = p.cpus * p.cpu_max_w + p.switch_trays * p.switch_max_w + p.misc_max_w
    return idle + (full - idle) * u


def rack_input_power_w(gpu_power_sum_w: Any, other_dc_w: Any, p: RackParams) -> FloatArray:
    """AC input power at the rack plug [W]: DC load / PSU efficiency."""
    return (np.asarray(gpu_power_sum_w) + np.asarray(other_dc_w)) / p.psu_eff


def heat_split_w(
    gpu_heat_w: Any, other_dc_w: Any, rack_ac_w: Any, p: RackParams
) -> tuple[FloatArray, FloatArray]:
    """(heat to liquid [W], heat to air [W]) of a rack.

    gpu_heat_w [W]: heat the GPU cold plates pass to the coolant; other_dc_w [W]: non-GPU DC
    power; rack_ac_w [W]: input power. Non-GPU heat plus PSU losses split by non_gpu_air_frac.
    """
    gpu_heat = np.asarray(gpu_heat_w, dtype=np.float64)
    psu_loss = np.asarray(rack_ac_w) * (1.0 - p.psu_eff)
    rest = np.asarray(other_dc_w) + psu_loss
    air = rest * p.non_gpu_air_frac
    return gpu_heat + rest - air, air


def coolant_step(
    coolant_c: Any,
    inlet_c: Any,
    flow_kg_s: Any,
    heat_w: Any,
    cp_j_kgk: Any,
    heat_capacity_j_k: Any,
    dt_s: float,
) -> tuple[FloatArray, FloatArray]:
    """Exact step of the rack's mixed coolant node, C dT/dt = Q + m_dot cp (T_in - T).

    Returns (outlet temperature at the end [C], mean outlet temperature over the step [C]).
    Steady state: T_out = T_in + Q/(m_dot cp). With no flow the coolant heats at Q/C.
    """
    m_cp = np.maximum(np.asarray(flow_kg_s, dtype=np.float64), 0.0) * cp_j_kgk
    c = np.asarray(heat_capacity_j_k, dtype=np.float64)
    a = m_cp / c
    b = (np.asarray(heat_w) + m_cp * np.asarray(inlet_c)) / c
    return linear_ode_step(coolant_c, a, b, dt_s)


def gpu_coolant_c(inlet_c: Any, outlet_c: Any, flow_frac: Any) -> FloatArray:
    """Coolant temperature the GPU cold plates see [C] (n_racks,).

    With design flow, the mean of inlet and outlet; as flow stops, the stagnant rack coolant
    (outlet) temperature. flow_frac [1] = flow / design flow.
    """
    w = np.minimum(np.maximum(np.asarray(flow_frac, dtype=np.float64), 0.0), 1.0)
    out = np.asarray(outlet_c, dtype=np.float64)
    return out - 0.5 * w * (out - np.asarray(inlet_c))
