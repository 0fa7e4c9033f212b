"""The twin's live state per rack and per plant unit, updated a whole frame at a time.

Pure code (numpy and pyarrow): the Faust agents call it, tests call it directly. A rack's
state is the latest reading of every GPU; it serialises to one Arrow IPC frame in the
telemetry.gpu contract, so a checkpoint in a Faust table is exactly what was received.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from streams.codec import DEFAULT_LIMITS, GpuFrame, PointsFrame, decode_gpu_frame, encode_frame
from streams.schema import (
    CLOCK_EVENTS_HW_SLOWDOWN,
    CLOCK_EVENTS_POWER_CAP,
    CLOCK_EVENTS_THERMAL,
    GPU_SCHEMA,
)

_GPU_FIELDS = [f for f in GPU_SCHEMA if f.name not in ("ts", "rack", "gpu")]
#: Throttled, as an operator reads it: thermal or hardware slowdown. Power capping (0x4) is
#: normal operation under a power limit and is counted apart (power_capped_gpus).
_THROTTLE_MASK = CLOCK_EVENTS_THERMAL | CLOCK_EVENTS_HW_SLOWDOWN

#: Rack and facility counts of GPUs by condition (summary keys, summed over racks).
GPU_COUNT_KEYS = (
    "throttled_gpus",
    "power_capped_gpus",
    "thermal_slowdown_gpus",
    "hw_slowdown_gpus",
    "xid_gpus",
    "ecc_uncorrected_gpus",
    "row_remap_flagged_gpus",
)


def _np_dtype(t: pa.DataType) -> np.dtype[Any]:
    return np.dtype(t.to_pandas_dtype())


@dataclass
class RackState:
    """Latest value of every field of every GPU of one rack (arrays indexed by GPU)."""

    rack: str
    present: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    values: dict[str, np.ndarray] = field(default_factory=dict)
    #: The last frame when it alone holds the whole state (all GPUs, all newest): the
    #: checkpoint is then those bytes, with nothing to re-encode.
    whole_frame: bytes | None = None
    #: summary() of the current readings; the API, twin.state and the facility model all
    #: ask for it between two frames of the rack.
    _summary: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def _grow(self, n: int) -> None:
        old = self.present.size
        if n <= old:
            return
        self.present = np.concatenate([self.present, np.zeros(n - old, dtype=bool)])
        self.ts_ms = np.concatenate([self.ts_ms, np.zeros(n - old, dtype=np.int64)])
        for f in _GPU_FIELDS:
            arr = self.values.get(f.name, np.zeros(0, dtype=_np_dtype(f.type)))
            self.values[f.name] = np.concatenate([arr, np.zeros(n - old, dtype=arr.dtype)])

    def apply(self, frame: GpuFrame) -> int:
        """Take a frame's readings where they are newer than what is held; return rows taken."""
        idx = frame.gpu.astype(np.intp)
        self._summary = None
        self._grow(int(idx.max()) + 1)
        newer = frame.ts_ms >= self.ts_ms[idx]
        if not newer.all():
            idx = idx[newer]
        take = newer if not newer.all() else slice(None)
        self.ts_ms[idx] = frame.ts_ms[take]
        self.present[idx] = True
        for f in _GPU_FIELDS:
            self.values[f.name][idx] = frame.columns[f.name][take]
        whole = idx.size == self.present.size and (idx.size == 0 or bool(self.present.all()))
        self.whole_frame = frame.raw if whole and isinstance(take, slice) else None
        return int(idx.size)

    @property
    def last_ts_ms(self) -> int:
        """Newest reading held [ms since epoch]; 0 when empty."""
        return int(self.ts_ms.max()) if self.ts_ms.size else 0

    def to_batch(self) -> pa.RecordBatch:
        """The held readings as a telemetry.gpu record batch (GPUs never seen are left out)."""
        idx = np.flatnonzero(self.present)
        arrays: list[pa.Array] = []
        for f in GPU_SCHEMA:
            if f.name == "ts":
                arrays.append(pa.array(self.ts_ms[idx]).cast(f.type))
            elif f.name == "rack":
                arrays.append(pa.array([self.rack] * idx.size, type=f.type))
            elif f.name == "gpu":
                arrays.append(pa.array(idx.astype(np.uint16)))
            else:
                arrays.append(pa.array(self.values[f.name][idx]))
        return pa.RecordBatch.from_arrays(arrays, schema=GPU_SCHEMA)

    def to_bytes(self) -> bytes:
        """Checkpoint: the held readings as one Arrow IPC frame."""
        if self.whole_frame is not None:
            return self.whole_frame
        return encode_frame(self.to_batch())

    @classmethod
    def from_bytes(cls, rack: str, data: bytes) -> RackState:
        """Restore a checkpoint written by :meth:`to_bytes`."""
        frame = decode_gpu_frame(data, key=rack.encode(), now_ms=None, limits=DEFAULT_LIMITS)
        state = cls(rack=rack)
        state.apply(frame)
        return state

    def summary(self) -> dict[str, Any]:
        """Rack totals for the facility view: power [W], temperatures [C], counts."""
        if self._summary is None:
            self._summary = self._compute_summary()
        return dict(self._summary)

    def _compute_summary(self) -> dict[str, Any]:
        p: np.ndarray | slice = self.present
        if not self.present.any():
            return {"rack": self.rack, "gpus": 0}
        if self.present.all():
            p = slice(None)  # the usual case: no boolean gather per field
        v = self.values
        reasons = v["clock_event_reasons"][p]
        remap = v["row_remap_flags"][p]
        temps = v["temp_gpu_c"][p]
        hot = int(np.argmax(temps))
        hot_gpu = hot if isinstance(p, slice) else int(np.flatnonzero(self.present)[hot])
        return {
            "rack": self.rack,
            "ts_ms": self.last_ts_ms,
            "gpus": int(self.present.sum()),
            "power_w": float(v["power_w"][p].sum(dtype=np.float64)),
            "temp_gpu_max_c": float(temps[hot]),
            # the GPU's id as the residuals and faults name it (NVML index from 0)
            "hottest_gpu": f"{self.rack}/G{hot_gpu:02d}",
            "temp_gpu_mean_c": float(v["temp_gpu_c"][p].mean(dtype=np.float64)),
            "temp_mem_max_c": float(v["temp_mem_c"][p].max()),
            "util_mean_pct": float(v["util_pct"][p].mean(dtype=np.float64)),
            # thermal or hardware slowdown; power capping is not "throttled" (module top)
            "throttled_gpus": int(((reasons & _THROTTLE_MASK) != 0).sum()),
            "power_capped_gpus": int(((reasons & CLOCK_EVENTS_POWER_CAP) != 0).sum()),
            "thermal_slowdown_gpus": int(((reasons & CLOCK_EVENTS_THERMAL) != 0).sum()),
            "hw_slowdown_gpus": int(((reasons & CLOCK_EVENTS_HW_SLOWDOWN) != 0).sum()),
            "xid_gpus": int((v["xid"][p] != 0).sum()),
            "ecc_uncorrected_gpus": int((v["ecc_uncorrected"][p] != 0).sum()),
            "row_remap_flagged_gpus": int((remap != 0).sum()),
            "thermal_margin_min_k": float(v["thermal_margin_k"][p].min()),
        }

    def detail(self) -> dict[str, Any]:
        """Latest values per GPU, as JSON-ready lists (index i = GPU i)."""
        idx = np.flatnonzero(self.present)
        out: dict[str, Any] = {
            "rack": self.rack,
            "gpu": idx.tolist(),
            "ts_ms": self.ts_ms[idx].tolist(),
        }
        for f in _GPU_FIELDS:
            out[f.name] = self.values[f.name][idx].tolist()
        return out


