from __future__ import annotations

import numpy as np
import pyarrow as pa

from streams.codec import (
    decode_gpu_frame,
    decode_points_frame,
    encode_frame,
    gpu_batch,
    points_batch,
)
from streams.runtime import TwinRuntime, partition_for
from streams.schema import DEFAULT_SLOWDOWN_C, GPU_SCHEMA, GPU_SCHEMA_V1
from streams.state import RackState, UnitState, facility_summary
from tests.streams.frames import gpu_columns, known_gpu_batch, with_column

NOW = 1_795_000_000_000


def upgrade_free_v1_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The same rows as a telemetry.gpu/v1 batch (the v2 columns dropped)."""
    return pa.RecordBatch.from_arrays(
        [batch.column(f.name) for f in GPU_SCHEMA_V1], schema=GPU_SCHEMA_V1
    )


def _frame(rack: str, ts: int, n: int = 72, seed: int = 0):  # type: ignore[no-untyped-def]
    return decode_gpu_frame(encode_frame(known_gpu_batch(rack, ts, n, seed)), key=None, now_ms=NOW)


def test_rack_state_holds_exactly_the_latest_frame() -> None:
    rs = RackState("R1")
    rs.apply(_frame("R1", NOW - 1000, seed=1))
    rs.apply(_frame("R1", NOW, seed=2))
    rs.apply(_frame("R1", NOW - 500, seed=3))  # late frame must not win
    expected = known_gpu_batch("R1", NOW, seed=2)
    assert rs.to_batch().equals(expected)
    restored = RackState.from_bytes("R1", rs.to_bytes())
    assert restored.to_batch().equals(expected)


def test_partial_frames_merge_by_gpu_index() -> None:
    rs = RackState("R1")
    batch = known_gpu_batch("R1", NOW, n=4)
    sub = batch.filter(np.array([False, True, False, True]))
    rs.apply(decode_gpu_frame(encode_frame(sub), key=None, now_ms=NOW))
    d = rs.detail()
    assert d["gpu"] == [1, 3]
    assert d["power_w"] == sub.column("power_w").to_pylist()


def test_summary_hand_computed() -> None:
    rs = RackState("R1")
    rs.apply(_frame("R1", NOW, n=8))
    cols = gpu_columns(8)
    s = rs.summary()
    assert s["gpus"] == 8
    np.testing.assert_allclose(s["power_w"], cols["power_w"].astype(np.float64).sum(), rtol=1e-9)
    assert s["temp_gpu_max_c"] == float(cols["temp_gpu_c"].max())
    # throttled = thermal or hardware slowdown only; power capping (0x4) is counted apart
    throttled = int(((cols["clock_event_reasons"] & 0xE8) != 0).sum())
    assert s["throttled_gpus"] == throttled
    assert s["power_capped_gpus"] == int(((cols["clock_event_reasons"] & 0x4) != 0).sum())
    assert s["xid_gpus"] == int((cols["xid"] != 0).sum())
    assert s["hottest_gpu"] == f"R1/G{int(cols['temp_gpu_c'].argmax()):02d}"


def test_hottest_gpu_is_named_by_its_index_when_gpus_are_missing() -> None:
    # GPUs 1 and 3 of 4 report: the hottest is named by its NVML index, not its position
    temps = np.array([90.0, 50.0, 80.0, 60.0], dtype=np.float32)
    batch = with_column(known_gpu_batch("R7", NOW, n=4), "temp_gpu_c", temps)
    batch = batch.filter(np.array([False, True, False, True]))
    rs = RackState("R7")
    rs.apply(decode_gpu_frame(encode_frame(batch), key=None, now_ms=NOW))
    s = rs.summary()
    assert (s["hottest_gpu"], s["temp_gpu_max_c"]) == ("R7/G03", 60.0)
    cool = {"rack": "R8", "temp_gpu_max_c": 40.0, "hottest_gpu": "R8/G00"}
    fac = facility_summary([cool, s], {})
    assert (fac["hottest_gpu"], fac["temp_gpu_max_c"]) == ("R7/G03", 60.0)
    assert facility_summary([], {})["hottest_gpu"] is None


def test_throttle_reasons_are_counted_apart() -> None:
    # one GPU per reason: idle, power cap, HW slowdown, SW thermal, HW thermal, power brake,
    # HW thermal + HW slowdown (deep thermal throttle), power cap + SW thermal
    reasons = np.array([0x1, 0x4, 0x8, 0x20, 0x40, 0x80, 0x48, 0x24], dtype=np.uint64)
    cols = gpu_columns(8) | {"clock_event_reasons": reasons}
    rs = RackState("R1")
    rs.apply(decode_gpu_frame(encode_frame(gpu_batch(NOW, "R1", cols)), key=None, now_ms=NOW))
    s = rs.summary()
    assert s["power_capped_gpus"] == 2  # 0x4, 0x24
    assert s["thermal_slowdown_gpus"] == 4  # 0x20, 0x40, 0x48, 0x24
    assert s["hw_slowdown_gpus"] == 3  # 0x8, 0x80, 0x48
    assert s["throttled_gpus"] == 6  # everything but idle and the pure power cap
    fac = facility_summary([s, s], {})
    assert fac["power_capped_gpus"] == 4
    assert fac["throttled_gpus"] == 12
    assert fac["hw_slowdown_gpus"] == 6


def test_v1_checkpoint_restores_with_v2_defaults() -> None:
    v1 = upgrade_free_v1_batch(known_gpu_batch("R1", NOW, n=4))
    rs = RackState.from_bytes("R1", encode_frame(v1))
    temp = v1.column("temp_gpu_c").to_numpy()
    np.testing.assert_allclose(rs.values["thermal_margin_k"], DEFAULT_SLOWDOWN_C - temp)
    assert (rs.values["ecc_corrected"] == 0).all()
    assert rs.to_batch().schema.equals(GPU_SCHEMA)
    assert rs.summary()["thermal_margin_min_k"] == float(DEFAULT_SLOWDOWN_C - temp.max())


def test_unit_state_and_facility_pue() -> None:
    us = UnitState("SITE")
    f = decode_points_frame(
        encode_frame(points_batch(NOW, "SITE", {"it_power_w": 1e6, "facility_power_w": 1.08e6})),
        key=b"SITE",
        now_ms=NOW,
    )
    us.apply(f)
    assert UnitState.from_bytes(us.to_bytes()).points == us.points
    # each point's own time travels in twin.state: a stale one can be seen elsewhere
    assert us.summary()["points_ts_ms"] == {"it_power_w": NOW, "facility_power_w": NOW}
    fac = facility_summary([{"power_w": 5.0, "gpus": 1}], {"SITE": us.values()})
    assert fac["pue"] == 1.08


def test_pue_on_battery_counts_what_the_batteries_supply() -> None:
    # A UPS on battery: the grid meter reads only the mechanical plant (80 kW), the
    # batteries carry the IT load and the UPS losses; PUE must not fall below 1.
    site = {"it_power_w": 1e6, "facility_power_w": 8e4}
    ups = {"input_power_w": 0.0, "output_power_w": 1.005e6, "loss_w": 3e4, "on_battery_bool": 1.0}
    fac = facility_summary([{"power_w": 5.0, "gpus": 1}], {"SITE": site, "UPS01": ups})
    assert fac["battery_discharge_w"] == 1.035e6
    assert fac["pue"] == (8e4 + 1.035e6) / 1e6
    ups_mains = {**ups, "input_power_w": 1.035e6, "on_battery_bool": 0.0}
    fac = facility_summary([{"power_w": 5.0, "gpus": 1}], {"SITE": site, "UPS01": ups_mains})
    assert fac["battery_discharge_w"] == 0.0


def test_runtime_checkpoints_and_publications_are_bounded() -> None:
    rt = TwinRuntime(partitions=8, clock_ms=lambda: NOW)
    for i in range(10):  # ten frames of one rack -> one checkpoint and one publication
        rt.apply_gpu(_frame("R1", NOW - 10 + i, n=4, seed=i), "telemetry.gpu")
    racks, units = rt.take_checkpoints()
    assert list(racks) == ["R1"] and units == {}
    assert rt.take_checkpoints() == ({}, {})
    docs = rt.take_publications()
    assert list(docs) == ["rack/R1"]
    assert docs["rack/R1"]["summary"]["gpus"] == 4
    assert rt.counters.samples_in == 40


def test_runtime_view_merges_other_workers() -> None:
    rt = TwinRuntime(partitions=8, clock_ms=lambda: NOW)
    rt.apply_gpu(_frame("R1", NOW, n=2), "telemetry.gpu")
    rt.absorb_view(
        "rack/R2",
        {
            "kind": "rack",
            "summary": {"rack": "R2", "gpus": 3},
            "detail": {"rack": "R2", "gpu": [0]},
        },
    )
    assert set(rt.rack_summaries()) == {"R1", "R2"}
    assert rt.rack_detail("R2") == {"rack": "R2", "gpu": [0]}
    rt.absorb_view("rack/R2", None)
    assert set(rt.rack_summaries()) == {"R1"}


def test_partition_for_matches_java_murmur2() -> None:
    # Values from Kafka's DefaultPartitioner (Utils.murmur2 & 0x7fffffff % n).
    from aiokafka.partitioner import DefaultPartitioner

    for key in ("R0001", "R1250", "CDU01", "facility"):
        assert partition_for(key, 8) == DefaultPartitioner()(key.encode(), list(range(8)), [])


def test_summary_only_publications_keep_the_last_detail() -> None:
    rt = TwinRuntime(partitions=8, clock_ms=lambda: NOW)
    rt.apply_gpu(_frame("R1", NOW, n=2), "telemetry.gpu")
    full = rt.take_publications(detail=False)["rack/R1"]
    assert "detail" in full  # a rack's first publication always carries its detail
    rt.apply_gpu(_frame("R1", NOW + 1000, n=2, seed=5), "telemetry.gpu")
    brief = rt.take_publications(detail=False)["rack/R1"]
    assert "detail" not in brief
    other = TwinRuntime(partitions=8, clock_ms=lambda: NOW)
    other.absorb_view("rack/R1", full)
    other.absorb_view("rack/R1", brief)
    assert other.rack_detail("R1") == full["detail"]
    assert other.rack_summaries()["R1"]["ts_ms"] == NOW + 1000


def test_stalled_only_when_messages_wait_and_nothing_was_taken_for_a_minute() -> None:
    now = [1_000_000]
    rt = TwinRuntime(partitions=8, clock_ms=lambda: now[0])
    assert not rt.stalled(lag=5)  # just started
    now[0] += 61_000
    assert rt.stalled(lag=5)  # a minute since start, messages waiting, none taken
    assert not rt.stalled(lag=0)  # nothing waiting: idle, not stalled
    rt.record_position("telemetry.gpu", 0, 41)
    assert not rt.stalled(lag=5)
    now[0] += 59_000
    assert not rt.stalled(lag=5)
    now[0] += 2_000
    assert rt.stalled(lag=5)


def test_restores_never_let_fresh_frames_or_bad_checkpoints_win() -> None:
    # a fitted model checkpointed, then a restarted runtime applies a frame before the
    # restore: the restore still brings the fitted model back, and re-checkpoints it
    def fed(rt: TwinRuntime, ts: list[int]) -> None:
        rt.apply_points(
            decode_points_frame(
                encode_frame(points_batch(ts[0], "R1", {"inlet_temp_c": 40.0})),
                key=b"R1",
                now_ms=None,
                contract="telemetry.thermal",
            ),
            "telemetry.thermal",
        )
        rt.apply_gpus([_frame("R1", t, n=4, seed=i) for i, t in enumerate(ts)], "telemetry.gpu")

    old = TwinRuntime(partitions=8)
    fed(old, [NOW + 1000 * k for k in range(30)])
    ckpt = old.take_model_checkpoints()["R1"]
    rack_ckpt = old.take_checkpoints()[0]["R1"]
    new = TwinRuntime(partitions=8)
    fed(new, [NOW + 40_000, NOW + 41_000, NOW + 42_000])
    assert new.models.view("R1")["updates"] == [2] * 4
    new.restore_model("R1", ckpt)
    new.restore_rack("R1", rack_ckpt)  # older than what is held: ignored
    assert new.models.view("R1")["updates"] == [29] * 4
    assert new.racks["R1"].last_ts_ms == NOW + 42_000
    assert new.take_model_checkpoints() == {"R1": ckpt}  # merged, written again
    for bad in (b"", b"\x00junk"):
        new.restore_model("R1", bad)
        new.restore_rack("R2", bad)
        new.restore_unit(bad)
    assert new.counters.bad_checkpoints == 6 and "R2" not in new.racks
    assert new.models.view("R1")["updates"] == [29] * 4


def test_metrics_export_the_throttle_reasons_apart() -> None:
    from streams.metrics import render_metrics

    reasons = np.array([0x4, 0x4, 0x4, 0x20, 0x48, 0x0], dtype=np.uint64)
    cols = gpu_columns(6) | {"clock_event_reasons": reasons}
    rt = TwinRuntime(partitions=8)
    frame = decode_gpu_frame(encode_frame(gpu_batch(NOW, "R7", cols)), key=None, now_ms=NOW)
    rt.apply_gpu(frame, "telemetry.gpu")
    text = render_metrics(rt, {}).decode()
    assert 'twin_rack_power_capped_gpus{rack="R7"} 3.0' in text
    assert 'twin_rack_throttled_gpus{rack="R7"} 2.0' in text
    assert 'twin_rack_thermal_slowdown_gpus{rack="R7"} 2.0' in text
    assert 'twin_rack_hw_slowdown_gpus{rack="R7"} 1.0' in text
    margin = float(DEFAULT_SLOWDOWN_C - cols["temp_gpu_c"].max())
    assert f'twin_rack_thermal_margin_min_kelvin{{rack="R7"}} {margin}' in text
