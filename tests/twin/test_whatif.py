"""What-if runs with hand-checked outcomes, scenario and horizon parsing, the CLI and plot."""

from __future__ import annotations

import argparse
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from twin.site import Site, load_site
from twin.snapshot import TwinSnapshot, save_snapshot, snapshot_bytes
from twin.state import FacilityState
from twin.step import initial_state, nominal_inputs, step
from twin.whatif import (
    WhatIfError,
    compact_units,
    parse_horizon,
    parse_scenario,
    run_whatif,
)
from twin.whatif_cli import add_whatif_parser, run_whatif_cli

JULY_15_14H_MS = 1_784_124_000_000  # 2026-07-15 14:00 UTC


def _warm(site: Site, util: float) -> FacilityState:
    """Every GPU at ``util`` for 40 min: every loop at its operating point."""
    util_rg = np.full((site.n_racks, site.n_gpus), util)
    inputs = nominal_inputs(site, util_rg, outdoor_c=15.0, day_of_year=196.0)
    state = initial_state(site, outdoor_c=15.0)
    for _ in range(40):
        state = step(site, state, inputs, 60.0)
    return state


@pytest.fixture(scope="module")
def site16() -> Site:
    return load_site(racks=16)  # 2 CDUs of 8 racks, one hall, 2 UPS modules (N+1)


@pytest.fixture(scope="module")
def half_load(site16: Site) -> FacilityState:
    return _warm(site16, 0.5)


def _run(site: Site, state: FacilityState, scenario: list[str], horizon_s: float = 1200.0,
         dt_s: float = 5.0):  # type: ignore[no-untyped-def]  # fmt: skip
    return run_whatif(
        site, state, scenario, horizon_s, dt_s, progress=False, start_ms=JULY_15_14H_MS
    )


def test_pump_trip_makes_exactly_that_cdus_racks_reach_slowdown(
    site16: Site, half_load: FacilityState
) -> None:
    result = _run(site16, half_load, ["pump_trip:CDU02"])
    crossed = {c.limit: c for c in result.crossings}
    assert "gpu_slowdown" in crossed
    # CDU02 serves racks 9-16 (8 racks per CDU); the racks of CDU01 keep their coolant
    assert sorted(crossed["gpu_slowdown"].units) == [f"R{i:04d}" for i in range(9, 17)]
    # without flow the cold plate's film resistance rises ~20x: slowdown within a minute
    assert max(crossed["gpu_slowdown"].first_s) <= 60.0
    assert result.series.gpus_throttling.max() >= 8 * 72
    # even the lowest clock cannot hold 89 C without flow: every GPU of CDU02 trips and
    # stays off; the die never passes its shutdown temperature
    assert result.series.gpus_off[-1] == 8 * 72
    assert crossed["gpu_shutdown"].groups == (("R0009-R0016", crossed["gpu_shutdown"].first_s[0]),)
    assert result.series.max_gpu_temp_c.max() <= site16.gpu.shutdown_c + 1e-6
    assert result.baseline is not None
    assert result.baseline.max_gpu_temp_c.max() < site16.gpu.slowdown_c
    assert result.baseline.gpus_off.max() == 0
    summary = result.summary()
    assert "GPU slowdown 89.0 C: CROSSED at +0.2 min in 8 racks" in summary
    assert "R0009-R0016 at +0.2 min" in summary
    assert "GPU shutdown 92.0 C: CROSSED at +0.4 min" in summary
    assert "coolant to the GPUs above 54.6 C" in summary


