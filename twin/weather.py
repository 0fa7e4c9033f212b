"""Outdoor air temperature: a synthetic Borlänge generator (monthly means, daily cycle,
AR(1) noise; docs/sources.md S6 and S8) or hourly data from a CSV file.

The generator is pure: the caller owns the noise state and the random draws.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.errors import ConfigError
from twin.gpu import _m
from twin.timeparse import TimeError, parse_ms

FloatArray = NDArray[np.float64]
MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class WeatherParams:
    """Weather source. Defaults: docs/sources.md S8 ``weather_synthetic`` (Borlänge)."""

    model: str = field(default="synthetic", metadata={"choices": {"synthetic", "csv"}})
    csv_path: str = ""  # hourly CSV: columns timestamp (ISO 8601), air_temp_c
    monthly_mean_c: tuple[float, ...] = field(
        default=(-4.0, -3.5, -0.5, 4.5, 10.0, 14.5, 16.8, 15.5, 10.5, 5.0, 0.5, -3.0),
        metadata={"len": 12, "min": -60.0, "max": 60.0},
    )  # docs/sources.md S8, anchored to SMHI normals (docs/sources.md S6)
    diurnal_half_range_winter_k: float = field(default=2.5, metadata=_m(0.0, 30.0))  # sources.md S8
    diurnal_half_range_summer_k: float = field(default=5.0, metadata=_m(0.0, 30.0))  # sources.md S8
    peak_hour_local: float = field(default=15.0, metadata=_m(0.0, 24.0))  # docs/sources.md S8
    sigma_k: float = field(default=3.0, metadata=_m(0.0, 30.0))  # docs/sources.md S8 ar1_noise
    phi_per_hour: float = field(default=0.97, metadata=_m(0.0, 0.999999))  # docs/sources.md S8
    utc_offset_h: float = field(default=1.0, metadata=_m(-12.0, 14.0))  # CET, no DST (est.)


def day_of_year(ts_ms: Any) -> FloatArray:
    """Fractional day of the year [d] (0 = 1 January 00:00 UTC, 365-day years)."""
    return (np.asarray(ts_ms, dtype=np.float64) / MS_PER_DAY) % 365.25


def local_hour(ts_ms: Any, utc_offset_h: float) -> FloatArray:
    """Local clock hour [h] 0..24."""
    return (np.asarray(ts_ms, dtype=np.float64) / 3.6e6 + utc_offset_h) % 24.0


def climatology_c(ts_ms: Any, p: WeatherParams) -> FloatArray:
    """Noise-free temperature [C]: monthly means interpolated between mid-month anchors
    (periodic), plus a cosine daily cycle peaking at peak_hour_local whose half range moves
    from the winter to the summer value with the season."""
    doy = day_of_year(ts_ms)
    mid = (np.arange(12) + 0.5) * 365.25 / 12.0
    xp = np.concatenate([[mid[-1] - 365.25], mid, [mid[0] + 365.25]])
    fp = np.concatenate([[p.monthly_mean_c[-1]], p.monthly_mean_c, [p.monthly_mean_c[0]]])
    mean = np.interp(doy, xp, fp)
    winter = 0.5 * (1.0 + np.cos(2.0 * np.pi * (doy - 15.0) / 365.25))
    half = winter * p.diurnal_half_range_winter_k + (1.0 - winter) * p.diurnal_half_range_summer_k
    hour = local_hour(ts_ms, p.utc_offset_h)
    return mean + half * np.cos(2.0 * np.pi * (hour - p.peak_hour_local) / 24.0)


def ar1_step(noise_k: Any, z: Any, dt_s: float, p: WeatherParams) -> FloatArray:
    """Advance the AR(1) anomaly [K] by dt_s [s] with standard-normal draw(s) ``z``.

    phi_dt = phi^(dt/3600); innovation sd = sigma * sqrt(1 - phi_dt^2), so the stationary sd
    is sigma_k for any step size.
    """
    phi = p.phi_per_hour ** (dt_s / 3600.0)
    return phi * np.asarray(noise_k) + p.sigma_k * np.sqrt(1.0 - phi * phi) * np.asarray(z)


@dataclass(frozen=True, eq=False)
class HourlySeries:
    """A time series loaded from CSV: ts_ms [ms since epoch, UTC] ascending, values."""

    ts_ms: NDArray[np.int64]
    values: FloatArray

    def at(self, ts_ms: Any) -> FloatArray:
        """Linear interpolation; held at the ends."""
        return np.interp(np.asarray(ts_ms, dtype=np.float64), self.ts_ms, self.values)


def load_hourly_csv(path: str | Path, column: str) -> HourlySeries:
    """Load ``timestamp,<column>`` rows (ISO 8601; naive times are taken as UTC).

    Raises ConfigError naming the file, line and what was expected.
    """
    p = Path(path)
    ts: list[int] = []
    vals: list[float] = []
    try:
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"timestamp", column} <= set(reader.fieldnames):
                raise ConfigError(f"{p}: expected columns 'timestamp' and {column!r}")
            for i, row in enumerate(reader, start=2):
                try:
                    # twin/timeparse.py: the one time parser; no zone = UTC
                    t_ms = parse_ms(row["timestamp"], unit=None, naive_utc=True)
                    v = float(row[column])
                except (TypeError, ValueError, TimeError):
                    raise ConfigError(
                        f"{p} line {i}: expected an ISO 8601 timestamp and a number"
                    ) from None
                ts.append(t_ms)
                vals.append(v)
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    if len(ts) < 2:
        raise ConfigError(f"{p}: expected at least 2 rows")
    order = np.argsort(ts)
    return HourlySeries(np.asarray(ts, dtype=np.int64)[order], np.asarray(vals)[order])


#: An outdoor-temperature source: (ts_ms [ms since epoch], AR(1) anomaly [K]) -> [C].
WeatherSource = Callable[[int, float], float]


def _synthetic(p: WeatherParams) -> WeatherSource:
    def source(ts_ms: int, noise_k: float) -> float:
        return float(climatology_c(ts_ms, p)) + noise_k

    return source


def _csv(p: WeatherParams) -> WeatherSource:
    series = load_hourly_csv(p.csv_path, "air_temp_c")

    def source(ts_ms: int, noise_k: float) -> float:
        return float(series.at(ts_ms))  # measured data carries its own variability

    return source


#: Weather models by name (``[weather] model``).
WEATHER_MODELS: dict[str, Callable[[WeatherParams], WeatherSource]] = {
    "synthetic": _synthetic,
    "csv": _csv,
}


def make_weather(p: WeatherParams) -> WeatherSource:
    """The weather source named by ``p.model``; ConfigError lists the valid names."""
    try:
        factory = WEATHER_MODELS[p.model]
    except KeyError:
        raise ConfigError(
            f"weather model {p.model!r}: expected one of {sorted(WEATHER_MODELS)}"
        ) from None
    return factory(p)
