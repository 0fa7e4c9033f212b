"""GPU electrical and thermal models, vectorised over (n_racks, n_gpus) arrays.

Electrical: P = P_idle + (P_tdp - P_idle) * util * f^k, f = SM clock / max clock, with the
clock lowered to honour the power limit (SwPowerCap) and the slowdown temperature
(SwThermalSlowdown). Thermal: one die node of capacitance C [J/K] behind a die-to-coolant
resistance R [K/W] whose convective part scales with coolant flow^-0.8; HBM as a lag.

Thermal protection (NVML thresholds, docs/sources.md S2): at slowdown_c the clock falls so
the die holds there; where even the lowest clock cannot hold it (no coolant flow, coolant
near the limit) the die climbs to shutdown_c, where the GPU trips: within the step it draws
at most the power that brings the die exactly to shutdown_c (the trip ends its power part
way through the step), and from the next step it is off (0 W) until the die has cooled
(:func:`shutdown_latch`), or for good when ``recover`` is False (a what-if horizon: nobody
restarts the node).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.state import exp_relax

FloatArray = NDArray[np.float64]

# NVML clock-event reason bits (docs/sources.md S7; streams/schema.py holds the same values)
REASON_GPU_IDLE = np.uint64(0x1)
REASON_SW_POWER_CAP = np.uint64(0x4)
REASON_HW_SLOWDOWN = np.uint64(0x8)
REASON_SW_THERMAL = np.uint64(0x20)
REASON_HW_THERMAL = np.uint64(0x40)
#: A die within this of shutdown_c [K] has tripped: the step that trips a GPU ends its die at
#: shutdown_c exactly, up to rounding (:func:`_dvfs`).
SHUTDOWN_TOL_K = 1e-6


def _m(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class GpuParams:
    """One GPU package. Defaults: Vera Rubin package, docs/sources.md S8 ``it.gpu``."""

    tdp_w: float = field(default=1800.0, metadata=_m(1.0))  # docs/sources.md S8 tdp_W
    idle_w: float = field(default=200.0, metadata=_m(0.0))  # docs/sources.md S8 idle_W
    # lowest settable power limit: Hopper's 200/700 W ratio applied to 1.8 kW (sources.md S2, est.)
    power_limit_min_w: float = field(default=514.0, metadata=_m(0.0))
    slowdown_c: float = field(default=89.0, metadata=_m(0.0, 150.0))  # sources.md S8 slowdown_C
    shutdown_c: float = field(default=92.0, metadata=_m(0.0, 150.0))  # sources.md S8 shutdown_C
    max_operating_c: float = field(default=87.0, metadata=_m(0.0, 150.0))  # docs/sources.md S8
    mem_max_c: float = field(default=95.0, metadata=_m(0.0, 150.0))  # docs/sources.md S8 mem_max_C
    r_die_coolant_k_w: float = field(
        default=0.018, metadata=_m(1e-5)
    )  # sources.md S8 at design flow
    # share of R that is the convective film (est.; the rest is die/TIM/plate conduction)
    r_convective_share: float = field(default=0.5, metadata=_m(0.0, 1.0))
    # film coefficient ~ Re^0.8 (Dittus-Boelter, turbulent channel flow)
    flow_exponent: float = field(default=0.8, metadata=_m(0.0, 2.0))
    c_th_j_k: float = field(default=400.0, metadata=_m(1e-3))  # docs/sources.md S8 C_th, tau ~ 7 s
    # HBM above coolant per package watt (est.: HBM ~20 K below die at TDP)
    r_mem_coolant_k_w: float = field(default=0.014, metadata=_m(0.0))
    tau_mem_s: float = field(default=20.0, metadata=_m(1e-3))  # est.
    max_clock_mhz: float = field(default=1980.0, metadata=_m(1.0))  # sources.md S2 (Hopper proxy)
    idle_clock_mhz: float = field(default=345.0, metadata=_m(1.0))  # sources.md S2 (Hopper proxy)
    min_clock_frac: float = field(default=0.2, metadata=_m(0.01, 1.0))  # est. DVFS floor
    # dynamic power ~ f * V^2 with V roughly following f in the DVFS range (est.)
    clock_power_exponent: float = field(default=2.5, metadata=_m(1.0, 4.0))
    # a stuck HW slowdown halves the clock (docs/sources.md S7: "clocks cut by half or more")
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
    stuck_clock_frac with HwSlowdown set. ``util`` must lie in [0, 1] and sets the shape of
    the results. ``decay``: :func:`die_decay`, if already computed.
    """
    u = np.asarray(util, dtype=np.float64)
    t0 = np.asarray(temp_c, dtype=np.float64)
    r = np.asarray(r_k_w, dtype=np.float64)
    d = die_decay(r, dt_s, p) if decay is None else np.asarray(decay)
    limit = np.asarray(power_limit_w, dtype=np.float64)
    p_full = np.multiply(u, p.tdp_w - p.idle_w, out=np.empty(u.shape))  # clock 1
    p_full += p.idle_w
    # thermal limit: the power whose steady state makes T(dt) = slowdown exactly; hot when
    # p_full * r * (1 - d) > slowdown - t0 * d - coolant * (1 - d), i.e. T(dt) > slowdown
    one_minus_d = 1.0 - d
    r_omd = r * one_minus_d
    cool_omd = np.asarray(coolant_c) * one_minus_d
    stuck_b = np.asarray(stuck, dtype=bool)
    capped = np.asarray(p_full > limit)
    clock = np.ones_like(p_full)
    bits = np.asarray(u < 0.01).astype(np.uint64)
    shape = u.shape
    if u.ndim == 2 and all(a.ndim < 2 or a.shape[1] == 1 for a in (r_omd, d, cool_omd)):
        n_r = shape[0]
        _limit_racks(
            u,
            p_full,
            _full(limit, shape),
            _full(t0, shape),
            _full(stuck_b, shape) if stuck_b.any() else None,
            capped,
            _per_row(r_omd, n_r),
            _per_row(d, n_r),
            _per_row(cool_omd, n_r),
            clock,
            bits,
            p,
        )
        return p_full, clock, bits
    # per-GPU thermal parameters (fouled plates) or other shapes: the solve on single GPUs
    _limit_gpus(u, p_full, limit, t0, stuck_b, capped, r_omd, d, cool_omd, clock, bits, p)
    return p_full, clock, bits