def test_pump_trip_first_slowdown_and_shutdown_at_the_hand_computed_second(
    site16: Site, half_load: FacilityState
) -> None:
    """At 50 % load a GPU draws 1,000 W; its die is at 65.97 C over coolant at 47.97 C, the
    rack outlet at 50.94 C. The pump stops in the first 1 s step; from the second the cold
    plates see the stagnant outlet coolant behind R = 0.018 x (0.5 + 0.5 x 0.01^-0.8) =
    0.3673 K/W (tau = R C = 146.9 s), steady state 50.94 + 367.3 = 418.2 C. The die reaches
    89 C after 146.9 x ln((418.2 - 65.97) / (418.2 - 89)) = 9.9 s: slowdown at 1 + 9.9 s.
    Then the lowest clock (214.3 W: 200 + 1600 x 0.5 x 0.2^2.5) heads for 51 + 78.7 C:
    92 C after a further 146.9 x ln((129.7 - 89) / (129.7 - 92)) = 11.3 s, a little sooner as
    the stagnant coolant warms (~0.2 K/s from the other rack loads)."""
    assert_allclose(half_load.gpu_temp_c[8], 65.97, atol=0.01)
    assert_allclose(half_load.rack_coolant_c[8], 50.94, atol=0.01)
    result = _run(site16, half_load, ["pump_trip:CDU02"], horizon_s=60.0, dt_s=1.0)
    crossed = {c.limit: c for c in result.crossings}
    slow, shut = crossed["gpu_slowdown"], crossed["gpu_shutdown"]
    assert slow.first_s[0] == 11.0  # the 1 s step that ends at 11 s crosses 89 C (at 10.9 s)
    assert slow.first_min == pytest.approx(11.0 / 60.0)
    assert 20.0 <= shut.first_s[0] <= 23.0  # 10.9 + 11.3 = 22.2 s without the coolant rise
    assert slow.groups == (("R0009-R0016", 11.0),) and shut.units[0] == "R0009"
    # the coolant at the cold plates passes 54.6 C once the trip has stopped the flow
    assert 5.0 <= crossed["coolant_supply"].first_s[0] <= 20.0


def test_a_trip_cuts_it_energy_and_district_heat_together_and_energy_closes(
    site16: Site, half_load: FacilityState
) -> None:
    """16 racks in July: the town takes 2 MW of district heat, the site makes ~1.95 MW of IT
    heat, so district heat is what the site makes (after the heat pump). The trip takes 8
    racks off ~25 s into a 30-minute horizon: IT energy 0.976 x (1/2 + 1/2 x 25/1800) =
    0.495 MWh instead of 0.976, and the district heat falls with it."""
    result = _run(site16, half_load, ["pump_trip:CDU02"], horizon_s=1800.0)
    s, b = result.series, result.baseline
    assert b is not None
    mwh = 3.6e9
    it_s, it_b = s.energy_j("it_power_w") / mwh, b.energy_j("it_power_w") / mwh
    assert_allclose(it_b, 0.976, rtol=2e-3)
    assert_allclose(it_s, it_b * (0.5 + 0.5 * 25.0 / 1800.0), rtol=0.01)
    dh_s, dh_b = s.energy_j("heat_to_dh_w") / mwh, b.energy_j("heat_to_dh_w") / mwh
    assert dh_s < 0.7 * dh_b  # heat not produced is not delivered
    assert s.energy_j("heat_to_dc_w") < b.energy_j("heat_to_dc_w")
    # the books close in every node over the run (twin/balance.py)
    assert result.energy_residual.keys() >= {"gpu", "rack", "cdu", "fws", "site"}
    assert max(result.energy_residual.values()) < 1e-9
    data = json.loads(json.dumps(result.as_dict()))
    limits = {x["limit"]: x for x in data["limits"]}
    assert limits["gpu_slowdown"]["crossed"] and limits["gpu_slowdown"]["first_min"] < 1.0
    assert limits["gpu_shutdown"]["groups"][0]["units"] == "R0009-R0016"
    assert limits["fws_w45"] == {
        "limit": "fws_w45",
        "description": "facility water supply above W45 (45 C)",
        "crossed": False,
    }
    assert data["kpis"]["gpus_off_end"] == 576 and data["baseline_kpis"]["gpus_off_end"] == 0
    assert data["kpis"]["it_energy_mwh"] == pytest.approx(it_s)


