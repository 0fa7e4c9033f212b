"""Energy balance of every node and of the site over a simulated day (hypothesis): generated
layouts, workloads, weather and faults; electricity in = heat out + stored, to 0.1 %."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin.balance import NODES, EnergyLedger, step_flows
from twin.site import Site, build_site
from twin.state import FacilityState
from twin.step import initial_state, nominal_inputs, step

DAY_S = 86_400.0


@st.composite
def sites(draw: st.DrawFn) -> Site:
    racks = draw(st.integers(1, 20))
    doc = {
        "layout": {
            "racks": racks,
            "racks_per_cdu": draw(st.integers(1, 8)),
            "racks_per_pdu": draw(st.integers(1, 8)),
            "racks_per_hall": draw(st.integers(racks, racks + 8)) if draw(st.booleans()) else 8,
        },
        "rack": {"gpus": draw(st.sampled_from([4, 8, 36, 72]))},
        "heat_pump": {"boundary": draw(st.sampled_from(["utility_owned", "site"]))},
        "power": {"ups_mode": draw(st.sampled_from(["double_conversion", "eco"]))},
    }
    return build_site(doc, racks=racks, max_racks=64)


def _run_day(
    site: Site,
    seed: int,
    mean_c: float,
    swing_k: float,
    util: float,
    dt_s: float,
    faults: bool,
) -> tuple[EnergyLedger, FacilityState]:
    rng = np.random.default_rng(seed)
    r, g = site.n_racks, site.n_gpus
    state = initial_state(site, outdoor_c=mean_c)
    ledger = EnergyLedger()
    base = np.clip(util + 0.3 * rng.standard_normal((r, 1)), 0.0, 1.0)
    n = int(DAY_S / dt_s)
    for k in range(n):
        t = k * dt_s
        u = np.clip(
            base * (0.8 + 0.2 * np.cos(2 * np.pi * t / DAY_S)) + 0.05 * rng.standard_normal((r, g)),
            0.0,
            1.0,
        )
        outdoor = mean_c + swing_k * np.cos(2 * np.pi * (t / DAY_S - 15 / 24)) + rng.normal(0, 1.0)
        inputs = nominal_inputs(site, u, outdoor_c=float(outdoor))
        inputs.power_limit_w[::2] = 1400.0
        if faults and n // 3 <= k < 2 * n // 3:
            inputs.pump_on[0] = False  # a CDU pump trips for eight hours
            inputs.dc_fan_ok[0] = False
            inputs.ups_mains_ok[0] = False
            inputs.fouling[0, 0] = 3.0
        s1 = step(site, state, inputs, dt_s)
        ledger.record(site, state, s1, dt_s)
        state = s1
    return ledger, state


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    site=sites(),
    seed=st.integers(0, 2**16),
    mean_c=st.floats(-30.0, 30.0),  # Borlänge months to a hot summer day (docs/sources.md S6)
    swing_k=st.floats(0.0, 8.0),
    util=st.floats(0.0, 1.0),
    dt_s=st.sampled_from([300.0, 600.0, 900.0]),
    faults=st.booleans(),
)
def test_every_node_and_the_site_close_over_a_day(
    site: Site,
    seed: int,
    mean_c: float,
    swing_k: float,
    util: float,
    dt_s: float,
    faults: bool,
) -> None:
    ledger, _ = _run_day(site, seed, mean_c, swing_k, util, dt_s, faults)
    for name in NODES:
        res = np.abs(ledger.residual(name))
        assert np.all(res <= 1e-3), f"{name}: residual {res.max():.2e}"
    # the pumps' work is heat in the loops: more heat leaves the CDUs than the racks put in
    cdu_in_racks = ledger.in_j["cdu"].sum() - ledger.stored_j["cdu"].sum()
    assert ledger.out_j["cdu"].sum() <= cdu_in_racks * (1 + 1e-9)
    # the site's heat goes somewhere measurable and nothing is created
    assert ledger.out_j["site"] > 0.0 and ledger.in_j["site"] > 0.0


def test_pump_work_reaches_the_coolant() -> None:
    site = build_site({}, racks=8)
    state = initial_state(site)
    inputs = nominal_inputs(site, np.full((8, 72), 0.8), outdoor_c=5.0)
    for _ in range(60):
        state = step(site, state, inputs, 600.0)
    s1 = step(site, state, inputs, 600.0)
    f = step_flows(site, state, s1, 600.0)
    # at steady state the CDU passes on the racks' liquid heat plus its pump's work
    liquid = s1.rack_heat_liquid_w.sum()
    assert s1.cdu_pump_power_w.sum() > 10e3
    np.testing.assert_allclose(s1.cdu_heat_w.sum(), liquid + s1.cdu_pump_power_w.sum(), rtol=1e-6)
    # and the facility water carries CDU heat plus its own pump's work to the plant
    np.testing.assert_allclose(f["fws"].out_w, s1.cdu_heat_w.sum() + s1.fws_pump_power_w, rtol=1e-6)
