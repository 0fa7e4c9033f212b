"""Alert sources over a worker runtime, the blast radius, the API's command parsing, flags and
/metrics of the alerts (streams/alert_sources.py, alert_views.py, alert_flags.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from models.alerting import AlertEngine, alert_id
from models.rules import load_rules
from streams.alert_flags import add_alert_flags, alert_settings_from_args
from streams.alert_sinks import WebhookSink
from streams.alert_sources import blast_radius, dc_fans_stopped, evaluate_sources, site_map
from streams.alert_views import AlertCollector, CommandError, parse_command
from streams.codec import (
    decode_gpu_frame,
    decode_points_frame,
    encode_frame,
    gpu_batch,
    points_batch,
)
from streams.metrics import render_metrics
from streams.runtime import TwinRuntime
from tests.streams.frames import gpu_columns
from twin.errors import ConfigError
from twin.site import load_site

T0_MS = 1_800_000_000_000


def runtime_with(temps: dict[str, np.ndarray], units: dict[str, dict[str, float]]) -> TwinRuntime:
    rt = TwinRuntime(partitions=8, clock_ms=lambda: T0_MS)
    for unit, pts in units.items():
        data = encode_frame(points_batch(T0_MS, unit, pts))
        rt.apply_points(decode_points_frame(data, key=unit.encode(), now_ms=None), "t")
    for rack, t in temps.items():
        cols = gpu_columns(t.size, seed=1)
        cols["temp_gpu_c"] = t.astype(np.float32)
        cols["clock_event_reasons"] = np.zeros(t.size, dtype=np.uint64)
        data = encode_frame(gpu_batch(T0_MS, rack, cols))
        rt.apply_gpu(decode_gpu_frame(data, key=rack.encode(), now_ms=None), "t")
    return rt


def test_blast_radius_follows_the_layout() -> None:
    site = load_site(racks=128)  # two halls of 64 racks, CDUs of 8
    b = blast_radius(site)
    assert b["CDU01"] == tuple(f"R{i:04d}" for i in range(1, 9))
    first_hall = {u for u, i in zip(site.ups_ids, site.ups_hall, strict=True) if i == 0}
    assert all(len(b[u]) == 64 and b[u][0] == "R0001" for u in first_hall)
    assert len(b[site.dc_ids[0]]) == 128
    sm = site_map(site)
    assert sm.rack_where["R0065"] == {"rack": "R0065", "cdu": "CDU09", "hall": "H2"}
    assert sm.cdu_design_flow_kg_s["CDU01"] > 0


def test_rules_over_a_runtime_and_a_ups_on_battery_suppresses_its_hall() -> None:
    site = load_site(racks=16)
    sm = site_map(site)
    ups = site.ups_ids[0]
    temps = {"R0001": np.full(8, 50.0), "R0009": np.full(8, 50.0)}
    temps["R0001"][2] = 88.5  # 0.5 K to slowdown: past critical_at
    temps["R0009"][7] = 85.0  # 4 K: major
    cdu_ok = {"supply_temp_c": 45.0, "flow_kg_s": sm.cdu_design_flow_kg_s["CDU01"]}
    units = {"CDU01": cdu_ok, "CDU02": cdu_ok, ups: {"on_battery_bool": 1.0}}
    rt = runtime_with(temps, units)
    eng = AlertEngine(load_rules(), clock=lambda: T0_MS / 1000)
    for step in range(12):  # the shipped for_s of the margin rule is 10 s
        evaluate_sources(eng, rt, sm, lambda _k: True, T0_MS / 1000 + step)
    ups_alert = eng.alerts[alert_id(ups, "ups_on_battery", ups)]
    assert (ups_alert.state, ups_alert.severity, ups_alert.group) == ("UNACK", "critical", "H1")
    hot = eng.alerts[alert_id("R0001", "gpu_thermal_margin", "R0001/g2")]
    warm = eng.alerts[alert_id("R0009", "gpu_thermal_margin", "R0009/g7")]
    assert (hot.severity, warm.severity) == ("critical", "major")
    # one hall, one UPS: every GPU alert is explained by it
    assert hot.state == warm.state == "DSUPR" and hot.suppressed_by == ups_alert.id
    assert eng.raised_total == 1
    assert not any(a.rule.startswith("cdu_") for a in eng.alerts.values())
    # only owned racks and units are evaluated
    other = AlertEngine(load_rules(), clock=lambda: T0_MS / 1000)
    for step in range(12):
        evaluate_sources(other, rt, sm, lambda k: k == "R0009", T0_MS / 1000 + step)
    assert {a.owner for a in other.alerts.values()} == {"R0009"}


def test_cdu_flow_loss_and_supply_band() -> None:
    site = load_site(racks=16)
    sm = site_map(site)
    design = sm.cdu_design_flow_kg_s["CDU01"]
    units = {
        "CDU01": {"supply_temp_c": 45.0, "flow_kg_s": 0.1 * design},
        "CDU02": {"supply_temp_c": 53.0, "flow_kg_s": design},
    }
    rt = runtime_with({}, units)
    eng = AlertEngine(load_rules(), clock=lambda: 0.0)
    for step in range(40):
        evaluate_sources(eng, rt, sm, lambda _k: True, float(step))
    flow = eng.alerts[alert_id("CDU01", "cdu_flow_low", "CDU01")]
    hot = eng.alerts[alert_id("CDU02", "cdu_supply_high", "CDU02")]
    assert flow.state == "UNACK" and flow.blast == tuple(f"R{i:04d}" for i in range(1, 9))
    assert (hot.state, hot.severity) == ("UNACK", "critical")
    assert "standby pump" in flow.action


def test_a_cdu_pump_trip_suppresses_its_racks_coolant_and_balance_alerts() -> None:
    """The rack-level consequences of a CDU fault (the whole rack moved, its heat balance
    off) are explained by the CDU's root cause inside its blast radius, not elsewhere."""
    site = load_site(racks=16)
    sm = site_map(site)
    design = sm.cdu_design_flow_kg_s["CDU01"]
    rt = runtime_with({}, {"CDU01": {"supply_temp_c": 45.0, "flow_kg_s": 0.1 * design}})
    eng = AlertEngine(load_rules(), clock=lambda: 0.0)
    for step in range(200):
        now = float(step)
        evaluate_sources(eng, rt, sm, lambda _k: True, now)
        for rack in ("R0001", "R0009"):  # R0001 on CDU01, R0009 on CDU02
            w = sm.rack_where[rack]
            eng.observe("rack_coolant_common_score", [rack], [0.99], owner=rack, where=w, now_s=now)
            eng.observe("rack_balance_score", [rack], [0.99], owner=rack, where=w, now_s=now)
    root = eng.alerts[alert_id("CDU01", "cdu_flow_low", "CDU01")]
    for rule in ("rack_coolant_common", "rack_heat_balance"):
        inside = eng.alerts[alert_id("R0001", rule, "R0001")]
        outside = eng.alerts[alert_id("R0009", rule, "R0009")]
        assert (inside.state, inside.suppressed_by) == ("DSUPR", root.id), rule
        assert outside.state == "UNACK", rule