def test_in_winter_district_heat_stays_at_demand_and_the_dry_coolers_give_way() -> None:
    """16 racks at 90 % load in January make 3.1 MW; the town takes 2 MW of district heat.
    A trip of half the racks leaves district heat where it was; the dry coolers reject the
    heat no longer produced, and the summary says so."""
    site = load_site(racks=16)
    util = np.full((16, 72), 0.9)
    inputs = nominal_inputs(site, util, outdoor_c=-5.0, day_of_year=15.0)
    state = initial_state(site, outdoor_c=-5.0)
    for _ in range(40):
        state = step(site, state, inputs, 60.0)
    assert state.dh_offtake_w == state.hp_heat_w == 2.0e6
    jan_15_12h_ms = 1_768_478_400_000
    result = run_whatif(site, state, ["pump_trip:CDU02"], 1800.0, 5.0, progress=False,
                        start_ms=jan_15_12h_ms)  # fmt: skip
    s, b = result.series, result.baseline
    assert b is not None
    d_it = b.energy_j("it_power_w") - s.energy_j("it_power_w")
    d_dc = b.energy_j("heat_to_dc_w") - s.energy_j("heat_to_dc_w")
    assert d_it > 0.45 * b.energy_j("it_power_w")
    assert_allclose(s.energy_j("heat_to_dh_w"), b.energy_j("heat_to_dh_w"), rtol=1e-3)
    assert_allclose(d_dc, d_it, rtol=0.05)  # the liquid heat not produced, off the coolers
    assert any("held at the town's demand" in n for n in result.notes)


@pytest.mark.parametrize("dt_s", [5.0, 60.0])
@pytest.mark.parametrize(
    "scenario",
    [
        ["pump_trip:CDU02"],
        ["pump_trip:CDU01", "pump_trip:CDU02", "load:+100%"],
        ["fouling:R0001@0,rate_per_s=1,max=40"],
        ["heatwave:+40K", "fan_fail:DC01", "fws_setpoint:70"],
        ["supply_setpoint:80", "load:+100%"],
        ["gpu_throttle_stuck:R0002", "pump_degrade:CDU01@0,ramp_s=1,floor=0.01"],
    ],
)
def test_no_gpu_passes_its_shutdown_temperature_in_any_scenario(
    site16: Site, half_load: FacilityState, scenario: list[str], dt_s: float
) -> None:
    result = _run(site16, half_load, scenario, horizon_s=1800.0, dt_s=dt_s)
    # the die holds at slowdown or trips at shutdown (ending the trip step at exactly 92 C);
    # a tripped GPU relaxes toward its stagnant coolant, which stays below that
    assert result.series.max_gpu_temp_c.max() <= site16.gpu.shutdown_c + 1e-6
    assert max(result.energy_residual.values()) < 1e-9
    assert result.series.t_s[0] == dt_s and result.series.t_s.size == round(1800.0 / dt_s)


def test_compact_units_groups_neighbours_that_cross_together() -> None:
    ids = tuple(f"R{i:04d}" for i in range(1, 11))
    groups = compact_units(
        ids, np.array([5, 0, 1, 2, 4]), np.array([70.0, 10.0, 11.0, 10.0, 10.0]), 6.0
    )
    assert groups == (("R0001-R0003", 10.0), ("R0005", 10.0), ("R0006", 70.0))
    assert compact_units(ids, np.array([], dtype=np.int64), np.array([]), 6.0) == ()


def test_load_plus_20_percent_raises_it_and_cooling_power_by_hand(
    site16: Site, half_load: FacilityState
) -> None:
    result = _run(site16, half_load, ["load:+20%"])
    base = result.baseline
    assert base is not None
    # util 0.5 -> 0.6 on every GPU. Per rack: GPUs 72 x 1600 W x 0.1 = 11,520 W; CPUs,
    # switches and the rest (78,100 - 15,800) W x 0.1 = 6,230 W; over the PSU (0.975):
    # 18,205.1 W per rack, 16 racks = 291,282 W
    assert_allclose(result.series.it_power_w[-1] - base.it_power_w[-1], 291_282.0, rtol=2e-3)
    assert result.series.cooling_power_w[-1] > base.cooling_power_w[-1]
    assert result.series.energy_j("heat_to_dh_w") >= base.energy_j("heat_to_dh_w")
    assert "IT power" in result.notes[0]


def test_heatwave_offsets_outdoor_temperature_and_loads_the_fans(
    site16: Site, half_load: FacilityState
) -> None:
    # the state's outdoor 15 C is 6 K below July climatology: +20 K gives ~35 C, above the
    # dry coolers' 30 C design dry bulb (docs/sources.md S8), where fans leave minimum speed
    result = _run(site16, half_load, ["heatwave:+20K"])
    base = result.baseline
    assert base is not None
    assert_allclose(result.series.outdoor_c - base.outdoor_c, 20.0, atol=1e-9)
    assert result.series.outdoor_c[-1] > 30.0
    assert result.series.cooling_power_w[-1] > base.cooling_power_w[-1]
    assert result.series.pue_over_horizon > base.pue_over_horizon


