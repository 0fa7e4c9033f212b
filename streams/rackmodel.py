"""One rack's online thermal fit as a checkpoint, and the coolant temperature it is fitted
against: the cold plates' coolant from the rack's manifold sensors (telemetry.thermal,
unit = rack id, co-partitioned with the rack's GPU frames). The fitting itself runs for all
racks at once in streams/modelpool.py; the maths lives in twin/estimator.py.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.arraypack import pack_arrays, unpack_arrays
from twin.estimator import EstimatorError, ThermalEstimator
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


class CheckpointError(ValueError):
    """Bytes that are not a rack-model checkpoint (corrupt, truncated, another layout)."""


@dataclass
class RackModel:
    """One rack's thermal fit on its own: what a rack-model checkpoint holds.

    Workers keep every rack's fit in one pooled estimator (streams/modelpool.py) and take a
    rack out as a RackModel to checkpoint it, or put one back after recovery.
    """

    estimator: ThermalEstimator = field(default_factory=lambda: ThermalEstimator(0))
    last_ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    coolant_c: float = float("nan")
    power_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    temp_gpu_c: np.ndarray = field(default_factory=lambda: np.zeros(0))

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
        """Restore a checkpoint written by :meth:`to_bytes` (or the older ``.npz`` form).

        Raises :class:`CheckpointError` for anything else.
        """
        try:
            if data[:2] == b"PK":
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    z_arrays = {k: z[k] for k in z.files}
            else:
                z_arrays = unpack_arrays(data)
        # ArrayPackError is a ValueError
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"not a rack-model checkpoint: {exc!r}") from None
        snap = {k.removeprefix("est."): v for k, v in z_arrays.items() if k.startswith("est.")}
        try:
            model = cls(
                estimator=ThermalEstimator.restore(snap),
                last_ts_ms=z_arrays["last_ts_ms"].astype(np.int64),
                coolant_c=float(z_arrays["coolant_c"]),
                power_w=z_arrays["power_w"].astype(np.float64),
                temp_gpu_c=z_arrays["temp_gpu_c"].astype(np.float64),
            )
        except (KeyError, TypeError, ValueError, EstimatorError) as exc:
            raise CheckpointError(f"not a rack-model checkpoint: {exc!r}") from None
        n = model.estimator.n_series
        for name in ("last_ts_ms", "power_w", "temp_gpu_c"):
            if getattr(model, name).shape != (n,):
                raise CheckpointError(f"{name}: expected shape ({n},)")
        return model


def json_list(a: np.ndarray) -> list[float | None]:
    """Floats as a JSON-ready list, non-finite values as None."""
    values: list[float | None] = np.asarray(a, dtype=np.float64).tolist()
    if np.isfinite(a).all():
        return values
    return [x if x is not None and math.isfinite(x) else None for x in values]
