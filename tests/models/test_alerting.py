"""Alert rules and the ISA-18.2 lifecycle (models/rules.py, models/alerting.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.alerting import AlertEngine, AlertError, alert_id, owner_of
from models.rules import DEFAULT_RULES_FILE, load_rules, parse_rules
from twin.errors import ConfigError

RULES: dict[str, Any] = {
    "budget": {"flood_count": 10, "flood_window_s": 600, "recent_s": 3600},
    "rules": {
        "margin": {
            "signal": "margin_k",
            "severity": "major",
            "direction": "below",
            "raise_at": 5.0,
            "clear_at": 8.0,
            "critical_at": 1.0,
            "for_s": 10,
            "clear_for_s": 5,
            "group": "rack",
            "suppressible": True,
            "action": "cool it",
        },
        "flow": {
            "signal": "flow_frac",
            "severity": "critical",
            "direction": "below",
            "raise_at": 0.5,
            "clear_at": 0.7,
            "root_cause": True,
            "action": "start the standby pump",
        },
        "capped": {
            "kind": "event",
            "signal": "capped_bool",
            "severity": "warning",
            "direction": "above",
            "raise_at": 0.5,
            "clear_at": 0.5,
        },
    },
}


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def engine(clock: Clock | None = None) -> tuple[AlertEngine, Clock]:
    c = clock or Clock()
    return AlertEngine(parse_rules(RULES), clock=c), c


def gpus(n: int = 4, rack: str = "R0001") -> np.ndarray:
    return np.array([f"{rack}/g{i}" for i in range(n)])


def margins(n: int = 4, bad: dict[int, float] | None = None) -> np.ndarray:
    v = np.full(n, 20.0)
    for i, x in (bad or {}).items():
        v[i] = x
    return v


def feed(e: AlertEngine, c: Clock, value: float, *, gpu: int = 1, rack: str = "R0001") -> None:
    e.observe(
        "margin_k", gpus(rack=rack), margins(bad={gpu: value}), owner=rack, where={"rack": rack}
    )


def the_alert(e: AlertEngine, rack: str = "R0001", gpu: int = 1) -> Any:
    return e.alerts[alert_id(rack, "margin", f"{rack}/g{gpu}")]


# --- rules -----------------------------------------------------------------------------------


def test_default_rules_load_and_every_alert_has_an_action() -> None:
    rs = load_rules(DEFAULT_RULES_FILE)
    assert rs.rules and all(r.action for r in rs.rules.values() if r.kind == "alert")
    assert any(r.kind == "event" for r in rs.rules.values())
    assert rs.budget.flood_count == 10 and rs.budget.flood_window_s == 600


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"sevrity": "major"}, "[rules.margin] sevrity: unknown key"),
        ({"severity": "loud"}, "[rules.margin] severity: expected one of"),
        ({"clear_at": 3.0}, "[rules.margin] clear_at: expected >="),
        ({"for_s": -1}, "[rules.margin] for_s: expected >= 0"),
        ({"raise_at": "5"}, "[rules.margin] raise_at: expected int or float"),
        ({"raise_at": float("nan")}, "[rules.margin] raise_at: expected a finite"),
        ({"root_cause": 1}, "[rules.margin] root_cause: expected bool"),
        ({"action": ""}, "[rules.margin] action: an alert needs an operator action"),
        ({"message": "{nope}"}, "[rules.margin] message: bad template"),
        ({"critical_at": 9.0}, "[rules.margin] critical_at: expected beyond"),
        ({"group": "planet"}, "[rules.margin] group: expected one of"),
    ],
)
def test_a_bad_rule_is_one_line_naming_the_key(change: dict[str, Any], names: str) -> None:
    doc = {"rules": {"margin": {**RULES["rules"]["margin"], **change}}}
    with pytest.raises(ConfigError) as err:
        parse_rules(doc, "f.toml")
    msg = str(err.value)
    assert names in msg and "\n" not in msg and msg.startswith("f.toml: ")


def test_bad_files_and_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[budget\] flood_cnt: unknown key"):
        parse_rules({"budget": {"flood_cnt": 3}, "rules": RULES["rules"]})
    with pytest.raises(ConfigError, match=r"\[budget\] flood_count: expected > 0"):
        parse_rules({"budget": {"flood_count": 0}, "rules": RULES["rules"]})
    with pytest.raises(ConfigError, match=r"\[alarms\]: unknown section"):
        parse_rules({"alarms": {}})
    with pytest.raises(ConfigError, match=r"\[rules.margin\] signal: missing"):
        parse_rules({"rules": {"margin": {"severity": "major"}}})
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_rules(bad)


def test_alert_ids_are_stable_url_safe_and_carry_the_owner() -> None:
    a = alert_id("R0001", "margin", "R0001/g3")
    assert a == alert_id("R0001", "margin", "R0001/g3") != alert_id("R0001", "margin", "R0001/g4")
    assert "/" not in a and owner_of(a) == "R0001"
    assert owner_of("../etc") is None and owner_of("nodots") is None


# --- lifecycle -------------------------------------------------------------------------------


def test_for_duration_and_hysteresis_hold_off_flapping() -> None:
    e, c = engine()
    feed(e, c, 4.0)
    c.t += 5
    feed(e, c, 9.0)  # back before for_s: never raised
    c.t += 5
    feed(e, c, 4.0)
    assert not e.alerts
    c.t += 9
    feed(e, c, 4.0)
    assert not e.alerts  # the condition restarted 9 s ago
    c.t += 1
    feed(e, c, 4.0)
    a = the_alert(e)
    assert (a.state, a.severity, a.count) == ("UNACK", "major", 1)
    # between the thresholds for a long time: still active, never re-raised
    for _ in range(20):
        c.t += 3
        feed(e, c, 7.5 if int(c.t) % 2 else 4.5)
    assert (a.state, a.count) == ("UNACK", 1)
    c.t += 1
    feed(e, c, 9.0)
    c.t += 4
    feed(e, c, 9.0)
    assert a.active  # clear_for_s not yet
    c.t += 1
    feed(e, c, 9.0)
    assert (a.active, a.state) == (False, "RTNUN")


def test_ack_holds_until_clear_and_re_arms_when_worse() -> None:
    e, c = engine()
    for _ in range(3):
        feed(e, c, 4.0)
        c.t += 5
    a = the_alert(e)
    assert a.state == "UNACK"
    e.ack(a.id, "op1", "on it")
    assert (a.state, a.ack_by, a.ack_comment, a.ack_s) == ("ACKED", "op1", "on it", c.t)
    with pytest.raises(AlertError) as err:
        e.ack(a.id, "op2", "again")
    assert err.value.status == 409
    feed(e, c, 4.5)
    assert a.state == "ACKED"
    feed(e, c, 0.5)  # past critical_at: worse than what was acknowledged
    assert (a.state, a.severity) == ("UNACK", "critical")
    e.ack(a.id, "op1", "critical now")
    for _ in range(3):
        c.t += 3
        feed(e, c, 9.0)
    assert (a.state, a.active) == ("NORM", False)  # acknowledged and cleared: nothing left
    with pytest.raises(AlertError) as err:
        e.ack("R0001.margin.nothere", "op", "")
    assert err.value.status == 404


def test_return_to_normal_unacknowledged_then_ack_or_re_raise() -> None:
    e, c = engine()
    for _ in range(3):
        feed(e, c, 4.0)
        c.t += 5
    a = the_alert(e)
    for _ in range(3):
        feed(e, c, 9.0)
        c.t += 3
    assert a.state == "RTNUN"
    for _ in range(3):
        feed(e, c, 4.0)
        c.t += 5
    assert (a.state, a.count) == ("UNACK", 2)  # dedup: the same alert, a second occurrence
    for _ in range(3):
        feed(e, c, 9.0)
        c.t += 3
    e.ack(a.id, "op", "seen")
    assert a.state == "NORM"
    assert len(e.alerts) == 1


def test_shelve_and_expiry() -> None:
    e, c = engine()
    for _ in range(3):
        feed(e, c, 4.0)
        c.t += 5
    a = the_alert(e)
    with pytest.raises(AlertError) as err:
        e.shelve(a.id, "op", 10**9)
    assert err.value.status == 400
    e.shelve(a.id, "op", 60)
    assert a.state == "SHLVD"
    c.t += 59
    e.tick()
    assert a.state == "SHLVD"
    c.t += 1
    e.tick()
    assert a.state == "UNACK"
    e.shelve(a.id, "op", 60)
    e.shelve(a.id, "op", 0)  # unshelve
    assert a.state == "UNACK"


def test_root_cause_suppresses_its_blast_radius() -> None:
    e, c = engine()
    # 4 racks with a GPU each hot, one CDU feeding the first 2 racks trips its pump first
    e.observe("flow_frac", ["CDU01"], [0.1], owner="CDU01", blast=("R0001", "R0002"))
    root = e.alerts[alert_id("CDU01", "flow", "CDU01")]
    assert root.state == "UNACK" and root.blast == ("R0001", "R0002")
    for rack in ("R0001", "R0002", "R0003"):
        for _ in range(3):
            feed(e, c, 3.0, rack=rack)
            c.t += 5
    states = {r: the_alert(e, rack=r).state for r in ("R0001", "R0002", "R0003")}
    assert states == {"R0001": "DSUPR", "R0002": "DSUPR", "R0003": "UNACK"}
    assert the_alert(e, rack="R0001").suppressed_by == root.id
    assert e.raised_total == 2  # the root cause and R0003: suppressed raises are not news
    e.observe("flow_frac", ["CDU01"], [0.9], owner="CDU01", blast=("R0001", "R0002"))
    assert root.state == "RTNUN"
    assert the_alert(e, rack="R0001").state == "UNACK"  # still hot once the root is gone


def test_flood_after_eemua_191() -> None:
    e, c = engine()
    n = 11
    ents = gpus(n)
    for _ in range(3):
        e.observe("margin_k", ents, np.full(n, 2.0), owner="R0001")
        c.t += 5
    assert e.raised_total == 11 and e.flood and e.floods_total == 1
    c.t += 600
    e.tick()
    assert not e.flood and e.floods_total == 1


def test_events_go_to_the_event_log_not_the_alert_list() -> None:
    e, c = engine()
    e.observe("capped_bool", gpus(), [1, 0, 0, 1], owner="R0001")
    c.t += 1
    e.observe("capped_bool", gpus(), [1, 0, 0, 0], owner="R0001")
    assert not e.alerts
    log = [(ev["entity"], ev["transition"]) for ev in e.events]
    assert log == [("R0001/g0", "raised"), ("R0001/g3", "raised"), ("R0001/g3", "cleared")]


def test_out_of_service() -> None:
    e, _ = engine()
    e.observe("flow_frac", ["CDU01"], [0.1], owner="CDU01")
    a = e.alerts[alert_id("CDU01", "flow", "CDU01")]
    e.set_out_of_service("CDU01", True)
    assert a.state == "OOSRV"
    e.set_out_of_service("CDU01", False)
    assert a.state == "UNACK"


def test_nan_neither_raises_nor_clears_and_quiet_entities_cost_nothing() -> None:
    e, c = engine()
    n = 10_000
    ents = gpus(n)
    e.observe("margin_k", ents, np.full(n, 30.0), owner="R0001")
    assert not e.alerts and not e.pending and not e._tracked
    bad = np.full(n, 30.0)
    bad[7] = 2.0
    for _ in range(3):
        e.observe("margin_k", ents, bad, owner="R0001")
        c.t += 5
    a = e.alerts[alert_id("R0001", "margin", "R0001/g7")]
    nan = bad.copy()
    nan[7] = np.nan
    for _ in range(5):
        e.observe("margin_k", ents, nan, owner="R0001")
        c.t += 5
    assert a.active and len(e.alerts) == 1
    with pytest.raises(ValueError, match="owner"):
        e.observe("margin_k", ["x"], [1.0], owner="../x")


def test_changes_list_each_transition_once() -> None:
    e, c = engine()
    for _ in range(3):
        feed(e, c, 4.0)
        c.t += 5
    changed, removed = e.take_changes()
    assert [(a.rule, a.state) for a in changed] == [("margin", "UNACK")] and not removed
    feed(e, c, 4.5)  # a new value, same state: not a change
    assert e.take_changes() == ([], [])
    e.ack(the_alert(e).id, "op", "x")
    assert [a.state for a in e.take_changes()[0]] == ["ACKED"]
    for _ in range(3):
        feed(e, c, 9.0)
        c.t += 3
    e.take_changes()
    c.t += 3601
    e.tick()
    changed, removed = e.take_changes()
    assert removed == [the_alert_id()] and not e.alerts


def the_alert_id() -> str:
    return alert_id("R0001", "margin", "R0001/g1")


def _script(e: AlertEngine, c: Clock) -> None:
    for step in range(40):
        c.t += 2.5
        e.observe(
            "margin_k",
            gpus(6),
            margins(6, {1: 4.0, 3: 2.0 if step < 20 else 9.0}),
            owner="R0001",
            where={"rack": "R0001"},
        )
        e.observe("capped_bool", gpus(6), [step % 7 == 0] * 6, owner="R0001")
        e.observe(
            "flow_frac",
            ["CDU01"],
            [0.4 if 10 < step < 15 else 1.0],
            owner="CDU01",
            blast=("R0001",),
        )
        if step == 25 and e.alerts[the_alert_id()].state in ("UNACK", "RTNUN"):
            e.ack(the_alert_id(), "op", "looking")
        e.tick()


def test_snapshot_restore_goes_on_identically() -> None:
    a, ca = engine()
    _script(a, ca)
    b, cb = engine(Clock(ca.t))
    b.restore(a.snapshot())
    assert b.snapshot() == a.snapshot()
    _script(a, ca)
    _script(b, cb)
    assert b.snapshot() == a.snapshot()
    assert [x.to_dict() for x in b.listing()] == [x.to_dict() for x in a.listing()]


def test_table_values_round_trip_and_restore_keeps_the_newest() -> None:
    e, c = engine()
    for _ in range(3):
        feed(e, c, 4.0)
        c.t += 5
    a = the_alert(e)
    e.ack(a.id, "op", "mine")
    data = a.to_bytes()
    f, _ = engine(c)
    from models.alerting import Alert

    f.restore_alert(Alert.from_bytes(data))
    assert f.alerts[a.id].to_dict() == a.to_dict()
    # the restored alert is tracked: it clears when the value recovers
    for _ in range(3):
        feed(f, c, 9.0)
        c.t += 3
    assert f.alerts[a.id].state == "NORM"


def test_listing_filters_and_counts() -> None:
    e, c = engine()
    e.observe("flow_frac", ["CDU01"], [0.1], owner="CDU01")
    for _ in range(3):
        feed(e, c, 4.0, rack="R0009")
        c.t += 5
    assert [a.rule for a in e.listing()] == ["flow", "margin"]  # critical first
    assert [a.rule for a in e.listing(severity="major")] == ["margin"]
    assert [a.rule for a in e.listing(entity="R0009")] == ["margin"]
    assert e.listing(state="ACKED") == []
    assert e.counts() == {("UNACK", "critical"): 1, ("UNACK", "major"): 1}


def test_a_root_cause_held_by_another_worker_suppresses_here_too() -> None:
    e, c = engine()
    for _ in range(3):
        feed(e, c, 3.0, rack="R0002")
        c.t += 5
    a = the_alert(e, rack="R0002")
    assert a.state == "UNACK"
    e.set_external_roots({"CDU01.flow.x": ("R0001", "R0002")})
    assert (a.state, a.suppressed_by) == ("DSUPR", "CDU01.flow.x")
    e.set_external_roots({})
    assert a.state == "UNACK" and a.suppressed_by is None
    # a raise inside an external blast radius is suppressed from the start
    e.set_external_roots({"UPS01.ups.y": ("R0003",)})
    for _ in range(3):
        feed(e, c, 3.0, rack="R0003")
        c.t += 5
    assert the_alert(e, rack="R0003").state == "DSUPR"
    b, _ = engine(Clock(c.t))
    b.restore(e.snapshot())
    assert b.snapshot() == e.snapshot()


def test_observe_many_is_one_observe_per_owner() -> None:
    """All racks' GPUs in one call give the same alerts, transitions and events as one call
    per rack (the worker's hot path at the campus)."""
    rng = np.random.default_rng(5)
    racks = ["R0001", "R0002", "R0003"]
    ents = np.concatenate([gpus(8, r) for r in racks])
    owner_ix = np.repeat(np.arange(3), 8)
    where = {r: {"rack": r} for r in racks}
    a, ca = engine()
    b, cb = engine(Clock(ca.t))
    bad = np.zeros(ents.size, dtype=bool)
    for _ in range(120):
        bad ^= rng.random(ents.size) < 0.03  # GPUs go hot and come back for a while
        v = np.where(bad, 2.0 + 6.0 * rng.random(ents.size), 20.0)
        v[rng.random(ents.size) < 0.02] = np.nan
        for k, r in enumerate(racks):
            sl = slice(8 * k, 8 * k + 8)
            a.observe("margin_k", ents[sl], v[sl], owner=r, where=where[r])
        b.observe_many("margin_k", ents, v, owner_ix, racks, where=where)
        ca.t += 5
        cb.t += 5
    assert a.raised_total > 5
    assert a.snapshot() == b.snapshot()
    assert [e["id"] for e in a.events] == [e["id"] for e in b.events]
    with pytest.raises(ValueError, match="owner"):
        b.observe_many("margin_k", ents[:1], [1.0], [0], ["bad owner"])