def _limit_racks(
    u: FloatArray,
    p_full: FloatArray,
    limit: FloatArray,
    t0: FloatArray,
    stuck: NDArray[np.bool_] | None,
    capped: NDArray[np.bool_],
    r_omd: FloatArray,
    d: FloatArray,
    cool_omd: FloatArray,
    clock: FloatArray,
    bits: NDArray[np.uint64],
    p: GpuParams,
    t0_max: float | None = None,
) -> None:
    """The DVFS solve of :func:`electrical` on (n, G) arrays with thermal parameters per rack
    (r_omd = r (1 - d), d, cool_omd = T_cool (1 - d): (n, 1)); updates p_full, clock and bits
    in place. ``stuck`` None: none stuck; t0_max: t0.max() if known. It runs only on racks
    with a GPU that may be limited, found without an (n, G) pass per condition, and on whole
    racks: in a capped rack nearly every GPU is limited, so masking is cheaper than gathering
    single GPUs."""
    racks = np.zeros(u.shape[0], dtype=bool)
    if capped.any():
        racks |= _any_per_row(capped)
    if stuck is not None:
        racks |= stuck.any(axis=1)
    # an upper bound of p_full * r_omd + t0 * d per rack: no GPU of a rack below it is hot
    # (the same operations as the exact test, so rounding keeps it conservative)
    t_max = t0.max() if t0_max is None else t0_max
    may_be_hot = (p_full.max() * r_omd > p.slowdown_c - t_max * d - cool_omd)[:, 0]
    any_hot = bool(may_be_hot.any())
    if any_hot:
        racks |= may_be_hot
    rows = np.flatnonzero(racks)
    if rows.size == 0:
        return
    u_b, p_b, cap_b = u[rows], p_full[rows], capped[rows]
    st_b = None if stuck is None else stuck[rows]
    sel_b = cap_b if st_b is None else cap_b | st_b
    thermal = None
    if any_hot:
        r_omd_b = r_omd[rows]
        head_b = p.slowdown_c - t0[rows] * d[rows] - cool_omd[rows]
        hot_b = p_b * r_omd_b > head_b
        sel_b = sel_b | hot_b
        thermal = (hot_b, head_b, r_omd_b)
    f, power_b, b = _dvfs(u_b, p_b, limit[rows], cap_b, st_b, thermal, p)
    if sel_b.all():  # e.g. capped racks at load: every GPU limited
        clock[rows], p_full[rows] = f, power_b
    else:
        clock[rows] = np.where(sel_b, f, 1.0)
        p_full[rows] = np.where(sel_b, power_b, p_b)
    bits[rows] |= b  # zero where not limited


