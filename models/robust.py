"""Level detectors: a robust adaptive z-score (with an optional daily profile) and a
two-sided self-resetting CUSUM for slow drifts."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from models.base import (
    MAD_TO_SIGMA,
    Detector,
    FloatArray,
    IntArray,
    State,
    ew_alpha,
    positive,
    robust_step,
    squash,
)

DAY_S = 86_400.0
HOURS = 24


class RobustZScore(Detector):
    """``z = |x - loc| / scale`` with a forgetting Huber location and scale per series.

    ``half_life`` [samples] of the estimates: counted in samples, not seconds, so a series
    sampled every second and one sampled every hour both remember about as many samples.
    ``clip_k`` [scale units] bounds what one outlier teaches; ``threshold`` the z scored
    0.5; no score before ``min_samples``. ``min_scale`` (absolute) and ``rel_scale``
    (times |loc|) floor the scale, so a constant series does not divide by zero and its first
    one-quantum move is not infinitely surprising.

    ``daily=True`` adds an hour-of-day baseline (``24`` bins, local time = UTC +
    ``utc_offset_h``) learnt with a time-based half-life of ``profile_half_life_days``
    [days]; a series uses it where the bin has ``profile_min_samples`` samples and the
    spread around the profile is smaller than around the plain location (the series "has"
    a daily cycle).
    """

    name = "zscore"
    kind = "level"
    FIELDS: ClassVar = {
        "loc": 0.0,
        "scale": 0.0,
        "prof": (0.0, HOURS),
        "prof_n": (0.0, HOURS),
        "prof_scale": 0.0,
    }

    def __init__(
        self,
        n_series: int = 0,
        *,
        half_life: float = 600.0,
        clip_k: float = 3.0,
        threshold: float = 5.0,
        min_samples: int = 20,
        min_scale: float = 1e-6,
        rel_scale: float = 1e-4,
        daily: bool = False,
        utc_offset_h: float = 0.0,
        profile_half_life_days: float = 7.0,
        profile_min_samples: int = 20,
    ) -> None:
        self.half_life = positive("half_life", half_life)
        self.clip_k = positive("clip_k", clip_k)
        self.threshold = positive("threshold", threshold)
        self.min_samples = int(min_samples)
        self.min_scale = float(min_scale)
        self.rel_scale = float(rel_scale)
        self.daily = bool(daily)
        self.utc_offset_h = float(utc_offset_h)
        self.profile_half_life_days = positive("profile_half_life_days", profile_half_life_days)
        self.profile_min_samples = int(profile_min_samples)
        super().__init__(n_series)

    def _floor(self, scale: FloatArray, loc: FloatArray) -> FloatArray:
        return np.maximum(scale, self.min_scale + self.rel_scale * np.abs(loc))

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
        n = st["n_obs"]
        loc, scale = st["loc"], st["scale"]
        first = n == 0
        loc = np.where(first, x, loc)  # the first sample seeds the location
        s_eff = self._floor(scale, loc)
        z = np.abs(x - loc) / s_eff
        warm = n >= self.min_samples
        if self.daily:
            z = self._daily(st, ts_s, x, valid, dt_s, z, s_eff, warm)
        alpha = ew_alpha(n, self.half_life)
        new_loc, new_scale = robust_step(loc, scale, x, alpha, self.clip_k, warm)
        st["loc"] = np.where(valid, new_loc, st["loc"])
        st["scale"] = np.where(valid & ~first, new_scale, st["scale"])
        return np.where(warm, squash(z, self.threshold), 0.0)

    def _daily(
        self,
        st: State,
        ts_s: FloatArray,
        x: FloatArray,
        valid: npt.NDArray[np.bool_],
        dt_s: FloatArray,
        z: FloatArray,
        s_eff: FloatArray,
        warm: npt.NDArray[np.bool_],
    ) -> FloatArray:
        rows = np.arange(x.shape[0])
        local = np.nan_to_num(ts_s + self.utc_offset_h * 3600.0) % DAY_S
        hour = np.minimum((local // 3600.0).astype(np.int64), HOURS - 1)
        p = st["prof"][rows, hour]
        pn = st["prof_n"][rows, hour]
        has = pn >= self.profile_min_samples
        ps_eff = self._floor(st["prof_scale"], p)
        zp = np.abs(x - p) / ps_eff
        use = has & (st["prof_scale"] < st["scale"]) & (st["prof_scale"] > 0.0)
        # Time-based forgetting: a bin is visited 1/24 of the time, so its half-life in its
        # own time is the profile's half-life / 24; the weight per sample is then the same
        # for a series sampled every second or every hour.
        dt = np.where(np.isfinite(dt_s), np.minimum(dt_s, 3600.0), 3600.0)
        hl_s = self.profile_half_life_days * DAY_S / HOURS
        a = np.maximum(1.0 / (pn + 1.0), -np.expm1(-np.log(2.0) * dt / hl_s))
        new_p = np.where(pn == 0, x, p + a * (x - p))
        st["prof"][rows, hour] = np.where(valid, new_p, p)
        st["prof_n"][rows, hour] = pn + valid
        a_s = ew_alpha(st["n_obs"], self.half_life)
        r = np.minimum(np.abs(x - p), self.clip_k * ps_eff)
        new_ps = st["prof_scale"] + a_s * (np.sqrt(np.pi / 2.0) * r - st["prof_scale"])
        st["prof_scale"] = np.where(valid & has, new_ps, st["prof_scale"])
        return np.where(use & warm, zp, z)


class Drift(Detector):
    """Two-sided CUSUM (Page 1954) of the standardised deviation from a slow reference.

    ``z = (x - ref) / scale``; ``g+ = max(0, g+ + z - k)``, ``g- = max(0, g- - z - k)``;
    ``stat = max(g+, g-)`` scored 0.5 at ``h``. ``k`` [scale units] is the allowance
    (half the smallest shift worth finding, in noise units); ``h`` trades delay for false
    alarms (Montgomery: ``k = 0.5, h = 5`` gives an in-control run length of ~900 samples;
    ``h = 8`` several thousands). Reference and scale are learnt with ``half_life`` samples
    only while ``stat < h``, so a drift does not teach itself away.

    Self-resetting: when ``stat`` reaches ``reset_factor * h`` the sums restart from 0 and
    the reference jumps to a fast mean (``fast_half_life``) of the recent samples: a new level
    becomes the new normal and the next change can be found (the reference then goes on as a
    running mean, so it settles on the new level fast). The score then holds its value
    and decays with ``hold_half_life`` samples, so an alarm does not vanish at the reset.

    Transients (optional ``aux`` > 0 on a sample): the caller knows the operating point is
    moving (a job's load step, a checkpoint dip) and the steady model behind ``x`` does
    not hold yet. A CUSUM for slow drift has nothing to say there and would alarm on the
    settling; so such a sample is not summed (its score is the decaying hold only, so an
    alarm raised before it does not vanish) and not learnt, while the fast mean follows it.
    At the first steady sample after a transient the reference is rebased on the fast mean
    (as at a reset, silently) and the scale is raised to the fast spread (``fast_scale``,
    about ``x``'s fast mean, learnt with ``fast_half_life``) where that is larger: a new
    operating point, with the model's bias and noise there, becomes the normal, instead of
    reading as a drift (a dry cooler that carried no heat before a job started had learnt a
    spread of 0 W).
    """

    name = "drift"
    kind = "drift"
    aux = "optional"
    FIELDS: ClassVar = {
        "ref": 0.0,
        "n_ref": 0.0,
        "scale": 0.0,
        "fast": 0.0,
        "gp": 0.0,
        "gn": 0.0,
        "hold": 0.0,
        "settling": 0.0,
        "fast_scale": 0.0,
    }

    def __init__(
        self,
        n_series: int = 0,
        *,
        k: float = 0.5,
        h: float = 8.0,
        half_life: float = 2000.0,
        fast_half_life: float = 10.0,
        clip_k: float = 3.0,
        reset_factor: float = 3.0,
        hold_half_life: float = 300.0,
        min_samples: int = 50,
        min_scale: float = 1e-6,
        rel_scale: float = 1e-4,
    ) -> None:
        self.k = float(k)
        self.h = positive("h", h)
        self.half_life = positive("half_life", half_life)
        self.fast_half_life = positive("fast_half_life", fast_half_life)
        self.clip_k = positive("clip_k", clip_k)
        self.reset_factor = positive("reset_factor", reset_factor)
        self.hold_half_life = positive("hold_half_life", hold_half_life)
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
        n = st["n_obs"]
        first = n == 0
        tr = np.zeros(x.shape, dtype=bool) if aux is None else np.nan_to_num(aux) > 0.0
        # first steady sample after a transient: rebase on where the transient settled
        rebase = ~tr & (st["settling"] > 0.0) & ~first
        ref = np.where(first, x, np.where(rebase, st["fast"], st["ref"]))
        fast = np.where(first, x, st["fast"])
        scale = np.where(rebase, np.maximum(st["scale"], st["fast_scale"]), st["scale"])
        s_eff = np.maximum(scale, self.min_scale + self.rel_scale * np.abs(ref))
        warm = n >= self.min_samples
        z = np.where(warm & ~tr, (x - ref) / s_eff, 0.0)
        quiet = tr | rebase
        gp = np.maximum(0.0, np.where(quiet, 0.0, st["gp"]) + z - self.k)
        gn = np.maximum(0.0, np.where(quiet, 0.0, st["gn"]) - z - self.k)
        stat = np.where(tr, 0.0, np.maximum(gp, gn))
        hold = st["hold"] * np.exp2(-1.0 / self.hold_half_life)
        score = np.maximum(squash(stat, self.h), hold)
        a_fast = -np.expm1(-np.log(2.0) / self.fast_half_life)
        f_sc = st["fast_scale"] + a_fast * (MAD_TO_SIGMA * np.abs(x - fast) - st["fast_scale"])
        st["fast_scale"] = np.where(valid & ~first, f_sc, st["fast_scale"])
        fast = fast + a_fast * (x - fast)
        reset = stat >= self.reset_factor * self.h
        learn = valid & (stat < self.h) & ~tr
        alpha = ew_alpha(st["n_ref"], self.half_life)
        new_ref, new_scale = robust_step(ref, scale, x, alpha, self.clip_k, warm)
        ref = np.where(learn, new_ref, ref)
        ref = np.where(reset, fast, ref)
        st["ref"] = np.where(valid, ref, st["ref"])
        # After a reset the reference restarts as a running mean worth the fast mean's
        # samples (2 / alpha - 1), so its error shrinks quickly instead of biasing the sums.
        n_fast = 2.0 / -np.expm1(-np.log(2.0) / self.fast_half_life) - 1.0
        n_ref = np.where(reset | rebase, n_fast, st["n_ref"] + learn)
        st["n_ref"] = np.where(valid, n_ref, st["n_ref"])
        st["scale"] = np.where(valid, np.where(learn & ~first, new_scale, scale), st["scale"])
        st["fast"] = np.where(valid, fast, st["fast"])
        st["gp"] = np.where(valid, np.where(reset | tr, 0.0, gp), st["gp"])
        st["gn"] = np.where(valid, np.where(reset | tr, 0.0, gn), st["gn"])
        st["hold"] = np.where(valid, np.where(reset, score, hold), st["hold"])
        st["settling"] = np.where(valid, tr.astype(np.float64), st["settling"])
        return score
