"""CRAH fans (affinity law) and the coil loop's economiser share, by hand."""

from __future__ import annotations

from numpy.testing import assert_allclose

from twin.room_air import RoomAirParams, crah_fan_power_w, economiser_frac

RA = RoomAirParams()


def test_crah_fans_follow_the_cube_law_with_a_floor() -> None:
    assert_allclose(crah_fan_power_w(1e6, 1e6, 20e3, RA), 20e3)
    assert_allclose(crah_fan_power_w(0.5e6, 1e6, 20e3, RA), 20e3 / 8)
    assert_allclose(crah_fan_power_w(0.0, 1e6, 20e3, RA), 20e3 * 0.3**3)


def test_economiser_share() -> None:
    # coil water 20/28 C, 5 K approach: free below 15 C, none above 23 C
    assert economiser_frac(10.0, RA) == 1.0
    assert economiser_frac(15.0, RA) == 1.0
    assert_allclose(economiser_frac(19.0, RA), 0.5)
    assert economiser_frac(23.0, RA) == 0.0
