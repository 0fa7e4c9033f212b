"""Room-air handling: CRAH units take the heat that does not go to liquid (rack air share,
PDU and UPS losses, lighting, their own fans) on chilled-water coils. The coil loop is
free-cooled by outdoor air where it is cold enough (a water-side economiser) and by a
chiller for the rest. Scalars: one air system per site.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twin.gpu import _m


@dataclass(frozen=True)
class RoomAirParams:
    """CRAH units and their coil loop. Sources: docs/sources.md.

    Coil water 20 C supply / 28 C return gives ~24 C supply air, inside ASHRAE TC9.9's
    recommended 18-27 C inlet (est.); the economiser's dry cooler needs outdoor air 5 K below
    the water (est., half the FWS dry coolers' 10 K median approach: a small unit oversized
    for the load). Fan power at design: residual_air_fan_frac_it of design IT ([aux],
    est. 0.2 %, sources.md S4) at design_heat_frac_it of design IT (est.: 2 % of rack power to air
    plus PDU, UPS and lighting losses ~6-7 %), following the affinity law P ~ N^3 with
    airflow proportional to the heat (constant air temperature rise).
    """

    coil_supply_c: float = field(default=20.0, metadata=_m(0.0, 40.0))  # est.
    coil_return_c: float = field(default=28.0, metadata=_m(0.0, 50.0))  # est.
    economiser_approach_k: float = field(default=5.0, metadata=_m(0.0, 30.0))  # est.
    design_heat_frac_it: float = field(default=0.07, metadata=_m(1e-4, 1.0))  # est.
    min_fan_speed_frac: float = field(default=0.3, metadata=_m(0.0, 1.0))  # est. EC fan floor


def crah_fan_power_w(
    heat_w: float, design_heat_w: float, design_fan_w: float, p: RoomAirParams
) -> float:
    """CRAH fan power [W]: airflow N = heat / design heat (>= min speed, <= 1.5 for
    overload), P = design_fan_w N^3 (affinity law)."""
    if design_heat_w <= 0.0:
        return 0.0
    n = min(max(heat_w / design_heat_w, p.min_fan_speed_frac), 1.5)
    return design_fan_w * n * n * n


def economiser_frac(outdoor_c: float, p: RoomAirParams) -> float:
    """Share [1] of the coil heat the economiser rejects: 1 while outdoor + approach is at or
    below the coil supply, 0 at or above the coil return, linear between (it pre-cools the
    return water; the chiller trims the rest)."""
    span = max(p.coil_return_c - p.coil_supply_c, 1e-9)
    x = (p.coil_return_c - (outdoor_c + p.economiser_approach_k)) / span
    return min(max(x, 0.0), 1.0)