def test_a_dry_cooler_whose_fans_stop_while_the_others_turn_raises() -> None:
    assert dc_fans_stopped(np.array([0.0, 0.3, 0.3])).tolist() == [1.0, 0.0, 0.0]
    assert dc_fans_stopped(np.array([0.0, 0.0])).tolist() == [0.0, 0.0]  # all idle: no load
    assert np.isnan(dc_fans_stopped(np.array([np.nan, 0.3]))[0])
    site = load_site(racks=4)
    sm = site_map(site)
    dc1, dc2 = site.dc_ids[:2]

    def view(s1: float, s2: float) -> dict[str, object]:
        pt = "fan_speed_frac"
        return {"units": {dc1: {pt: {"measured": s1, "expected": 0.1}},
                          dc2: {pt: {"measured": s2, "expected": 0.1}}}}  # fmt: skip

    eng = AlertEngine(load_rules(), clock=lambda: 0.0)
    rt = runtime_with({}, {})
    for step in range(0, 60, 10):
        evaluate_sources(eng, rt, sm, lambda _k: True, float(step), facility_view=view(0.0, 0.0))
    assert not eng.alerts
    for step in range(60, 120, 10):
        evaluate_sources(eng, rt, sm, lambda _k: True, float(step), facility_view=view(0.0, 0.2))
    a = eng.alerts[alert_id("facility", "dc_fans_stopped", dc1)]
    assert a.state == "UNACK" and a.severity == "major"
    assert alert_id("facility", "dc_fans_stopped", dc2) not in eng.alerts


