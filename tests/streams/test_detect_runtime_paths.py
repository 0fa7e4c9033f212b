"""The detector runtime's fast paths score exactly as its general ones
(streams/detect_runtime.py): a worker holding every series of the site in order runs the
detectors in place; one with slots it does not score gathers by index; racks seen narrower
or with GPUs missing are cut per rack; identification is asked only of the GPUs not yet
identified."""

from __future__ import annotations

import numpy as np
import pytest

from models.alerting import AlertEngine
from models.rules import load_rules
from streams.alert_sources import site_map
from streams.detect_runtime import GPU_DETECTORS, DetectRuntime, detect_runtime_for_site
from tests.streams.test_detect_runtime import Rig
from twin.estimator import ThermalEstimator


def _spare_slot_twin(rig: Rig) -> DetectRuntime:
    """The site's runtime with a slot before the site's racks: never scored, so its GPU index
    is not 0..n-1 and every call goes by index."""
    base = detect_runtime_for_site(rig.site)
    return DetectRuntime(
        ["SPARE", *rig.site.rack_ids],
        base.width,
        cp_j_kgk=base.cp_j_kgk,
        ups_ids=base.ups_ids,
        ups=base.ups,
    )


def test_whole_site_in_place_scores_as_by_index(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    at = ThermalEstimator.r_identified_at

    def spy(self: ThermalEstimator, index: np.ndarray) -> np.ndarray:
        asked.append(len(index))
        return at(self, index)

    monkeypatch.setattr(ThermalEstimator, "r_identified_at", spy)
    # three training racks whose power steps let their R be identified, one inference rack
    # that holds its power (never identified): a quarter left to ask, by subset
    rig = Rig(["fouling:R0001/G07@150,rate_per_s=0.01,max=3"], racks=4)
    rig.sim._plan.phase_s[:] = rig.sim._plan.period_s - 100.0
    twin = _spare_slot_twin(rig)
    engine_a = AlertEngine(load_rules(None), clock=lambda: rig.now / 1000.0)
    engine_b = AlertEngine(load_rules(None), clock=lambda: rig.now / 1000.0)
    sm = site_map(rig.site)
    for k in range(260):
        rig.frames()
        if k % 9 == 4:  # a rack with GPUs missing now and then (per-rack power sums)
            state = rig.rt.racks["R0002"]
            state.present[10:20] = False
        rig.det.evaluate(rig.rt, lambda _k: True)
        twin.evaluate(rig.rt, lambda _k: True)
        now_s = rig.now / 1000.0
        rig.det.feed(engine_a, sm.gpu_names, sm.rack_where, now_s)
        twin.feed(engine_b, sm.gpu_names, sm.rack_where, now_s)
        if k % 9 == 4:
            rig.rt.racks["R0002"].present[10:20] = True
    assert rig.det._whole and not twin._whole
    assert asked  # the GPUs not identified yet were asked alone
    for rack in rig.site.rack_ids:
        for name in rig.det.gpu_score:
            np.testing.assert_array_equal(
                rig.det.gpu_scores(rack, name), twin.gpu_scores(rack, name), err_msg=name
            )
        a, b = rig.det.rack_no[rack], twin.rack_no[rack]
        assert rig.det.rack_score[a] == twin.rack_score[b]
        assert rig.det.coolant_ref_score[a] == twin.coolant_ref_score[b]
    w = rig.det.width
    for name in GPU_DETECTORS:
        for key, v in rig.det.gpu[name]._state.items():
            np.testing.assert_array_equal(v, twin.gpu[name]._state[key][w:], err_msg=key)
    assert rig.det.gpu_scores("R0001", "r_ident").all()
    fired_a = sorted((x.rule, x.entity) for x in engine_a.take_changes()[0])
    fired_b = sorted((x.rule, x.entity) for x in engine_b.take_changes()[0])
    assert fired_a == fired_b
