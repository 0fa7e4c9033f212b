"""Snapshot of a worker's twin to one file, and back (restarts, broker recycling, what-if).

The file is a twin.snapshot .npz: the facility model state when this worker tracks it (what
``twin whatif --from-url`` starts from) plus, as extras, every rack's latest readings (one
Arrow IPC stream), every plant unit's points (JSON) and every rack's fitted thermal model.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
import pyarrow as pa

from streams.codec import DEFAULT_LIMITS
from streams.rackmodel import RackModel
from streams.runtime import TwinRuntime
from streams.schema import GPU_SCHEMA
from streams.state import RackState
from twin.snapshot import TwinSnapshot


def _u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def runtime_snapshot(rt: TwinRuntime, base: TwinSnapshot | None = None) -> TwinSnapshot:
    """Everything the runtime holds, added to ``base`` (the facility model's snapshot)."""
    snap = base if base is not None else TwinSnapshot()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, GPU_SCHEMA) as writer:
        for rack in sorted(rt.racks):
            writer.write_batch(rt.racks[rack].to_batch())
    units = {u: json.loads(s.to_bytes()) for u, s in rt.units.items()}
    models = io.BytesIO()
    model_arrays: dict[str, Any] = {r: _u8(rt.models.get(r).to_bytes()) for r in rt.models}
    np.savez(models, **model_arrays)
    snap.extras["worker.racks_arrow"] = _u8(sink.getvalue().to_pybytes())
    snap.extras["worker.units_json"] = _u8(json.dumps(units).encode())
    snap.extras["worker.models_npz"] = _u8(models.getvalue())
    snap.meta.setdefault("ts_ms", str(time.time_ns() // 1_000_000))
    snap.meta["worker.racks"] = str(len(rt.racks))
    return snap


def restore_runtime(rt: TwinRuntime, snap: TwinSnapshot) -> int:
    """Load a worker snapshot into a runtime; returns the number of racks restored.

    Restored racks and units are marked for checkpoint and publication, so a fresh broker's
    tables and twin.state get them as soon as the worker owns their partitions.
    """
    from streams.codec import decode_gpu_frame

    extras: dict[str, Any] = snap.extras
    n = 0
    if "worker.racks_arrow" in extras:
        reader = pa.ipc.open_stream(pa.py_buffer(extras["worker.racks_arrow"].tobytes()))
        for batch in reader:
            if batch.num_rows == 0:
                continue
            rack = str(batch.column("rack")[0].as_py())
            sink = pa.BufferOutputStream()
            # the batch's own schema: a snapshot written before telemetry.gpu/v2 holds v1
            # batches, which the decoder accepts and gives the v2 defaults
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            frame = decode_gpu_frame(
                sink.getvalue().to_pybytes(), key=None, now_ms=None, limits=DEFAULT_LIMITS
            )
            state = rt.racks.setdefault(rack, RackState(rack))
            state.apply(frame)
            rt.dirty_checkpoint_racks.add(rack)
            rt.dirty_publish.add(f"rack/{rack}")
            n += 1
    if "worker.units_json" in extras:
        for doc in json.loads(extras["worker.units_json"].tobytes()).values():
            rt.restore_unit(json.dumps(doc).encode())
            rt.dirty_checkpoint_units.add(doc["unit"])
            rt.dirty_publish.add(f"unit/{doc['unit']}")
    if "worker.models_npz" in extras:
        with np.load(io.BytesIO(extras["worker.models_npz"].tobytes())) as z:
            for rack in z.files:
                rt.models.put(rack, RackModel.from_bytes(z[rack].tobytes()))
                rt.dirty_models.add(rack)
    return n
