"""Invariants of the whole-facility step (hypothesis): energy balance, heat flows downhill,
no negative flows, no fluid below its freezing point, stability at any step size."""

from __future__ import annotations

from functools import cache

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from twin.fluids import cp_j_kgk, get_fluid
from twin.site import Site, load_site
from twin.state import FacilityState
from twin.step import StepInputs, initial_state, nominal_inputs, step


@cache
def _site() -> Site:
    return load_site(racks=16)


def _inputs(site: Site, util: float, outdoor_c: float, health: float) -> StepInputs:
    rng = np.random.default_rng(0)
    u = np.clip(util + 0.1 * rng.standard_normal((site.n_racks, site.n_gpus)), 0.0, 1.0)
    inputs = nominal_inputs(site, u, outdoor_c=outdoor_c, day_of_year=200.0)
    inputs.pump_health[:] = health
    inputs.power_limit_w[::3] = 1400.0
    return inputs


@cache
def _warm() -> FacilityState:
    site = _site()
    state = initial_state(site)
    for _ in range(20):
        state = step(site, state, _inputs(site, 0.8, 5.0, 1.0), 60.0)
    return state


CASES = {
    "util": st.floats(0.0, 1.0),
    "outdoor_c": st.floats(-46.0, 36.0),  # Dalarna records (docs/sources.md S6)
    "health": st.floats(0.3, 1.0),
    "dt": st.floats(0.05, 3600.0),
}


@settings(max_examples=60, deadline=None)
@given(**CASES)
def test_rack_energy_balance_closes(
    util: float, outdoor_c: float, health: float, dt: float
) -> None:
    site, s0 = _site(), _warm()
    s1 = step(site, s0, _inputs(site, util, outdoor_c, health), dt)
    stored_w = site.gpu.c_th_j_k * (s1.gpu_temp_c - s0.gpu_temp_c).sum(axis=1) / dt
    # electrical power in = heat to liquid + heat to air + heat stored in the dies
    assert_allclose(
        s1.rack_power_w, s1.rack_heat_liquid_w + s1.rack_heat_air_w + stored_w, rtol=1e-3
    )


@settings(max_examples=60, deadline=None)
@given(**CASES)
def test_flows_temperatures_and_power_chain(
    util: float, outdoor_c: float, health: float, dt: float
) -> None:
    site, s0 = _site(), _warm()
    s1 = step(site, s0, _inputs(site, util, outdoor_c, health), dt)
    for flow in (s1.rack_flow_kg_s, s1.cdu_flow_kg_s, s1.cdu_fac_flow_kg_s, [s1.fws_flow_kg_s]):
        assert np.all(np.asarray(flow) >= 0.0)
    # heat is added in the racks: outlet >= inlet, CDU return >= supply, FWS return >= supply
    assert np.all(s1.rack_coolant_c >= s1.rack_inlet_c - 1e-9)
    assert np.all(s1.cdu_return_c >= s1.cdu_supply_c - 1e-9)
    assert s1.fws_return_c >= s1.fws_supply_c - 1e-9
    tcs_freeze = get_fluid(site.tcs.fluid).freezing_c
    fws_freeze = get_fluid(site.fws.fluid).freezing_c
    tcs = np.concatenate([s1.rack_coolant_c, s1.rack_inlet_c, s1.cdu_supply_c, s1.cdu_return_c])
    assert np.all(tcs > tcs_freeze)
    assert min(s1.fws_supply_c, s1.fws_return_c, *s1.cdu_fac_return_c) > fws_freeze
    assert np.all(np.isfinite(s1.gpu_temp_c)) and np.all(s1.gpu_temp_c > tcs_freeze)
    # facility power = IT + distribution + UPS + transformer losses + mechanical and aux
    losses = s1.pdu_loss_w.sum() + s1.ups_loss_w.sum() + s1.tx_loss_w.sum()
    assert_allclose(s1.facility_power_w, s1.it_power_w + losses + s1.mech_power_w, rtol=1e-9)