def _limit_gpus(
    u: FloatArray,
    p_full: FloatArray,
    limit: FloatArray,
    t0: FloatArray,
    stuck: NDArray[np.bool_] | None,
    capped: NDArray[np.bool_],
    r_omd: FloatArray,
    d: FloatArray,
    cool_omd: FloatArray,
    clock: FloatArray,
    bits: NDArray[np.uint64],
    p: GpuParams,
) -> None:
    """:func:`_limit_racks` for thermal parameters per GPU (fouled plates): the exact test
    on every GPU of the block, the solve on the limited ones."""
    headroom = p.slowdown_c - t0 * d - cool_omd
    hot = p_full * r_omd > headroom
    limited = capped | hot
    sel = np.flatnonzero(limited if stuck is None else limited | stuck)
    if sel.size == 0:
        return
    shape = u.shape

    def pick(a: Any) -> NDArray[Any]:
        return np.broadcast_to(a, shape).reshape(-1)[sel]

    f, power_s, b = _dvfs(
        pick(u),
        pick(p_full),
        pick(limit),
        pick(capped),
        None if stuck is None else pick(stuck),
        (pick(hot), pick(headroom), pick(r_omd)),
        p,
    )
    clock.reshape(-1)[sel] = f
    p_full.reshape(-1)[sel] = power_s
    bits.reshape(-1)[sel] |= b


