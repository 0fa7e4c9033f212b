"""Power chain: UPS loss curve and modes, battery, transformer, PDU."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.testing import assert_allclose

from twin.power import (
    PowerParams,
    pdu_loss_w,
    transformer_loss_w,
    ups_efficiency,
    ups_loss_w,
    ups_modules,
)

P = PowerParams()


def test_ups_loss_curve() -> None:
    # x = 1: 3.5 MW * (0.010 + 0.015 + 0.010) = 122.5 kW; x = 0.5: 3.5e6 * 0.02 = 70 kW
    assert_allclose(ups_loss_w([3.5e6, 1.75e6], 3.5e6, P.ups_loss_coeff), [122_500.0, 70_000.0])
    assert_allclose(ups_efficiency(3.5e6, P), 3.5e6 / 3.6225e6)
    # eco mode: 3.5e6 * 0.007 = 24.5 kW at full load (docs/sources.md S5: up to 99 %)
    eco = replace(P, ups_mode="eco")
    assert float(ups_efficiency(3.5e6, eco)) > 0.99
    # light load is less efficient (docs/sources.md S5)
    assert float(ups_efficiency(0.2 * 3.5e6, P)) < float(ups_efficiency(0.8 * 3.5e6, P))


def test_ups_on_battery_drains_then_bypasses() -> None:
    out = np.array([1.75e6, 1.75e6])
    ok = np.array([True, False])
    inp, _, on_batt, soc = ups_modules(out, ok, np.ones(2), 60.0, P)
    assert on_batt.tolist() == [False, True]
    assert_allclose(inp, [1.75e6 + 70_000.0, 0.0])
    # drain (out + loss) * dt / (rated * autonomy) = 1.82e6 * 60 / 1.05e9
    assert_allclose(soc, [1.0, 1.0 - 1.82e6 * 60.0 / (3.5e6 * 300.0)])
    inp2, _, on2, soc2 = ups_modules(out, ok, np.array([1.0, 0.0]), 60.0, P)
    assert not on2[1] and soc2[1] == 0.0
    assert_allclose(inp2[1], 1.75e6 + ups_loss_w(1.75e6, 3.5e6, P.ups_eco_loss_coeff))


def test_ups_recharges_after_mains_return() -> None:
    inp, _, _, soc = ups_modules(np.array([1e6]), np.array([True]), np.array([0.5]), 10.0, P)
    charge = 0.05 * 3.5e6
    assert_allclose(soc, 0.5 + charge * 10.0 / (3.5e6 * 300.0))
    assert_allclose(inp, 1e6 + ups_loss_w(1e6, 3.5e6, P.ups_loss_coeff) + charge)


def test_transformer_and_pdu_losses() -> None:
    # 8 MVA at full load: 8e6 * (0.001 + 0.009) = 80 kW; at half: 8e6 * (0.001 + 0.00225)
    assert_allclose(transformer_loss_w([8e6, 4e6], P), [80_000.0, 26_000.0])
    assert_allclose(pdu_loss_w(1e6, P), 5_000.0)
