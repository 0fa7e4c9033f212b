"""CDU pump affinity laws, supply control and HX facility side."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

from twin.cdu import (
    CduParams,
    facility_side,
    pump_flow_frac,
    pump_power_w,
    pump_speed_frac,
    supply_step,
    supply_target_c,
)

P = CduParams()


def test_pump_speed_and_flow() -> None:
    # design flow at 1 / 1.25 = 80 % speed; a pump at 80 % health needs 100 %
    assert_allclose(pump_speed_frac(1.0, 1.0, P), 0.8)
    assert_allclose(pump_speed_frac(1.0, 0.8, P), 1.0)
    # at 50 % health it saturates at full speed and delivers 0.5 * 1.25 = 62.5 %
    assert_allclose(pump_flow_frac(pump_speed_frac(1.0, 0.5, P), 0.5, True, P), 0.625)
    assert_allclose(pump_flow_frac(1.0, 1.0, False, P), 0.0)


def test_pump_power_design_point_and_cube_law() -> None:
    # 8 racks x 5 L/s = 0.04 m3/s at 250 kPa / 0.70 = 14.29 kW (docs/sources.md S8: ~14 kW)
    assert_allclose(pump_power_w(0.8, True, 0.04, P), 250e3 * 0.04 / 0.7)
    assert_allclose(pump_power_w(0.4, True, 0.04, P), 250e3 * 0.04 / 0.7 / 8.0)
    assert_allclose(pump_power_w(0.8, False, 0.04, P), 0.0)


def test_supply_target_holds_setpoint_until_facility_is_too_warm() -> None:
    assert_allclose(supply_target_c(45.0, 40.0, 2.0e6, P), 45.0)  # 40 + 3 = 43 < 45
    assert_allclose(supply_target_c(45.0, 43.5, 2.0e6, P), 46.5)  # approach 3 K at rating
    assert_allclose(supply_target_c(45.0, 43.5, 1.0e6, P), 45.0)  # 1.5 K at half load


def test_supply_relaxes_with_loop_time_constant() -> None:
    rate = 40.0 * 3981.0 / P.thermal_mass_j_k
    out = supply_step(47.0, 45.0, 40.0, 3981.0, 10.0, P)
    assert_allclose(out, 45.0 + 2.0 * np.exp(-rate * 10.0))
    assert_allclose(supply_step(47.0, 45.0, 0.0, 3981.0, 10.0, P), 47.0)


def test_facility_side_holds_design_rise() -> None:
    flow, ret = facility_side(1.6e6, 40.0, 3844.0, 10.0, 50.0, P)
    assert_allclose(flow, 1.6e6 / (3844.0 * 10.0))
    assert_allclose(ret, 50.0)
    # above design flow the valve is wide open and the rise grows
    flow2, ret2 = facility_side(4.0e6, 40.0, 3844.0, 10.0, 50.0, P)
    assert_allclose(flow2, 50.0)
    assert_allclose(ret2, 40.0 + 4.0e6 / (50.0 * 3844.0))
