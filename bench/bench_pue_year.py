"""A year of Borlänge weather at the 64-rack hall: monthly and annual PUE, ERE, heat to
district heating, hours of chiller use, the energy balance, and a hot summer week against a
cold winter week; then two weeks of the 1,250-rack campus to show the town's demand
limiting the heat it can sell.

Plain script: ``python bench/bench_pue_year.py [--dt 600] [--racks 64] [--seed 0]``. Uses the
synthetic weather generator (twin/weather.py) and the default workload plan
(twin/workload.py: training with checkpoints, capped jobs, inference, idle racks). Prints
figures; asserts nothing. Energy-weighted: PUE = sum(facility energy) / sum(IT energy).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace

import numpy as np

from twin.balance import NODES, EnergyLedger
from twin.site import Site, load_site
from twin.state import FacilityState
from twin.step import StepInputs, initial_state, step
from twin.weather import ar1_step, day_of_year, local_hour, make_weather
from twin.workload import make_plan, utilisation

START_MS = 1_798_761_600_000  # 2027-01-01 00:00 UTC, the first hall's year
DAY_S = 86_400.0
MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass
class Totals:
    """Energies [J] and hours over a period."""

    it: float = 0.0
    facility: float = 0.0
    reused: float = 0.0  # heat exported at the site boundary (ERE)
    dh: float = 0.0  # heat delivered to the district-heating network
    demand: float = 0.0  # the town network's demand
    dc_fans: float = 0.0
    trim_h: float = 0.0  # hours with the FWS trim chiller running
    air_ch_h: float = 0.0  # hours with the room-air chiller running
    outdoor: list[float] = field(default_factory=list)

    def add(self, site: Site, st: FacilityState, dt_s: float) -> None:
        reused = st.hp_heat_w if site.heat_pump.boundary == "site" else st.hp_source_w
        self.it += st.it_power_w * dt_s
        self.facility += st.facility_power_w * dt_s
        self.reused += reused * dt_s
        self.dh += st.hp_heat_w * dt_s
        self.demand += st.dh_demand_w * dt_s
        self.dc_fans += float(st.dc_fan_power_w.sum()) * dt_s
        self.trim_h += dt_s / 3600.0 if st.chiller_cooling_w > 0.0 else 0.0
        self.air_ch_h += dt_s / 3600.0 if st.air_chiller_cooling_w > 0.0 else 0.0
        self.outdoor.append(st.outdoor_c)

    @property
    def pue(self) -> float:
        return self.facility / self.it

    @property
    def ere(self) -> float:
        return (self.facility - self.reused) / self.it


def run(
    site: Site, days: float, dt_s: float, seed: int, start_ms: int, *, quiet: bool = False
) -> list[Totals]:
    """Step ``site`` for ``days`` from start_ms; returns one Totals per day, and checks the
    energy balance of every node day by day (prints the worst residual)."""
    rng = np.random.default_rng(seed)
    plan = make_plan(site.n_racks, site.gpu.tdp_w, site.workload, rng)
    weather = make_weather(site.weather)
    limit = np.repeat(plan.power_limit_w[:, None], site.n_gpus, axis=1)
    r, g = site.n_racks, site.n_gpus
    n_c, n_d, n_u = len(site.cdu_ids), len(site.dc_ids), len(site.ups_ids)
    noise = 0.0
    state = initial_state(site, outdoor_c=weather(start_ms, 0.0))
    steps_per_day = round(DAY_S / dt_s)
    out: list[Totals] = []
    worst = dict.fromkeys(NODES, 0.0)
    z = np.empty((r, g))
    for day in range(round(days)):
        tot, ledger = Totals(), EnergyLedger()
        for k in range(steps_per_day):
            t_s = (day * steps_per_day + k + 1) * dt_s
            ts_ms = start_ms + round(t_s * 1000)
            noise = float(ar1_step(noise, rng.standard_normal(), dt_s, site.weather))
            hour = float(local_hour(ts_ms, site.weather.utc_offset_h))
            inputs = StepInputs(
                util=utilisation(plan, t_s, hour, rng.standard_normal(out=z), site.workload),
                power_limit_w=limit,
                outdoor_c=weather(ts_ms, noise),
                day_of_year=float(day_of_year(ts_ms)),
                fouling=np.ones((r, g)),
                gpu_stuck=np.zeros((r, g), dtype=bool),
                pump_health=np.ones(n_c),
                pump_on=np.ones(n_c, dtype=bool),
                dc_fan_ok=np.ones(n_d, dtype=bool),
                ups_mains_ok=np.ones(n_u, dtype=bool),
            )
            new = step(site, state, inputs, dt_s)
            ledger.record(site, state, new, dt_s)
            state = new
            tot.add(site, state, dt_s)
        for name in NODES:
            worst[name] = max(worst[name], float(np.abs(ledger.residual(name)).max()))
        out.append(tot)
    if not quiet:
        print("  energy balance, worst daily residual |in - out - stored| / in per node:")
        print("   " + ", ".join(f"{n} {v:.1e}" for n, v in worst.items()))
    return out


def merge(days: list[Totals]) -> Totals:
    m = Totals()
    for d in days:
        for f in ("it", "facility", "reused", "dh", "demand", "dc_fans", "trim_h", "air_ch_h"):
            setattr(m, f, getattr(m, f) + getattr(d, f))
        m.outdoor.extend(d.outdoor)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dt", type=float, default=600.0, help="step [s] (default 600)")
    ap.add_argument("--racks", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--days", type=int, default=365)
    args = ap.parse_args()

    site = load_site(racks=args.racks)
    print(f"{args.racks} racks, a synthetic Borlänge year from 2027-01-01, dt = {args.dt:.0f} s")
    t0 = time.perf_counter()
    days = run(site, args.days, args.dt, args.seed, START_MS)
    wall = time.perf_counter() - t0
    print(f"  wall {wall:.0f} s")
    mwh = 3.6e9
    print(
        "| month | outdoor mean / max [C] | IT [MWh] | PUE | ERE | to DH [MWh] | town demand"
        " [GWh] | DC fans [MWh] | trim chiller [h] | room-air chiller [h] |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    d0 = 0
    for name, n in zip(MONTHS, MONTH_DAYS, strict=True):
        if d0 >= len(days):
            break
        m = merge(days[d0 : d0 + n])
        d0 += n
        print(
            f"| {name} | {np.mean(m.outdoor):5.1f} / {np.max(m.outdoor):4.1f} | "
            f"{m.it / mwh:,.0f} | {m.pue:.4f} | {m.ere:.4f} | {m.dh / mwh:,.0f} | "
            f"{m.demand / mwh / 1e3:.1f} | {m.dc_fans / mwh:.1f} | {m.trim_h:.1f} | "
            f"{m.air_ch_h:.0f} |"
        )
    y = merge(days)
    print(
        f"| year | {np.mean(y.outdoor):5.1f} / {np.max(y.outdoor):4.1f} | {y.it / mwh:,.0f} | "
        f"**{y.pue:.4f}** | {y.ere:.4f} | {y.dh / mwh:,.0f} | {y.demand / mwh / 1e3:.0f} | "
        f"{y.dc_fans / mwh:.0f} | {y.trim_h:.1f} | {y.air_ch_h:.0f} |"
    )
    if len(days) >= 365:
        bounds = np.cumsum((0, *MONTH_DAYS))
        monthly = [merge(days[bounds[i] : bounds[i + 1]]).pue for i in range(12)]
        print(f"  monthly PUE {min(monthly):.4f} .. {max(monthly):.4f}")

    # the hottest and the coldest week (by mean outdoor temperature)
    if len(days) >= 14:
        weeks = [merge(days[i : i + 7]) for i in range(0, len(days) - 6, 7)]
        hot = max(weeks, key=lambda w: float(np.mean(w.outdoor)))
        cold = min(weeks, key=lambda w: float(np.mean(w.outdoor)))
        print("hot summer week vs cold winter week:")
        for label, w in (("hot ", hot), ("cold", cold)):
            over = (w.facility - w.it) / mwh
            print(
                f"  {label}: outdoor mean {np.mean(w.outdoor):5.1f} C, IT {w.it / mwh:,.0f} MWh, "
                f"PUE {w.pue:.4f}, overhead (facility - IT) {over:,.1f} MWh, "
                f"to DH {w.dh / mwh:,.0f} MWh, ERE {w.ere:.4f}"
            )
        ratio = (hot.facility - hot.it) / (cold.facility - cold.it)
        print(f"  the hot week's overhead is {ratio:.2f}x the cold week's")
        # the same two weeks without heat reuse (heat pump off): the dry coolers carry it all
        no_hp = replace(site, heat_pump=replace(site.heat_pump, capacity_w=0.0))
        print("  the same weeks with the heat pump off (weather noise restarts at 0):")
        for label, w in (("hot ", hot), ("cold", cold)):
            start = START_MS + round(weeks.index(w) * 7 * DAY_S * 1000)
            v = merge(run(no_hp, 7, args.dt, args.seed, start, quiet=True))
            print(
                f"  {label}: outdoor mean {np.mean(v.outdoor):5.1f} C, PUE {v.pue:.4f}, "
                f"overhead {(v.facility - v.it) / mwh:,.1f} MWh, DC fans {v.dc_fans / mwh:.2f} MWh"
            )

    campus = load_site(racks=1250)
    print("campus, 1,250 racks: a January week and a July week (heat sold vs heat made)")
    for label, start in (("Jan", START_MS + 7 * 86_400_000), ("Jul", START_MS + 190 * 86_400_000)):
        w = merge(run(campus, 7, args.dt, args.seed, start))
        print(
            f"  {label}: IT {w.it / mwh / 7 / 24:,.0f} MW"
            f" mean, to DH {w.dh / mwh / 7 / 24:,.1f} MW mean (town demand "
            f"{w.demand / mwh / 7 / 24:,.0f} MW), PUE {w.pue:.4f}, ERE {w.ere:.4f}"
        )


if __name__ == "__main__":
    main()
