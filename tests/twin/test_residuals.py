"""Sensor expectations and residuals: hand-computed values and invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from twin.faults import parse_fault
from twin.fluids import get_fluid
from twin.residuals import (
    compute_residuals,
    expected_cdu_flow_kg_s,
    expected_cdu_return_c,
    expected_gpu_temp_c,
    expected_rack_outlet_c,
    rack_heat_to_liquid_w,
)
from twin.sim import SimFrame, Simulator
from twin.site import Site, load_site


def test_rack_outlet_by_hand_with_pg25_cp_at_mean_temperature() -> None:
    # cp(45 C) = 3980.5 (docs/sources.md S4: 3969 at 40, 3992 at 50); first rise 200e3/(5*3980.5)
    # = 10.049 K, mean 50.0245 C, cp = 3992 + 0.0245*2.4 = 3992.059; 45 + 200e3/(5*3992.059)
    out = expected_rack_outlet_c(45.0, 200e3, 5.0)
    assert_allclose(out, 55.019893, rtol=1e-7)
    # no flow: the heat balance does not fix the outlet
    assert np.isnan(expected_rack_outlet_c([45.0], [1e5], [0.0])).all()


def test_rack_outlet_uses_the_given_fluid() -> None:
    water = expected_rack_outlet_c(45.0, 200e3, 5.0, get_fluid("water"))
    # water cp ~4180: a smaller rise than PG25 for the same flow and heat
    assert 54.5 < float(water) < 55.0


def test_cdu_return_is_enthalpy_weighted_mix() -> None:
    # CDU 0: 5 kg/s at 55 C (cp 4004) and 3 kg/s at 53 C (cp 3999.2); CDU 1: one rack
    # (5*4004*55 + 3*3999.2*53) / (5*4004 + 3*3999.2) = 54.250562
    ret = expected_cdu_return_c([55.0, 53.0, 50.0], [5.0, 3.0, 4.0], np.array([0, 0, 1]), n_cdus=3)
    assert_allclose(ret[:2], [54.250562, 50.0], rtol=1e-7)
    assert np.isnan(ret[2])  # a CDU with no racks, no flow


def test_cdu_flow_affinity_law() -> None:
    # 80 % speed x 1.25 design at rated speed = design flow
    assert_allclose(expected_cdu_flow_kg_s([0.8, 0.4, -0.1], 100.0, 1.25), [100.0, 50.0, 0.0])


def test_gpu_temp_broadcasts_rack_coolant_over_gpus() -> None:
    coolant = np.array([[45.0], [50.0]])
    power = np.array([[1000.0, 1800.0], [0.0, 500.0]])
    assert_allclose(
        expected_gpu_temp_c(coolant, power, 0.018), [[63.0, 77.4], [50.0, 59.0]], rtol=1e-12
    )


def test_rack_heat_to_liquid_by_hand() -> None:
    # 200 kW in, 130 kW GPUs: 70 kW rest, 5 % of it to air -> 130 + 66.5 kW to the liquid
    assert_allclose(rack_heat_to_liquid_w(200e3, 130e3, 0.05), 196.5e3)


@settings(max_examples=60, deadline=None)
@given(
    t_in=st.floats(20.0, 60.0),
    rise=st.floats(0.0, 30.0),
    flow=st.floats(0.05, 20.0),
)
def test_outlet_not_below_inlet_when_heat_is_added(t_in: float, rise: float, flow: float) -> None:
    heat = flow * 4000.0 * rise  # rises of up to 30 K, inside the property table
    out = expected_rack_outlet_c(t_in, heat, flow)
    assert out >= t_in
    # and the heat balance closes with cp at the mean temperature
    cp = np.interp(0.5 * (t_in + out), get_fluid("PG25").temp_c, get_fluid("PG25").cp_j_kgk)
    assert_allclose(flow * cp * (out - t_in), heat, rtol=1e-4, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    temps=st.lists(st.floats(20.0, 70.0), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_cdu_return_lies_between_its_racks_outlets(temps: list[float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = len(temps)
    flows = rng.uniform(0.1, 6.0, n)
    ret = expected_cdu_return_c(temps, flows, np.zeros(n, dtype=np.int64), 1)
    assert min(temps) - 1e-9 <= ret[0] <= max(temps) + 1e-9


# ---------------------------------------------------------------- against the simulator

JULY_15_14H_MS = 1_784_124_000_000  # 2026-07-15 14:00 UTC


@pytest.fixture(scope="module")
def site16() -> Site:
    return load_site(racks=16)  # 2 CDUs of 8 racks


def _readings(site: Site, frame: SimFrame) -> dict[str, np.ndarray]:
    """The arrays compute_residuals takes, from what the simulator's sensors read."""
    th = frame.thermal

    def racks(point: str) -> np.ndarray:
        return np.array([th[r][point] for r in site.rack_ids])

    def cdus(point: str) -> np.ndarray:
        return np.array([th[c][point] for c in site.cdu_ids])

    return {
        "gpu_temp_c": frame.gpu["temp_gpu_c"],
        "gpu_power_w": frame.gpu["power_w"],
        "gpu_util": frame.gpu["util_pct"] / 100.0,
        "rack_inlet_c": racks("inlet_temp_c"),
        "rack_outlet_c": racks("outlet_temp_c"),
        "rack_flow_kg_s": racks("flow_kg_s"),
        "cdu_supply_c": cdus("supply_temp_c"),
        "cdu_return_c": cdus("return_temp_c"),
        "cdu_flow_kg_s": cdus("flow_kg_s"),
        "cdu_pump_speed": cdus("pump_speed_frac"),
    }


