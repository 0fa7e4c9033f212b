"""District-heating demand, the campus's share and the supply curve, by hand."""

from __future__ import annotations

from numpy.testing import assert_allclose

from twin.district_heat import (
    DistrictHeatParams,
    campus_offtake_w,
    heat_demand_w,
    supply_temp_c,
)

DH = DistrictHeatParams()


def test_demand_is_base_above_balance_and_linear_below() -> None:
    assert heat_demand_w(25.0, DH) == DH.base_w
    assert heat_demand_w(17.0, DH) == DH.base_w
    assert_allclose(heat_demand_w(-26.0, DH), DH.design_w)
    # halfway between balance and design: base + half the space-heating span
    assert_allclose(heat_demand_w(-4.5, DH), DH.base_w + 0.5 * (DH.design_w - DH.base_w))


def test_offtake_is_the_share_of_demand_up_to_capacity() -> None:
    # summer: 40 % of the 17 MW base = 6.8 MW, below an 8 MW heat-pump plant
    assert_allclose(campus_offtake_w(20.0, 8e6, DH), 6.8e6)
    # winter: 40 % of ~86 MW is far more than the plant
    assert campus_offtake_w(-5.0, 8e6, DH) == 8e6
    # a campus 20x larger does not sell 20x more: the town's demand limits it
    assert_allclose(campus_offtake_w(-5.0, 160e6, DH), 0.4 * heat_demand_w(-5.0, DH))


def test_supply_curve() -> None:
    assert supply_temp_c(20.0, 65.0, 75.0, DH) == 65.0
    assert supply_temp_c(-10.0, 65.0, 75.0, DH) == 75.0
    assert_allclose(supply_temp_c(6.5, 65.0, 75.0, DH), 70.0)
