"""SimFrame's columnar plant readings and its read-only contract (twin/sim.py)."""

from __future__ import annotations

import numpy as np
import pytest

from twin.faults import parse_fault
from twin.sim import Simulator
from twin.site import load_site

T0 = 1_767_225_600_000


def test_plant_groups_hold_the_same_readings_as_the_unit_dicts() -> None:
    sim = Simulator(load_site(racks=16), start_ms=T0)
    frame = sim.step(1.0)
    seen: dict[str, dict[str, dict[str, float]]] = {"thermal": {}, "power": {}}
    for g in frame.plant:
        assert g.values.shape == (len(g.ids), len(g.names))
        for i, unit in enumerate(g.ids):
            seen[g.kind][unit] = dict(zip(g.names, g.values[i].tolist(), strict=True))
    assert seen["thermal"] == frame.thermal
    assert seen["power"] == frame.power
    assert list(seen["thermal"]) == list(frame.thermal)  # the same unit order
    assert frame.thermal is frame.thermal  # built once


def test_a_held_frame_is_not_changed_by_later_steps() -> None:
    sim = Simulator(load_site(racks=16), start_ms=T0)
    frame = sim.step(60.0)
    gpu = {k: v.copy() for k, v in frame.gpu.items()}
    plant = [g.values.copy() for g in frame.plant]
    for _ in range(3):
        sim.step(60.0)
    for k, v in gpu.items():
        np.testing.assert_array_equal(frame.gpu[k], v, err_msg=k)
    for g, values in zip(frame.plant, plant, strict=True):
        np.testing.assert_array_equal(g.values, values)


def test_shared_columns_are_read_only_and_a_gpu_fault_gets_its_own() -> None:
    site = load_site(racks=16)
    frame = Simulator(site, start_ms=T0).step(1.0)
    for name in ("ecc_corrected", "xid", "power_limit_w", "clock_event_reasons"):
        with pytest.raises(ValueError, match="read-only"):
            frame.gpu[name][0, 0] = 1
    sim = Simulator(site, start_ms=T0, faults=[parse_fault("xid:R0002/G03@0,code=48")])
    a, b = sim.step(1.0), sim.step(1.0)
    assert a.gpu["xid"][1, 3] == 48 and b.gpu["xid"][1, 3] == 48
    assert a.gpu["xid"] is not b.gpu["xid"]
    assert a.gpu["ecc_uncorrected"][1, 3] == 1
    assert int(a.gpu["xid"].sum()) == 48  # only the faulty GPU
