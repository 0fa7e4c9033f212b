"""The facility model inside a worker: feeds twin.tracker from the runtime's latest readings.

One worker (the owner of the ``facility`` key's partition) runs it. It observes every rack
(per GPU where it owns the rack, the rack mean from twin.state otherwise) and every plant
unit, steps the model to now, and exposes its expectations: model KPIs, per-rack thermal
headroom, and the expected value of each plant sensor beside the measured one. The model is
not checkpointed: its state follows from recent inputs, and a fresh tracker warms up to the
operating point on its first step (twin/tracker.py); the GPU fits, which take long to
converge, are checkpointed per rack instead (streams/rackmodel.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from streams.runtime import TwinRuntime
from streams.schema import RESIDUAL_SCHEMA, TS_TYPE
from twin.site import Site
from twin.snapshot import TwinSnapshot
from twin.tracker import FacilityTracker


class FacilityModel:
    """A FacilityTracker fed from a TwinRuntime."""

    def __init__(self, site: Site, *, site_file: str, start_ms: int) -> None:
        self.site = site
        self.tracker = FacilityTracker(site, start_ms=start_ms, site_file=site_file)
        self.steps = 0

    @classmethod
    def from_snapshot(cls, site: Site, snap: TwinSnapshot) -> FacilityModel:
        """Resume from a worker snapshot that holds the model state."""
        model = cls.__new__(cls)
        model.site = site
        model.tracker = FacilityTracker.restore(site, snap)
        model.steps = 0
        return model

    def observe(self, rt: TwinRuntime) -> None:
        """Take every input the runtime knows (own racks per GPU, others as rack means), and
        the measured die temperatures for the headroom (per GPU, or a rack's hottest)."""
        tr = self.tracker
        for rack, state in rt.racks.items():
            idx = np.flatnonzero(state.present)
            if idx.size:
                v = state.values
                tr.observe_rack_gpus(
                    rack, idx, v["util_pct"][idx], v["power_limit_w"][idx],
                    clock_event_reasons=v["clock_event_reasons"][idx],
                    temp_gpu_c=v["temp_gpu_c"][idx], ts_ms=state.ts_ms[idx],
                )  # fmt: skip
        for rack, summary in rt.viewed_rack_summaries().items():
            if "util_mean_pct" in summary:
                hottest, ts = summary.get("temp_gpu_max_c"), summary.get("ts_ms")
                tr.observe_rack_mean(
                    rack, float(summary["util_mean_pct"]),
                    temp_gpu_max_c=float(hottest) if isinstance(hottest, (int, float)) else None,
                    ts_ms=int(ts) if isinstance(ts, int) else None,
                )  # fmt: skip
        for unit, points in rt.unit_values().items():
            tr.observe_points(unit, points)

    def advance(self, ts_ms: int) -> None:
        """Step the model to ``ts_ms`` [ms since epoch]."""
        self.tracker.advance(ts_ms)
        self.steps += 1

    def view(self, rt: TwinRuntime) -> dict[str, Any]:
        """Model KPIs, per-rack headroom and expected vs measured plant points. A rack's
        ``headroom_k`` is what an operator reads: slowdown minus the worst GPU, measured or
        predicted (twin/tracker.py rack_headroom); ``model_headroom_k`` and
        ``measured_headroom_k`` are the two apart."""
        tr = self.tracker
        head = tr.rack_headroom()
        expected = tr.expected_points()
        measured = rt.unit_values()
        units = {
            u: {p: {"measured": measured[u][p], "expected": e} for p, e in pts.items()
                if p in measured.get(u, {})}
            for u, pts in expected.items()
        }  # fmt: skip
        return {
            "ts_ms": tr.ts_ms,
            "kpis": tr.kpis(),
            "headroom": {
                rack: {
                    "headroom_k": _num(head["headroom_k"][i]),
                    "model_headroom_k": _num(head["model_headroom_k"][i]),
                    "measured_headroom_k": _num(head["measured_headroom_k"][i]),
                    "seconds_to_throttle_s": _num(head["seconds_to_throttle_s"][i]),
                }
                for i, rack in enumerate(self.site.rack_ids)
            },
            "units": {u: v for u, v in units.items() if v},
        }

    def residual_batches(self, rt: TwinRuntime) -> dict[str, pa.RecordBatch]:
        """twin.residuals rows per plant unit: measured minus the model's expectation."""
        ts = self.tracker.ts_ms
        out: dict[str, pa.RecordBatch] = {}
        measured = rt.unit_values()
        for unit, pts in self.tracker.expected_points().items():
            have = measured.get(unit)
            if not have:
                continue
            names = [p for p in pts if p in have and np.isfinite(pts[p])]
            if not names:
                continue
            m = np.array([have[p] for p in names], dtype=np.float64)
            e = np.array([pts[p] for p in names], dtype=np.float64)
            out[unit] = pa.RecordBatch.from_arrays(
                [
                    pa.array(np.full(len(names), ts, dtype=np.int64)).cast(TS_TYPE),
                    pa.array([unit] * len(names), type=pa.string()),
                    pa.array(names, type=pa.string()),
                    pa.array(m),
                    pa.array(e),
                    pa.array(m - e),
                ],
                schema=RESIDUAL_SCHEMA,
            )
        return out

    def snapshot(self) -> TwinSnapshot:
        """The model state for ``twin whatif --from-url``."""
        return self.tracker.snapshot()


def _num(x: Any) -> float | None:
    f = float(x)
    return f if np.isfinite(f) else None
