"""The worker's detector runtime over the simulator's frames (streams/detect_runtime.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from models.alerting import AlertEngine
from models.rules import load_rules
from streams.alert_sources import site_map
from streams.codec import decode_points_frame, encode_frame, gpu_batch, points_batch
from streams.codec_batch import GpuMessage, decode_gpu_frames
from streams.detect_runtime import (
    GPU_SCORES,
    DetectCollector,
    DetectRuntime,
    detect_runtime_for_site,
)
from streams.runtime import TwinRuntime
from twin.faults import parse_fault
from twin.sim import Simulator
from twin.site import load_site
from twin.step import rack_design_flow_kg_s

START_MS = 1_767_225_600_000


class Rig:
    """Simulator -> decoders -> TwinRuntime -> DetectRuntime, one 1 s step per tick."""

    def __init__(self, faults: list[str], racks: int = 2, seed: int = 3) -> None:
        self.site = load_site(None, racks=racks)
        self.sim = Simulator(
            self.site, seed=seed, start_ms=START_MS, faults=[parse_fault(f) for f in faults]
        )
        self.now = START_MS
        self.rt = TwinRuntime(
            partitions=1,
            clock_ms=lambda: self.now,
            rack_design_flow_kg_s=rack_design_flow_kg_s(self.site),
        )
        self.det = detect_runtime_for_site(self.site)

    def frames(self) -> None:
        f = self.sim.step(1.0)
        self.now = f.ts_ms
        msgs = [
            GpuMessage(
                encode_frame(gpu_batch(f.ts_ms, r, {k: a[i] for k, a in f.gpu.items()})),
                r.encode(),
                False,
            )
            for i, r in enumerate(f.rack_ids)
        ]
        self.rt.apply_gpus([g for g in decode_gpu_frames(msgs, now_ms=f.ts_ms)], "gpu")  # type: ignore[misc]
        for units in (f.thermal, f.power):
            for unit, pts in units.items():
                data = encode_frame(points_batch(f.ts_ms, unit, pts))
                self.rt.apply_points(decode_points_frame(data, key=None, now_ms=f.ts_ms), "p")

    def run(self, steps: int, det: DetectRuntime | None = None) -> None:
        for _ in range(steps):
            self.frames()
            (det or self.det).evaluate(self.rt, lambda _k: True)


def _all(_k: str) -> bool:
    return True


def test_restore_gives_identical_scores() -> None:
    rig = Rig([])
    rig.run(120)
    blobs = rig.det.checkpoints(list(rig.site.rack_ids))
    assert set(blobs) == {*rig.site.rack_ids, *rig.site.ups_ids}  # the UPS modules scored
    twin = detect_runtime_for_site(rig.site)
    assert twin.restore(blobs) == len(blobs)
    for _ in range(40):
        rig.frames()
        rig.det.evaluate(rig.rt, _all)
        twin.evaluate(rig.rt, _all)
        for name, arr in rig.det.gpu_score.items():
            np.testing.assert_array_equal(arr, twin.gpu_score[name], err_msg=name)
        np.testing.assert_array_equal(rig.det.rack_score, twin.rack_score)
        assert rig.det.ups_score == twin.ups_score
    for name, d in rig.det.gpu.items():
        for k, v in d.snapshot().items():
            np.testing.assert_array_equal(v, twin.gpu[name].snapshot()[k], err_msg=f"{name}.{k}")


def test_bad_checkpoint_is_skipped_and_counted() -> None:
    rig = Rig([])
    rig.run(5)
    good = rig.det.checkpoints(["R0001"])["R0001"]
    before = rig.det.gpu_score["residual"].copy()
    assert rig.det.restore({"R0001": good[:-7], "R0002": b"junk"}) == 0
    assert rig.det.bad_checkpoints == 2
    np.testing.assert_array_equal(before, rig.det.gpu_score["residual"])


def test_fouling_raises_own_score_of_that_gpu_only() -> None:
    rig = Rig(["fouling:R0001/G07@420,rate_per_s=0.01,max=3"])
    # a checkpoint dip of the training job (R0001) at 100-160 s: the power steps that let
    # the estimator identify each GPU's R (the R trend watches only identified GPUs; the
    # inference rack R0002 holds its power and is not identified)
    plan = rig.sim._plan
    plan.phase_s[:] = plan.period_s - 100.0
    rig.run(700)
    assert rig.det.gpu_scores("R0001", "r_ident").all()
    own = rig.det.gpu_scores("R0001", "r_trend")
    common = rig.det.gpu_scores("R0001", "r_trend_common")
    assert own[7] > 0.9
    others = np.delete(own, 7)
    assert others.max() < 0.5
    assert common.max() < 0.5
    assert rig.det.gpu_scores("R0002", "r_trend").max() < 0.5


def test_coolant_sensor_bias_raises_common_score_of_the_whole_rack() -> None:
    # the rack's inlet sensor drifts 3 K within a minute: every GPU of the rack looks off the
    # model the same way, which is no single GPU's fault; the one-step residuals see only
    # (1 - a) of it, the rack's coolant-reference drift (fitted offset less the median steady
    # residual, models/physics.py CoolantReferenceDrift) all of it
    rig = Rig(["sensor_drift:R0002/inlet_temp_c@400,rate_per_s=0.05"])
    rig.run(490)
    common = rig.det.gpu_scores("R0002", "drift_common")
    assert common.min() > 0.9
    for name in ("residual", "r_trend"):  # no single GPU stands out
        assert rig.det.gpu_scores("R0002", name).max() < 0.5
    for name in ("drift_common", "residual_common", "r_trend_common", "drift"):
        assert rig.det.gpu_scores("R0001", name).max() < 0.5, name


def test_feed_raises_score_alerts_and_metrics_are_bounded() -> None:
    rig = Rig(["fouling:R0001/G07@420,rate_per_s=0.01,max=3"])
    plan = rig.sim._plan  # a checkpoint dip at 100-160 s identifies R0001's R
    plan.phase_s[:] = plan.period_s - 100.0
    engine = AlertEngine(load_rules(None), clock=lambda: rig.now / 1000.0)
    sm = site_map(rig.site)
    for _ in range(700):
        rig.frames()
        rig.det.evaluate(rig.rt, _all)
        rig.det.feed(engine, sm.gpu_names, sm.rack_where, rig.now / 1000.0)
        engine.tick(rig.now / 1000.0)
    raised = {(a.rule, a.entity) for a in engine.take_changes()[0]}
    assert ("gpu_r_trend_own", "R0001/g7") in raised
    assert not any(e.startswith("R0002") for _r, e in raised)
    fams = {f.name: f for f in DetectCollector(rig.det, rig.rt, top_k=3).collect()}
    top = fams["twin_detector_top_gpu_score"].samples
    assert len(top) <= 3 * len(GPU_SCORES)  # top k per detector, whatever the GPU count
    rack = fams["twin_detector_rack_score"].samples
    assert {s.labels["rack"] for s in rack} == {"R0001", "R0002"}
    best = max((s for s in top if s.labels["detector"] == "r_trend"), key=lambda s: s.value)
    assert best.labels["gpu"] == "R0001/g7"


@pytest.mark.parametrize("n", [0, 1])
def test_units_scored_from_the_facility_view(n: int) -> None:
    det = DetectRuntime(["R0001"], 4)
    rt = TwinRuntime(partitions=1, clock_ms=lambda: 0)
    points: Callable[[float, float], dict[str, object]] = lambda t, r: {  # noqa: E731
        "ts_ms": int(t * 1000),
        "units": {"CDU01": {"supply_temp_c": {"measured": 40.0 + r, "expected": 40.0}}},
    }
    rng = np.random.default_rng(n)
    for t in range(1, 200):
        det.evaluate(rt, _all, facility_view=points(t, 0.05 * rng.standard_normal()))
    assert det.unit_scores()["CDU01/supply_temp_c"] < 0.5
    for t in range(200, 230):
        det.evaluate(rt, _all, facility_view=points(t, 3.0))
    assert det.unit_scores()["CDU01/supply_temp_c"] > 0.9
    blob = det.checkpoints([], facility=True)
    other = DetectRuntime(["R0001"], 4)
    assert other.restore(blob) == 1
    assert other.unit_scores() == det.unit_scores()


def test_the_campus_unit_checkpoint_fits_a_kafka_message_and_restores_bit_for_bit() -> None:
    """~7,200 plant points at the campus (1,250 racks x 5 manifold points, 157 CDUs x 6):
    the facility checkpoint must stay under Kafka's 1 MB message size; a format-1 pack (every
    field in full, keys as UTF-32) still restores."""
    from streams.arraypack import pack_arrays, unpack_arrays
    from streams.detect_runtime import FACILITY_KEY

    rack_pts = ("inlet_temp_c", "outlet_temp_c", "flow_kg_s", "heat_to_liquid_w", "heat_to_air_w")
    cdu_pts = ("supply_temp_c", "return_temp_c", "flow_kg_s", "facility_supply_temp_c",
               "facility_return_temp_c", "pump_power_w")  # fmt: skip
    keys = [(f"R{i:04d}", p) for i in range(1, 1251) for p in rack_pts]
    keys += [(f"CDU{c:03d}", p) for c in range(1, 158) for p in cdu_pts]
    rng = np.random.default_rng(0)

    def view(t: int) -> dict[str, object]:
        units: dict[str, dict[str, object]] = {}
        noise = rng.normal(0.0, 0.1, len(keys))
        for (u, p), r in zip(keys, noise, strict=True):
            units.setdefault(u, {})[p] = {"measured": 40.0 + r, "expected": 40.0}
        return {"ts_ms": START_MS + t * 10_000, "units": units}

    det = DetectRuntime([], 72)
    for t in range(40):
        det._score_units(view(t))
    blob = det.checkpoints([], facility=True)[FACILITY_KEY]
    assert len(blob) < 1_000_000, len(blob)
    # format 1, as written before: every field in full, keys as a UTF-32 array
    old = {"keys": np.array(sorted(det.unit_no, key=det.unit_no.__getitem__), dtype=np.str_)}
    for name, d in det.unit.items():
        old |= {f"unit.{name}.{k}": v for k, v in d._state.items()}
    old["score.unit"] = det.unit_score
    for pack in (blob, pack_arrays(old)):
        other = DetectRuntime([], 72)
        assert other.restore({FACILITY_KEY: pack}) == 1
        for name, d in det.unit.items():
            for k, v in d.snapshot().items():
                np.testing.assert_array_equal(v, other.unit[name].snapshot()[k], err_msg=k)
    # The plant-lag context (the last 30 s of expectations and the previous reading,
    # models/lag.py) is not in the checkpoint (it would not fit the message at the campus):
    # a restored runtime scores nothing at its first view, then, its window refilled, the
    # same as the original (its detectors' state restored bit for bit above).
    other._score_units(view(40))
    det._score_units(view(40))
    assert np.isfinite(other.unit_score).all()
    for t in range(41, 46):
        nxt = view(t)
        other._score_units(nxt)
        det._score_units(nxt)
    np.testing.assert_allclose(det.unit_score, other.unit_score, atol=0.05)
    assert "keys" not in unpack_arrays(blob)