def _residual_run(site: Site, faults: list[str], steps: int = 150) -> dict[str, np.ndarray]:
    """Residuals of the last 10 of ``steps`` 5-s steps, stacked (10, ...) per sensor kind."""
    sim = Simulator(site, seed=4, start_ms=JULY_15_14H_MS, faults=[parse_fault(f) for f in faults])
    out = []
    for k in range(steps):
        frame = sim.step(5.0)
        if k >= steps - 10:
            out.append(compute_residuals(site, **_readings(site, frame)).as_dict())
    return {key: np.array([o[key] for o in out]) for key in out[0]}


@pytest.fixture(scope="module")
def clean_run(site16: Site) -> dict[str, np.ndarray]:
    return _residual_run(site16, [])


def test_residuals_of_a_healthy_simulated_hall_are_sensor_noise(
    clean_run: dict[str, np.ndarray],
) -> None:
    # NVML integer die temperatures with 0.3 K noise; RTDs 0.05 K; flow meters 0.5 %
    assert np.median(np.abs(clean_run["gpu_temp_k"])) < 0.8
    for key in ("rack_inlet_k", "rack_outlet_k", "cdu_return_k"):
        assert np.median(np.abs(clean_run[key])) < 0.15, key
    assert np.median(np.abs(clean_run["cdu_flow_kg_s"])) < 0.5


#: Largest change of an unaffected residual: one NVML quantum (a die reading flipping to
#: the next integer) for GPUs, 0.3 K for coolant sensors, 0.5 kg/s for flows.
_QUIET = {
    "gpu_temp_k": 1.5,
    "rack_inlet_k": 0.3,
    "rack_outlet_k": 0.3,
    "cdu_return_k": 0.3,
    "cdu_flow_kg_s": 0.5,
}


@pytest.mark.parametrize(
    ("fault", "key", "where", "moved"),
    [
        # R0003/G12: the fouled cold plate (x1.5 resistance after 450 s) runs hotter
        ("fouling:R0003/G12@60", "gpu_temp_k", (2, 12), 8.0),
        # a worn pump delivers less at the same speed (the controller speeds it up)
        ("pump_degrade:CDU01@60", "cdu_flow_kg_s", (0,), -10.0),
        # 0.005 K/s for 690 s: +3.45 K on that reading only
        ("sensor_drift:R0002/inlet_temp_c@60", "rack_inlet_k", (1,), 3.0),
        ("sensor_drift:CDU01/return_temp_c@60", "cdu_return_k", (0,), 3.0),
        # the die reading frozen at its t = 60 s value, ~15 K below where the die is later
        ("sensor_stuck:R0001/G02/temp_gpu_c@60", "gpu_temp_k", (0, 2), -5.0),
    ],
)
def test_each_fault_moves_its_residual_and_not_the_others(
    site16: Site,
    clean_run: dict[str, np.ndarray],
    fault: str,
    key: str,
    where: tuple[int, ...],
    moved: float,
) -> None:
    faulty = _residual_run(site16, [fault])
    # same seed, same workload and noise: the difference is the fault's effect alone
    delta = {k: faulty[k] - clean_run[k] for k in clean_run}
    shift = float(np.mean(delta[key][(slice(None), *where)]))
    assert abs(shift) > abs(moved) and np.sign(shift) == np.sign(moved), shift
    for name, d in delta.items():
        others = d.copy()
        if name == key:
            others[(slice(None), *where)] = 0.0
        assert np.nanmax(np.abs(others)) <= _QUIET[name], (name, np.nanmax(np.abs(others)))
