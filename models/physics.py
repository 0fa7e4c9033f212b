"""Detectors on what the physics computes: heat balances, die-temperature residuals and the
trend of fitted thermal resistances, each telling a unit's own change from its group's."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from models.base import (
    Detector,
    FloatArray,
    GroupLayout,
    IntArray,
    State,
    ew_alpha,
    group_split,
    positive,
    robust_step,
    squash,
)


class Balance(Detector):
    """Mismatch of a linear relation between two series of one unit: ``x ~ gain * aux``.

    For a rack, ``x`` = heat into its coolant ``m_dot * cp * dT`` [W] and ``aux`` = the sum
    of its GPUs' power [W] (or, for a CDU, the electrical power of its racks); any pair given
    in the same unit works. The relative mismatch ``e = (x - gain*aux) / |gain*aux|`` (only
    where ``|aux| > min_aux``) has a bias (sensor calibration, the share of heat that goes
    to air) and a spread that are learnt per series with forgetting Huber estimates
    (``half_life`` samples); the score is the robust z of ``e`` against them, 0.5 at
    ``threshold``, with the spread floored at ``min_rel`` (a 1 % flow meter cannot promise
    better).
    """

    name = "balance"
    kind = "balance"
    aux = "required"
    FIELDS: ClassVar = {"loc": 0.0, "scale": 0.0, "n_e": 0.0}

    def __init__(
        self,
        n_series: int = 0,
        *,
        gain: float = 1.0,
        min_aux: float = 0.0,
        half_life: float = 3600.0,
        clip_k: float = 3.0,
        threshold: float = 5.0,
        min_rel: float = 0.002,
        min_samples: int = 30,
    ) -> None:
        self.gain = float(gain)
        self.min_aux = float(min_aux)
        self.half_life = positive("half_life", half_life)
        self.clip_k = positive("clip_k", clip_k)
        self.threshold = positive("threshold", threshold)
        self.min_rel = float(min_rel)
        self.min_samples = int(min_samples)
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
        assert aux is not None  # the base refuses a call without it
        expect = self.gain * aux
        ok = valid & (np.abs(expect) > self.min_aux) & np.isfinite(expect)
        e = (x - expect) / np.abs(expect)
        n = st["n_e"]
        loc = np.where(n == 0, e, st["loc"])
        z = np.abs(e - loc) / np.maximum(st["scale"], self.min_rel)
        warm = n >= self.min_samples
        new_loc, new_scale = robust_step(
            loc, st["scale"], e, ew_alpha(n, self.half_life), self.clip_k, warm
        )
        st["loc"] = np.where(ok, new_loc, st["loc"])
        st["scale"] = np.where(ok & (n > 0), new_scale, st["scale"])
        st["n_e"] = n + ok
        return np.where(ok & warm, squash(z, self.threshold), 0.0)


class _Grouped(Detector):
    """Deviation ``d`` from a slowly learnt baseline, split into own and group-common parts.

    Subclasses give ``_deviation``. With ``group=`` (e.g. the rack of each GPU) the score is
    the larger of ``|own| / thr`` and ``|common| / thr``: ``common`` is the median deviation
    of the group, ``own`` the deviation minus it (:func:`models.base.group_split`). After each call
    :attr:`last_own` and :attr:`last_common` hold the two scores, so an alert can say
    whether one unit moved alone (fouling, a bad thermal interface, a drifting die sensor) or
    the whole group moved (coolant temperature or flow, a biased rack sensor). The baseline
    is not learnt where the score is >= 0.5: a slow fault does not become the new normal.
    """

    FIELDS: ClassVar = {"base": 0.0, "scale": 0.0, "n_d": 0.0}

    def __init__(
        self,
        n_series: int,
        *,
        half_life: float,
        clip_k: float,
        threshold: float,
        floor: float,
        min_samples: int,
        min_group: int,
    ) -> None:
        self.half_life = positive("half_life", half_life)
        self.clip_k = positive("clip_k", clip_k)
        self.threshold = positive("threshold", threshold)
        self.floor = positive("floor", floor)
        self.min_samples = int(min_samples)
        self.min_group = int(min_group)
        self.last_own: FloatArray = np.zeros(0)
        self.last_common: FloatArray = np.zeros(0)
        self._layout: GroupLayout | None = None
        super().__init__(n_series)

    def _deviation(self, x: FloatArray) -> FloatArray:
        raise NotImplementedError

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
        v = self._deviation(x)
        ok = valid & np.isfinite(v)
        n = st["n_d"]
        base = np.where(n == 0, v, st["base"])
        d = v - base
        s_eff = np.maximum(st["scale"], self.floor)
        warm = n >= self.min_samples
        if group is None:
            own, common = d, np.zeros_like(d)
        else:
            lay = self._layout
            if lay is None or not np.array_equal(lay.group, group):
                lay = self._layout = GroupLayout(group)  # racks change rarely: cache
            own, common = group_split(d, ok & warm, lay, self.min_group)
        s_own = squash(np.abs(own) / s_eff, self.threshold)
        s_com = squash(np.abs(common) / s_eff, self.threshold)
        score = np.where(warm, np.maximum(s_own, s_com), 0.0)
        self.last_own = np.where(ok & warm, s_own, 0.0)
        self.last_common = np.where(ok & warm, s_com, 0.0)
        learn = ok & ~(score >= 0.5)
        new_base, new_scale = robust_step(
            base, st["scale"], v, ew_alpha(n, self.half_life), self.clip_k, warm
        )
        st["base"] = np.where(ok & (n == 0), v, np.where(learn, new_base, st["base"]))
        st["scale"] = np.where(learn & (n > 0), new_scale, st["scale"])
        st["n_d"] = n + ok
        return np.where(ok, score, 0.0)


class GpuResidual(_Grouped):
    """Each GPU's die-temperature residual [K] (measured minus the model's expectation,
    ``twin.residuals`` or ``ThermalEstimator.residual_k``).

    A healthy residual is small noise around a GPU-specific bias (sensor offset, the fitted R
    still settling); both are learnt (``half_life`` samples, Huber). The score is the
    deviation from the bias in noise units, 0.5 at ``threshold``; the noise is floored at
    ``floor`` [K] (NVML reports whole degrees: about 0.3 K of rounding noise).
    """

    name = "gpu_residual"
    kind = "residual"

    def __init__(
        self,
        n_series: int = 0,
        *,
        half_life: float = 3600.0,
        clip_k: float = 3.0,
        threshold: float = 6.0,
        floor: float = 0.3,
        min_samples: int = 60,
        min_group: int = 3,
    ) -> None:
        super().__init__(
            n_series,
            half_life=half_life,
            clip_k=clip_k,
            threshold=threshold,
            floor=floor,
            min_samples=min_samples,
            min_group=min_group,
        )

    def _deviation(self, x: FloatArray) -> FloatArray:
        return x


class ResistanceTrend(_Grouped):
    """Trend of each GPU's fitted die-to-coolant resistance R [K/W] (``ThermalEstimator``).

    Works on ``ln R`` so deviations are relative: ``d = ln R - baseline`` is the fractional
    change since the baseline, learnt over ``half_life`` samples (default one day at 1 Hz:
    fouling takes hours to weeks). The spread of ``d`` is learnt too; a change is scored
    0.5 at ``threshold`` spreads, the spread floored at ``floor`` (default 0.02: 2 %, the
    estimator's accuracy, docs/estimator.md), i.e. at 12 % by default. With ``group=`` the
    rack: one GPU alone = fouling or thermal interface (``last_own``), the whole rack =
    coolant or a biased rack sensor (``last_common``).
    """

    name = "r_trend"
    kind = "r_trend"

    def __init__(
        self,
        n_series: int = 0,
        *,
        half_life: float = 86_400.0,
        clip_k: float = 3.0,
        threshold: float = 6.0,
        floor: float = 0.02,
        min_samples: int = 300,
        min_group: int = 3,
    ) -> None:
        super().__init__(
            n_series,
            half_life=half_life,
            clip_k=clip_k,
            threshold=threshold,
            floor=floor,
            min_samples=min_samples,
            min_group=min_group,
        )

    def _deviation(self, x: FloatArray) -> FloatArray:
        return np.log(np.where(x > 0.0, x, np.nan))
