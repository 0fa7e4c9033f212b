"""GPU electrical and thermal models against hand-computed values."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from twin.gpu import (
    REASON_GPU_IDLE,
    REASON_HW_SLOWDOWN,
    REASON_SW_POWER_CAP,
    REASON_SW_THERMAL,
    GpuParams,
    clock_for_power,
    cold_plate_resistance_k_w,
    die_temp_step,
    electrical,
    gpu_power_w,
    mem_temp_step,
    shutdown_latch,
    sm_clock_mhz,
)

P = GpuParams()


def test_power_between_idle_and_tdp() -> None:
    assert_allclose(gpu_power_w([0.0, 1.0], 1.0, P), [200.0, 1800.0])
    # 200 + 1600 * 0.5 * 0.8^2.5 = 200 + 800 * 0.57243 = 657.9 W
    assert_allclose(gpu_power_w(0.5, 0.8, P), 200.0 + 800.0 * 0.8**2.5)
    assert_allclose(gpu_power_w(0.5, 0.8, P), 657.95, atol=0.01)


def test_clock_for_power_inverts_power() -> None:
    f = clock_for_power(0.9, 1400.0, P)
    assert_allclose(gpu_power_w(0.9, f, P), 1400.0)
    # (1200 / 1440)^(1/2.5) = 0.9296
    assert_allclose(f, (1200.0 / 1440.0) ** 0.4)


def test_cold_plate_resistance_depends_on_flow_and_fouling() -> None:
    assert_allclose(cold_plate_resistance_k_w(1.0, 1.0, P), 0.018)
    # half flow: 0.018 * (0.5 + 0.5 * 0.5^-0.8) = 0.018 * 1.3706 = 0.024671
    assert_allclose(cold_plate_resistance_k_w(0.5, 1.0, P), 0.018 * (0.5 + 0.5 * 2**0.8))
    assert_allclose(cold_plate_resistance_k_w(1.0, 2.0, P), 0.036)


def test_die_step_reaches_steady_state_and_follows_exponential() -> None:
    r = 0.018
    t_ss = 50.0 + r * 1800.0  # 82.4 C
    t_end, _ = die_temp_step(50.0, 1800.0, 50.0, r, 1e6, P)
    assert_allclose(t_end, t_ss)
    tau = r * P.c_th_j_k  # 7.2 s
    t1, _ = die_temp_step(50.0, 1800.0, 50.0, r, 7.2, P)
    assert_allclose(t1, t_ss + (50.0 - t_ss) * np.exp(-7.2 / tau))


@settings(max_examples=100, deadline=None)
@given(
    t0=st.floats(0.0, 95.0),
    power=st.floats(0.0, 2500.0),
    coolant=st.floats(-5.0, 70.0),
    r=st.floats(0.005, 0.2),
    dt=st.floats(0.01, 3600.0),
)
def test_die_step_conserves_energy(
    t0: float, power: float, coolant: float, r: float, dt: float
) -> None:
    t1, q = die_temp_step(t0, power, coolant, r, dt, P)
    # P dt = C (T1 - T0) + Q dt; and the end state lies between start and steady state
    assert_allclose(power * dt, P.c_th_j_k * (t1 - t0) + q * dt, rtol=1e-9, atol=1e-6 * dt)
    lo, hi = sorted((t0, coolant + r * power))
    assert lo - 1e-9 <= t1 <= hi + 1e-9


def test_power_cap_limits_power_and_sets_bit() -> None:
    power, clock, bits = electrical(0.95, 1400.0, 50.0, 50.0, 0.018, False, 1.0, P)
    assert_allclose(power, 1400.0)
    assert clock < 1.0
    assert bits == REASON_SW_POWER_CAP


def test_unlimited_gpu_runs_full_clock() -> None:
    power, clock, bits = electrical(0.5, 1800.0, 60.0, 50.0, 0.018, False, 1.0, P)
    assert_allclose(power, 1000.0)
    assert clock == 1.0 and bits == 0


def test_thermal_throttle_holds_slowdown() -> None:
    # coolant 70 C: full power would settle at 70 + 0.018*1800 = 102 C > 89 C
    for dt in (1.0, 60.0):
        power, clock, bits = electrical(1.0, 1800.0, 88.5, 70.0, 0.018, False, dt, P)
        t1, _ = die_temp_step(88.5, power, 70.0, 0.018, dt, P)
        assert_allclose(t1, P.slowdown_c, atol=1e-9)
        assert bits & REASON_SW_THERMAL and clock < 1.0


def test_stuck_throttle_halves_clock() -> None:
    power, clock, bits = electrical(0.9, 1800.0, 50.0, 45.0, 0.018, True, 1.0, P)
    assert_allclose(clock, 0.5)
    assert bits & REASON_HW_SLOWDOWN
    assert_allclose(power, gpu_power_w(0.9, 0.5, P))


def test_idle_bit_and_idle_clock() -> None:
    _, clock, bits = electrical(0.0, 1800.0, 45.0, 45.0, 0.018, False, 1.0, P)
    assert bits == REASON_GPU_IDLE
    assert_allclose(sm_clock_mhz(clock, 0.0, P), 345.0)
    assert_allclose(sm_clock_mhz(0.5, 0.9, P), 990.0)


def test_memory_lags_toward_coolant_plus_rise() -> None:
    target = 50.0 + 0.014 * 1800.0
    m = mem_temp_step(50.0, 1800.0, 50.0, 20.0, P)
    assert_allclose(m, target + (50.0 - target) * np.exp(-1.0))


def test_shutdown_latch() -> None:
    off = shutdown_latch(np.array([False, False, True, True]), [92.0, 91.0, 80.0, 60.0], P)
    assert off.tolist() == [True, False, True, False]
