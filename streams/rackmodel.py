"""Per-rack physics beside the measurements: online fit of each GPU's thermal R and C.

Thin glue between decoded frames and twin.estimator: the maths lives in twin/. A rack's
model is updated with the rack's whole frame at once (arrays over GPUs), with the coolant
temperature at the cold plates taken from the rack's manifold sensors (telemetry.thermal,
unit = rack id, co-partitioned with the rack's GPU frames).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from streams.arraypack import pack_arrays, unpack_arrays
from streams.codec import GpuFrame
from streams.schema import RESIDUAL_SCHEMA, TS_TYPE
from twin.estimator import ThermalEstimator
from twin.rack import gpu_coolant_c


def coolant_at_plates_c(points: Mapping[str, float], design_flow_kg_s: float) -> float | None:
    """Cold-plate coolant temperature [C] of a rack from its manifold points, if measured."""
    inlet = points.get("inlet_temp_c")
    outlet = points.get("outlet_temp_c")
    if inlet is None:
        return None
    if outlet is None:
        return float(inlet)
    flow = points.get("flow_kg_s", design_flow_kg_s)
    return float(gpu_coolant_c(inlet, outlet, flow / design_flow_kg_s))


@dataclass
class RackModel:
    """The online thermal fit of one rack's GPUs and its last expectations."""

    estimator: ThermalEstimator = field(default_factory=lambda: ThermalEstimator(0))
    last_ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    coolant_c: float = float("nan")
    power_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    temp_gpu_c: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _summary: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def _grow(self, n: int) -> None:
        extra = n - self.estimator.n_series
        if extra <= 0:
            return
        self.estimator = self.estimator.grow(extra)
        self.last_ts_ms = np.concatenate([self.last_ts_ms, np.zeros(extra, dtype=np.int64)])
        self.power_w = np.concatenate([self.power_w, np.full(extra, np.nan)])
        self.temp_gpu_c = np.concatenate([self.temp_gpu_c, np.full(extra, np.nan)])

    def update(self, frame: GpuFrame, coolant_c: float) -> None:
        """Feed one frame [C, W] with the coolant at the plates [C]; GPUs absent are skipped."""
        self._summary = None
        idx = frame.gpu.astype(np.intp)
        self._grow(int(idx.max()) + 1)
        n = self.estimator.n_series
        die = np.full(n, np.nan)
        power = np.full(n, np.nan)
        dt_s = np.zeros(n)
        die[idx] = frame.columns["temp_gpu_c"]
        power[idx] = frame.columns["power_w"]
        prev = self.last_ts_ms[idx]
        dt_s[idx] = np.where(prev > 0, (frame.ts_ms - prev) / 1000.0, 0.0)
        self.estimator.update(die, np.full(n, coolant_c), power, dt_s)
        self.last_ts_ms[idx] = frame.ts_ms
        self.power_w[idx] = frame.columns["power_w"]
        self.temp_gpu_c[idx] = frame.columns["temp_gpu_c"]
        self.coolant_c = coolant_c

    def residual_batch(self, rack: str) -> pa.RecordBatch:
        """twin.residuals rows of the last update: each GPU's die temperature, measured vs
        the model's one-step prediction [C]; GPUs without a residual are left out."""
        res = self.estimator.residual_k
        ok = np.flatnonzero(np.isfinite(res) & np.isfinite(self.temp_gpu_c))
        measured = self.temp_gpu_c[ok].astype(np.float64)
        ts = int(self.last_ts_ms.max()) if self.last_ts_ms.size else 0
        return pa.RecordBatch.from_arrays(
            [
                pa.array(np.full(ok.size, ts, dtype=np.int64)).cast(TS_TYPE),
                pa.array([f"{rack}/G{i:02d}" for i in ok.tolist()], type=pa.string()),
                pa.array(["temp_gpu_c"] * ok.size, type=pa.string()),
                pa.array(measured),
                pa.array(measured - res[ok]),
                pa.array(res[ok]),
            ],
            schema=RESIDUAL_SCHEMA,
        )

    def view(self) -> dict[str, Any]:
        """Fitted parameters, expected steady die temperature and residuals, per GPU."""
        est = self.estimator
        expected = self.coolant_c + est.r_k_w * self.power_w
        return {
            "coolant_c": None if np.isnan(self.coolant_c) else self.coolant_c,
            "r_k_w": json_list(est.r_k_w),
            "c_j_k": json_list(est.c_j_k),
            "tau_s": json_list(est.tau_s),
            "residual_k": json_list(est.residual_k),
            "expected_temp_gpu_c": json_list(expected),
            "updates": est.n_updates.tolist(),
        }

    def summary(self) -> dict[str, Any]:
        """Rack-level figures for twin.state and /api/state."""
        if self._summary is None:
            self._summary = self._compute_summary()
        return dict(self._summary)

    def _compute_summary(self) -> dict[str, Any]:
        res = self.estimator.residual_k
        r = self.estimator.r_k_w
        finite = res[np.isfinite(res)]
        return {
            "residual_max_abs_k": float(np.abs(finite).max()) if finite.size else None,
            "r_k_w_mean": float(np.nanmean(r)) if np.isfinite(r).any() else None,
        }

    def to_bytes(self) -> bytes:
        """Checkpoint: the estimator's arrays and the last sample times (streams/arraypack)."""
        return self.pack(
            {f"est.{k}": v for k, v in self.estimator.snapshot().items()},
            last_ts_ms=self.last_ts_ms,
            power_w=self.power_w,
            temp_gpu_c=self.temp_gpu_c,
            coolant_c=self.coolant_c,
        )

    @staticmethod
    def pack(
        estimator_arrays: dict[str, Any],
        *,
        last_ts_ms: np.ndarray,
        power_w: np.ndarray,
        temp_gpu_c: np.ndarray,
        coolant_c: float,
    ) -> bytes:
        """The checkpoint bytes of a rack model given as its arrays (``est.*`` = estimator)."""
        arrays = dict(estimator_arrays)
        arrays |= {"last_ts_ms": last_ts_ms, "power_w": power_w, "temp_gpu_c": temp_gpu_c}
        arrays["coolant_c"] = np.array(coolant_c)
        return pack_arrays(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> RackModel:
        """Restore a checkpoint written by :meth:`to_bytes` (or the older ``.npz`` form)."""
        if data[:2] == b"PK":
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                z_arrays = {k: z[k] for k in z.files}
        else:
            z_arrays = unpack_arrays(data)
        snap = {k.removeprefix("est."): v for k, v in z_arrays.items() if k.startswith("est.")}
        return cls(
            estimator=ThermalEstimator.restore(snap),
            last_ts_ms=z_arrays["last_ts_ms"].astype(np.int64),
            coolant_c=float(z_arrays["coolant_c"]),
            power_w=z_arrays["power_w"].astype(np.float64),
            temp_gpu_c=z_arrays["temp_gpu_c"].astype(np.float64),
        )


def json_list(a: np.ndarray) -> list[float | None]:
    """Floats as a JSON-ready list, non-finite values as None."""
    values: list[float | None] = np.asarray(a, dtype=np.float64).tolist()
    if np.isfinite(a).all():
        return values
    return [x if x is not None and math.isfinite(x) else None for x in values]
