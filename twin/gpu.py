"""GPU electrical and thermal models, vectorised over (n_racks, n_gpus) arrays.

Electrical: P = P_idle + (P_tdp - P_idle) * util * f^k, f = SM clock / max clock, with the
clock lowered to honour the power limit (SwPowerCap) and the slowdown temperature
(SwThermalSlowdown). Thermal: one die node of capacitance C [J/K] behind a die-to-coolant
resistance R [K/W] whose convective part scales with coolant flow^-0.8; HBM as a lag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.state import exp_relax

FloatArray = NDArray[np.float64]

# NVML clock-event reason bits (FACTS.md section 7; streams/schema.py holds the same values)
REASON_GPU_IDLE = np.uint64(0x1)
REASON_SW_POWER_CAP = np.uint64(0x4)
REASON_HW_SLOWDOWN = np.uint64(0x8)
REASON_SW_THERMAL = np.uint64(0x20)
REASON_HW_THERMAL = np.uint64(0x40)


def _m(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class GpuParams:
    """One GPU package. Defaults: Vera Rubin package, FACTS.md section 8 ``it.gpu``."""

    tdp_w: float = field(default=1800.0, metadata=_m(1.0))  # FACTS s.8 tdp_W
    idle_w: float = field(default=200.0, metadata=_m(0.0))  # FACTS s.8 idle_W
    # lowest settable power limit: Hopper's 200/700 W ratio applied to 1.8 kW (FACTS s.2, est.)
    power_limit_min_w: float = field(default=514.0, metadata=_m(0.0))
    slowdown_c: float = field(default=89.0, metadata=_m(0.0, 150.0))  # FACTS s.8 slowdown_C
    shutdown_c: float = field(default=92.0, metadata=_m(0.0, 150.0))  # FACTS s.8 shutdown_C
    max_operating_c: float = field(default=87.0, metadata=_m(0.0, 150.0))  # FACTS s.8
    mem_max_c: float = field(default=95.0, metadata=_m(0.0, 150.0))  # FACTS s.8 mem_max_C
    r_die_coolant_k_w: float = field(default=0.018, metadata=_m(1e-5))  # FACTS s.8 at design flow
    # share of R that is the convective film (est.; the rest is die/TIM/plate conduction)
    r_convective_share: float = field(default=0.5, metadata=_m(0.0, 1.0))
    # film coefficient ~ Re^0.8 (Dittus-Boelter, turbulent channel flow)
    flow_exponent: float = field(default=0.8, metadata=_m(0.0, 2.0))
    c_th_j_k: float = field(default=400.0, metadata=_m(1e-3))  # FACTS s.8 C_th, tau ~ 7 s
    # HBM above coolant per package watt (est.: HBM ~20 K below die at TDP)
    r_mem_coolant_k_w: float = field(default=0.014, metadata=_m(0.0))
    tau_mem_s: float = field(default=20.0, metadata=_m(1e-3))  # est.
    max_clock_mhz: float = field(default=1980.0, metadata=_m(1.0))  # FACTS s.2 (Hopper proxy)
    idle_clock_mhz: float = field(default=345.0, metadata=_m(1.0))  # FACTS s.2 (Hopper proxy)
    min_clock_frac: float = field(default=0.2, metadata=_m(0.01, 1.0))  # est. DVFS floor
    # dynamic power ~ f * V^2 with V roughly following f in the DVFS range (est.)
    clock_power_exponent: float = field(default=2.5, metadata=_m(1.0, 4.0))
    # a stuck HW slowdown halves the clock (FACTS s.7: "clocks cut by half or more")
    stuck_clock_frac: float = field(default=0.5, metadata=_m(0.01, 1.0))


def gpu_power_w(util: Any, clock_frac: Any, p: GpuParams) -> FloatArray:
    """Board power [W] at utilisation ``util`` [1] and clock fraction ``clock_frac`` [1]."""
    u = np.clip(np.asarray(util, dtype=np.float64), 0.0, 1.0)
    f = np.asarray(clock_frac, dtype=np.float64)
    return p.idle_w + (p.tdp_w - p.idle_w) * u * f**p.clock_power_exponent


def clock_for_power(util: Any, power_w: Any, p: GpuParams) -> FloatArray:
    """Clock fraction [1] at which the GPU draws ``power_w`` [W] at ``util`` [1], clipped to
    [min_clock_frac, 1] (inverse of :func:`gpu_power_w`)."""
    u = np.clip(np.asarray(util, dtype=np.float64), 1e-6, 1.0)
    dyn = np.maximum(np.asarray(power_w, dtype=np.float64) - p.idle_w, 0.0)
    f = (dyn / ((p.tdp_w - p.idle_w) * u)) ** (1.0 / p.clock_power_exponent)
    return np.clip(f, p.min_clock_frac, 1.0)


def cold_plate_resistance_k_w(flow_frac: Any, fouling: Any, p: GpuParams) -> FloatArray:
    """Die-to-coolant resistance [K/W] at coolant flow ``flow_frac`` [1] of design flow.

    R = R0 * ((1 - s) + s * flow_frac^-n) * fouling, s = convective share, n = flow exponent;
    ``fouling`` [1] multiplies R (1 = clean). Flow is floored at 1 % (stagnant film).
    """
    ff = np.maximum(np.asarray(flow_frac, dtype=np.float64), 0.01)
    s = p.r_convective_share
    return p.r_die_coolant_k_w * ((1.0 - s) + s * ff**-p.flow_exponent) * np.asarray(fouling)


def die_decay(r_k_w: Any, dt_s: float, p: GpuParams) -> FloatArray:
    """exp(-dt / (R C)) [1]: the die's first-order decay over a step of dt_s [s]."""
    return np.exp(-dt_s / (np.asarray(r_k_w, dtype=np.float64) * p.c_th_j_k))


