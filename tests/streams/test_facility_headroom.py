"""The facility model's per-rack headroom in a worker (streams/facility.py): the worst GPU,
measured or predicted, from its slowdown limit, for the racks a worker owns (per GPU) and
those it knows by their summary (their hottest die)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streams.codec import decode_gpu_frame, encode_frame
from streams.facility import FacilityModel
from streams.runtime import TwinRuntime
from tests.streams.frames import known_gpu_batch
from twin.site import load_site

NOW = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def _frame_with_temps(rack: str, ts: int, temps: np.ndarray):  # type: ignore[no-untyped-def]
    batch = known_gpu_batch(rack, ts, temps.size, 0)
    i = batch.schema.get_field_index("temp_gpu_c")
    col = pa.array(temps, type=batch.schema.field(i).type)
    batch = batch.set_column(i, batch.schema.field(i), col)
    util = batch.schema.get_field_index("util_pct")
    batch = batch.set_column(
        util,
        batch.schema.field(util),
        pa.array(np.zeros(temps.size), batch.schema.field(util).type),
    )
    return decode_gpu_frame(encode_frame(batch), key=None, now_ms=ts)


def test_headroom_shows_a_hot_measured_gpu_the_model_does_not_predict() -> None:
    site = load_site(racks=16)
    rt = TwinRuntime(partitions=8, clock_ms=lambda: NOW)
    temps = np.full(72, 40.0)
    temps[12] = 82.0  # R0003/G12: NVML index 12 reads 82 C, 7 K below slowdown (89 C)
    rt.apply_gpu(_frame_with_temps("R0003", NOW, temps), "telemetry.gpu")
    rt.absorb_view(
        "rack/R0005",
        {"kind": "rack", "summary": {"rack": "R0005", "gpus": 72, "ts_ms": NOW,
                                     "util_mean_pct": 0.0, "temp_gpu_max_c": 85.0}},
    )  # fmt: skip
    fm = FacilityModel(site, site_file="", start_ms=NOW - 5_000)
    fm.observe(rt)
    fm.advance(NOW)
    head = fm.view(rt)["headroom"]
    # idle GPUs: the model's hottest die ~48.6 C, ~40 K from slowdown
    assert head["R0003"]["model_headroom_k"] > 30.0
    assert head["R0003"]["headroom_k"] == 7.0
    assert head["R0003"]["measured_headroom_k"] == 7.0
    assert head["R0005"]["headroom_k"] == 4.0  # 89 - 85, from the summary's hottest die
    assert head["R0001"]["measured_headroom_k"] is None  # nothing measured
    assert head["R0001"]["headroom_k"] == head["R0001"]["model_headroom_k"]