def test_steady_state_heat_balance_to_0_1_percent() -> None:
    site = _site()
    inputs = _inputs(site, 0.9, 5.0, 1.0)
    state = initial_state(site)
    for _ in range(40):
        state = step(site, state, inputs, 600.0)
    cp = cp_j_kgk(get_fluid(site.tcs.fluid), state.rack_coolant_c)
    carried = state.rack_flow_kg_s * cp * (state.rack_coolant_c - state.rack_inlet_c)
    assert_allclose(state.rack_power_w, carried + state.rack_heat_air_w, rtol=1e-3)
    # the CDUs pass the racks' liquid heat and their pumps' work on to facility water
    assert_allclose(state.cdu_heat_w.sum(), carried.sum() + state.cdu_pump_power_w.sum(), rtol=1e-3)


def test_large_and_small_steps_agree_at_steady_state() -> None:
    site = _site()
    inputs = _inputs(site, 0.7, 10.0, 1.0)
    a = b = initial_state(site)
    for _ in range(10):
        a = step(site, a, inputs, 3600.0)
    for _ in range(3600):
        b = step(site, b, inputs, 1.0)
    assert_allclose(a.gpu_temp_c, b.gpu_temp_c, atol=0.05)
    assert_allclose(a.rack_coolant_c, b.rack_coolant_c, atol=0.05)
    assert_allclose(a.facility_power_w, b.facility_power_w, rtol=1e-3)


def test_design_point_numbers() -> None:
    site = load_site()
    inputs = nominal_inputs(site, np.full((64, 72), 1.0), outdoor_c=10.0, day_of_year=200.0)
    state = initial_state(site)
    for _ in range(30):
        state = step(site, state, inputs, 600.0)
    # full load: (129.6 + 78.1 kW) / 0.975 = 213.03 kW at the plug; 4.17 kW of it to air
    ac = (129_600.0 + 78_100.0) / 0.975
    liquid = ac - 0.05 * (78_100.0 + 0.025 * ac)
    assert_allclose(state.rack_power_w, ac, rtol=1e-9)
    assert_allclose(state.rack_heat_liquid_w, liquid, rtol=1e-6)
    # 5 L/s of PG25 at 45 C = 5.0357 kg/s; cp at the 55.36 C outlet = 4004.9 J/kgK
    rise = liquid / (5.0357 * 4004.9)  # 10.36 K
    assert_allclose(state.rack_coolant_c - state.rack_inlet_c, rise, rtol=1e-3)
    # GPUs see the mean coolant temperature, 45 + rise / 2, plus 0.018 K/W * 1800 W
    assert_allclose(state.gpu_temp_c, 45.0 + rise / 2 + 32.4, atol=0.01)
    pue = state.facility_power_w / state.it_power_w
    assert 1.05 < pue < 1.09  # docs/sources.md S8 expected 1.06-1.09 annual
    assert state.chiller_cooling_w == 0.0  # free cooling at 10 C


def test_heat_wave_brings_in_the_trim_chiller() -> None:
    site = load_site()
    inputs = nominal_inputs(site, np.full((64, 72), 1.0), outdoor_c=35.7, day_of_year=200.0)
    state = initial_state(site)
    for _ in range(30):
        state = step(site, state, inputs, 600.0)
    # 35.7 C (the Dalarna record, docs/sources.md S6): dry coolers at full airflow cannot reach 40 C
    assert np.all(state.dc_fan_speed == 1.0)
    assert state.chiller_cooling_w > 0.0 and state.chiller_power_w > 0.0
    # COP = 0.5 * (38 + 273.15) / ((35.7 + 8) - 38) = 27.3 -> capped at 10 (docs/sources.md S8)
    assert_allclose(state.chiller_cop, 10.0)
    assert_allclose(state.chiller_power_w, state.chiller_cooling_w / 10.0)
    assert_allclose(state.fws_supply_c, 40.0, atol=1e-6)
    assert_allclose(state.cdu_supply_c, 45.0, atol=1e-6)


def test_state_copy_is_deep() -> None:
    s0 = _warm()
    s1 = s0.copy()
    s1.gpu_temp_c[0, 0] += 1.0
    assert s1.gpu_temp_c[0, 0] != s0.gpu_temp_c[0, 0]
    assert s1.fws_supply_c == s0.fws_supply_c
