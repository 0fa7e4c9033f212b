"""Snapshots written before a FacilityState field existed still load (the field's default)."""

from __future__ import annotations

from dataclasses import MISSING, fields

import numpy as np
import pytest

from twin.site import load_site
from twin.snapshot import SnapshotError, TwinSnapshot, load_snapshot_bytes, snapshot_bytes
from twin.state import FacilityState
from twin.step import initial_state


def _arrays_without(name: str) -> dict[str, np.ndarray]:
    site = load_site(None, racks=2)
    snap = TwinSnapshot(state=initial_state(site))
    with np.load(__import__("io").BytesIO(snapshot_bytes(snap))) as z:
        arrays = {k: z[k] for k in z.files}
    del arrays[f"state.{name}"]
    return arrays


def _bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def test_field_added_later_takes_its_default() -> None:
    defaulted = [f for f in fields(FacilityState) if f.default is not MISSING]
    assert defaulted, "FacilityState has fields with defaults (added after format 1)"
    name = defaulted[0].name
    snap = load_snapshot_bytes(_bytes(_arrays_without(name)))
    assert snap.state is not None
    assert getattr(snap.state, name) == defaulted[0].default


def test_required_field_missing_is_named() -> None:
    required = next(f for f in fields(FacilityState) if f.default is MISSING)
    with pytest.raises(SnapshotError, match=required.name):
        load_snapshot_bytes(_bytes(_arrays_without(required.name)))