def _any_per_row(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """mask.any(axis=1) for a C-contiguous (R, G) bool array; summing the bytes with einsum
    is ~3x faster than the reduction when rows are short (needs G < 256 to not wrap)."""
    if mask.shape[1] < 256 and mask.flags.c_contiguous:
        return np.asarray(np.einsum("ij->i", mask.view(np.uint8)) > 0)
    return np.asarray(mask.any(axis=1))


def _per_row(a: NDArray[Any], n_rows: int) -> NDArray[Any]:
    """``a`` (a scalar, (1, 1) or (R, 1) array) as an (R, 1) array, without copying."""
    return a if a.shape == (n_rows, 1) else np.broadcast_to(a, (n_rows, 1))


def _full(a: NDArray[Any], shape: tuple[int, ...]) -> NDArray[Any]:
    """``a`` broadcast to ``shape`` (a view; the array itself when it already has it)."""
    return a if a.shape == shape else np.broadcast_to(a, shape)


def _dvfs(
    u: FloatArray,
    p_full: FloatArray,
    limit: FloatArray,
    capped: NDArray[np.bool_],
    stuck: NDArray[np.bool_] | None,
    thermal: tuple[NDArray[np.bool_], FloatArray, FloatArray] | None,
    p: GpuParams,
) -> tuple[FloatArray, FloatArray, NDArray[np.uint64]]:
    """Clock [1], power [W] and reason bits of limited GPUs (arrays that broadcast together;
    the bits are zero where a GPU is neither capped, hot nor stuck). ``thermal``: (hot,
    headroom [K], r (1 - d) [K/W]) of :func:`electrical`, None where no GPU can be hot;
    ``stuck`` None: none stuck."""
    target = np.maximum(limit, p.idle_w)
    np.minimum(p_full, target, out=target)
    if thermal is not None:
        hot, headroom, r_omd = thermal
        p_th = np.maximum(headroom / np.maximum(r_omd, 1e-12), 0.0)
        np.minimum(target, np.where(hot, p_th, np.inf), out=target)
    # clock_for_power, keeping f^k = ratio: power needs no second fractional power. In-place
    # arithmetic, the same operations in the same order as clock_for_power and gpu_power_w
    k = p.clock_power_exponent
    dyn = p.tdp_w - p.idle_w
    ratio = np.subtract(target, p.idle_w, out=target)
    np.maximum(ratio, 0.0, out=ratio)
    den = np.clip(u, 1e-6, 1.0)
    den *= dyn
    ratio /= den
    f = ratio ** (1.0 / k)
    np.clip(f, p.min_clock_frac, 1.0, out=f)
    f_k = np.clip(ratio, p.min_clock_frac**k, 1.0, out=ratio)
    if stuck is not None:
        f = np.where(stuck, np.minimum(f, p.stuck_clock_frac), f)
        f_k = np.where(stuck, np.minimum(f_k, p.stuck_clock_frac**k), f_k)
    power = np.clip(u, 0.0, 1.0, out=den)  # gpu_power_w: idle + (tdp - idle) u f^k
    power *= dyn
    power *= f_k
    power += p.idle_w
    if thermal is not None:
        # even the lowest clock overheats a GPU without coolant flow: it trips at shutdown_c
        # part way through the step, so it draws at most the mean power that ends the die
        # at shutdown_c (the latch turns it off from the next step)
        hot, headroom, r_omd = thermal
        p_trip = headroom + (p.shutdown_c - p.slowdown_c)
        p_trip /= np.maximum(r_omd, 1e-12)
        np.maximum(p_trip, 0.0, out=p_trip)
        np.minimum(power, np.where(hot, p_trip, np.inf), out=power)
    if thermal is None:
        b = capped.view(np.uint8) << 2
        if stuck is not None:
            b |= stuck.view(np.uint8) << 3
    else:
        hot = thermal[0]
        st = np.zeros_like(hot) if stuck is None else stuck
        deep = hot & (f <= 0.5)
        b = (
            ((capped & ~hot).view(np.uint8) << 2)
            | ((deep | st).view(np.uint8) << 3)
            | (hot.view(np.uint8) << 5)
            | (deep.view(np.uint8) << 6)
        )
    return f, power, b.astype(np.uint64)


def shutdown_latch(
    off: Any, temp_c: Any, p: GpuParams, *, recover: bool = True
) -> NDArray[np.bool_]:
    """GPUs that are off [bool]: tripped at shutdown_c (within SHUTDOWN_TOL_K), back on once
    the die has cooled below max_operating_c - 20 K (est.: the node's automatic recovery),
    or never when ``recover`` is False."""
    t = np.asarray(temp_c)
    was_off = np.asarray(off, dtype=bool)
    tripped = np.asarray(t >= p.shutdown_c - SHUTDOWN_TOL_K)
    if was_off.any():
        tripped = tripped | ((was_off & (t > p.max_operating_c - 20.0)) if recover else was_off)
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
    t_new, q, _ = die_temp_rate_step(temp_c, power_w, coolant_c, r_k_w, dt_s, p, decay)
    return t_new, q


def die_temp_rate_step(
    temp_c: Any,
    power_w: Any,
    coolant_c: Any,
    r_k_w: Any,
    dt_s: float,
    p: GpuParams,
    decay: Any = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """:func:`die_temp_step` that also returns the mean rate (T_end - T_start) / dt [K/s]."""
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
    rate = x / dt_s
    x *= -p.c_th_j_k / dt_s
    x += pw
    return t_new, x, rate


def mem_temp_step(
    mem_c: Any, power_w: Any, coolant_c: Any, dt_s: float, p: GpuParams
) -> FloatArray:
    """HBM temperature [C] after dt_s [s]: lag toward T_cool + r_mem * P with tau_mem_s."""
    target = p.r_mem_coolant_k_w * np.asarray(power_w, dtype=np.float64)
    target += coolant_c
    return exp_relax(mem_c, target, 1.0 / p.tau_mem_s, dt_s)


@dataclass(frozen=True, eq=False)
class GpuStep:
    """Result of :func:`gpu_step`: (R, G) arrays and per-rack (R,) sums."""

    power_w: FloatArray  # board power over the step [W], 0 when off
    clock_frac: FloatArray  # SM clock / max clock [1]
    reasons: NDArray[np.uint64]  # NVML clock-event reason bits
    off: NDArray[np.bool_]  # tripped at shutdown, latched
    temp_c: FloatArray  # die temperature at the end of the step [C]
    heat_w: FloatArray  # mean heat into the coolant over the step [W]
    temp_rate_k_s: FloatArray  # (T_end - T_start) / dt [K/s]
    mem_temp_c: FloatArray  # HBM temperature at the end of the step [C]
    energy_j: FloatArray  # energy counter after the step [J]
    util_sum: FloatArray  # (R,) sum of utilisation [1] over the rack's GPUs that are on
    power_sum_w: FloatArray  # (R,) sum of power_w [W]
    heat_sum_w: FloatArray  # (R,) sum of heat_w [W]
    on_frac: FloatArray  # (R,) share of the rack's GPUs that are on [1]


#: GPUs per block in :func:`gpu_step`: the ~15 arrays of a block fit in L2, where an
#: elementwise pass runs ~2x faster than from L3/memory, while numpy's ~1 us per call stays
#: small against the pass.
BLOCK_GPUS = 1 << 16


def gpu_step(
    util: Any,
    power_limit_w: Any,
    stuck: Any,
    temp_c: Any,
    mem_c: Any,
    energy_j: Any,
    was_off: Any,
    coolant_c: Any,
    r_k_w: Any,
    decay: Any,
    dt_s: float,
    p: GpuParams,
    *,
    recover: bool = True,
) -> GpuStep:
    """All (R, G) GPUs over one step of dt_s [s], blocks of racks at a time.

    Element for element the same arithmetic as :func:`shutdown_latch` (from temp_c, was_off
    and ``recover``), :func:`electrical`, power 0 and reasons HwThermal|HwSlowdown for GPUs that are
    off, :func:`die_temp_rate_step`, :func:`mem_temp_step` and energy_j + power dt; done in
    blocks so each block's intermediates stay in cache. util [1], power_limit_w [W], stuck,
    temp_c [C], mem_c [C], energy_j [J], was_off: (R, G); coolant_c [C], r_k_w [K/W] and
    decay (:func:`die_decay`): (R, 1), (R, G) or scalars.
    """
    u, limit, t0, m0, e0 = (
        np.ascontiguousarray(a, dtype=np.float64)
        for a in (util, power_limit_w, temp_c, mem_c, energy_j)
    )
    st = np.ascontiguousarray(stuck, dtype=bool)
    off0 = np.ascontiguousarray(was_off, dtype=bool)
    shape = u.shape
    n_r, n_g = shape
    # one allocation for the eight (R, G) results: each a view of its own part. Fresh pages
    # cost a fault each (~1 us on a VM); a block this size also raises glibc's dynamic mmap
    # and trim thresholds, so later steps reuse freed memory instead of faulting it in again
    block = np.empty((8, *shape))
    power, clock, die, heat, rate, mem, energy = block[:7]
    bits = block[7].view(np.uint64)
    off = np.empty(shape, dtype=bool)
    util_sum, power_sum, heat_sum = np.empty(n_r), np.empty(n_r), np.empty(n_r)
    on_frac = np.ones(n_r)
    trip_c = p.shutdown_c - SHUTDOWN_TOL_K
    coolant, r, d = (np.asarray(a, dtype=np.float64) for a in (coolant_c, r_k_w, decay))
    omd = 1.0 - d
    r_omd, cool_omd = r * omd, coolant * omd
    per_rack = all(a.ndim < 2 or a.shape[1] == 1 for a in (r_omd, d, cool_omd))
    if per_rack:
        r_omd, d, cool_omd = (_per_row(a, n_r) for a in (r_omd, d, cool_omd))
    any_was_off, any_stuck = bool(off0.any()), bool(st.any())
    mem_decay = float(np.exp(-(1.0 / p.tau_mem_s) * dt_s))  # as exp_relax at 1 / tau_mem_s
    q_scale = -p.c_th_j_k / dt_s
    off_bits = REASON_HW_THERMAL | REASON_HW_SLOWDOWN
    step_r = max(1, BLOCK_GPUS // max(n_g, 1))
    w = np.empty((min(step_r, n_r), n_g))
    capped_w = np.empty(w.shape, dtype=bool)
    for lo in range(0, n_r, step_r):
        s = slice(lo, min(lo + step_r, n_r))
        n = s.stop - lo
        u_s, t0_s, pw, tc = u[s], t0[s], power[s], _rows(coolant, s, n_r)
        # electrical: power at full clock, then the DVFS solve where limited
        np.multiply(u_s, p.tdp_w - p.idle_w, out=pw)
        pw += p.idle_w
        capped = np.greater(pw, limit[s], out=capped_w[:n])
        clock[s] = 1.0
        np.less(u_s, 0.01, out=bits[s], casting="unsafe")  # idle bit
        r_omd_s, d_s, cool_s = _rows(r_omd, s, n_r), _rows(d, s, n_r), _rows(cool_omd, s, n_r)
        lim_s, clk_s, bits_s = limit[s], clock[s], bits[s]
        st_s = st[s] if any_stuck else None
        t0_max = float(t0_s.max())
        if per_rack:
            _limit_racks(
                u_s, pw, lim_s, t0_s, st_s, capped, r_omd_s, d_s, cool_s, clk_s, bits_s, p, t0_max
            )
        else:
            _limit_gpus(u_s, pw, lim_s, t0_s, st_s, capped, r_omd_s, d_s, cool_s, clk_s, bits_s, p)
        # shutdown latch
        off_s = off[s]
        if t0_max >= trip_c or any_was_off:
            np.greater_equal(t0_s, trip_c, out=off_s)
            if any_was_off:
                off_s |= (off0[s] & (t0_s > p.max_operating_c - 20.0)) if recover else off0[s]
        else:
            off_s.fill(False)  # the same as the test above: nothing at shutdown, none latched
        if off_s.any():
            np.copyto(pw, 0.0, where=off_s)
            np.copyto(bits[s], off_bits, where=off_s)
            np.einsum("ij->i", np.where(off_s, 0.0, u_s), out=util_sum[s])
            on_frac[s] = 1.0 - np.count_nonzero(off_s, axis=1) / n_g
        else:
            np.einsum("ij->i", u_s, out=util_sum[s])
        # die: x = T_ss - T0, T_end = T0 + x (1 - d), Q = P - C/dt (T_end - T0)
        x = heat[s]
        np.multiply(_rows(r, s, n_r), pw, out=x)
        x += tc
        x -= t0_s
        x *= _rows(omd, s, n_r)
        np.add(t0_s, x, out=die[s])
        np.divide(x, dt_s, out=rate[s])
        x *= q_scale
        x += pw
        # HBM: target = T_cool + r_mem P, relaxed with tau_mem_s
        target = np.multiply(pw, p.r_mem_coolant_k_w, out=w[:n])
        target += tc
        m = np.subtract(m0[s], target, out=mem[s])
        m *= mem_decay
        m += target
        e = np.multiply(pw, dt_s, out=energy[s])
        e += e0[s]
        np.einsum("ij->i", pw, out=power_sum[s])
        np.einsum("ij->i", x, out=heat_sum[s])
    return GpuStep(
        power,
        clock,
        bits,
        off,
        die,
        heat,
        rate,
        mem,
        energy,
        util_sum,
        power_sum,
        heat_sum,
        on_frac,
    )


def _rows(a: FloatArray, s: slice, n_rows: int) -> FloatArray:
    """Rows ``s`` of a per-rack or per-GPU array; scalars and (1, 1) broadcast as they are."""
    return a[s] if a.ndim == 2 and a.shape[0] == n_rows else a


def sm_clock_mhz(
    clock_frac: Any, util: Any, p: GpuParams, *, out: FloatArray | None = None
) -> FloatArray:
    """Reported SM clock [MHz]: idle clock when idle, else clock_frac * max clock.

    ``out``: a float64 array of the result's shape to write into (no allocation)."""
    f = np.asarray(clock_frac, dtype=np.float64)
    idle = np.asarray(util) < 0.01
    if out is None:
        out = np.empty(np.broadcast_shapes(f.shape, idle.shape))
    mhz = np.multiply(f, p.max_clock_mhz, out=out)
    # max(mhz, idle clock) and the idle GPUs in one masked copy (np.maximum with a scalar
    # is ~2x slower than a compare and a copy)
    np.copyto(mhz, p.idle_clock_mhz, where=(mhz < p.idle_clock_mhz) | idle)
    return mhz
