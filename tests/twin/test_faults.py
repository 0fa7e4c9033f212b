"""Fault parsing and effects: each fault kind moves what it should and not the rest."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from twin.errors import ConfigError
from twin.faults import FaultSpec, parse_fault, resolve
from twin.gpu import REASON_HW_SLOWDOWN, REASON_SW_THERMAL
from twin.sim import SimFrame, Simulator
from twin.site import Site, load_site

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
STEPS, DT = 60, 5.0


@cache
def _site() -> Site:
    return load_site(racks=16)


def _run(fault: str | None, noise: bool = False) -> tuple[Simulator, list[SimFrame]]:
    faults = [parse_fault(fault)] if fault else []
    sim = Simulator(_site(), seed=3, start_ms=T0, faults=faults, sensor_noise=noise)
    return sim, [sim.step(DT) for _ in range(STEPS)]


@cache
def _baseline() -> tuple[Simulator, list[SimFrame]]:
    return _run(None)


def _pt(frames: list[SimFrame], unit: str, point: str) -> np.ndarray:
    return np.array([(f.thermal.get(unit) or f.power[unit])[point] for f in frames])


def test_gpu_targets_are_nvml_indices_from_zero() -> None:
    """``R0003/G12`` is NVML index 12: the residual entity ``R0003/G12`` and row 12 of
    telemetry.gpu for rack R0003 (docs/nomenclature.md)."""
    site = _site()
    assert resolve(parse_fault("fouling:R0003/G12@0"), site).gpu == 12
    assert resolve(parse_fault("fouling:R0003/G00@0"), site).gpu == 0
    assert resolve(parse_fault("gpu_throttle_stuck:R0001/G71@0"), site).gpu == 71
    assert resolve(parse_fault("fouling:R0003@0"), site).gpu == -1  # the whole rack
    stuck = resolve(parse_fault("sensor_stuck:R0001/G00/temp_gpu_c@0"), site)
    assert (stuck.unit, stuck.gpu, stuck.point) == ("R0001", 0, "temp_gpu_c")


def test_parse_examples() -> None:
    assert parse_fault("fouling:R0003/G12@600") == FaultSpec("fouling", "R0003/G12", 600.0)
    assert parse_fault("pump_trip:CDU02@300").target == "CDU02"
    spec = parse_fault("sensor_drift:CDU01/supply_temp_c@30,rate_per_s=0.01")
    assert spec.param("rate_per_s") == 0.01
    assert parse_fault("sensor_stuck:R0002/inlet_temp_c@30").kind == "sensor_stuck"
    assert parse_fault("gpu_throttle_stuck:R0001/G05@5").at_s == 5.0
    rec = parse_fault("ups_on_battery:UPS01@10").record(T0)
    assert rec["start_ts_ms"] == T0 + 10_000 and rec["kind"] == "ups_on_battery"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("fouling:R0003/G12", "expected KIND:TARGET@SECONDS"),
        ("melt:R0001@3", "unknown kind 'melt'"),
        ("pump_trip:R0001@3", "expected CDU01"),
        ("fouling:R0003/G12@600,bogus=1", "unknown parameter 'bogus'"),
        ("fouling:R0003/G12@600,rate_per_s=x", "expected a number"),
        ("sensor_stuck:R0002@30", "expected R0002/inlet_temp_c"),
    ],
)
def test_parse_errors_are_one_line(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_fault(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("pump_trip:CDU99@1", "no unit 'CDU99'"),
        ("fouling:R0001/G99@1", "expected a GPU from G00 to G71"),
        ("fouling:R0001/G72@1", "expected a GPU from G00 to G71"),
        ("sensor_stuck:R0002/bogus_c@3", "has no point 'bogus_c'"),
        ("sensor_drift:XYZ/supply_temp_c@3", "no unit 'XYZ'"),
    ],
)
def test_unknown_targets_rejected_by_simulator(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Simulator(_site(), start_ms=T0, faults=[parse_fault(text)])


def test_fouling_heats_one_gpu_only() -> None:
    _, base = _baseline()
    _, frames = _run("fouling:R0003/G12@10,rate_per_s=0.01")
    d = frames[-1].gpu["temp_gpu_c"] - base[-1].gpu["temp_gpu_c"]
    # G12 is NVML index 12 (from 0), the gpu column of telemetry.gpu
    # R x 3.9 would add ~50 K; the GPU throttles at slowdown instead
    assert d[2, 12] > 5.0 and frames[-1].gpu["temp_gpu_c"][2, 12] >= 88.0
    assert frames[-1].gpu["clock_event_reasons"][2, 12] & REASON_SW_THERMAL
    assert frames[-1].gpu["power_w"][2, 12] < base[-1].gpu["power_w"][2, 12]
    d[2, 12] = 0.0
    assert np.abs(d).max() <= 1.0
    assert np.array_equal(_pt(frames, "CDU01", "flow_kg_s"), _pt(base, "CDU01", "flow_kg_s"))
    assert frames[5].faults_started == [] and frames[1].faults_started[0]["target"] == "R0003/G12"


def test_pump_degrade_cuts_flow_of_its_racks_only() -> None:
    _, base = _baseline()
    _, frames = _run("pump_degrade:CDU01@0,ramp_s=60")
    assert _pt(frames, "CDU01", "flow_kg_s")[-1] < 0.7 * _pt(base, "CDU01", "flow_kg_s")[-1]
    assert _pt(frames, "CDU01", "pump_speed_frac")[-1] == 1.0
    assert _pt(frames, "R0008", "outlet_temp_c")[-1] > _pt(base, "R0008", "outlet_temp_c")[-1] + 3
    np.testing.assert_array_equal(
        _pt(frames, "CDU02", "flow_kg_s"), _pt(base, "CDU02", "flow_kg_s")
    )
    np.testing.assert_allclose(
        _pt(frames, "R0009", "outlet_temp_c"), _pt(base, "R0009", "outlet_temp_c"), atol=0.05
    )


def test_pump_trip_stops_flow_and_heats_its_racks() -> None:
    _, base = _baseline()
    _, frames = _run("pump_trip:CDU02@30")
    assert _pt(frames, "CDU02", "flow_kg_s")[-1] == 0.0
    assert _pt(frames, "CDU02", "pump_power_w")[-1] == 0.0
    assert _pt(frames, "R0012", "flow_kg_s")[-1] == 0.0
    assert _pt(frames, "R0012", "outlet_temp_c")[-1] > _pt(base, "R0012", "outlet_temp_c")[-1] + 10
    # the GPUs of CDU02's racks overheat, throttle, and trip at shutdown (XID 79)
    hottest = max(f.gpu["temp_gpu_c"][8:16].max() for f in frames)
    assert hottest >= _site().gpu.shutdown_c
    assert np.count_nonzero(frames[-1].gpu["xid"][8:16] == 79) > 0
    assert np.all(frames[-1].gpu["xid"][:8] == 0) and np.all(base[-1].gpu["xid"] == 0)
    np.testing.assert_array_equal(
        _pt(frames, "CDU01", "flow_kg_s"), _pt(base, "CDU01", "flow_kg_s")
    )


def test_fan_failure_moves_load_to_other_dry_coolers() -> None:
    _, base = _baseline()
    _, frames = _run("fan_fail:DC01@10")
    assert _pt(frames, "DC01", "fan_speed_frac")[-1] == 0.0
    assert _pt(frames, "DC01", "heat_rejected_w")[-1] == 0.0
    assert _pt(frames, "DC02", "fan_speed_frac")[-1] >= _pt(base, "DC02", "fan_speed_frac")[-1]
    assert _pt(frames, "DC02", "heat_rejected_w")[-1] > _pt(base, "DC02", "heat_rejected_w")[-1]
    np.testing.assert_allclose(
        _pt(frames, "FWS", "supply_temp_c"), _pt(base, "FWS", "supply_temp_c"), atol=0.05
    )
    np.testing.assert_array_equal(frames[-1].gpu["temp_gpu_c"], base[-1].gpu["temp_gpu_c"])


def test_stuck_sensor_freezes_one_reading_not_the_physics() -> None:
    sim, frames = _run("sensor_stuck:R0002/inlet_temp_c@30", noise=True)
    ref, _ = _run(None, noise=True)
    stuck = _pt(frames, "R0002", "inlet_temp_c")[6:]
    assert np.all(stuck == stuck[0])
    assert len(set(_pt(frames, "R0003", "inlet_temp_c")[6:])) > 1
    np.testing.assert_array_equal(sim.state.rack_inlet_c, ref.state.rack_inlet_c)
    np.testing.assert_array_equal(sim.state.gpu_temp_c, ref.state.gpu_temp_c)


def test_drifting_sensor_moves_at_its_rate() -> None:
    _, frames = _run("sensor_drift:CDU01/supply_temp_c@30,rate_per_s=0.01")
    _, base = _baseline()
    drift = _pt(frames, "CDU01", "supply_temp_c") - _pt(base, "CDU01", "supply_temp_c")
    t = DT * np.arange(1, STEPS + 1)
    np.testing.assert_allclose(drift, np.where(t >= 30, 0.01 * (t - 30), 0.0), atol=1e-9)
    np.testing.assert_array_equal(
        _pt(frames, "CDU01", "return_temp_c"), _pt(base, "CDU01", "return_temp_c")
    )


def test_ups_on_battery() -> None:
    _, base = _baseline()
    _, frames = _run("ups_on_battery:UPS01@10")
    on = _pt(frames, "UPS01", "on_battery_bool")
    assert on[0] == 0.0 and np.all(on[2:] == 1.0)
    assert _pt(frames, "UPS01", "input_power_w")[-1] == 0.0
    soc = _pt(frames, "UPS01", "battery_soc_frac")
    assert np.all(np.diff(soc[2:]) < 0.0)
    np.testing.assert_array_equal(
        _pt(frames, "UPS02", "output_power_w"), _pt(base, "UPS02", "output_power_w")
    )
    assert _pt(frames, "SITE", "facility_power_w")[-1] < _pt(base, "SITE", "facility_power_w")[-1]
    np.testing.assert_array_equal(frames[-1].gpu["power_w"], base[-1].gpu["power_w"])


def test_gpu_stuck_throttling() -> None:
    _, base = _baseline()
    _, frames = _run("gpu_throttle_stuck:R0001/G04@5")
    g = frames[-1].gpu
    assert g["clock_event_reasons"][0, 4] & REASON_HW_SLOWDOWN
    if base[-1].gpu["util_pct"][0, 4] > 0:
        assert g["sm_clock_mhz"][0, 4] <= 990
        assert g["power_w"][0, 4] < base[-1].gpu["power_w"][0, 4]
    others = np.ones(g["clock_event_reasons"].shape, dtype=bool)
    others[0, 4] = False
    np.testing.assert_array_equal(
        g["clock_event_reasons"][others], base[-1].gpu["clock_event_reasons"][others]
    )


def test_gpu_sensor_fault_and_whole_rack_fouling() -> None:
    sim, frames = _run("sensor_stuck:R0001/G02/temp_gpu_c@10", noise=True)
    ref, _ = _run(None, noise=True)
    readings = np.array([f.gpu["temp_gpu_c"][0, 2] for f in frames[2:]])
    assert np.all(readings == readings[0])
    np.testing.assert_array_equal(sim.state.gpu_temp_c, ref.state.gpu_temp_c)
    _, base = _baseline()
    _, fouled = _run("fouling:R0004@0,rate_per_s=0.01,max=2")
    d = fouled[-1].gpu["temp_gpu_c"] - base[-1].gpu["temp_gpu_c"]
    busy = base[-1].gpu["util_pct"][3] > 50
    assert busy.sum() > 36
    assert np.all(d[3][busy] >= 5.0)
    assert np.abs(np.delete(d, 3, axis=0)).max() <= 1.0
