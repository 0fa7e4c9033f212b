"""Every detector by name, and the combined univariate detector that ``twin detect`` runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from models.base import Detector, FloatArray
from models.physics import (
    Balance,
    CoolantReferenceDrift,
    GpuResidual,
    ResistanceTrend,
    UpsEfficiency,
)
from models.robust import Drift, RobustZScore
from models.sensor import RateOfChange, Stuck
from twin.errors import ConfigError


class Combined(Detector):
    """The largest score of several detectors over the same series (default: z-score,
    drift, stuck and rate of change: what a series of unknown meaning can be checked for).

    ``parts`` names registered detectors (each with its defaults); its snapshot holds each
    part's arrays as ``"<part>.<field>"``. :attr:`last_parts` has each part's scores of the
    last call.
    """

    name = "combined"
    kind = "level"
    aux = "optional"
    DEFAULT_PARTS: ClassVar = ("zscore", "drift", "stuck", "rate")

    def __init__(self, n_series: int = 0, *, parts: tuple[str, ...] = DEFAULT_PARTS) -> None:
        self.parts = tuple(parts)
        if "combined" in self.parts or not self.parts:
            raise ConfigError("combined: parts must name one or more other detectors")
        self._children = {p: make_detector(p, n_series) for p in self.parts}
        self.last_parts: dict[str, FloatArray] = {}
        self._n = int(n_series)

    def resize(self, n: int) -> None:
        for c in self._children.values():
            c.resize(n)
        self._n = n

    def snapshot(self) -> dict[str, np.ndarray]:
        return {f"{p}.{k}": v for p, c in self._children.items() for k, v in c.snapshot().items()}

    def restore(self, snap: Mapping[str, Any]) -> None:
        unknown = sorted({k.split(".", 1)[0] for k in snap} - set(self.parts))
        if unknown:
            raise ConfigError(f"combined: snapshot has unknown parts {unknown}")
        for p, c in self._children.items():
            pre = p + "."
            c.restore({k[len(pre) :]: v for k, v in snap.items() if k.startswith(pre)})
        self._n = next(iter(self._children.values())).n_series

    def _call(
        self, ts_s: Any, x: Any, aux: Any, group: Any, index: Any, *, commit: bool
    ) -> FloatArray:
        self.last_parts = {}
        for p, c in self._children.items():
            a = aux if c.aux != "no" else None
            self.last_parts[p] = c._call(ts_s, x, a, group, index, commit=commit)
        self._n = max(c.n_series for c in self._children.values())
        return np.maximum.reduce(list(self.last_parts.values()))


#: Every detector by name: ``DETECTORS[name](n_series, **params)``.
DETECTORS: dict[str, Callable[..., Detector]] = {
    "zscore": RobustZScore,
    "drift": Drift,
    "stuck": Stuck,
    "rate": RateOfChange,
    "balance": Balance,
    "gpu_residual": GpuResidual,
    "r_trend": ResistanceTrend,
    "ups_efficiency": UpsEfficiency,
    "coolant_ref_drift": CoolantReferenceDrift,
    "combined": Combined,
}


def make_detector(name: str, n_series: int = 0, **params: Any) -> Detector:
    """The detector ``name`` with ``params``; an unknown name lists the valid ones."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown detector {name!r}; valid: {', '.join(sorted(DETECTORS))}"
        ) from None
    try:
        return cls(n_series, **params)
    except TypeError as exc:
        raise ConfigError(f"detector {name}: {exc}") from None
