"""Heat pump, dry coolers, trim chiller and FWS pump against hand-computed values."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

from twin.plant import (
    ChillerParams,
    DryCoolerParams,
    FwsParams,
    HeatPumpParams,
    chiller_cop,
    crossflow_effectiveness,
    design_ua_w_k,
    dry_cooler_fan_power_w,
    dry_cooler_heat_w,
    dry_cooler_speed,
    dry_coolers,
    fws_pump_power_w,
    heat_pump,
    heat_pump_cop,
    season_weight,
)

DC = DryCoolerParams()


def test_heat_pump_cop_from_carnot() -> None:
    hp = HeatPumpParams()
    # winter: 0.45 * (78 + 273.15) / (78 - 37) = 0.45 * 8.5646 = 3.854
    assert_allclose(heat_pump_cop(75.0, hp), 0.45 * 351.15 / 41.0)
    assert 3.5 < float(heat_pump_cop(75.0, hp)) < float(heat_pump_cop(65.0, hp)) < 5.5


def test_heat_pump_respects_offtake() -> None:
    delivered, src, power = heat_pump(10e6, 8e6, 4.0)
    assert_allclose([delivered, src, power], [8e6, 6e6, 2e6])
    delivered, src, power = heat_pump(3e6, 8e6, 4.0)
    assert_allclose([delivered, src, power], [4e6, 3e6, 1e6])


def test_season_weight() -> None:
    assert_allclose(season_weight([15.0, 15.0 + 365.25 / 2]), [1.0, 0.0], atol=1e-12)


def test_crossflow_effectiveness_both_unmixed() -> None:
    # Incropera Table 11.3 eq. 11.32 at NTU = 1, Cr = 1: 1 - exp(exp(-1) - 1) = 0.4685
    assert_allclose(crossflow_effectiveness(1.0, 1.0), 1.0 - np.exp(np.exp(-1.0) - 1.0))
    # Cr -> 0 is the one-stream-condensing limit 1 - exp(-NTU)
    assert_allclose(crossflow_effectiveness(1.5, 0.0), 1.0 - np.exp(-1.5))
    assert_allclose(crossflow_effectiveness(1.5, 1e-6), 1.0 - np.exp(-1.5), rtol=1e-5)
    # more air (lower Cr at fixed NTU) helps; effectiveness rises with NTU
    assert crossflow_effectiveness(1.5, 0.5) > crossflow_effectiveness(1.5, 1.0)
    assert crossflow_effectiveness(3.0, 0.8) > crossflow_effectiveness(1.5, 0.8)


def test_dry_cooler_design_point_needs_full_airflow() -> None:
    # one unit at rating, 50 C in, 30 C air, 40 C set: exactly the design point. Air is the
    # smaller stream (1.6 MW / 12 K = 133 kW/K vs 160 kW/K): eps = 1.6 MW / (133 kW/K x 20 K)
    ok = np.array([True])
    flow = DC.rating_w / (10.0 * 3844.0)
    speed, rej, out = dry_coolers(DC.rating_w, flow, 3844.0, 50.0, 30.0, 40.0, ok, DC)
    assert_allclose(speed, [1.0], atol=1e-6)
    assert_allclose(out, 40.0, atol=1e-6)
    assert_allclose(rej, [DC.rating_w], rtol=1e-9)
    c_a = DC.rating_w / DC.design_air_rise_k
    eps = crossflow_effectiveness(design_ua_w_k(DC) / c_a, c_a / (DC.rating_w / 10.0))
    assert_allclose(eps, 0.6, rtol=1e-9)


def test_dry_cooler_air_side_carries_the_fluid_heat() -> None:
    # the air leaves warmer by Q / C_air and never warmer than the fluid enters
    m_cp = DC.rating_w / 10.0
    for speed, air_c in ((0.3, -10.0), (0.6, 15.0), (1.0, 30.0)):
        q = dry_cooler_heat_w(speed, m_cp, 50.0, air_c, DC)
        air_out = air_c + q / (speed * DC.rating_w / DC.design_air_rise_k)
        assert air_c < air_out < 50.0
        assert 50.0 - q / m_cp > air_c  # fluid outlet stays above the air inlet


def test_dry_cooler_speed_inverts_the_heat() -> None:
    m_cp = DC.rating_w / 10.0
    for target in (0.5e6, 0.9e6, 1.4e6):  # above the 0.36 MW rejected at the fan floor
        s = dry_cooler_speed(target, m_cp, 48.0, 20.0, DC)
        assert_allclose(dry_cooler_heat_w(s, m_cp, 48.0, 20.0, DC), target, rtol=1e-6)
    assert dry_cooler_speed(0.0, m_cp, 48.0, 20.0, DC) == 0.0
    # a tiny load is met at the fan floor with the rest by-passing the coil
    assert dry_cooler_speed(1e3, m_cp, 48.0, 20.0, DC) == DC.min_airflow_frac


def test_dry_coolers_slow_down_in_the_cold_and_share_failed_units_load() -> None:
    flow = 4 * DC.rating_w / (10.0 * 3844.0)
    ok = np.array([True, True, True, True])
    speed, rej, out = dry_coolers(2 * DC.rating_w, flow, 3844.0, 45.0, 5.0, 40.0, ok, DC)
    assert np.all(speed < 0.5) and out == 40.0
    assert_allclose(rej.sum(), flow * 3844.0 * 5.0)
    ok[0] = False
    speed2, rej2, _ = dry_coolers(2 * DC.rating_w, flow, 3844.0, 45.0, 5.0, 40.0, ok, DC)
    assert speed2[0] == 0.0 and rej2[0] == 0.0
    assert np.all(speed2[1:] > speed[1:])
    assert_allclose(rej2.sum(), rej.sum())


def test_dry_cooler_cannot_reach_setpoint_in_a_heat_wave() -> None:
    ok = np.array([True])
    flow = DC.rating_w / (10.0 * 3844.0)
    speed, _, out = dry_coolers(DC.rating_w, flow, 3844.0, 50.0, 35.0, 40.0, ok, DC)
    # same NTU and Cr as at design, eps C_min = 0.6 x 133.3 kW/K: out = 50 - 80 x 15 / 160
    assert_allclose(speed, [1.0])
    assert_allclose(out, 42.5)


def test_fan_power_cube_law() -> None:
    assert_allclose(dry_cooler_fan_power_w([1.0, 0.5], DC), [24_000.0, 3_000.0])


def test_chiller_cop_carnot_fraction() -> None:
    ch = ChillerParams()
    # evap 38 C, cond 43 C: 0.5 * 311.15 / 5 = 31.1 -> capped at 10
    assert_allclose(chiller_cop(38.0, 43.0, ch), 10.0)
    # evap 38 C, cond 73 C: 0.5 * 311.15 / 35 = 4.445
    assert_allclose(chiller_cop(38.0, 73.0, ch), 0.5 * 311.15 / 35.0)


def test_fws_pump_power() -> None:
    fw = FwsParams()
    # 333 kg/s at 1017 kg/m3 and 300 kPa / 0.75 = 131 kW (docs/sources.md S8: ~130 kW)
    assert_allclose(fws_pump_power_w(333.0, 333.0, 1017.0, fw), 300e3 * 333.0 / 1017.0 / 0.75)
    assert_allclose(fws_pump_power_w(166.5, 333.0, 1017.0, fw), 300e3 * 333.0 / 1017.0 / 6.0)
