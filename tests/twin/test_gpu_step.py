"""The fused, blocked GPU step and the fast paths of the facility step give the same numbers
as the plain model functions they stand for."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from twin import gpu as gpu_m
from twin.gpu import (
    REASON_HW_SLOWDOWN,
    REASON_HW_THERMAL,
    GpuParams,
    die_decay,
    die_temp_rate_step,
    electrical,
    gpu_step,
    mem_temp_step,
    shutdown_latch,
)
from twin.power import PowerParams, ups_modules
from twin.state import linear_ode_step

P = GpuParams()


def _case(seed: int, per_gpu_r: bool) -> dict[str, np.ndarray]:
    """Racks of 8 GPUs with every regime: idle, busy, capped, hot, stuck, off, recovering."""
    rng = np.random.default_rng(seed)
    n_r, n_g = 11, 8
    shape = (n_r, n_g)
    util = rng.uniform(0.0, 1.0, shape)
    util[0] = 0.0  # idle rack
    limit = np.full(shape, P.tdp_w)
    limit[1:4] = 1400.0  # capped racks
    limit[4, :3] = 300.0  # below idle power
    temp = rng.uniform(40.0, 85.0, shape)
    util[5], temp[5] = 1.0, 88.95  # hot: throttles even over a 50 ms step
    temp[6, :2] = 93.0  # trips at shutdown
    temp[7, :2] = 80.0  # was off, still too warm to come back
    temp[7, 2:4] = 60.0  # was off, cool enough to come back
    was_off = np.zeros(shape, dtype=bool)
    was_off[7, :4] = True
    stuck = np.zeros(shape, dtype=bool)
    stuck[8, ::2] = True
    coolant = rng.uniform(44.0, 70.0, (n_r, 1))
    coolant[5] = 75.0
    r = np.full((n_r, 1), 0.018) * rng.uniform(0.9, 1.5, (n_r, 1))
    if per_gpu_r:
        r = r * rng.uniform(1.0, 3.0, shape)  # fouled plates
    return {
        "util": util,
        "limit": limit,
        "temp": temp,
        "mem": temp - rng.uniform(0.0, 20.0, shape),
        "energy": rng.uniform(0.0, 1e6, shape),
        "was_off": was_off,
        "stuck": stuck,
        "coolant": coolant,
        "r": r,
    }


@pytest.mark.parametrize("per_gpu_r", [False, True])
@pytest.mark.parametrize("dt", [0.05, 1.0, 60.0, 3600.0])
@pytest.mark.parametrize("block_gpus", [8, 24, 1 << 16])
def test_gpu_step_matches_the_model_functions(
    per_gpu_r: bool, dt: float, block_gpus: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_m, "BLOCK_GPUS", block_gpus)  # 1, 3 or all racks per block
    c = _case(int(dt * 100) + block_gpus, per_gpu_r)
    d = die_decay(c["r"], dt, P)
    gs = gpu_step(
        c["util"],
        c["limit"],
        c["stuck"],
        c["temp"],
        c["mem"],
        c["energy"],
        c["was_off"],
        c["coolant"],
        c["r"],
        d,
        dt,
        P,
    )
    off = shutdown_latch(c["was_off"], c["temp"], P)
    power, clock, bits = electrical(
        c["util"], c["limit"], c["temp"], c["coolant"], c["r"], c["stuck"], dt, P, d
    )
    power = np.where(off, 0.0, power)
    bits = np.where(off, REASON_HW_THERMAL | REASON_HW_SLOWDOWN, bits)
    die, heat, rate = die_temp_rate_step(c["temp"], power, c["coolant"], c["r"], dt, P, d)
    # the case covers every regime (long steps on fouled plates make every busy GPU hot)
    assert (
        off.any() and (bits & gpu_m.REASON_SW_THERMAL).any() and (bits & REASON_HW_SLOWDOWN).any()
    )
    assert (bits & gpu_m.REASON_SW_POWER_CAP).any() or (per_gpu_r and dt > 60.0)
    assert_array_equal(gs.off, off)
    assert_array_equal(gs.power_w, power)
    assert_array_equal(gs.clock_frac, clock)
    assert_array_equal(gs.reasons, bits)
    assert gs.reasons.dtype == np.uint64
    assert_array_equal(gs.temp_c, die)
    assert_array_equal(gs.heat_w, heat)
    assert_array_equal(gs.temp_rate_k_s, rate)
    assert_array_equal(gs.mem_temp_c, mem_temp_step(c["mem"], power, c["coolant"], dt, P))
    assert_array_equal(gs.energy_j, c["energy"] + power * dt)
    assert_allclose(gs.util_sum, np.where(off, 0.0, c["util"]).sum(axis=1), rtol=1e-12)
    assert_allclose(gs.power_sum_w, power.sum(axis=1), rtol=1e-12)
    assert_allclose(gs.heat_sum_w, heat.sum(axis=1), rtol=1e-12, atol=1e-9)
    assert_allclose(rate, (die - c["temp"]) / dt, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dt", [1.0, 60.0])
def test_electrical_per_rack_path_matches_per_gpu_path(dt: float) -> None:
    c = _case(7, per_gpu_r=False)
    args = (c["util"], c["limit"], c["temp"])
    fast = electrical(*args, c["coolant"], c["r"], c["stuck"], dt, P)
    # the same parameters broadcast to (R, G) take the per-GPU solve
    shape = c["util"].shape
    slow = electrical(
        *args,
        np.broadcast_to(c["coolant"], shape),
        np.broadcast_to(c["r"], shape),
        c["stuck"],
        dt,
        P,
    )
    for a, b in zip(fast, slow, strict=True):
        assert_array_equal(a, b)


def test_linear_ode_fast_path_matches_the_general_path() -> None:
    # one stagnant element sends the call through the a -> 0 branch; the others must not move
    x0, a, b = np.array([40.0, 50.0, 45.0]), np.array([0.05, 0.2, 0.0]), np.array([3.0, 9.0, 1.0])
    fast = linear_ode_step(x0[:2], a[:2], b[:2], 7.0)
    general = linear_ode_step(x0, a, b, 7.0)
    for f, g in zip(fast, general, strict=True):
        assert_array_equal(f, g[:2])


def test_ups_fast_path_matches_the_general_path() -> None:
    pw = PowerParams()
    out = np.array([1.0e6, 2.5e6, 3.0e6])
    fast = ups_modules(out[:2], np.ones(2, dtype=bool), np.ones(2), 1.0, pw)
    general = ups_modules(out, np.array([True, True, False]), np.array([1.0, 1.0, 0.5]), 1.0, pw)
    for f, g in zip(fast, general, strict=True):
        assert_array_equal(f, g[:2])