def test_supply_setpoint_raises_rack_inlet_and_gpu_temperature(
    site16: Site, half_load: FacilityState
) -> None:
    result = _run(site16, half_load, ["supply_setpoint:47"], horizon_s=3600.0)
    base = result.baseline
    assert base is not None
    assert_allclose(result.series.max_rack_inlet_c[-1], 47.0, atol=0.05)
    # die = coolant + R*P: the die follows the coolant, 2 K warmer at the same power
    assert_allclose(result.series.max_gpu_temp_c[-1] - base.max_gpu_temp_c[-1], 2.0, atol=0.1)


def test_ups_module_lost_doubles_the_load_of_the_other_module(
    site16: Site, half_load: FacilityState
) -> None:
    assert len(site16.ups_ids) == 2  # ceil(16 x 200 kW / 3.5 MW) + 1
    result = _run(site16, half_load, ["ups_module_lost:UPS01"], horizon_s=300.0)
    base = result.baseline
    assert base is not None
    assert_allclose(result.series.max_ups_load_frac, 2.0 * base.max_ups_load_frac, rtol=1e-9)


def test_ups_module_lost_at_full_load_overloads_the_remaining_module() -> None:
    # 17 racks x (72 x 1800 + 78,100) W / 0.975 = 3.62 MW > one 3.5 MW module
    site = load_site(racks=17)
    result = _run(site, _warm(site, 1.0), ["ups_module_lost:UPS02"], horizon_s=120.0)
    crossed = {c.limit: c for c in result.crossings}
    assert crossed["ups_overload"].units == ("UPS01",)
    assert crossed["ups_overload"].first_s[0] == 5.0
    assert result.baseline is not None and result.baseline.max_ups_load_frac.max() < 1.0


def test_no_scenario_is_the_baseline_and_crosses_nothing(
    site16: Site, half_load: FacilityState
) -> None:
    result = _run(site16, half_load, [], horizon_s=300.0)
    assert result.baseline is None
    assert result.crossings == []
    assert 1.0 < result.series.pue_over_horizon < 1.2
    assert "not crossed" in result.summary()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("pump_trip", "expected one of"),
        ("meteor:CDU01", "expected one of"),
        ("heatwave:hot", "expected e.g. heatwave:\\+8K"),
        ("load:+20", "expected e.g. load:\\+20%"),
        ("load:-100%", "above -100"),
        ("pump_trip:CDU99", "no unit 'CDU99'"),
        ("ups_module_lost:UPS09", "expected a UPS module UPS01..UPS02"),
    ],
)
def test_wrong_scenario_text_is_one_line_naming_what_was_expected(
    site16: Site, text: str, match: str
) -> None:
    with pytest.raises(WhatIfError, match=match) as info:
        parse_scenario(text, site16)
    assert "\n" not in str(info.value)


def test_scenario_values_are_parsed(site16: Site) -> None:
    assert parse_scenario("heatwave:+8K", site16).value == 8.0
    assert parse_scenario("heatwave:-3", site16).value == -3.0
    assert parse_scenario("load:+20%", site16).value == pytest.approx(0.2)
    assert parse_scenario("supply_setpoint:47", site16).value == 47.0
    trip = parse_scenario("pump_trip:CDU02@60", site16)
    assert trip.fault is not None and trip.fault.index == 1 and trip.fault.spec.at_s == 60.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2h", 7200.0),
        ("30m", 1800.0),
        ("90min", 5400.0),
        ("3600s", 3600.0),
        ("1h30m", 5400.0),
        ("45", 45.0),
        ("1.5h", 5400.0),
    ],
)
def test_horizon_parsing(text: str, seconds: float) -> None:
    assert parse_horizon(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "h", "0s", "-5m", "2h-3m"])
def test_bad_horizon_is_rejected(text: str) -> None:
    with pytest.raises(WhatIfError, match="expected a duration"):
        parse_horizon(text)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_whatif_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["whatif", *argv])


