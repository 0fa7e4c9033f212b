"""Out of service (ISA-18.2 OOSRV) from the API: commands, engine records, snapshot."""

from __future__ import annotations

import json

import pytest

from models.alerting import AlertEngine, alert_id
from streams.alert_views import (
    CommandError,
    apply_command,
    command_owner,
    entity_owner,
    parse_command,
)
from tests.models.test_alerting import Clock, engine, gpus, margins


def test_entity_owner() -> None:
    assert entity_owner("R0003/g12") == "R0003"
    assert entity_owner("R0003") == "R0003"
    assert entity_owner("CDU01") == "CDU01"
    for bad in ("", "../etc", "R0001/g1/x", "R 1", "a" * 65, "R0001/"):
        assert entity_owner(bad) is None, bad


def test_service_commands_parse_and_route() -> None:
    cmd = parse_command(b'{"oos": true, "reason": "pump swap", "by": "ann"}', "service", "CDU01")
    assert cmd == {
        "op": "service",
        "entity": "CDU01",
        "oos": True,
        "by": "ann",
        "reason": "pump swap",
    }
    assert command_owner(cmd) == "CDU01"
    fwd = parse_command(json.dumps(cmd | {"entity": "R0003/g12", "oos": False}).encode())
    assert fwd["entity"] == "R0003/g12" and fwd["oos"] is False
    assert command_owner(fwd) == "R0003"
    assert command_owner(parse_command(b"{}", "ack", "R0001.x.y")) == "R0001"


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"entity": "../x", "oos": True}, "entity"),
        ({"entity": "R0001", "oos": "yes"}, "oos"),
        ({"entity": "R0001"}, "oos"),
        ({"entity": "R0001", "oos": True, "reason": 5}, "reason"),
        ({"entity": "R0001", "oos": True, "reason": "x" * 1001}, "reason"),
        ({"entity": "R0001", "oos": True, "by": ""}, "by"),
    ],
)
def test_bad_service_commands_are_refused(doc: dict[str, object], why: str) -> None:
    with pytest.raises(CommandError, match=why):
        parse_command(json.dumps(doc | {"op": "service"}).encode())


def test_out_of_service_before_the_raise_neither_shows_nor_counts() -> None:
    e, c = engine()
    cmd = parse_command(b'{"oos": true, "reason": "fan swap", "by": "ann"}', "service", "R0001/g2")
    out = apply_command(e, cmd)
    assert out["out_of_service"] is True
    assert out["note"] == {"entity": "R0001/g2", "by": "ann", "reason": "fan swap", "since_s": c.t}
    for _ in range(12):  # margin rule: for_s = 10
        e.observe("margin_k", gpus(), margins(bad={2: 3.0, 1: 3.0}), owner="R0001")
        c.t += 1
    oos = e.alerts[alert_id("R0001", "margin", "R0001/g2")]
    other = e.alerts[alert_id("R0001", "margin", "R0001/g1")]
    assert oos.state == "OOSRV" and other.state == "UNACK"
    assert e.raised_total == 1  # only the GPU in service reached the operator
    assert e.take_service_changes() == [("R0001/g2", out["note"])]
    assert e.take_service_changes() == []
    assert [n["entity"] for n in e.service_listing()] == ["R0001/g2"]

    back = parse_command(b'{"oos": false, "by": "ann"}', "service", "R0001/g2")
    apply_command(e, back)
    assert oos.state == "UNACK"  # still hot: back in service it is news again
    assert e.take_service_changes() == [("R0001/g2", None)]
    assert e.service_listing() == []


def test_a_rack_out_of_service_covers_its_gpus_and_survives_a_snapshot() -> None:
    e, c = engine()
    e.set_out_of_service("R0001", True, by="bob", reason="rebuild")
    for _ in range(12):
        e.observe("margin_k", gpus(), margins(bad={0: 3.0}), owner="R0001")
        c.t += 1
    a = e.alerts[alert_id("R0001", "margin", "R0001/g0")]
    assert a.state == "OOSRV" and e.raised_total == 0

    restored = AlertEngine(e.rules, clock=Clock(c.t))
    restored.restore(e.snapshot())
    assert restored.out_of_service == {"R0001"}
    assert restored.service_notes["R0001"]["reason"] == "rebuild"
    assert restored.alerts[a.id].state == "OOSRV"

    # a snapshot written before notes were kept still loads
    doc = json.loads(e.snapshot())
    del doc["service_notes"]
    old = AlertEngine(e.rules, clock=Clock(c.t))
    old.restore(json.dumps(doc).encode())
    assert old.out_of_service == {"R0001"}
    assert old.service_listing()[0]["by"] is None


def test_restore_service_replaces_the_set_and_refreshes_alerts() -> None:
    e, c = engine()
    for _ in range(12):
        e.observe("margin_k", gpus(), margins(bad={0: 3.0}), owner="R0001")
        c.t += 1
    a = e.alerts[alert_id("R0001", "margin", "R0001/g0")]
    assert a.state == "UNACK"
    note = {"entity": "R0001", "by": "bob", "reason": "x", "since_s": 1.0}
    e.restore_service({"R0001": note})
    assert a.state == "OOSRV"
    e.restore_service({})
    assert a.state == "UNACK" and e.out_of_service == set()
