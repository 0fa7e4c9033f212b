"""Detectors on what the physics computes: heat balances, die-temperature residuals and the
trend of fitted thermal resistances, each telling a unit's own change from its group's."""

from __future__ import annotations

from typing import Any, ClassVar

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
from models.robust import Drift
from twin.errors import ConfigError


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


class CoolantReferenceDrift(Drift):
    """A rack's coolant reference moving against what its GPUs' plates see: a drifting or
    biased manifold sensor, or a coolant the reference does not follow (CUSUM, :class:`Drift`).

    ``x`` [K] per rack is the reference's apparent offset: the estimator's fitted offset
    (``ThermalEstimator.coolant_offset_k``, shared by the rack's GPUs) less the median over
    the rack's GPUs of ``steady_residual_k``. A reference that moves by D shows first in the
    steady residuals (as -D, within a few die time constants) and, as the slow fit absorbs it,
    in the offset instead: their difference moves by D either way, so absorbing a sensor's
    drift into the offset does not hide it. Where the offset cannot be fitted (a rack whose
    power holds) the steady residuals carry it all. One GPU's fouling moves its own ``R`` and
    residual, not the rack's median.

    Where the rack's power steps, its steady residuals swing by up to ~0.4 K together for a
    minute or two (the coolant and die lags the steady model leaves out; measured on the
    simulator's checkpoint dips), so the noise floor ``min_scale`` is 0.3 K (one whole-degree
    NVML reading's rounding noise, docs/sources.md S7) and the allowance ``k`` one floor: a
    shift of 0.6 K at the plates is the smallest worth finding, and a sensor drifting
    0.025 K/s at the plates scores 0.5 within ~35 s (simulator, tests/streams).
    """

    name = "coolant_ref_drift"
    kind = "drift"

    def __init__(
        self,
        n_series: int = 0,
        *,
        k: float = 1.0,
        h: float = 10.0,
        half_life: float = 2000.0,
        min_scale: float = 0.3,
        min_samples: int = 60,
    ) -> None:
        super().__init__(
            n_series, k=k, h=h, half_life=half_life, min_scale=min_scale, min_samples=min_samples
        )


class UpsEfficiency(Detector):
    """A UPS module less efficient than its loss curve: ``x`` = measured input power [W],
    ``aux`` = measured output power [W] of the same module.

    The curve is the twin's (twin/power.py ``ups_loss_w``: loss = rated * (a0 + a1 u +
    a2 u^2), u = output / rated; docs/sources.md S8), so the expected efficiency at the measured
    output is ``out / (out + loss(out))``. The deficit ``d = eta_curve - out / in`` [1] has
    a bias (the two meters' calibration; a module that never met its datasheet) that is
    learnt per series with a forgetting Huber estimate (``half_life`` samples), as is its
    per-sample spread. Meter noise on one sample is large against a 1-point loss of
    efficiency (two class-0.2S meters: ~0.3 % of a light load's efficiency), so the score is
    an EWMA control chart (Roberts 1959): the mean deficit over ``avg_half_life`` samples,
    against the spread of such a mean, ``scale * sqrt(a / (2 - a))``. One-sided: only a
    module worse than its curve scores (eco mode, static bypass run better). 0.5 at
    ``threshold``; the spread is floored at ``floor`` [1] so a very quiet pair of meters
    cannot make 0.05 points an alarm. The bias is not learnt where the score is >= 0.5, so a
    slow degradation is not absorbed.

    Samples are not scored where the efficiency cannot be read: the output under
    ``min_load_frac`` of rated (the ratio of two small numbers), or a measured efficiency
    outside (0.5, 1] (on battery the module draws ~nothing from the mains; a meter fault).
    """

    name = "ups_efficiency"
    kind = "ups"
    aux = "required"
    FIELDS: ClassVar = {"bias": 0.0, "scale": 0.0, "avg": 0.0, "n_d": 0.0}

    def __init__(
        self,
        n_series: int = 0,
        *,
        rated_w: float | None = None,
        loss_coeff: tuple[float, ...] | None = None,
        half_life: float = 3600.0,
        avg_half_life: float = 12.0,
        clip_k: float = 3.0,
        threshold: float = 6.0,
        floor: float = 5e-4,
        min_load_frac: float = 0.01,
        min_samples: int = 60,
    ) -> None:
        from twin.power import PowerParams

        p = PowerParams()
        self.rated_w = positive("rated_w", p.ups_rated_w if rated_w is None else rated_w)
        coeff = tuple(float(c) for c in (p.ups_loss_coeff if loss_coeff is None else loss_coeff))
        if len(coeff) != 3 or not all(c >= 0.0 for c in coeff):
            raise ConfigError(f"loss_coeff: expected 3 coefficients >= 0, got {coeff}")
        self.loss_coeff = coeff
        self.half_life = positive("half_life", half_life)
        self.avg_half_life = positive("avg_half_life", avg_half_life)
        self.clip_k = positive("clip_k", clip_k)
        self.threshold = positive("threshold", threshold)
        self.floor = positive("floor", floor)
        self.min_load_frac = float(min_load_frac)
        self.min_samples = int(min_samples)
        super().__init__(n_series)

    def expected_efficiency(self, out_w: Any) -> FloatArray:
        """Efficiency [1] of the curve at output ``out_w`` [W]."""
        from twin.power import ups_loss_w

        out = np.asarray(out_w, dtype=np.float64)
        return out / (out + ups_loss_w(out, self.rated_w, self.loss_coeff))

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
        eta = aux / x
        ok = (
            valid
            & np.isfinite(aux)
            & (aux > self.min_load_frac * self.rated_w)
            & (eta > 0.5)
            & (eta <= 1.0)
        )
        d = self.expected_efficiency(aux) - eta
        n = st["n_d"]
        bias = np.where(n == 0, d, st["bias"])
        a_avg = -np.expm1(-np.log(2.0) / self.avg_half_life)
        avg = np.where(n == 0, d, st["avg"] + a_avg * (d - st["avg"]))
        sigma_avg = np.maximum(st["scale"], self.floor) * np.sqrt(a_avg / (2.0 - a_avg))
        warm = n >= self.min_samples
        score = np.where(
            ok & warm, squash(np.maximum(avg - bias, 0.0) / sigma_avg, self.threshold), 0.0
        )
        learn = ok & ~(score >= 0.5)
        new_bias, new_scale = robust_step(
            bias, st["scale"], d, ew_alpha(n, self.half_life), self.clip_k, warm
        )
        st["bias"] = np.where(learn, new_bias, st["bias"])
        st["scale"] = np.where(learn & (n > 0), new_scale, st["scale"])
        st["avg"] = np.where(ok, avg, st["avg"])
        st["n_d"] = n + learn
        return score
