"""Key performance indicators (The Green Grid definitions, docs/sources.md S5) and thermal
headroom. Instantaneous forms: power ratios stand in for energy ratios over one instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.errors import ConfigError
from twin.gpu import _m

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class CarbonParams:
    """Carbon intensity of the supply.

    contract: the site's renewable contract, 75 % hydro + 25 % wind (sources.md S1) at lifecycle
    medians of IPCC AR5 WG3 Annex III (hydro 24, onshore wind 11 gCO2e/kWh) = 20.75, flat.
    swedish_grid: Swedish consumption mix, est. 25 g/kWh in summer to 45 g/kWh in winter
    with a +10 % evening peak at 18:00 (est., no source found). csv: hourly file with columns
    timestamp, gco2_per_kwh.
    """

    model: str = field(
        default="contract", metadata={"choices": {"contract", "swedish_grid", "csv"}}
    )
    csv_path: str = ""
    contract_g_per_kwh: float = field(default=20.75, metadata=_m(0.0, 2000.0))
    grid_summer_g_per_kwh: float = field(default=25.0, metadata=_m(0.0, 2000.0))
    grid_winter_g_per_kwh: float = field(default=45.0, metadata=_m(0.0, 2000.0))


def contract_g_per_kwh(day_of_year: Any, hour_local: Any, p: CarbonParams) -> FloatArray:
    """The renewable contract's flat intensity [gCO2e/kWh]."""
    return np.full(np.shape(np.asarray(day_of_year) + np.asarray(hour_local)), p.contract_g_per_kwh)


def swedish_grid_g_per_kwh(day_of_year: Any, hour_local: Any, p: CarbonParams) -> FloatArray:
    """Swedish grid mix [gCO2e/kWh]: summer to winter by a cosine season, +-10 % daily with
    the peak at 18:00 (est.)."""
    winter = 0.5 * (1.0 + np.cos(2.0 * np.pi * (np.asarray(day_of_year) - 15.0) / 365.25))
    base = p.grid_summer_g_per_kwh + winter * (p.grid_winter_g_per_kwh - p.grid_summer_g_per_kwh)
    evening = 1.0 + 0.1 * np.cos(2.0 * np.pi * (np.asarray(hour_local) - 18.0) / 24.0)
    return base * evening


#: Built-in carbon-intensity models; "csv" is a file the simulator reads (weather.HourlySeries).
CARBON_MODELS: dict[str, Callable[[Any, Any, CarbonParams], FloatArray]] = {
    "contract": contract_g_per_kwh,
    "swedish_grid": swedish_grid_g_per_kwh,
}


def carbon_intensity_g_per_kwh(day_of_year: Any, hour_local: Any, p: CarbonParams) -> FloatArray:
    """Hourly carbon intensity [gCO2e/kWh] from the model named in ``p.model``."""
    try:
        model = CARBON_MODELS[p.model]
    except KeyError:
        raise ConfigError(
            f"carbon model {p.model!r}: expected one of {sorted(CARBON_MODELS)} "
            "(csv files are read with twin.weather.load_hourly_csv)"
        ) from None
    return model(day_of_year, hour_local, p)


def pue(facility_w: Any, it_w: Any) -> FloatArray:
    """Power usage effectiveness [1] = total facility power / IT power."""
    return np.asarray(facility_w, dtype=np.float64) / np.maximum(np.asarray(it_w), 1e-9)


def battery_discharge_w(ups_in_w: Any, ups_out_w: Any, ups_loss_w: Any) -> float:
    """Power the UPS batteries supply [W]: output + losses - input, summed over modules.

    PUE and ERE count the total energy the facility uses (The Green Grid, PUE: a
    comprehensive examination of the metric, white paper 49); on battery part of it comes
    from the batteries, not the grid meter, and leaving it out would show a PUE below 1.
    """
    out = np.asarray(ups_out_w, dtype=np.float64) + np.asarray(ups_loss_w, dtype=np.float64)
    return float(np.maximum(out - np.asarray(ups_in_w, dtype=np.float64), 0.0).sum())


def ere(facility_w: Any, reused_w: Any, it_w: Any) -> FloatArray:
    """Energy reuse effectiveness [1] = (total - reused outside the boundary) / IT."""
    return (np.asarray(facility_w, dtype=np.float64) - np.asarray(reused_w)) / np.maximum(
        np.asarray(it_w), 1e-9
    )


def cue_kg_per_kwh(facility_w: Any, it_w: Any, g_per_kwh: Any) -> FloatArray:
    """Carbon usage effectiveness [kgCO2e/kWh_IT] = CEF * PUE."""
    return np.asarray(g_per_kwh) / 1000.0 * pue(facility_w, it_w)


def free_cooling_share(free_w: Any, chiller_w: Any) -> FloatArray:
    """Share [1] of rejected heat that needed no compressor: free / (free + chiller)."""
    free = np.asarray(free_w, dtype=np.float64)
    total = free + np.asarray(chiller_w)
    return np.where(total > 0.0, free / np.where(total > 0.0, total, 1.0), 1.0)


def cooling_cop(heat_removed_w: Any, cooling_power_w: Any) -> FloatArray:
    """Cooling COP [1] = heat removed / electric power of pumps, fans and chiller."""
    return np.asarray(heat_removed_w, dtype=np.float64) / np.maximum(
        np.asarray(cooling_power_w), 1e-9
    )


def thermal_headroom_k(gpu_temp_c: Any, slowdown_c: float) -> FloatArray:
    """Per-rack headroom [K] (n_racks,): slowdown minus the hottest GPU die."""
    return slowdown_c - np.asarray(gpu_temp_c).max(axis=-1)


def seconds_to_throttle(gpu_temp_c: Any, rate_k_s: Any, slowdown_c: float) -> FloatArray:
    """Per-rack time [s] (n_racks,) until the first GPU reaches slowdown at its present
    trend rate_k_s [K/s]; inf when no GPU is warming, 0 when one is at or above slowdown."""
    head = slowdown_c - np.asarray(gpu_temp_c, dtype=np.float64)
    r = np.asarray(rate_k_s, dtype=np.float64)
    t = np.where(r > 1e-9, head / np.where(r > 1e-9, r, 1.0), np.inf)
    t = np.where(head <= 0.0, 0.0, t)
    return t.min(axis=-1)
