"""KPIs against hand-computed values (The Green Grid definitions, docs/sources.md S5)."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

from twin.kpi import (
    CarbonParams,
    carbon_intensity_g_per_kwh,
    cooling_cop,
    cue_kg_per_kwh,
    ere,
    free_cooling_share,
    pue,
    seconds_to_throttle,
    thermal_headroom_k,
)


def test_pue_ere_cue() -> None:
    assert_allclose(pue(11.5e6, 10e6), 1.15)
    # ERE = (total - reused) / IT = (11.5 - 3) / 10
    assert_allclose(ere(11.5e6, 3e6, 10e6), 0.85)
    # CUE = CEF * PUE = 0.02075 kg/kWh * 1.15
    assert_allclose(cue_kg_per_kwh(11.5e6, 10e6, 20.75), 0.02075 * 1.15)


def test_carbon_models() -> None:
    assert_allclose(carbon_intensity_g_per_kwh(100.0, 3.0, CarbonParams()), 20.75)
    grid = CarbonParams(model="swedish_grid")
    winter_evening = carbon_intensity_g_per_kwh(15.0, 18.0, grid)
    summer_morning = carbon_intensity_g_per_kwh(15.0 + 365.25 / 2, 6.0, grid)
    assert_allclose(winter_evening, 45.0 * 1.1)
    assert_allclose(summer_morning, 25.0 * 0.9)


def test_free_cooling_and_cooling_cop() -> None:
    assert_allclose(free_cooling_share(9e6, 1e6), 0.9)
    assert_allclose(free_cooling_share(0.0, 0.0), 1.0)
    assert_allclose(cooling_cop(10e6, 250e3), 40.0)


def test_headroom_and_time_to_throttle() -> None:
    temps = np.array([[80.0, 85.0], [70.0, 60.0], [90.0, 50.0]])
    rates = np.array([[0.5, 0.1], [-0.1, 0.0], [0.0, 0.0]])
    assert_allclose(thermal_headroom_k(temps, 89.0), [4.0, 19.0, -1.0])
    # rack 0: min(9/0.5, 4/0.1) = 18 s; rack 1: cooling -> inf; rack 2: already hot -> 0
    assert_allclose(seconds_to_throttle(temps, rates, 89.0), [18.0, np.inf, 0.0])


def test_unknown_carbon_model_lists_the_valid_ones() -> None:
    import pytest

    from twin.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\['contract', 'swedish_grid'\]"):
        carbon_intensity_g_per_kwh(1.0, 1.0, CarbonParams(model="coal"))


def test_model_pue_on_battery_counts_the_batteries() -> None:
    from twin.kpi import battery_discharge_w

    # two modules: one on battery (input 0), one on mains
    assert battery_discharge_w([0.0, 5e5], [4e5, 4.9e5], [1e4, 1e4]) == 4.1e5
