"""Rack power, heat split and coolant node against hand-computed values."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from twin.rack import (
    RackParams,
    coolant_step,
    gpu_coolant_c,
    heat_split_w,
    non_gpu_power_w,
    rack_input_power_w,
)

P = RackParams()


def test_non_gpu_power_idle_and_full() -> None:
    # idle: 36*100 + 9*800 + 5000 = 15.8 kW; full: 36*600 + 9*3500 + 25000 = 78.1 kW
    assert_allclose(non_gpu_power_w([0.0, 1.0], P), [15_800.0, 78_100.0])


def test_rack_power_matches_facts_envelope() -> None:
    idle = rack_input_power_w(72 * 200.0, non_gpu_power_w(0.0, P), P)
    full = rack_input_power_w(72 * 1800.0, non_gpu_power_w(1.0, P), P)
    assert_allclose(idle, (14_400.0 + 15_800.0) / 0.975)  # 30.97 kW (docs/sources.md S8: ~30)
    assert_allclose(full, (129_600.0 + 78_100.0) / 0.975)  # 213.0 kW (docs/sources.md S8: 190-227)
    assert 190e3 < full < 227e3


def test_heat_split_closes_and_sends_two_percent_to_air() -> None:
    gpu, other = 129_600.0, 78_100.0
    ac = rack_input_power_w(gpu, other, P)
    liquid, air = heat_split_w(gpu, other, ac, P)
    assert_allclose(liquid + air, ac)
    # air = 5 % of (other + PSU loss) = 0.05 * (78100 + 213026 * 0.025) = 4171.8 W
    assert_allclose(air, 0.05 * (other + ac * 0.025))
    assert 0.015 < air / ac < 0.025


def test_coolant_steady_state_and_no_flow() -> None:
    cap = 0.06 * 1007.0 * 3981.0
    out, _ = coolant_step(45.0, 45.0, 5.0, 200e3, 3981.0, cap, 1e5)
    assert_allclose(out, 45.0 + 200e3 / (5.0 * 3981.0))
    # stopped pump: the coolant heats at Q / C
    out0, mean0 = coolant_step(50.0, 45.0, 0.0, 200e3, 3981.0, cap, 2.0)
    assert_allclose(out0, 50.0 + 200e3 * 2.0 / cap)
    assert_allclose(mean0, 50.0 + 200e3 * 1.0 / cap)


@settings(max_examples=100, deadline=None)
@given(
    t0=st.floats(20.0, 90.0),
    t_in=st.floats(20.0, 60.0),
    flow=st.floats(0.0, 10.0),
    heat=st.floats(0.0, 300e3),
    dt=st.floats(0.01, 3600.0),
)
def test_coolant_node_conserves_energy(
    t0: float, t_in: float, flow: float, heat: float, dt: float
) -> None:
    cp, cap = 3981.0, 0.06 * 1007.0 * 3981.0
    t1, mean = coolant_step(t0, t_in, flow, heat, cp, cap, dt)
    # Q dt = C (T1 - T0) + m cp (mean outlet - inlet) dt
    lhs = heat * dt
    rhs = cap * (t1 - t0) + flow * cp * (mean - t_in) * dt
    assert_allclose(lhs, rhs, rtol=1e-6, atol=1e-6 * cap)


def test_gpu_coolant_is_mean_with_flow_and_outlet_without() -> None:
    assert_allclose(gpu_coolant_c(45.0, 55.0, np.array([1.0, 0.0, 0.5])), [50.0, 55.0, 52.5])
