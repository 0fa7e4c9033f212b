"""FacilityTracker: the model fed with the simulator's readings follows the simulator; faults
that are inputs move the model, faults that are not show as measured minus expected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from twin.faults import parse_fault
from twin.fleet_faults import SENSOR_ONLY_POINTS
from twin.sim import SimFrame, Simulator
from twin.site import Site, load_site
from twin.snapshot import SnapshotError, TwinSnapshot, load_snapshot_bytes, snapshot_bytes
from twin.step import step
from twin.tracker import FacilityTracker, TrackerError, state_points
from twin.whatif import run_whatif

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
JULY_T0 = 1_784_124_000_000  # 2026-07-15 14:00 UTC: dry coolers carry heat
SEED = 3
DT_MS = 5_000


def feed(tr: FacilityTracker, frame: SimFrame, *, plant: bool = True, temps: bool = False) -> None:
    """What a worker does with one frame: GPU inputs per rack, plant points per unit (and,
    with ``temps``, the measured die temperatures, as streams/facility.py passes them)."""
    gpus = np.arange(frame.gpu["util_pct"].shape[1])
    for i, rack in enumerate(frame.rack_ids):
        tr.observe_rack_gpus(
            rack,
            gpus,
            frame.gpu["util_pct"][i],
            frame.gpu["power_limit_w"][i],
            clock_event_reasons=frame.gpu["clock_event_reasons"][i],
            temp_gpu_c=frame.gpu["temp_gpu_c"][i] if temps else None,
            ts_ms=frame.ts_ms,
        )
    if plant:
        for unit, points in (frame.thermal | frame.power).items():
            tr.observe_points(unit, points)
    tr.advance(frame.ts_ms)


@dataclass
class Run:
    site: Site
    frames: list[SimFrame]
    gpu_res_k: np.ndarray  # (steps, R, G) measured - expected die temperature
    true_gpu_err_k: np.ndarray  # (steps,) max |model - simulator truth| over GPUs
    mem_res_k: np.ndarray
    outlet_res_k: np.ndarray  # (steps, R)
    cdu_res_k: np.ndarray  # (steps, C, 2) supply, return
    pue_rel: np.ndarray  # (steps,)


def run(
    racks: int,
    steps: int,
    faults: Sequence[str] = (),
    *,
    start_ms: int = T0,
    plant: bool = True,
) -> tuple[Run, FacilityTracker, Simulator]:
    site = load_site(racks=racks)
    sim = Simulator(site, seed=SEED, start_ms=start_ms, faults=[parse_fault(f) for f in faults])
    tr = FacilityTracker(site, start_ms=start_ms)
    frames, gpu_res, true_err, mem_res, out_res, cdu_res, pue = [], [], [], [], [], [], []
    for _ in range(steps):
        frame = sim.step(DT_MS / 1000.0)
        feed(tr, frame, plant=plant)
        exp_gpu, exp = tr.expected_gpu(), tr.expected_points()
        frames.append(frame)
        gpu_res.append(frame.gpu["temp_gpu_c"] - exp_gpu["temp_gpu_c"])
        mem_res.append(frame.gpu["temp_mem_c"] - exp_gpu["temp_mem_c"])
        true_err.append(np.abs(tr.state.gpu_temp_c - sim.state.gpu_temp_c).max())
        out_res.append(
            [frame.thermal[r]["outlet_temp_c"] - exp[r]["outlet_temp_c"] for r in site.rack_ids]
        )
        cdu_res.append(
            [
                [frame.thermal[c][p] - exp[c][p] for p in ("supply_temp_c", "return_temp_c")]
                for c in site.cdu_ids
            ]
        )
        pue.append(tr.kpis()["pue"] / sim.kpis()["pue"] - 1.0)
    r = Run(
        site,
        frames,
        np.array(gpu_res),
        np.array(true_err),
        np.array(mem_res),
        np.array(out_res),
        np.array(cdu_res),
        np.array(pue),
    )
    return r, tr, sim


@pytest.fixture(scope="module")
def normal_run() -> Run:
    """16 racks, 10 simulated minutes at 5 s, no faults."""
    return run(16, 120)[0]


SETTLED = 6  # first 30 s: the warm-ups differ by the per-GPU jitter of one draw (tau ~ 7 s)


def test_gpu_expectations_follow_the_measurements(normal_run: Run) -> None:
    res = np.abs(normal_run.gpu_res_k[SETTLED:])
    # NVML reads integer degrees of a die with 0.3 K sensor noise (twin/sim.py): |error| <=
    # 0.5 K rounding + noise; beyond 1.5 K only in the noise tail (p ~ 1e-3)
    assert np.quantile(res, 0.999) <= 1.5
    assert res.mean() < 0.5
    # against the noise-free truth: only integer util_pct separates model and simulator
    assert normal_run.true_gpu_err_k[SETTLED:].max() < 0.3
    assert np.quantile(np.abs(normal_run.mem_res_k[SETTLED:]), 0.999) <= 1.5


def test_coolant_and_pue_follow_the_measurements(normal_run: Run) -> None:
    assert np.abs(normal_run.outlet_res_k[SETTLED:]).max() < 0.5
    assert np.abs(normal_run.cdu_res_k[SETTLED:]).max() < 0.5
    assert np.abs(normal_run.pue_rel[SETTLED:]).max() < 0.005
    # the run exercises a real load: busy racks and idle racks
    util = normal_run.frames[-1].gpu["util_pct"].mean(axis=1)
    assert util.max() > 80.0 and util.min() < 10.0


def test_pump_trip_observed_heats_that_cdus_racks_like_the_simulator() -> None:
    trip_at = 60  # [s]
    faults = [f"pump_trip:CDU01@{trip_at}"]
    seen, tr, sim = run(16, 30, faults)
    blind, _, _ = run(16, 30, faults, plant=False)  # never told the pump stopped
    site = seen.site
    cdu1 = site.rack_cdu == 0
    k_trip = trip_at * 1000 // DT_MS - 1
    before = np.array([seen.frames[k_trip - 1].thermal[r]["outlet_temp_c"] for r in site.rack_ids])
    after = np.array([seen.frames[-1].thermal[r]["outlet_temp_c"] for r in site.rack_ids])
    assert np.all(after[cdu1] - before[cdu1] > 10.0)  # the simulator's racks heat up
    assert np.all(np.abs(after[~cdu1] - before[~cdu1]) < 1.0)
    assert not tr.inputs().pump_on[0] and tr.inputs().pump_on[1]
    exp = tr.expected_points()
    assert exp["CDU01"]["flow_kg_s"] == 0.0 and exp["CDU01"]["pump_power_w"] == 0.0
    # the model's racks heat up like the simulator's ...
    assert np.abs(seen.outlet_res_k[k_trip:]).max() < 1.0
    assert_allclose(tr.state.rack_coolant_c, sim.state.rack_coolant_c, atol=0.5)
    # ... which a model that did not see the pump stop does not
    assert np.abs(blind.outlet_res_k[-1][cdu1]).min() > 10.0


def test_fouling_shows_as_residual_on_that_gpu_only() -> None:
    site = load_site(racks=16)
    first = Simulator(site, seed=SEED, start_ms=T0).step(DT_MS / 1000.0)
    util = first.gpu["util_pct"].mean(axis=1)
    # an inference rack of this plan: steady load, no checkpoint dips, far from throttling
    rack = int(np.flatnonzero((util > 1.0) & (util < 50.0))[0])
    gpu = 11
    fault = f"fouling:{site.rack_ids[rack]}/G{gpu:02d}@30,rate_per_s=0.005"  # NVML index
    r, _, _ = run(16, 60, [fault])
    mine = r.gpu_res_k[:, rack, gpu]
    others = r.gpu_res_k.copy()
    others[:, rack, gpu] = 0.0
    assert np.abs(mine[SETTLED : SETTLED + 1]).max() <= 1.5  # clean until the fault at 30 s
    # R x (1 + 0.005/s x age) at ~300 W: ~5.3 K per unit of (F - 1), growing with age
    early, mid, late = mine[12:18].mean(), mine[30:36].mean(), mine[54:60].mean()
    assert early + 1.0 < mid and mid + 1.0 < late and late > 4.0
    assert np.quantile(np.abs(others[SETTLED:]), 0.999) <= 1.5
    assert np.abs(r.outlet_res_k[SETTLED:]).max() < 0.5


def test_inputs_from_reasons_ups_and_fans() -> None:
    faults = ["gpu_throttle_stuck:R0002/G02@10", "ups_on_battery:UPS01@10", "fan_fail:DC01@10"]
    r, tr, sim = run(16, 6, faults, start_ms=JULY_T0)
    inputs = tr.inputs()
    assert inputs.gpu_stuck[1, 2] and inputs.gpu_stuck.sum() == 1
    assert not inputs.ups_mains_ok[0] and inputs.ups_mains_ok[1:].all()
    assert not inputs.dc_fan_ok[0] and inputs.dc_fan_ok[1:].all()
    assert sim.state.dc_fan_speed[1] > 0.0  # the other units turn: DC01 is really off
    # the stuck GPU runs at half clock in both, so its expected power is the measured one
    measured = r.frames[-1].gpu["power_w"][1, 2]
    assert_allclose(tr.expected_gpu()["power_w"][1, 2], measured, rtol=0.03)
    exp = tr.expected_points()
    assert exp["UPS01"]["on_battery_bool"] == 1.0 and exp["UPS01"]["input_power_w"] == 0.0
    assert exp["DC01"]["fan_speed_frac"] == 0.0
    assert_allclose(tr.state.ups_soc, sim.state.ups_soc, atol=1e-3)


def test_expected_points_use_the_simulator_names_and_mapping() -> None:
    site = load_site(racks=16)
    sim = Simulator(site, seed=SEED, start_ms=T0, sensor_noise=False)
    frame = sim.step(5.0)
    pts = state_points(site, sim.state, frame.ts_ms)
    # leak-detection and supply-voltage points are sensors only (twin/fleet_faults.py)
    want = {
        unit: {k: v for k, v in points.items() if k not in SENSOR_ONLY_POINTS}
        for unit, points in (frame.thermal | frame.power).items()
    }
    assert pts.keys() == want.keys()
    for unit, points in want.items():
        assert pts[unit].keys() == points.keys(), unit
        assert pts[unit] == pytest.approx(points, rel=1e-12, abs=1e-12), unit
    tr = FacilityTracker(site, start_ms=T0)
    feed(tr, frame)
    assert tr.kpis().keys() == sim.kpis().keys()
    assert tr.expected_points().keys() == want.keys()
    head = tr.rack_headroom()
    assert head["headroom_k"].shape == head["seconds_to_throttle_s"].shape == (16,)


def test_rack_mean_hand_computed() -> None:
    site = load_site(racks=8)
    tr = FacilityTracker(site, start_ms=T0)
    for rack in site.rack_ids:
        tr.observe_rack_mean(rack, 50.0)
    tr.observe_rack_mean("R0999", 100.0)  # not in the site
    tr.advance(T0)
    # GPU: 200 W + 1,600 W x 0.5 = 1,000 W; others: CPUs, switches, misc from idle 15.8 kW to
    # full 78.1 kW, at 0.5: 46.95 kW; plug: (72 kW + 46.95 kW) / 0.975 = 122 kW
    assert_allclose(tr.state.gpu_power_w, 1000.0)
    assert_allclose(tr.state.rack_power_w, 122_000.0)
    assert_allclose(tr.expected_points()["SITE"]["it_power_w"], 8 * 122_000.0)


def test_snapshot_round_trip_resumes_identically() -> None:
    r, tr, sim = run(16, 4)
    snap = load_snapshot_bytes(snapshot_bytes(tr.snapshot()))
    assert snap.meta["racks"] == "16" and snap.meta["ts_ms"] == str(tr.ts_ms)
    assert load_site(snap.meta["site"] or None, racks=int(snap.meta["racks"])).n_racks == 16
    back = FacilityTracker.restore(r.site, snap)
    assert back.ts_ms == tr.ts_ms
    for _ in range(3):
        frame = sim.step(5.0)
        feed(tr, frame)
        feed(back, frame)
    assert_array_equal(back.state.gpu_temp_c, tr.state.gpu_temp_c)
    assert_array_equal(back.state.rack_coolant_c, tr.state.rack_coolant_c)
    assert back.state.fws_supply_c == tr.state.fws_supply_c
    assert back.expected_points() == tr.expected_points()


def test_whatif_starts_from_a_tracker_snapshot() -> None:
    r, tr, _ = run(16, 6)
    snap = load_snapshot_bytes(snapshot_bytes(tr.snapshot()))
    assert snap.state is not None
    # a persistence forecast from the model state starts where the model is
    held = run_whatif(
        r.site, snap.state, [], 30.0, 5.0, False, start_ms=int(snap.meta["ts_ms"]), baseline=False
    )
    assert_allclose(held.series.pue[0], tr.kpis()["pue"], rtol=1e-3)


def test_restore_from_a_bare_state_and_bad_snapshots() -> None:
    site = load_site(racks=8)
    sim = Simulator(site, seed=SEED, start_ms=T0)
    sim.step(60.0)
    tr = FacilityTracker.restore(site, TwinSnapshot(state=sim.state.copy()))
    assert_array_equal(tr.inputs().util, sim.state.gpu_util)
    tr.advance(T0 + 60_000)  # sets the time; keeps the state (no warm-up)
    assert tr.ts_ms == T0 + 60_000 and tr.state.t_s == sim.state.t_s == 60.0
    assert_array_equal(tr.state.gpu_temp_c, sim.state.gpu_temp_c)
    with pytest.raises(SnapshotError, match="no facility state"):
        FacilityTracker.restore(site, TwinSnapshot())
    with pytest.raises(SnapshotError, match="16 racks"):
        FacilityTracker.restore(load_site(racks=16), TwinSnapshot(state=sim.state))


def test_unknown_racks_units_points_are_ignored() -> None:
    site = load_site(racks=8)
    tr = FacilityTracker(site, start_ms=T0)
    before = tr.inputs()
    g = np.arange(4)
    tr.observe_rack_gpus("R0999", g, np.full(4, 90.0), np.full(4, 900.0))
    tr.observe_rack_gpus("R0001", np.array([72, 500]), np.full(2, 90.0), np.full(2, 900.0))
    tr.observe_rack_gpus("R0001", g, np.full(4, np.nan), np.full(4, np.nan))
    tr.observe_points("CDU99", {"pump_speed_frac": 0.0})
    tr.observe_points("CDU01", {"supply_temp_c": 80.0, "flow_kg_s": 0.0})  # outputs
    tr.observe_points("OUTDOOR", {"air_temp_c": float("nan"), "wind_m_s": 3.0})
    tr.observe_points("SITE", {"pue": 2.0})
    after = tr.inputs()
    for name in ("util", "power_limit_w", "gpu_stuck", "pump_on", "dc_fan_ok", "ups_mains_ok"):
        assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)
    assert after.outdoor_c == before.outdoor_c
    # and known ones are taken
    tr.observe_rack_gpus("R0002", np.array([5]), np.array([40.0]), np.array([1400.0]))
    tr.observe_points("OUTDOOR", {"air_temp_c": -12.5})
    assert tr.inputs().util[1, 5] == 0.4 and tr.inputs().power_limit_w[1, 5] == 1400.0
    assert tr.inputs().outdoor_c == -12.5
    with pytest.raises(TrackerError, match="R0003"):
        tr.observe_rack_gpus("R0003", g, np.zeros(3), np.zeros(4))


def test_time_going_backwards_is_ignored() -> None:
    site = load_site(racks=8)
    tr = FacilityTracker(site, start_ms=T0)
    tr.advance(T0 - 1_000)  # before the start: ignored
    assert tr.ts_ms == T0
    tr.advance(T0 + 10_000)
    tr.observe_rack_mean("R0001", 100.0)
    tr.advance(T0 + 20_000)
    state = tr.state
    tr.advance(T0 + 15_000)
    tr.advance(T0 + 20_000)
    assert tr.state is state and tr.ts_ms == T0 + 20_000
    assert state.t_s == 20.0
    with pytest.raises(TrackerError, match="max_dt_s"):
        tr.advance(T0 + 30_000, max_dt_s=0.0)


def test_advance_substeps_equal_explicit_steps() -> None:
    site = load_site(racks=8)
    tr = FacilityTracker(site, start_ms=T0)
    tr.observe_rack_mean("R0003", 90.0)
    tr.advance(T0)
    state, inputs = tr.state.copy(), tr.inputs()
    tr.advance(T0 + 25_000, max_dt_s=10.0)  # 3 steps of 25/3 s
    for k in (1, 2, 3):
        inputs.day_of_year = (T0 + k * 25_000 / 3) / 86_400_000 % 365.25
        state = step(site, state, inputs, 25.0 / 3.0)
    assert_array_equal(tr.state.gpu_temp_c, state.gpu_temp_c)
    assert tr.state.fws_supply_c == state.fws_supply_c
    # a long gap is crossed in max_steps steps
    tr.advance(T0 + 3_625_000, max_dt_s=10.0, max_steps=4)
    assert tr.state.t_s == 3_625.0


def test_first_advance_warms_up_to_the_operating_point() -> None:
    site = load_site(racks=8)
    tr = FacilityTracker(site, start_ms=T0)
    for rack in site.rack_ids:
        tr.observe_rack_mean(rack, 95.0)
    tr.advance(T0 + 7_000)
    assert tr.state.t_s == 7.0
    warm = tr.state.copy()
    tr.advance(T0 + 127_000)
    assert_allclose(tr.state.rack_coolant_c, warm.rack_coolant_c, atol=0.05)
    assert_allclose(tr.state.gpu_temp_c, warm.gpu_temp_c, atol=0.05)
    assert abs(tr.state.fws_supply_c - warm.fws_supply_c) < 0.05


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-20_000, 60_000), min_size=1, max_size=8))
def test_clock_is_the_latest_time_seen(offsets_ms: list[int]) -> None:
    site = load_site(racks=1)
    tr = FacilityTracker(site, start_ms=T0)
    latest = T0
    for off in offsets_ms:
        tr.advance(T0 + off)
        latest = max(latest, T0 + off)
        assert tr.ts_ms == latest
        assert tr.state.t_s == pytest.approx((latest - T0) / 1000.0)


def test_headroom_is_the_worst_gpu_measured_or_predicted() -> None:
    """A GPU reading 82 C (7 K below slowdown 89 C) that the model expects cooler: the rack's
    headroom is 7 K, not the model's; a stale reading stops counting; a rack known only by
    its summary counts its hottest measured die."""
    site = load_site(racks=16)
    sim = Simulator(site, seed=SEED, start_ms=T0)
    tr = FacilityTracker(site, start_ms=T0)
    frame = sim.step(5.0)
    feed(tr, frame)
    model = tr.rack_headroom()["model_headroom_k"]
    r = int(np.argmax(model))  # the coolest rack of the model
    rid, other = site.rack_ids[r], (r + 1) % 16
    assert model[r] > 7.5  # the model's hottest die of that rack is below 81.5 C

    def read(temp_c: float, ts_ms: int = frame.ts_ms) -> None:
        one = np.array([1.0])
        tr.observe_rack_gpus(rid, np.array([12]), one, one * 1800.0,
                             temp_gpu_c=np.array([temp_c]), ts_ms=ts_ms)  # fmt: skip

    read(82.0)
    head = tr.rack_headroom()
    assert head["headroom_k"][r] == pytest.approx(7.0)  # 89 - 82
    assert head["measured_headroom_k"][r] == pytest.approx(7.0)
    assert head["model_headroom_k"][r] == pytest.approx(model[r])
    assert np.isnan(head["measured_headroom_k"][other])  # nothing measured: the model's alone
    assert head["headroom_k"][other] == model[other]
    assert tr.kpis()["min_headroom_k"] <= 7.0 + 1e-9
    # the same GPU reading cooler than the model: the model's (worse) die counts
    read(30.0)
    assert tr.rack_headroom()["headroom_k"][r] == pytest.approx(model[r])
    # a rack of another worker, known by its summary: its hottest die, 85 C
    tr.observe_rack_mean(site.rack_ids[other], 50.0, temp_gpu_max_c=85.0, ts_ms=frame.ts_ms)
    assert tr.rack_headroom()["headroom_k"][other] == pytest.approx(4.0)
    # 61 s later (no newer reading) the stale readings no longer count
    read(82.0)
    tr.advance(frame.ts_ms + 61_000)
    later = tr.rack_headroom()
    assert_allclose(later["headroom_k"], later["model_headroom_k"])
    with pytest.raises(TrackerError, match="temp_gpu_c"):
        tr.observe_rack_gpus(rid, np.array([1, 2]), np.array([1.0, 2.0]),
                             np.array([1.0, 2.0]), temp_gpu_c=np.array([80.0]))  # fmt: skip


def test_headroom_follows_a_fouled_gpu_the_model_does_not_know() -> None:
    """fouling:R0003/G12 (NVML index 12): the model (clean plates) expects that GPU cool while
    it reads hot; R0003's headroom is slowdown minus that reading."""
    site = load_site(racks=16)
    fault = "fouling:R0003/G12@0,rate_per_s=0.02,max=4"
    sim = Simulator(site, seed=SEED, start_ms=T0, faults=[parse_fault(fault)])
    tr = FacilityTracker(site, start_ms=T0)
    for _ in range(36):
        frame = sim.step(5.0)
        feed(tr, frame, temps=True)
    reading = float(frame.gpu["temp_gpu_c"][2, 12])
    head = tr.rack_headroom()
    others = np.delete(frame.gpu["temp_gpu_c"][2], 12).max()
    assert reading > others + 3.0  # the fouled GPU is the rack's hottest, by far
    assert head["headroom_k"][2] == pytest.approx(89.0 - reading)
    assert head["model_headroom_k"][2] > head["headroom_k"][2] + 3.0
