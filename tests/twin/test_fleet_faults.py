"""Fleet faults (twin/fleet_faults.py): ground truth recorded, and each fingerprint in the
frames the sensors publish, on the faulty GPU or unit only."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from streams.codec import decode_gpu_frame, encode_frame, gpu_batch
from twin.errors import ConfigError
from twin.faults import parse_fault, resolve
from twin.sim import SimFrame, Simulator
from twin.site import Site, load_site

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
STEPS, DT = 60, 5.0
AT = 60.0  # every fault starts 60 s in
R, G = 2, 5  # R0003/G05: rack index 2, NVML index 5
K = int(AT / DT)  # frames[K - 1] is the first at t >= AT


@cache
def _site() -> Site:
    return load_site(racks=16)


def _run(fault: str | None, noise: bool = False, seed: int = 3) -> list[SimFrame]:
    faults = [parse_fault(fault)] if fault else []
    sim = Simulator(_site(), seed=seed, start_ms=T0, faults=faults, sensor_noise=noise)
    return [sim.step(DT) for _ in range(STEPS)]


@cache
def _baseline() -> list[SimFrame]:
    return _run(None)


def _gpu(frames: list[SimFrame], name: str) -> np.ndarray:
    """(steps, R, G) of one GPU column."""
    return np.stack([f.gpu[name] for f in frames]).astype(np.float64)


def _pt(frames: list[SimFrame], unit: str, point: str) -> np.ndarray:
    return np.array([(f.thermal.get(unit) or f.power[unit])[point] for f in frames])


def _truth(frames: list[SimFrame]) -> list[dict[str, object]]:
    return [rec for f in frames for rec in f.faults_started]


def _others_unchanged(frames: list[SimFrame], name: str) -> None:
    """Every GPU but the faulty one reads exactly as without the fault (no noise)."""
    got, base = _gpu(frames, name), _gpu(_baseline(), name)
    mask = np.ones(got.shape[1:], dtype=bool)
    mask[R, G] = False
    np.testing.assert_array_equal(got[:, mask], base[:, mask])


def test_healthy_frames_carry_zero_counters_and_the_margin() -> None:
    frames = _baseline()
    for name in ("ecc_corrected", "ecc_uncorrected", "remapped_rows", "nvlink_errors"):
        assert not _gpu(frames, name).any(), name
    margin = _gpu(frames, "thermal_margin_k")
    np.testing.assert_allclose(margin, _site().gpu.slowdown_c - _gpu(frames, "temp_gpu_c"))
    assert (_pt(frames, "CDU01", "reservoir_level_frac") == 0.8).all()
    assert (_pt(frames, "CDU01", "leak_detected_bool") == 0).all()
    assert (_pt(frames, "UPS01", "input_voltage_v") == 400.0).all()


def test_sim_frames_pass_the_v2_decoder() -> None:
    f = _run("hbm_decay:R0003/G05@0,fail_s=100", noise=True)[-1]
    cols = {k: v[R] for k, v in f.gpu.items()}
    frame = decode_gpu_frame(
        encode_frame(gpu_batch(f.ts_ms, "R0003", cols)), key=b"R0003", now_ms=f.ts_ms
    )
    assert frame.columns["ecc_uncorrected"][G] == 1
    assert frame.columns["xid"][G] == 48


@pytest.mark.parametrize(
    ("code", "column", "value"),
    [
        (79, None, 0),
        (48, "ecc_uncorrected", 1),
        (94, "ecc_uncorrected", 1),
        (95, "ecc_uncorrected", 1),
        (64, "row_remap_flags", 2),
        (74, "nvlink_errors", 1000),
    ],
)
def test_critical_xid_kills_the_job_of_one_gpu(code: int, column: str | None, value: int) -> None:
    frames = _run(f"xid:R0003/G05@{AT:g},code={code}")
    [rec] = _truth(frames)
    assert rec["kind"] == "xid" and rec["target"] == "R0003/G05"
    assert rec["xid"] == code and rec["severity"] == "critical"
    assert rec["start_ts_ms"] == T0 + int(AT * 1000)
    xid = _gpu(frames, "xid")
    assert (xid[: K - 1, R, G] == 0).all() and (xid[K - 1 :, R, G] == code).all()
    util = _gpu(frames, "util_pct")
    assert (util[K:, R, G] == 0).all() and util[: K - 1, R, G].min() > 0
    power = _gpu(frames, "power_w")
    assert power[-1, R, G] < 0.5 * power[K - 2, R, G]  # idle power
    temp = _gpu(frames, "temp_gpu_c")
    assert temp[-1, R, G] < temp[K - 2, R, G] - 5.0  # the die cools
    if column is not None:
        assert (_gpu(frames, column)[K - 1 :, R, G] == value).all()
    _others_unchanged(frames, "xid")


@pytest.mark.parametrize(
    ("code", "column", "value"), [(63, "remapped_rows", 1), (92, "ecc_corrected", 500)]
)
def test_warning_xid_leaves_the_gpu_working(code: int, column: str, value: int) -> None:
    frames = _run(f"xid:R0003/G05@{AT:g},code={code}")
    [rec] = _truth(frames)
    assert rec["severity"] == "warning"
    assert (_gpu(frames, column)[K - 1 :, R, G] == value).all()
    assert (_gpu(frames, "xid")[K - 1 :, R, G] == code).all()
    # the workload is untouched: power and utilisation as without the fault
    for name in ("util_pct", "power_w", "temp_gpu_c"):
        np.testing.assert_array_equal(_gpu(frames, name), _gpu(_baseline(), name))
    if code == 63:
        assert (_gpu(frames, "row_remap_flags")[K - 1 :, R, G] == 1).all()  # pending


def test_hbm_decay_chain() -> None:
    fail = 200.0
    frames = _run(f"hbm_decay:R0003/G05@{AT:g},fail_s={fail:g},remap_every_s=40")
    [rec] = _truth(frames)
    assert rec["kind"] == "hbm_decay" and rec["severity"] == "critical"
    assert rec["fail_ts_ms"] == T0 + int((AT + fail) * 1000)
    t = np.array([(f.ts_ms - T0) / 1000 for f in frames])
    age = t - AT
    sbe = _gpu(frames, "ecc_corrected")[:, R, G]
    remap = _gpu(frames, "remapped_rows")[:, R, G]
    dbe = _gpu(frames, "ecc_uncorrected")[:, R, G]
    xid = _gpu(frames, "xid")[:, R, G]
    assert (np.diff(sbe) >= 0).all() and sbe[age < 0].max() == 0
    # corrected errors accelerate: more in the last quarter before failure than the first
    q = fail / 4
    in_q = lambda a, b: sbe[np.searchsorted(age, b)] - sbe[np.searchsorted(age, a)]  # noqa: E731
    assert in_q(3 * q, fail) > 5 * max(in_q(0, q), 1)
    assert (remap[age < fail / 2] == 0).all() and remap[(age >= fail / 2) & (age < fail)].min() >= 1
    assert (np.diff(remap) >= 0).all()
    assert (dbe[age < fail] == 0).all() and (dbe[age >= fail] == 1).all()
    assert (xid[age < fail] == 0).all() and (xid[age >= fail] == 48).all()
    util = _gpu(frames, "util_pct")[:, R, G]
    assert util[age < fail].min() > 0 and (util[age >= fail + DT] == 0).all()
    _others_unchanged(frames, "ecc_corrected")


def test_fail_slow_straggler_sags_while_neighbours_hold() -> None:
    frac = 0.3
    frames = _run(f"fail_slow:R0003/G05@{AT:g},frac={frac:g}")
    base = _baseline()
    [rec] = _truth(frames)
    assert rec["kind"] == "fail_slow" and rec["params"]["frac"] == frac
    power, base_power = _gpu(frames, "power_w"), _gpu(base, "power_w")
    limit = _gpu(frames, "power_limit_w")
    after = slice(K, None)
    assert (power[after, R, G] <= (1 - frac) * limit[after, R, G] + 1.0).all()
    assert power[after, R, G].mean() < 0.85 * base_power[after, R, G].mean()
    clock, base_clock = _gpu(frames, "sm_clock_mhz"), _gpu(base, "sm_clock_mhz")
    assert clock[after, R, G].mean() < 0.95 * base_clock[after, R, G].mean()
    # silent: the enforced limit it reports is unchanged and no power-cap bit is set
    np.testing.assert_array_equal(limit[:, R, G], _gpu(base, "power_limit_w")[:, R, G])
    assert not (_gpu(frames, "clock_event_reasons")[after, R, G].astype(np.uint64) & 0x4).any()
    # its neighbours in the rack hold their power (coolant coupling moves them by < 1 %)
    neigh = np.ones(power.shape[2], dtype=bool)
    neigh[G] = False
    np.testing.assert_allclose(
        power[after, R][:, neigh].mean(), base_power[after, R][:, neigh].mean(), rtol=0.01
    )


def test_leak_drains_the_loop_and_starves_the_racks() -> None:
    rate = 0.5  # kg/s: 36 kg lost, below the cavitation level, 72 s in
    frames = _run(f"leak:CDU01@{AT:g},rate_kg_s={rate:g},detect_s=20")
    base = _baseline()
    [rec] = _truth(frames)
    assert rec["kind"] == "leak" and rec["target"] == "CDU01"
    t = np.array([(f.ts_ms - T0) / 1000 for f in frames])
    level = _pt(frames, "CDU01", "reservoir_level_frac")
    pressure = _pt(frames, "CDU01", "loop_pressure_pa")
    assert (level[t < AT] == 0.8).all() and level[-1] < 0.1
    assert (np.diff(level) <= 0).all() and pressure[-1] < 0.5 * pressure[0]
    detected = _pt(frames, "CDU01", "leak_detected_bool")
    assert (detected[t < AT + 20] == 0).all() and (detected[t >= AT + 20] == 1).all()
    flow, base_flow = _pt(frames, "CDU01", "flow_kg_s"), _pt(base, "CDU01", "flow_kg_s")
    assert flow[-1] < 0.5 * base_flow[-1]
    # the other CDU and its racks are untouched
    np.testing.assert_array_equal(
        _pt(frames, "CDU02", "flow_kg_s"), _pt(base, "CDU02", "flow_kg_s")
    )
    assert (_pt(frames, "CDU02", "leak_detected_bool") == 0).all()
    site = _site()
    on_cdu1 = site.rack_cdu == 0
    temp, base_temp = _gpu(frames, "temp_gpu_c"), _gpu(base, "temp_gpu_c")
    assert temp[-1, on_cdu1].mean() > base_temp[-1, on_cdu1].mean() + 1.0
    assert (temp[-1, ~on_cdu1] == base_temp[-1, ~on_cdu1]).all()


def test_cascade_sag_trips_the_dry_coolers_and_supply_climbs() -> None:
    frames = _run(f"cascade:UPS01@{AT:g},sag_s=5")
    base = _baseline()
    [rec] = _truth(frames)
    assert rec["kind"] == "cascade" and rec["target"] == "UPS01"
    t = np.array([(f.ts_ms - T0) / 1000 for f in frames])
    volts = _pt(frames, "UPS01", "input_voltage_v")
    sag = (t >= AT) & (t < AT + 5)
    assert sag.any() and (volts[sag] == 280.0).all() and (volts[~sag] == 400.0).all()
    battery = _pt(frames, "UPS01", "on_battery_bool")
    assert battery[sag].all() and not battery[t >= AT + 5].any()
    for dc in _site().dc_ids:
        fans = _pt(frames, dc, "fan_speed_frac")
        assert (fans[t >= AT + DT] == 0).all(), dc  # the standby never starts
        assert _pt(base, dc, "fan_speed_frac")[-1] > 0, dc
    supply, base_supply = _pt(frames, "FWS", "supply_temp_c"), _pt(base, "FWS", "supply_temp_c")
    assert (base_supply == base_supply[0]).all()
    # the supply climbs until the trim chiller (idle before) carries the heat
    climb = (t >= AT + DT) & (t <= AT + 100)
    assert (np.diff(supply[climb]) > 0).all() and supply.max() > base_supply.max() + 0.3
    assert _pt(frames, "CH01", "cooling_w").max() > 0 == _pt(base, "CH01", "cooling_w").max()


def test_same_seed_same_frames() -> None:
    fault = f"hbm_decay:R0003/G05@{AT:g},fail_s=120"
    a = _run(fault, noise=True, seed=7)[-5:]
    b = _run(fault, noise=True, seed=7)[-5:]
    c = _run(fault, noise=True, seed=8)[-5:]
    for fa, fb in zip(a, b, strict=True):
        for name in fa.gpu:
            np.testing.assert_array_equal(fa.gpu[name], fb.gpu[name])
        assert fa.thermal == fb.thermal and fa.power == fb.power
    assert a[-1].thermal["CDU01"] != c[-1].thermal["CDU01"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("xid:R0003/G05@0,code=13", "expected an XID"),
        ("hbm_decay:R0003/G05@0,xid=79", "expected 48 or 94"),
        ("fail_slow:R0003/G05@0,frac=1.5", "0 < frac < 1"),
        ("leak:CDU01@0,rate_kg_s=0", "rate_kg_s"),
        ("leak:DC01@0", "expected CDU01"),
        ("cascade:CDU01@0", "expected UPS01"),
        ("ups_degrade:UPS01@0,factor=0.5", "factor >= 1"),
    ],
)
def test_bad_parameters_are_one_line_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve(parse_fault(text), _site())


def test_cascade_that_also_trips_the_chiller_lets_the_supply_run_away() -> None:
    frames = _run(f"cascade:UPS01@{AT:g},trips=3")
    only_fans = _run(f"cascade:UPS01@{AT:g}")
    t = np.array([(f.ts_ms - T0) / 1000 for f in frames])
    supply = _pt(frames, "FWS", "supply_temp_c")
    assert (_pt(frames, "CH01", "cooling_w") == 0).all()  # tripped: takes no heat
    # climbs (the heat pump, taking more from a warmer return, slows it for a while)
    assert (np.diff(supply[(t >= AT + DT) & (t <= AT + 100)]) > 0.05).all()
    assert supply[-1] > supply[t >= AT + DT][0] + 2.0
    assert supply[-1] > _pt(only_fans, "FWS", "supply_temp_c")[-1] + 1.0
    chiller_only = _run(f"cascade:UPS01@{AT:g},trips=2")
    # the fans are left alone (in January the idle chiller's trip changes nothing else)
    np.testing.assert_array_equal(
        _pt(chiller_only, "DC01", "fan_speed_frac"), _pt(_baseline(), "DC01", "fan_speed_frac")
    )


def test_ups_degrade_raises_the_losses_over_the_curve_for_the_same_output() -> None:
    from twin.power import ups_efficiency

    frames = _run(f"ups_degrade:UPS01@{AT:g},factor=2,ramp_s=100")
    base = _baseline()
    [rec] = _truth(frames)
    assert rec["kind"] == "ups_degrade" and rec["target"] == "UPS01"
    t = np.array([(f.ts_ms - T0) / 1000 for f in frames])
    out, inp = _pt(frames, "UPS01", "output_power_w"), _pt(frames, "UPS01", "input_power_w")
    loss = _pt(frames, "UPS01", "loss_w")
    np.testing.assert_array_equal(out, _pt(base, "UPS01", "output_power_w"))
    np.testing.assert_allclose(inp - out, loss)
    curve_loss = out / ups_efficiency(out, _site().power) - out
    ratio = loss / curve_loss
    np.testing.assert_allclose(ratio[t < AT], 1.0, rtol=1e-9)  # on its curve before
    mid = np.flatnonzero(t >= AT + 50)[0]
    assert ratio[mid] == pytest.approx(1.5, rel=0.02)  # half way up the ramp
    np.testing.assert_allclose(ratio[t >= AT + 100], 2.0, rtol=1e-9)
    # the other module of the hall, and the energy balance upstream, see the extra loss only
    for ups in _site().ups_ids[1:]:
        np.testing.assert_array_equal(_pt(frames, ups, "loss_w"), _pt(base, ups, "loss_w"))
