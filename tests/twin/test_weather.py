"""Synthetic Borlänge weather and the hourly CSV loader."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from twin.errors import ConfigError
from twin.weather import WeatherParams, ar1_step, climatology_c, load_hourly_csv

P = WeatherParams()


def _ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp() * 1000)


def test_mid_july_afternoon_peak() -> None:
    # mid-July (day ~197.6 of the year after 1970-based 365.25-day cycle is close to the
    # July anchor): mean 16.8 C; 14:00 UTC = 15:00 local, the daily peak, half range ~5 K
    t = climatology_c(_ms(2027, 7, 16, 14), P)
    assert 16.8 + 4.5 < float(t) < 16.8 + 5.5


def test_january_night_is_cold() -> None:
    # 03:00 local = 12 h from the peak: mean about -4 C minus the 2.5 K winter half range
    t = climatology_c(_ms(2027, 1, 16, 2), P)
    assert_allclose(t, -4.0 - 2.5, atol=0.4)


def test_annual_mean_matches_monthly_means() -> None:
    ts = _ms(2027, 1, 1) + np.arange(0, 365 * 24) * 3_600_000
    assert_allclose(climatology_c(ts, P).mean(), np.mean(P.monthly_mean_c), atol=0.1)


def test_ar1_noise_is_stationary_for_any_step() -> None:
    rng = np.random.default_rng(3)
    for dt in (60.0, 3600.0):
        x = P.sigma_k * rng.standard_normal(4000)  # start from the stationary distribution
        for _ in range(400):
            x = ar1_step(x, rng.standard_normal(4000), dt, P)
        assert_allclose(x.std(), P.sigma_k, rtol=0.08)
    # phi per hour applies over an hour in one step or sixty
    assert_allclose(ar1_step(1.0, 0.0, 3600.0, P), 0.97)
    one = 1.0
    for _ in range(60):
        one = float(ar1_step(one, 0.0, 60.0, P))
    assert_allclose(one, 0.97)


def test_csv_loader(tmp_path: Path) -> None:
    f = tmp_path / "w.csv"
    f.write_text("timestamp,air_temp_c\n2027-01-01T01:00:00Z,-6\n2027-01-01T00:00:00,-4\n")
    s = load_hourly_csv(f, "air_temp_c")
    assert_allclose(s.at(_ms(2027, 1, 1, 0) + 1_800_000), -5.0)
    assert_allclose(s.at(0), -4.0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("time,air_temp_c\n1,2\n3,4\n", "expected columns"),
        ("timestamp,air_temp_c\nyesterday,2\n2027-01-01T00:00:00,1\n", "line 2"),
        ("timestamp,air_temp_c\n2027-01-01T00:00:00,1\n", "at least 2 rows"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "w.csv"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_hourly_csv(f, "air_temp_c")


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_hourly_csv(tmp_path / "nope.csv", "air_temp_c")


def test_weather_registry() -> None:
    from twin.weather import make_weather

    src = make_weather(P)
    ts = _ms(2027, 7, 16, 14)
    assert_allclose(src(ts, 1.5), climatology_c(ts, P) + 1.5)
    with pytest.raises(ConfigError, match=r"\['csv', 'synthetic'\]"):
        make_weather(WeatherParams(model="era5"))