def electrical(
    util: Any,
    power_limit_w: Any,
    temp_c: Any,
    coolant_c: Any,
    r_k_w: Any,
    stuck: Any,
    dt_s: float,
    p: GpuParams,
    decay: Any = None,
) -> tuple[FloatArray, FloatArray, NDArray[np.uint64]]:
    """Power [W], clock fraction [1] and NVML reason bits for the coming step of dt_s [s].

    The clock is the highest that keeps power <= power_limit_w [W] and keeps the die, starting
    at temp_c [C] behind r_k_w [K/W] to coolant at coolant_c [C], from passing slowdown_c by
    the end of the step (exact first-order response). ``stuck`` (bool) pins the clock at
    stuck_clock_frac with HwSlowdown set. ``util`` must lie in [0, 1]. ``decay``:
    :func:`die_decay`, if already computed.
    """
    u = np.asarray(util, dtype=np.float64)
    t0 = np.asarray(temp_c, dtype=np.float64)
    r = np.asarray(r_k_w, dtype=np.float64)
    d = die_decay(r, dt_s, p) if decay is None else np.asarray(decay)
    limit = np.asarray(power_limit_w, dtype=np.float64)
    p_full = np.asarray(p.idle_w + (p.tdp_w - p.idle_w) * u)  # clock 1
    # thermal limit: the power whose steady state makes T(dt) = slowdown exactly; hot when
    # p_full * r * (1 - d) > slowdown - t0 * d - coolant * (1 - d), i.e. T(dt) > slowdown
    one_minus_d = 1.0 - d
    headroom = p.slowdown_c - t0 * d - np.asarray(coolant_c) * one_minus_d
    hot = p_full * (r * one_minus_d) > headroom
    capped = p_full > limit
    stuck_b = np.asarray(stuck, dtype=bool)
    power = p_full
    clock = np.ones_like(p_full)
    bits = np.asarray(u < 0.01).astype(np.uint64)
    # the DVFS solve runs only on GPUs that are limited (usually a small subset)
    sel = np.flatnonzero(capped | hot | stuck_b)
    if sel.size:
        shape = u.shape

        def pick(a: Any) -> FloatArray:
            a = np.asarray(a)
            if a.shape == shape:
                return a.reshape(-1)[sel]
            if a.ndim == 2 and a.shape == (shape[0], 1):  # per-rack value, (R, 1)
                return a.reshape(-1)[sel // shape[1]]
            return np.broadcast_to(a, shape).reshape(-1)[sel]

        uf = pick(u)
        hot_s, cap_s, st_s = hot.reshape(-1)[sel], capped.reshape(-1)[sel], pick(stuck_b) > 0
        p_th = np.maximum(pick(headroom) / np.maximum(pick(r * one_minus_d), 1e-12), 0.0)
        lim = np.maximum(pick(limit), p.idle_w)
        target = np.minimum(np.minimum(pick(p_full), lim), np.where(hot_s, p_th, np.inf))
        f = clock_for_power(uf, target, p)
        f = np.where(st_s, np.minimum(f, p.stuck_clock_frac), f)
        power = p_full.copy()
        clock.reshape(-1)[sel] = f
        power.reshape(-1)[sel] = gpu_power_w(uf, f, p)
        deep = hot_s & (f <= 0.5)
        b = (
            ((cap_s & ~hot_s).astype(np.uint64) << np.uint64(2))
            | ((deep | st_s).astype(np.uint64) << np.uint64(3))
            | (hot_s.astype(np.uint64) << np.uint64(5))
            | (deep.astype(np.uint64) << np.uint64(6))
        )
        bits.reshape(-1)[sel] |= b
    return power, clock, bits


def shutdown_latch(off: Any, temp_c: Any, p: GpuParams) -> NDArray[np.bool_]:
    """GPUs that are off [bool]: tripped at shutdown_c, back on once the die has cooled
    below max_operating_c - 20 K (est.: the node's automatic recovery)."""
    t = np.asarray(temp_c)
    was_off = np.asarray(off, dtype=bool)
    tripped = np.asarray(t >= p.shutdown_c)
    if was_off.any():
        tripped = tripped | (was_off & (t > p.max_operating_c - 20.0))
    return tripped


def die_temp_step(
    temp_c: Any,
    power_w: Any,
    coolant_c: Any,
    r_k_w: Any,
    dt_s: float,
    p: GpuParams,
    decay: Any = None,
) -> tuple[FloatArray, FloatArray]:
    """Exact step of C dT/dt = P - (T - T_cool)/R over dt_s [s] for constant P and T_cool.

    Returns (die temperature at the end [C], mean heat into the coolant over the step [W]);
    the mean heat is P - C (T_end - T_start)/dt, so energy is conserved to rounding.
    """
    r = np.asarray(r_k_w, dtype=np.float64)
    d = die_decay(r, dt_s, p) if decay is None else np.asarray(decay)
    t0 = np.asarray(temp_c, dtype=np.float64)
    pw = np.asarray(power_w, dtype=np.float64)
    # x = T_ss - T0; T_end = T0 + x (1 - d); Q = P - C/dt (T_end - T0). In-place arithmetic:
    # this runs on (n_racks, n_gpus) every step
    x = r * pw
    x += coolant_c
    x -= t0
    x *= 1.0 - d
    t_new = t0 + x
    x *= -p.c_th_j_k / dt_s
    x += pw
    return t_new, x


def mem_temp_step(
    mem_c: Any, power_w: Any, coolant_c: Any, dt_s: float, p: GpuParams
) -> FloatArray:
    """HBM temperature [C] after dt_s [s]: lag toward T_cool + r_mem * P with tau_mem_s."""
    target = p.r_mem_coolant_k_w * np.asarray(power_w, dtype=np.float64)
    target += coolant_c
    return exp_relax(mem_c, target, 1.0 / p.tau_mem_s, dt_s)


def sm_clock_mhz(clock_frac: Any, util: Any, p: GpuParams) -> FloatArray:
    """Reported SM clock [MHz]: idle clock when idle, else clock_frac * max clock."""
    f = np.asarray(clock_frac, dtype=np.float64)
    busy = np.asarray(util) >= 0.01
    return np.where(busy, np.maximum(f * p.max_clock_mhz, p.idle_clock_mhz), p.idle_clock_mhz)