def test_facility_residuals_are_owned_by_the_facility_key() -> None:
    sm = site_map(load_site(racks=8))
    view = {"units": {"FWS": {"supply_temp_c": {"measured": 30.0, "expected": 25.0},
                              "flow_kg_s": {"measured": 1.0, "expected": 9.0}}}}  # fmt: skip
    eng = AlertEngine(load_rules(), clock=lambda: 0.0)
    rt = runtime_with({}, {})
    for step in range(0, 200, 10):
        evaluate_sources(eng, rt, sm, lambda _k: True, float(step), facility_view=view)
    a = eng.alerts[alert_id("facility", "unit_residual", "FWS")]
    assert a.state == "UNACK" and a.value == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("raw", "op", "why"),
    [
        (b"{", "ack", "not JSON"),
        (b"[]", "ack", "JSON object"),
        (b'{"comment": 3}', "ack", "comment"),
        (b'{"by": ""}', "ack", "by"),
        (b'{"comment": "' + b"x" * 1001 + b'"}', "ack", "comment"),
        (b'{"duration_s": -1}', "shelve", "duration_s"),
        (b'{"duration_s": true}', "shelve", "duration_s"),
        (b"{}", "delete", "op"),
        (b"x" * 20_000, "ack", "larger"),
    ],
)
def test_bad_commands_are_refused(raw: bytes, op: str, why: str) -> None:
    with pytest.raises(CommandError, match=why):
        parse_command(raw, op, "R0001.gpu_thermal_margin.abcdef")


def test_commands_parse() -> None:
    cmd = parse_command(b'{"comment": "ok", "by": "op"}', "ack", "R0001.x.y")
    assert cmd == {"op": "ack", "id": "R0001.x.y", "by": "op", "comment": "ok"}
    fwd = parse_command(b'{"op": "shelve", "id": "CDU01.x.y", "duration_s": 60}')
    assert fwd["duration_s"] == 60.0 and fwd["by"] == "operator"
    with pytest.raises(CommandError, match="id"):
        parse_command(b"{}", "ack", "../../etc")


