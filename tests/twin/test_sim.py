"""The Simulator contract: SimFrame in the telemetry schema, sensor quantisation, faults as
ground truth, determinism, KPIs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.schema import GPU_SCHEMA, POINT_UNIT_SUFFIXES
from twin.errors import ConfigError, SiteError
from twin.faults import parse_fault
from twin.sim import Simulator
from twin.site import load_site

T0 = 1_767_225_600_000
#: dimensionless KPI and COP points carry no unit suffix
UNITLESS = {"pue", "ere", "cop", "cooling_cop", "free_cooling_share", "cue_kg_kwh"}


def test_frame_matches_gpu_schema_and_ids() -> None:
    site = load_site(racks=16)
    frame = Simulator(site, start_ms=T0).step(1.0)
    assert frame.ts_ms == T0 + 1000
    assert frame.rack_ids == [f"R{i:04d}" for i in range(1, 17)]
    want = {
        f.name: f.type.to_pandas_dtype() for f in GPU_SCHEMA if f.name not in ("ts", "rack", "gpu")
    }
    assert set(frame.gpu) == set(want)
    for name, dtype in want.items():
        assert frame.gpu[name].shape == (16, 72), name
        assert frame.gpu[name].dtype == np.dtype(dtype), name
    assert set(frame.thermal) >= {
        "R0001",
        "CDU01",
        "CDU02",
        "DC01",
        "FWS",
        "CH01",
        "HP01",
        "OUTDOOR",
    }
    assert set(frame.power) >= {"TX01", "UPS01", "PDU01", "SITE"}
    assert set(frame.thermal["CDU01"]) == {
        "supply_temp_c",
        "return_temp_c",
        "facility_supply_temp_c",
        "facility_return_temp_c",
        "flow_kg_s",
        "pump_speed_frac",
        "pump_power_w",
        # leak detection (twin/fleet_faults.py)
        "reservoir_level_frac",
        "loop_pressure_pa",
        "leak_detected_bool",
    }
    assert "input_voltage_v" in frame.power["UPS01"]
    for units in (frame.thermal, frame.power):
        for pts in units.values():
            for name, value in pts.items():
                assert np.isfinite(value), name
                assert name in UNITLESS or any(name.endswith(s) for s in POINT_UNIT_SUFFIXES), name


def test_nvml_quantisation_and_monotonic_energy() -> None:
    sim = Simulator(load_site(racks=8), start_ms=T0, seed=2)
    frames = [sim.step(1.0) for _ in range(5)]
    for f in frames:
        t = f.gpu["temp_gpu_c"]
        assert np.array_equal(t, np.round(t))
        mw = f.gpu["power_w"].astype(np.float64) * 1000.0
        assert np.allclose(mw, np.round(mw), atol=0.2)  # float32 of a milliwatt reading
        assert np.all(f.gpu["util_pct"] == np.round(f.gpu["util_pct"]))
    e = np.stack([f.gpu["energy_mj"] for f in frames])
    assert np.all(np.diff(e.astype(np.int64), axis=0) > 0)
    # 1 s at the GPU's power: the counter advances by ~P * 1000 mJ
    d = (frames[-1].gpu["energy_mj"] - frames[-2].gpu["energy_mj"]).astype(np.float64)
    np.testing.assert_allclose(d, sim.state.gpu_power_w * 1000.0, rtol=0.01, atol=2.0)


def test_same_seed_same_frames_other_seed_differs() -> None:
    site = load_site(racks=8)
    a = Simulator(site, start_ms=T0, seed=4).step(10.0)
    b = Simulator(site, start_ms=T0, seed=4).step(10.0)
    c = Simulator(site, start_ms=T0, seed=5).step(10.0)
    assert np.array_equal(a.gpu["power_w"], b.gpu["power_w"]) and a.thermal == b.thermal
    assert not np.array_equal(a.gpu["power_w"], c.gpu["power_w"])


def test_faults_started_reported_once_with_ground_truth() -> None:
    sim = Simulator(load_site(racks=8), start_ms=T0, faults=[parse_fault("fan_fail:DC01@2.5")])
    started = [sim.step(1.0).faults_started for _ in range(5)]
    assert started[:2] == [[], []] and started[3:] == [[], []]
    assert started[2] == [
        {"kind": "fan_fail", "target": "DC01", "start_ts_ms": T0 + 2500, "params": {}}
    ]


def test_kpis_and_headroom() -> None:
    sim = Simulator(load_site(), start_ms=T0)
    sim.step(60.0)
    k = sim.kpis()
    assert 1.03 < k["pue"] < 1.12
    assert k["ere"] < k["pue"]  # winter: heat sold to district heating
    assert k["heat_to_dh_w"] > 0 and k["free_cooling_share"] == 1.0
    assert k["cue_kg_kwh"] == pytest.approx(0.02075 * k["pue"])
    head = sim.rack_headroom()
    assert head["headroom_k"].shape == (64,)
    np.testing.assert_allclose(head["headroom_k"].min(), k["min_headroom_k"])
    assert np.all(head["seconds_to_throttle_s"] >= 0.0)


def test_hour_steps_are_stable() -> None:
    sim = Simulator(load_site(racks=8), start_ms=T0, sensor_noise=False)
    for _ in range(48):
        f = sim.step(3600.0)
    assert np.all(np.isfinite(sim.state.gpu_temp_c))
    assert sim.state.gpu_temp_c.max() < load_site().gpu.shutdown_c
    assert f.ts_ms == T0 + 48 * 3_600_000


def test_bad_step_rejected() -> None:
    with pytest.raises(ConfigError, match="dt_s"):
        Simulator(load_site(racks=4), start_ms=T0).step(0.0)


def test_weather_and_carbon_from_csv(tmp_path: Path) -> None:
    (tmp_path / "w.csv").write_text(
        "timestamp,air_temp_c\n2026-01-01T00:00:00Z,-20\n2026-01-02T00:00:00Z,-10\n"
    )
    (tmp_path / "c.csv").write_text(
        "timestamp,gco2_per_kwh\n2026-01-01T00:00:00Z,40\n2026-01-02T00:00:00Z,40\n"
    )
    (tmp_path / "site.toml").write_text(
        '[layout]\nracks = 8\n[weather]\nmodel = "csv"\ncsv_path = "w.csv"\n'
        '[carbon]\nmodel = "csv"\ncsv_path = "c.csv"\n'
    )
    sim = Simulator(load_site(tmp_path / "site.toml"), start_ms=T0, sensor_noise=False)
    frame = sim.step(43_200.0)  # noon on 1 January: halfway between the rows
    assert frame.thermal["OUTDOOR"]["air_temp_c"] == pytest.approx(-15.0)
    assert sim.kpis()["carbon_g_per_kwh"] == pytest.approx(40.0)


def test_csv_model_needs_a_path(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text('[weather]\nmodel = "csv"\n')
    with pytest.raises(SiteError, match=r"\[weather\] csv_path: expected a CSV file path"):
        load_site(tmp_path / "site.toml")


def test_pue_on_battery_stays_above_one() -> None:
    # On battery the grid meter reads only what the UPS does not carry; PUE counts the
    # batteries' share of the facility's energy too.
    sim = Simulator(load_site(racks=8), start_ms=T0, faults=[parse_fault("ups_on_battery:UPS01@1")])
    for _ in range(5):
        sim.step(1.0)
    k = sim.kpis()
    assert k["battery_discharge_w"] > 0.5 * k["it_power_w"]
    assert 1.0 < k["pue"] < 1.2