def test_cli_help_lists_the_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _args("--help")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "load:+20%" in out and "fouling:R0001/G05" in out and "pump_trip:CDU02" in out


def test_cli_from_snapshot_file_prints_summary_and_writes_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = load_site(racks=8)
    snap = TwinSnapshot(state=_warm(site, 0.5), meta={"racks": "8", "ts_ms": str(JULY_15_14H_MS)})
    path = save_snapshot(tmp_path / "twin.npz", snap)
    png = tmp_path / "whatif.png"
    args = _args(
        "--snapshot",
        str(path),
        "--scenario",
        "pump_trip:CDU01",
        "--horizon",
        "2m",
        "--out",
        str(png),
        "--no-progress",
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "What-if: pump_trip:CDU01" in out
    assert "from 2026-07-15 14:00 UTC, 8 racks" in out
    assert "GPU slowdown 89.0 C: CROSSED" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_json_names_the_minute_and_the_racks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = load_site(racks=8)
    snap = TwinSnapshot(state=_warm(site, 0.5), meta={"racks": "8", "ts_ms": str(JULY_15_14H_MS)})
    path = save_snapshot(tmp_path / "twin.npz", snap)
    args = _args("--snapshot", str(path), "--scenario", "pump_trip:CDU01", "--horizon", "2m",
                 "--no-progress", "--json")  # fmt: skip
    assert args.handler(args) == 0
    data = json.loads(capsys.readouterr().out)
    limits = {x["limit"]: x for x in data["limits"]}
    # 8 racks, one CDU: every rack loses its flow; slowdown in the first minute
    assert limits["gpu_slowdown"]["groups"] == [
        {"units": "R0001-R0008", "first_min": limits["gpu_slowdown"]["first_min"]}
    ]
    assert 0.0 < limits["gpu_slowdown"]["first_min"] < 1.0
    assert limits["gpu_shutdown"]["units"] == [f"R{i:04d}" for i in range(1, 9)]
    assert data["kpis"]["max_gpu_temp_c"] <= 92.0 + 1e-6
    assert data["racks"] == 8 and data["scenarios"] == ["pump_trip:CDU01"]


def test_json_form_has_no_nan_or_numpy() -> None:
    from twin.whatif_cli import _finite

    out = _finite({"a": np.float64("nan"), "b": [np.int64(3), 1.5, float("inf")], "c": None})
    assert out == {"a": None, "b": [3, 1.5, None], "c": None}
    assert json.dumps(out, allow_nan=False)


@pytest.fixture
def worker_url(tmp_path: Path) -> Iterator[str]:
    site = load_site(racks=8)
    body = snapshot_bytes(TwinSnapshot(state=_warm(site, 0.3), meta={"racks": "8"}))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/api/snapshot"
            self.send_response(200 if ok else 404)
            self.end_headers()
            if ok:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_cli_from_worker_url(worker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(
        "--from-url",
        worker_url,
        "--scenario",
        "heatwave:+8K",
        "--horizon",
        "60s",
        "--no-progress",
        "--no-baseline",
    )
    assert run_whatif_cli(args) == 0
    out = capsys.readouterr().out
    assert "What-if: heatwave:+8K" in out
    assert "start: worker http://127.0.0.1" in out


def test_cli_fresh_start_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(
        "--racks",
        "8",
        "--warmup",
        "1",
        "--start",
        "2026-01-15T08:00Z",
        "--horizon",
        "1m",
        "--scenario",
        "load:+20%",
        "--no-progress",
    )
    assert run_whatif_cli(args) == 0
    assert "from 2026-01-15 08:00 UTC, 8 racks" in capsys.readouterr().out
    with pytest.raises(WhatIfError, match="expected one of"):
        run_whatif_cli(_args("--racks", "8", "--warmup", "0", "--scenario", "nonsense"))
    with pytest.raises(WhatIfError, match="expected a duration"):
        run_whatif_cli(_args("--racks", "8", "--horizon", "soon"))
    with pytest.raises(WhatIfError, match="cannot fetch"):
        run_whatif_cli(_args("--from-url", "http://127.0.0.1:9", "--horizon", "1m"))