def test_flags_validate_the_rules_at_start(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    add_alert_flags(p)
    got = alert_settings_from_args(p.parse_args(["--alertmanager-url", "http://am:9093/"]))
    assert got["alertmanager_url"] == "http://am:9093" and got["alert_rules_path"] is None
    bad = tmp_path / "rules.toml"
    bad.write_text(
        '[rules.x]\nsignal = "s"\nseverity = "major"\ndirection = "up"\nraise_at = 1\n'
        "clear_at = 0\n"
    )
    with pytest.raises(ConfigError, match=r"\[rules\.x\] direction: expected one of"):
        alert_settings_from_args(p.parse_args(["--alert-rules", str(bad)]))
    with pytest.raises(ConfigError, match="--alert-webhook-url"):
        alert_settings_from_args(p.parse_args(["--alert-webhook-url", "file:///etc/passwd"]))
    from streams.config import parse as resolve

    env = {"TWIN_ALERT_WEBHOOK_URL": "https://hooks.example/x"}
    p2 = argparse.ArgumentParser()
    add_alert_flags(p2)
    assert alert_settings_from_args(resolve(p2, [], env))["alert_webhook_url"] == (
        "https://hooks.example/x"
    )


def test_metrics_of_the_alerts_have_bounded_labels() -> None:
    eng = AlertEngine(load_rules(), clock=lambda: 0.0)
    eng.observe("ups_on_battery_bool", ["UPS01"], [1.0], owner="UPS01", blast=("R0001",))
    sink = WebhookSink("webhook", "http://127.0.0.1:1/x")
    sink.offer([a.to_dict() for a in eng.alerts.values()])
    text = render_metrics(TwinRuntime(partitions=8), {}, [AlertCollector(eng, [sink])]).decode()
    assert 'twin_alerts{severity="critical",state="UNACK"} 1.0' in text
    assert 'twin_alerts{severity="minor",state="SHLVD"} 0.0' in text
    assert "twin_alert_flood 0.0" in text and "twin_alerts_raised_total 1.0" in text
    assert 'twin_alert_sink_queue{sink="webhook"} 1.0' in text
    series = [ln for ln in text.splitlines() if ln.startswith("twin_alerts{")]
    assert len(series) == 7 * 4  # states x severities, whatever the alerts


def test_the_flood_is_the_sites_alerts_of_every_worker() -> None:
    """Two workers raising 6 alerts each: neither is in a flood by its own count, the site
    is (12 > 10 in 10 minutes), in /metrics and in what the page reads."""
    from streams.alert_views import site_flood

    now = {"t": 1000.0}
    engines = [AlertEngine(load_rules(), clock=lambda: now["t"]) for _ in range(2)]
    for w, eng in enumerate(engines):
        racks = [f"R{w * 6 + i + 1:04d}" for i in range(6)]
        for rack in racks:
            eng.observe("ups_on_battery_bool", [f"UPS{rack[1:]}"], [1.0], owner=rack)
        assert eng.raised_total == 6 and not eng.flood
    docs = {aid: a.to_dict() for aid, a in engines[1].alerts.items()}
    assert site_flood(engines[0], docs, now["t"]) == (True, 12)
    text = render_metrics(
        TwinRuntime(partitions=8), {}, [AlertCollector(engines[0], [], lambda: docs)]
    ).decode()
    assert "twin_alert_flood 0.0" in text and "twin_alert_site_flood 1.0" in text
    assert "twin_alerts_site_raised_window 12.0" in text
    # suppressed (not shown) and old raises do not count; this worker's own are not twice
    docs2 = {k: v | {"shown": False} for k, v in list(docs.items())[:3]}
    docs2 |= {k: v | {"raised_s": now["t"] - 601} for k, v in list(docs.items())[3:]}
    own = {aid: a.to_dict() for aid, a in engines[0].alerts.items()}
    assert site_flood(engines[0], docs2 | own, now["t"]) == (False, 6)


def test_external_roots_are_checked_like_any_input() -> None:
    from streams.alert_views import external_roots

    docs = {
        "CDU01.cdu_flow_low.a": {"active": True, "blast": ["R0001", "R0002"]},
        "CDU02.cdu_flow_low.b": {"active": False, "blast": ["R0009"]},
        "UPS01.ups_on_battery.c": {"active": True, "blast": "R0001"},
        "UPS02.ups_on_battery.d": {"active": True, "blast": [1, 2]},
        "R0001.gpu_thermal_margin.e": {"active": True, "blast": []},
        "CDU03.cdu_flow_low.f": {"active": True, "oos": True, "blast": ["R0017"]},
    }
    assert external_roots(docs) == {"CDU01.cdu_flow_low.a": ("R0001", "R0002")}


def test_estimator_residuals_feed_the_residual_rule() -> None:
    sm = site_map(load_site(racks=8))
    rt = runtime_with({}, {"R0001": {"inlet_temp_c": 40.0}})
    cols = gpu_columns(8, seed=2)
    cols["power_w"] = np.full(8, 700.0, dtype=np.float32)
    cols["clock_event_reasons"] = np.zeros(8, dtype=np.uint64)

    def step(i: int) -> None:
        # the manifold reports with every GPU sample: a GPU sample more than 30 s from the
        # last inlet reading is not fitted (TwinRuntime.coolant_max_skew_s), and a residual
        # not recomputed would stay where it was
        pts = encode_frame(points_batch(T0_MS + i * 1000, "R0001", {"inlet_temp_c": 40.0}))
        rt.apply_points(decode_points_frame(pts, key=b"R0001", now_ms=None), "t")
        data = encode_frame(gpu_batch(T0_MS + i * 1000, "R0001", cols))
        rt.apply_gpu(decode_gpu_frame(data, key=b"R0001", now_ms=None), "t")

    for i in range(30):  # the fit settles on a steady rack
        cols["temp_gpu_c"] = np.full(8, 60.0, dtype=np.float32)
        step(i)
    eng = AlertEngine(load_rules(), clock=lambda: 0.0)
    cols["temp_gpu_c"][4] = 80.0  # one die jumps 20 K off what the model predicts
    for i in range(30, 40):
        step(i)
        evaluate_sources(eng, rt, sm, lambda _k: True, T0_MS / 1000 + i)
    # a transient the fit absorbs: an event (raised, then cleared), not an alert
    log = [(e["entity"], e["transition"]) for e in eng.events if e["rule"] == "gpu_temp_residual"]
    assert log == [("R0001/g4", "raised"), ("R0001/g4", "cleared")]
    assert not eng.alerts
