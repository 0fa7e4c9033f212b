"""twin sim's plant frames from the simulator's columnar readings equal those from the
per-unit dicts, byte for byte (streams/sim_source.py frames_of)."""

from __future__ import annotations

from types import SimpleNamespace

from streams.sim_source import frames_of
from twin.faults import parse_fault
from twin.sim import Simulator
from twin.site import load_site


def test_columnar_plant_frames_equal_the_dict_frames() -> None:
    sim = Simulator(
        load_site(racks=16),
        start_ms=1_767_225_600_000,
        faults=[
            parse_fault("leak:CDU01@0,detect_s=0"),
            parse_fault("sensor_stuck:SITE/it_power_w@0"),
        ],
    )
    frame = sim.step(1.0)
    dicts = SimpleNamespace(
        ts_ms=frame.ts_ms, rack_ids=[], gpu={}, thermal=frame.thermal, power=frame.power
    )
    columnar = SimpleNamespace(ts_ms=frame.ts_ms, rack_ids=[], gpu={}, plant=frame.plant)
    want = frames_of(dicts)
    assert len(want) == len(frame.thermal) + len(frame.power)
    assert frames_of(columnar) == want
    assert [k for k, _, _ in want[:3]] == ["thermal"] * 3 and want[-1][:2] == ("power", "SITE")
