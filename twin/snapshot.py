"""Save and load a twin snapshot: facility state, estimator arrays, extras, in one .npz file.

Keys inside the archive are namespaced: ``state.<field>`` (FacilityState fields; scalars as
0-d arrays), ``est.<key>`` (ThermalEstimator.snapshot()), ``extra.<name>`` (any other
component's arrays, e.g. detectors) and ``meta.<name>`` (strings: site file, rack count,
source). Files are written atomically (temporary file in the same directory, fsync, rename,
fsync of the directory), so a crash leaves either the old snapshot or the new one, never a
torn file. Archives are read with ``allow_pickle=False``: a snapshot is data, never code.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from twin.errors import TwinError
from twin.estimator import ThermalEstimator
from twin.state import FacilityState

#: Format tag written into every snapshot; bump when the layout changes incompatibly.
SNAPSHOT_FORMAT = "dc-twin-snapshot/1"


class SnapshotError(TwinError):
    """A snapshot file is missing, unreadable or inconsistent; the message names the key."""


@dataclass
class TwinSnapshot:
    """Everything a twin needs to resume: state, fitted parameters, extras and metadata."""

    state: FacilityState | None = None
    estimator: ThermalEstimator | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


def _state_arrays(state: FacilityState) -> dict[str, np.ndarray]:
    return {f"state.{f.name}": np.asarray(getattr(state, f.name)) for f in fields(state)}


def _state_from_arrays(arrays: dict[str, np.ndarray]) -> FacilityState:
    kwargs: dict[str, Any] = {}
    for f in fields(FacilityState):
        key = f"state.{f.name}"
        if key not in arrays:
            if f.default is not MISSING:  # a field added since: its default is what it was
                continue
            raise SnapshotError(f"snapshot: missing {key!r} (written by another twin version?)")
        value = arrays[key]
        if value.ndim == 0 and str(f.type) in ("float", "int", "bool"):
            kwargs[f.name] = value.item()
        else:
            kwargs[f.name] = np.array(value)
    return FacilityState(**kwargs)


def snapshot_arrays(snap: TwinSnapshot) -> dict[str, np.ndarray]:
    """Flat ``{key: array}`` form of ``snap`` as stored in the .npz archive."""
    out: dict[str, np.ndarray] = {"meta.format": np.array(SNAPSHOT_FORMAT)}
    if snap.state is not None:
        out.update(_state_arrays(snap.state))
    if snap.estimator is not None:
        out.update({f"est.{k}": v for k, v in snap.estimator.snapshot().items()})
    for name, arr in snap.extras.items():
        out[f"extra.{name}"] = np.asarray(arr)
    for name, text in snap.meta.items():
        if name == "format":
            raise SnapshotError("meta['format'] is reserved")
        out[f"meta.{name}"] = np.array(str(text))
    return out


def snapshot_from_arrays(arrays: dict[str, np.ndarray]) -> TwinSnapshot:
    """Inverse of :func:`snapshot_arrays`."""
    fmt = str(arrays.get("meta.format", np.array("")))
    if fmt != SNAPSHOT_FORMAT:
        raise SnapshotError(f"snapshot: expected format {SNAPSHOT_FORMAT!r}, got {fmt!r}")
    has_state = any(k.startswith("state.") for k in arrays)
    est_arrays = {k[4:]: v for k, v in arrays.items() if k.startswith("est.")}
    return TwinSnapshot(
        state=_state_from_arrays(arrays) if has_state else None,
        estimator=ThermalEstimator.restore(est_arrays) if est_arrays else None,
        extras={k[6:]: v for k, v in arrays.items() if k.startswith("extra.")},
        meta={
            k[5:]: str(v) for k, v in arrays.items() if k.startswith("meta.") and k != "meta.format"
        },
    )


def snapshot_bytes(snap: TwinSnapshot) -> bytes:
    """The .npz archive of ``snap`` in memory (what a worker serves at GET /api/snapshot)."""
    buf = io.BytesIO()
    np.savez(buf, **snapshot_arrays(snap))  # type: ignore[arg-type]
    return buf.getvalue()


def load_snapshot_bytes(data: bytes) -> TwinSnapshot:
    """Parse an .npz archive held in memory."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"snapshot: not a readable .npz archive ({exc})") from exc
    return snapshot_from_arrays(arrays)


def save_snapshot(path: str | os.PathLike[str], snap: TwinSnapshot) -> Path:
    """Write ``snap`` to ``path`` atomically and durably; return the path."""
    target = Path(path)
    data = snapshot_bytes(snap)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load_snapshot(path: str | os.PathLike[str]) -> TwinSnapshot:
    """Read a snapshot written by :func:`save_snapshot`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SnapshotError(f"snapshot {str(path)!r}: cannot read ({exc.strerror})") from exc
    return load_snapshot_bytes(data)