@dataclass
class UnitState:
    """Latest value of every point of one plant unit (a CDU, a UPS, a rack manifold...)."""

    unit: str
    points: dict[str, tuple[int, float]] = field(default_factory=dict)

    def apply(self, frame: PointsFrame) -> int:
        """Take newer readings; return how many were taken."""
        taken = 0
        ts = frame.ts_ms.tolist()
        for name, t, value in zip(frame.points, ts, frame.values.tolist(), strict=True):
            old = self.points.get(name)
            if old is None or t >= old[0]:
                self.points[name] = (int(t), float(value))
                taken += 1
        return taken

    def to_bytes(self) -> bytes:
        """Checkpoint as compact JSON: {point: [ts_ms, value]}."""
        return json.dumps(
            {"unit": self.unit, "points": self.points}, separators=(",", ":")
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnitState:
        """Restore a checkpoint written by :meth:`to_bytes`."""
        doc = json.loads(data)
        return cls(
            unit=doc["unit"], points={k: (int(t), float(v)) for k, (t, v) in doc["points"].items()}
        )

    def values(self) -> dict[str, float]:
        """Point name -> latest value."""
        return {k: v for k, (_, v) in self.points.items()}

    def summary(self) -> dict[str, Any]:
        """JSON-ready view: newest ts and the values."""
        ts = max((t for t, _ in self.points.values()), default=0)
        return {
            "unit": self.unit,
            "ts_ms": ts,
            "points": self.values(),
            # per point: a stale reading shows on any worker's /api/units/{unit}
            "points_ts_ms": {k: t for k, (t, _) in self.points.items()},
        }


def facility_summary(
    racks: list[dict[str, Any]], units: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Facility totals from rack summaries and plant points.

    IT power is the sum of rack GPU power unless the site meter reports it; PUE is the
    metered facility power, plus what UPS batteries supply while on battery, over IT power
    (The Green Grid's total facility energy).
    """
    gpu_power_w = float(sum(r.get("power_w", 0.0) for r in racks))
    site = units.get("SITE", {})
    it_power_w = float(site.get("it_power_w", gpu_power_w))
    facility_power_w = site.get("facility_power_w")
    hot = max(
        (r for r in racks if "temp_gpu_max_c" in r),
        key=lambda r: r["temp_gpu_max_c"],
        default=None,
    )
    out: dict[str, Any] = {
        "racks": len(racks),
        "gpus": int(sum(r.get("gpus", 0) for r in racks)),
        "gpu_power_w": gpu_power_w,
        "it_power_w": it_power_w,
        "temp_gpu_max_c": hot["temp_gpu_max_c"] if hot else None,
        "hottest_gpu": hot.get("hottest_gpu") if hot else None,
        "units": len(units),
    }
    for key in GPU_COUNT_KEYS:
        out[key] = int(sum(r.get(key, 0) for r in racks))
    margins = [r["thermal_margin_min_k"] for r in racks if "thermal_margin_min_k" in r]
    out["thermal_margin_min_k"] = min(margins) if margins else None
    if facility_power_w is not None and it_power_w > 0:
        # On battery the grid meter misses what the batteries supply: PUE counts it.
        battery_w = sum(
            max(0.0, u["output_power_w"] + u.get("loss_w", 0.0) - u["input_power_w"])
            for u in units.values()
            if u.get("on_battery_bool", 0.0) > 0.5
            and "output_power_w" in u
            and "input_power_w" in u
        )
        out["facility_power_w"] = float(facility_power_w)
        out["battery_discharge_w"] = float(battery_w)
        out["pue"] = (float(facility_power_w) + battery_w) / it_power_w
    for key in ("pue", "ere", "cue_kg_kwh", "heat_to_dh_w", "free_cooling_share", "cooling_cop"):
        if key in site and key not in out:
            out[key] = float(site[key])
    outdoor = units.get("OUTDOOR", {})
    if "air_temp_c" in outdoor:
        out["outdoor_temp_c"] = outdoor["air_temp_c"]
    return out
