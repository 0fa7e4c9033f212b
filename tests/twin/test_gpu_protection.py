"""Thermal protection of the GPU model (twin/gpu.py): slowdown holds the die, a GPU that
still overheats trips at shutdown without passing it, and a tripped GPU stays off when told
to (what-if) or comes back once cooled (the simulator)."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

from twin.gpu import (
    REASON_HW_THERMAL,
    SHUTDOWN_TOL_K,
    GpuParams,
    cold_plate_resistance_k_w,
    die_decay,
    gpu_step,
    shutdown_latch,
)

P = GpuParams()


def _step(temp_c: float, coolant_c: float, flow_frac: float, dt_s: float, was_off: bool = False,
          recover: bool = True):  # type: ignore[no-untyped-def]  # fmt: skip
    shape = (1, 4)
    r = cold_plate_resistance_k_w(np.full((1, 1), flow_frac), 1.0, P)
    return gpu_step(
        np.full(shape, 0.5),
        np.full(shape, P.tdp_w),
        np.zeros(shape, dtype=bool),
        np.full(shape, temp_c),
        np.full(shape, temp_c),
        np.zeros(shape),
        np.full(shape, was_off),
        np.full((1, 1), coolant_c),
        r,
        die_decay(r, dt_s, P),
        dt_s,
        P,
        recover=recover,
    )


def test_without_flow_the_die_trips_at_shutdown_and_never_passes_it() -> None:
    # no flow: R = 0.018 x (0.5 + 0.5 x 0.01^-0.8) = 0.3673 K/W, tau = 147 s. At the lowest
    # clock (0.2) the GPU at util 0.5 draws 200 + 1600 x 0.5 x 0.2^2.5 = 214.3 W, whose
    # steady state over 60 C coolant is 60 + 78.7 = 138.7 C: slowdown cannot hold it
    r = 0.018 * (0.5 + 0.5 * 0.01**-0.8)
    assert_allclose(cold_plate_resistance_k_w(0.0, 1.0, P), r)
    gs = _step(89.0, 60.0, 0.0, 60.0)
    # over 60 s the die would reach 60 + 78.7 + (89 - 138.7) e^(-60/147) = 105.6 C; the GPU
    # trips on the way, so its mean power is the one that ends the die at 92.0 C
    d = np.exp(-60.0 / (r * P.c_th_j_k))
    p_trip = (92.0 - 89.0 * d - 60.0 * (1.0 - d)) / (r * (1.0 - d))
    assert_allclose(gs.temp_c, 92.0, atol=1e-9)
    assert_allclose(gs.power_w, p_trip, rtol=1e-12)
    assert 100.0 < p_trip < 214.3
    assert not gs.off.any()
    # the next step it is off: 0 W, HW thermal, and its tray's share of the rack is gone
    nxt = _step(float(gs.temp_c[0, 0]), 60.0, 0.0, 60.0)
    assert nxt.off.all() and (nxt.power_w == 0.0).all()
    assert (nxt.reasons & REASON_HW_THERMAL).all()
    assert_allclose(nxt.on_frac, 0.0)
    assert_allclose(nxt.util_sum, 0.0)
    # off, the die relaxes toward the coolant: below shutdown from then on
    assert (nxt.temp_c < 92.0).all()


def test_a_tripped_gpu_stays_off_in_a_whatif_and_recovers_in_the_simulator() -> None:
    cool = _step(40.0, 30.0, 1.0, 5.0, was_off=True, recover=False)
    assert cool.off.all() and (cool.power_w == 0.0).all()
    back = _step(40.0, 30.0, 1.0, 5.0, was_off=True, recover=True)  # < 87 - 20 C: back on
    assert not back.off.any() and (back.power_w > 0.0).all()
    assert_allclose(back.on_frac, 1.0)
    latched = shutdown_latch([True, False], [40.0, 50.0], P, recover=False)
    assert latched.tolist() == [True, False]
    assert shutdown_latch([False], [92.0 - SHUTDOWN_TOL_K / 2], P).tolist() == [True]


def test_with_flow_slowdown_holds_the_die_and_nothing_trips() -> None:
    # design flow, coolant 80 C: full power would end at 80 + 0.018 x 1000 = 98 C; the clock
    # falls so the die ends each step at 89 C, far above the lowest clock's power
    t = 85.0
    for _ in range(20):
        gs = _step(t, 80.0, 1.0, 5.0)
        t = float(gs.temp_c[0, 0])
        assert not gs.off.any()
    assert_allclose(t, 89.0, atol=1e-9)
