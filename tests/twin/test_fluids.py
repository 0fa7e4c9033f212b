"""Fluid properties against the docs/sources.md S4 table, and the heat balance."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from twin.errors import ConfigError
from twin.fluids import cp_j_kgk, density_kg_m3, get_fluid, outlet_temp_c, viscosity_pa_s


def test_pg25_matches_facts_table() -> None:
    pg25 = get_fluid("PG25")
    # docs/sources.md S4: 45 C -> 1007.2 kg/m3, 3981 J/kgK; interpolated from 40 and 50 C rows
    assert_allclose(density_kg_m3(pg25, 45.0), 1007.2, rtol=1e-4)
    assert_allclose(cp_j_kgk(pg25, 45.0), 3981.0, rtol=1e-3)
    assert_allclose(cp_j_kgk(pg25, [30.0, 50.0]), [3945.0, 3992.0])
    assert_allclose(viscosity_pa_s(pg25, 50.0), 1.07e-3)


def test_properties_are_held_outside_the_table() -> None:
    water = get_fluid("water")
    assert_allclose(density_kg_m3(water, [-5.0, 90.0]), [999.9, 977.9])


def test_outlet_temperature_from_heat_balance() -> None:
    # 200 kW into 5.02 kg/s of PG25 at 3992 J/kgK: dT = 200e3 / (5.02 * 3992) = 9.98 K
    out = outlet_temp_c(45.0, 200e3, 5.02, 3992.0)
    assert_allclose(out, 45.0 + 200e3 / (5.02 * 3992.0))
    assert_allclose(out, 54.98, atol=0.01)


def test_freezing_points() -> None:
    assert get_fluid("PG25").freezing_c == pytest.approx(-9.8)
    assert get_fluid("PG35").freezing_c < get_fluid("PG25").freezing_c < 0.0


def test_unknown_fluid_names_valid_ones() -> None:
    with pytest.raises(ConfigError, match="PG25"):
        get_fluid("brine")


def test_arrays_keep_shape() -> None:
    t = np.full((3, 4), 45.0)
    assert density_kg_m3(get_fluid("PG25"), t).shape == (3, 4)
