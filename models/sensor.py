"""Sensor-health detectors: a stuck or flat-lined reading, and an implausible rate of change."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from models.base import (
    Detector,
    FloatArray,
    IntArray,
    State,
    ew_alpha,
    positive,
    robust_step,
    squash,
)


class Stuck(Detector):
    """A reading that stops moving when it should move.

    Each series learns ``p``, the share of its samples that differ from the previous one
    (by more than ``tol + rel_tol * |x|``). An unchanged run of ``n`` samples then has
    probability ``(1 - p) ** n``; the statistic is its surprise ``-n * ln(1 - p)`` [nats],
    scored 0.5 at ``surprise`` (default ln(1e6): a one-in-a-million run). A series that is
    always constant has ``p ~ 0`` and never alarms; a noisy one alarms after a few
    unchanged samples; an integer reading (NVML temperature in whole degrees) after more.

    With a companion ``aux`` (e.g. the GPU's power for its temperature), only samples where
    the companion moved by more than ``aux_rel_tol`` of its value (or ``aux_tol``) count, and
    ``p`` is learnt on those: a temperature that holds while the power is steady is normal, one
    that holds while the power swings is stuck. ``p`` is not learnt during a run longer than
    ``freeze_after`` samples, so a stuck sensor does not teach that being stuck is normal.
    ``max_flat_s`` [s] (off by default) also scores any run longer than that 0.5, whatever
    ``p``.
    """

    name = "stuck"
    kind = "stuck"
    aux = "optional"
    FIELDS: ClassVar = {
        "last": np.nan,
        "aux_last": np.nan,
        "p": 0.0,
        "n_moved": 0.0,
        "run_n": 0.0,
        "run_s": 0.0,
    }

    def __init__(
        self,
        n_series: int = 0,
        *,
        tol: float = 0.0,
        rel_tol: float = 0.0,
        aux_tol: float = 0.0,
        aux_rel_tol: float = 0.02,
        half_life: float = 2000.0,
        surprise: float = float(np.log(1e6)),
        freeze_after: int = 3,
        max_p: float = 0.99,
        min_samples: int = 30,
        max_flat_s: float = float("inf"),
    ) -> None:
        self.tol = float(tol)
        self.rel_tol = float(rel_tol)
        self.aux_tol = float(aux_tol)
        self.aux_rel_tol = float(aux_rel_tol)
        self.half_life = positive("half_life", half_life)
        self.surprise = positive("surprise", surprise)
        self.freeze_after = int(freeze_after)
        self.max_p = float(max_p)
        self.min_samples = int(min_samples)
        self.max_flat_s = positive("max_flat_s", max_flat_s)
        super().__init__(n_series)

    def _step(
        self,
        st: State,
        ts_s: FloatArray,
        x: FloatArray,
        valid: npt.NDArray[np.bool_],
        dt_s: FloatArray,
        aux: FloatArray | None,
        group: IntArray | None,
    ) -> FloatArray:
        last = st["last"]
        seen = np.isfinite(last)
        changed = ~(np.abs(x - last) <= self.tol + self.rel_tol * np.abs(last))
        if aux is None:
            moved = seen
        else:
            a_last = st["aux_last"]
            lim = self.aux_tol + self.aux_rel_tol * np.maximum(np.abs(aux), np.abs(a_last))
            moved = seen & (np.abs(aux - a_last) > lim)  # NaN companion: not moved
            st["aux_last"] = np.where(valid & np.isfinite(aux), aux, a_last)
        run_n = np.where(changed, 0.0, st["run_n"] + moved)
        run_s = np.where(changed, 0.0, st["run_s"] + np.nan_to_num(dt_s))
        p = np.minimum(st["p"], self.max_p)
        stat = np.maximum(
            -run_n * np.log1p(-p) / self.surprise,
            run_s / self.max_flat_s,
        )
        warm = st["n_moved"] >= self.min_samples
        learn = valid & moved & (st["run_n"] < self.freeze_after)
        alpha = ew_alpha(st["n_moved"], self.half_life)
        st["p"] = np.where(learn, st["p"] + alpha * (changed - st["p"]), st["p"])
        st["n_moved"] = st["n_moved"] + learn
        st["run_n"] = np.where(valid & seen, run_n, st["run_n"])
        st["run_s"] = np.where(valid & seen, run_s, st["run_s"])
        st["last"] = np.where(valid, x, last)
        return np.where(warm, squash(stat, 1.0), 0.0)


class RateOfChange(Detector):
    """A jump: the change since the previous sample against the series' usual change.

    The increment is normalised to the series' typical interval ``dt_typ`` as
    ``d = dx * sqrt(dt_typ / dt)`` (a random walk's increment grows with ``sqrt(dt)``), so a
    gap of 100 typical steps may move 10x as much, and irregular sampling or series seconds to
    hours apart need no setting. ``dt_typ`` is a forgetting mean of the intervals, each
    clipped at 10x the current value so a gap does not inflate it. ``z = |d - loc| / scale``
    with the forgetting Huber estimates of :class:`~models.robust.RobustZScore`, scored 0.5
    at ``threshold``.
    """

    name = "rate"
    kind = "spike"
    FIELDS: ClassVar = {"last": np.nan, "dt_typ": np.nan, "loc": 0.0, "scale": 0.0, "n_d": 0.0}

    def __init__(
        self,
        n_series: int = 0,
        *,
        half_life: float = 600.0,
        clip_k: float = 3.0,
        threshold: float = 6.0,
        min_samples: int = 20,
        min_scale: float = 1e-6,
        rel_scale: float = 1e-5,
    ) -> None:
        self.half_life = positive("half_life", half_life)
        self.clip_k = positive("clip_k", clip_k)
        self.threshold = positive("threshold", threshold)
        self.min_samples = int(min_samples)
        self.min_scale = float(min_scale)
        self.rel_scale = float(rel_scale)
        super().__init__(n_series)

    def _step(
        self,
        st: State,
        ts_s: FloatArray,
        x: FloatArray,
        valid: npt.NDArray[np.bool_],
        dt_s: FloatArray,
        aux: FloatArray | None,
        group: IntArray | None,
    ) -> FloatArray:
        has_d = valid & np.isfinite(st["last"]) & (dt_s > 0.0)
        dt_typ = np.where(np.isfinite(st["dt_typ"]), st["dt_typ"], dt_s)
        d = (x - st["last"]) * np.sqrt(dt_typ / dt_s)
        nd = st["n_d"]
        first = nd == 0
        loc = np.where(first, 0.0, st["loc"])
        s_eff = np.maximum(st["scale"], self.min_scale + self.rel_scale * np.abs(x))
        z = np.abs(d - loc) / s_eff
        warm = nd >= self.min_samples
        alpha = ew_alpha(nd, self.half_life)
        new_loc, new_scale = robust_step(loc, st["scale"], d, alpha, self.clip_k, warm)
        st["loc"] = np.where(has_d, new_loc, st["loc"])
        st["scale"] = np.where(has_d, new_scale, st["scale"])
        a_dt = ew_alpha(nd, 50.0)
        new_dt = dt_typ + a_dt * (np.minimum(dt_s, 10.0 * dt_typ) - dt_typ)
        st["dt_typ"] = np.where(has_d, new_dt, st["dt_typ"])
        st["n_d"] = nd + has_d
        st["last"] = np.where(valid, x, st["last"])
        return np.where(has_d & warm, squash(z, self.threshold), 0.0)
