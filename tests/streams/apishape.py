"""Reading the API's per-GPU objects (docs/api.md) back as columns, for tests that compare
a rack's GPUs with the frames they published."""

from __future__ import annotations

from typing import Any

#: Keys of a GPU object that change between two reads of the same readings.
VOLATILE = ("age_s",)


def gpu_columns_of(gpus: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """field -> list over the GPUs (``age_s`` and the fit's ``model`` left out)."""
    keys = [k for k in (gpus[0] if gpus else {}) if k not in (*VOLATILE, "model")]
    return {k: [g[k] for g in gpus] for k in keys}


def model_columns_of(gpus: list[dict[str, Any]]) -> dict[str, list[Any]] | None:
    """The fit's per-GPU values as columns; None while the rack has no fit."""
    if not gpus or gpus[0].get("model") is None:
        return None
    return {k: [g["model"][k] for g in gpus] for k in gpus[0]["model"]}
