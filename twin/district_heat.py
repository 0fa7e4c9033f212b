"""District-heating customer: the town network's heat demand against outdoor temperature, the
share of it the campus may deliver, and the network's supply temperature.

The demand is a degree-hour line (space heating linear below a balance temperature, zero
above it) on top of a year-round base (domestic hot water and network losses), after Gadd &
Werner 2013, "Heat load patterns in district heating substations", Applied Energy 108. The
town is Borlänge-Falun: ~7,000 connections in Borlänge, ~500 GWh/yr for the joined network
(est.); sources in docs/sources.md. Scalars in, scalars out: one network per site.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twin.gpu import _m


@dataclass(frozen=True)
class DistrictHeatParams:
    """Heat demand of the town network and the campus's share of it.

    Defaults (docs/sources.md): base 17 MW and 150 MW at the -26 C heating design temperature
    give ~470 GWh/yr over the synthetic Borlänge year (est. ~500 GWh/yr: 110,000 inhabitants
    x 4.8 MWh); balance temperature 17 C (Gadd & Werner 2013); the campus may deliver 40 % of
    the demand, the share of Borlänge Energi's heat the Kvarnsveden paper mill used to supply
    (borlange-energi.se); supply temperature from 65 C (summer) to 75 C (January mean and
    colder), return 45 C (est., docs/sources.md S4, heat pump and district heating).
    """

    base_w: float = field(default=17.0e6, metadata=_m(0.0))  # est.: ~30 % of annual heat
    design_w: float = field(default=150.0e6, metadata=_m(0.0))  # est. winter peak 120-150 MW
    design_outdoor_c: float = field(default=-26.0, metadata=_m(-60.0, 20.0))  # 99.6 % est.
    balance_c: float = field(default=17.0, metadata=_m(-20.0, 30.0))  # Gadd & Werner 2013
    campus_share: float = field(default=0.4, metadata=_m(0.0, 1.0))  # mill's former share
    # outdoor temperature at and below which the network runs its winter supply (Jan mean)
    winter_supply_at_c: float = field(default=-4.0, metadata=_m(-60.0, 30.0))


def heat_demand_w(outdoor_c: float, p: DistrictHeatParams) -> float:
    """Town network heat demand [W] at outdoor temperature [C]: base + space heating, linear
    from 0 at balance_c to design_w - base_w at design_outdoor_c (and beyond, no cap)."""
    span = max(p.balance_c - p.design_outdoor_c, 1e-9)
    heating = (p.design_w - p.base_w) * max(p.balance_c - outdoor_c, 0.0) / span
    return p.base_w + heating


def campus_offtake_w(outdoor_c: float, capacity_w: float, p: DistrictHeatParams) -> float:
    """Heat [W] the network takes from the campus: its share of the demand, up to the
    heat-pump plant's heating capacity ``capacity_w`` [W]."""
    return min(capacity_w, p.campus_share * heat_demand_w(outdoor_c, p))


def supply_temp_c(
    outdoor_c: float, summer_c: float, winter_c: float, p: DistrictHeatParams
) -> float:
    """Network supply temperature [C]: summer_c at and above balance_c, winter_c at and
    below winter_supply_at_c, linear between (an outdoor-compensated supply curve)."""
    span = max(p.balance_c - p.winter_supply_at_c, 1e-9)
    w = min(max((p.balance_c - outdoor_c) / span, 0.0), 1.0)
    return summer_c + w * (winter_c - summer_c)
