"""Online fit of every GPU's die-to-coolant thermal resistance and capacitance, and of the
coolant reference's offset.

Model (first-order thermal network, die capacitance ``C`` behind resistance ``R`` to the
coolant at the cold plate), discretised exactly for a power ``P`` and a coolant temperature
held over the step::

    T[k+1] - Tc = a * (T[k] - Tc) + (1 - a) * R * P,   a = exp(-dt/(R*C))

The coolant the plates see is rarely measured exactly: the reference fed (``Tref``: the
rack's manifold sensors, or a model of the rack coolant when it has none) reads
``delta = Tref - Tc`` too high. With ``x = T[k] - Tref`` and ``y = T[k+1] - Tref`` this is
``y = a*x + b*P - (1 - a)*delta``: linear in ``(a, b, c = -(1-a)*delta)``, and ``delta`` is
shared by the GPUs of a rack (``group``), so a biased rack sensor moves ``delta`` of the whole
rack while a fouling cold plate moves one GPU's ``R``.

Three fits run on every sample, all vectorised over the series (no loop over GPUs):

- ``(a, b)`` per GPU and ``delta`` per group by instrumental variables (twin/ivfit.py):
  the noisy die reading is a regressor, and least squares would bias ``a`` (and ``C``) low;
  the reading one step earlier instruments it. Slow forgetting (``forgetting``, default
  0.9995: about 2,000 samples, 33 min at 1 Hz); solved every ``solve_every`` samples.
- ``R`` twice by one-parameter least squares given that ``a`` and ``delta``:
  ``y - a*x + (1-a)*delta = (1-a)*R*P``; slow (``forgetting``: the baseline,
  :attr:`r_baseline_k_w`) and fast (``fast_forgetting``, default 0.99: 100 samples,
  :attr:`r_k_w`). With one parameter and the level of the die temperature in it, the fast fit
  follows a fouling plate within seconds-to-minutes and stays quiet (0.2-1 % at 1 Hz).

Which samples of ``P`` and ``Tref`` are "held over the step" is a setting (``power_timing``,
``coolant_timing``); the defaults match sources that report the power averaged over the
interval just ended (NVML on Ampere and newer, docs/sources.md S7; the simulator) and a coolant
that changes slowly (the simulator holds the coolant of the step's start).

A NaN in any input of a series skips it and forgets its previous sample, so the next valid
sample only seeds the regression (a gap never becomes a fake one-step transition). A series
sampled at a step other than its reference step is fitted through an exact correction (step
ratio 0.5-2) or re-discretised to the new step (beyond).
"""

from __future__ import annotations

from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from twin import ivfit
from twin.errors import TwinError
from twin.ivfit import FloatArray

Timing = Literal["start", "end"]
CoolantTiming = Literal["start", "sample"]
IntArray = npt.NDArray[np.intp]
#: (previous die [C], die [C], coolant reference [C], power [W], step [s]) of fitted series
_Inputs = tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]

#: Prior die-to-coolant resistance [K/W] (docs/sources.md S8: R_j_coolant_K_per_W 0.018).
PRIOR_R_K_W = 0.018
#: Prior die thermal capacitance [J/K] (docs/sources.md S8: C_th_J_per_K 400; S2: 300-600).
PRIOR_C_J_K = 400.0
#: Slow forgetting (baseline R, tau and the coolant offset): ~2,000 samples, 33 min at 1 Hz.
SLOW_FORGETTING = 0.9995
#: Fast forgetting of the tracking R: ~100 samples; follows fouling within 1 % (docs/estimator.md).
FAST_FORGETTING = 0.99
#: Relative sd of power-reading noise (the simulator's 0.5 %, twin/sim.py; an assumption).
POWER_NOISE_REL = 0.005
#: Samples between two solves of the instrumental-variable moments of a series.
SOLVE_EVERY = 30
#: Weight [samples] of the prior R in the one-parameter fits, at a die rise of ~18 K (1 kW).
PRIOR_R_WEIGHT = 1.0
#: Initial one-step residual variance [K^2]: NVML rounding (0.29 K) and sensor noise (~0.3 K).
PRIOR_SIG2_K2 = 0.25
#: Step ratios in this range are fitted at the reference step through an exact correction.
DT_RATIO_RANGE = (0.5, 2.0)
#: Identification: standard error of R below 1 % and of tau below 20 % as stated, which over
#: load steps is ~5 % measured (twin/ivfit.py OFFSET_TAU_REL): 2 sd within the targets of
#: docs/estimator.md (R 2 %, C 10 %).
R_IDENTIFIED_REL = 0.01
TAU_IDENTIFIED_REL = 0.2
#: Snapshot layout (1: two-parameter RLS with theta/cov, still restored).
SNAPSHOT_VERSION = 2

_PER_SERIES = (
    "dt_ref_s",
    "prev_temp_die_c",
    "prev_temp_coolant_c",
    "prev_power_w",
    "prev_x_k",
    "residual_k",
    "steady_residual_k",
    "n_updates",
)
_SETTINGS = (
    "forgetting",
    "fast_forgetting",
    "prior_r_k_w",
    "prior_c_j_k",
    "power_timing",
    "coolant_timing",
    "solve_every",
    "power_noise_rel",
)


class EstimatorError(TwinError):
    """Bad input to the thermal estimator (shapes, parameters, snapshot contents)."""


def _series(x: npt.ArrayLike, n: int, name: str) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise EstimatorError(f"{name}: expected shape ({n},), got {arr.shape}")
    return arr


class ThermalEstimator:
    """Online fit of ``R`` [K/W], ``C`` [J/K] and the coolant offset for ``n_series`` GPUs.

    Parameters
    ----------
    n_series : number of GPUs (series), fixed until :meth:`grow` or :meth:`take`.
    forgetting : slow forgetting factor in (0, 1] of the baseline fit (``tau``, ``delta``,
        :attr:`r_baseline_k_w`); 0.9995 weighs about the last 2,000 samples.
    fast_forgetting : forgetting of the tracking resistance :attr:`r_k_w`, in (0, 1].
    prior_r_k_w : prior resistance [K/W]; also the scale of the power regressor.
    prior_c_j_k : prior capacitance [J/K].
    power_timing : which power sample drives a step. ``"end"`` (default): the power reported
        with the new sample (interval averages: NVML on Ampere and newer, the simulator).
        ``"start"``: the power reported with the previous sample is held over the step.
    coolant_timing : ``"start"`` (default): the coolant reference of the previous sample is
        held over the step. ``"sample"``: each sample's own reference (textbook form).
    solve_every : samples between two solves of a series' slow fit (its cost is amortised).
    power_noise_rel : relative sd of the power reading's sample-to-sample noise, compensated in
        the slow fit (0.005: the simulator's, twin/sim.py; on hardware the scatter of the
        power at constant load). 0 turns the compensation off.
    """

    def __init__(
        self,
        n_series: int,
        *,
        forgetting: float = SLOW_FORGETTING,
        fast_forgetting: float = FAST_FORGETTING,
        prior_r_k_w: float = PRIOR_R_K_W,
        prior_c_j_k: float = PRIOR_C_J_K,
        power_timing: Timing = "end",
        coolant_timing: CoolantTiming = "start",
        solve_every: int = SOLVE_EVERY,
        power_noise_rel: float = POWER_NOISE_REL,
    ) -> None:
        if n_series < 0:
            raise EstimatorError(f"n_series: expected >= 0, got {n_series}")
        if not 0.0 < forgetting <= 1.0:
            raise EstimatorError(f"forgetting: expected in (0, 1], got {forgetting}")
        if not 0.0 < fast_forgetting <= 1.0:
            raise EstimatorError(f"fast_forgetting: expected in (0, 1], got {fast_forgetting}")
        if prior_r_k_w <= 0.0 or prior_c_j_k <= 0.0:
            raise EstimatorError(
                f"priors: expected R > 0 and C > 0, got R={prior_r_k_w} C={prior_c_j_k}"
            )
        if power_timing not in ("start", "end"):
            raise EstimatorError(f"power_timing: expected 'start' or 'end', got {power_timing!r}")
        if coolant_timing not in ("start", "sample"):
            raise EstimatorError(
                f"coolant_timing: expected 'start' or 'sample', got {coolant_timing!r}"
            )
        if int(solve_every) != solve_every or solve_every < 1:
            raise EstimatorError(f"solve_every: expected an int >= 1, got {solve_every}")
        self.forgetting = float(forgetting)
        self.fast_forgetting = float(fast_forgetting)
        self.prior_r_k_w = float(prior_r_k_w)
        self.prior_c_j_k = float(prior_c_j_k)
        self.power_timing: Timing = power_timing
        self.coolant_timing: CoolantTiming = coolant_timing
        self.solve_every = int(solve_every)
        if not 0.0 <= power_noise_rel < 0.5:
            raise EstimatorError(f"power_noise_rel: expected in [0, 0.5), got {power_noise_rel}")
        self.power_noise_rel = float(power_noise_rel)
        # one row per statistic (twin/ivfit.py); NaN until a series' first regression
        self._s = np.full((ivfit.N_ROWS, n_series), np.nan)
        self._dt_ref_s = np.full(n_series, np.nan)
        self._prev_die_c = np.full(n_series, np.nan)
        self._prev_cool_c = np.full(n_series, np.nan)
        self._prev_power_w = np.full(n_series, np.nan)
        self._prev_x_k = np.full(n_series, np.nan)  # x of the last step: the next instrument
        self._residual_k = np.full(n_series, np.nan)
        self._steady_residual_k = np.full(n_series, np.nan)
        self._n_updates = np.zeros(n_series, dtype=np.int64)

    def _settings(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in _SETTINGS}

    # ------------------------------------------------------------------ size

    @property
    def n_series(self) -> int:
        """Number of series."""
        return int(self._dt_ref_s.shape[0])

    def take(self, index: npt.ArrayLike) -> ThermalEstimator:
        """New estimator whose series ``j`` is this one's series ``index[j]``; ``-1`` = new series.

        Use it to reorder, drop or add GPUs when the site layout changes.
        """
        idx = np.asarray(index, dtype=np.intp)
        if idx.ndim != 1 or (idx.size and (idx.max() >= self.n_series or idx.min() < -1)):
            raise EstimatorError(
                f"index: expected 1-D ints in [-1, {self.n_series}), got shape {idx.shape}"
            )
        out = ThermalEstimator(idx.shape[0], **self._settings())  # type: ignore[arg-type]
        new = idx < 0
        safe = np.where(new, 0, idx)
        if self.n_series:
            # C order, as restore() gives: a gather along the columns comes back in Fortran
            # order, and every statistic (a row) read or updated then strides 232 bytes a
            # series (the detectors' reads of R and the offset at the campus ran 3-4x slower)
            out._s = np.ascontiguousarray(self._s[:, safe])
            out._s[:, new] = np.nan
        for name in _PER_SERIES:
            attr = _attr(name)
            src = getattr(self, attr)
            arr = src[safe] if src.shape[0] else getattr(out, attr)
            arr[new] = 0 if name == "n_updates" else np.nan
            setattr(out, attr, arr)
        return out

    def grow(self, n_new: int) -> ThermalEstimator:
        """This estimator with ``n_new`` fresh series appended (a new estimator)."""
        if n_new < 0:
            raise EstimatorError(f"n_new: expected >= 0, got {n_new}")
        return self.take(np.concatenate([np.arange(self.n_series), np.full(n_new, -1)]))

    def put(self, index: npt.ArrayLike, other: ThermalEstimator) -> None:
        """Overwrite series ``index[j]`` with ``other``'s series ``j`` (same settings)."""
        idx = np.asarray(index, dtype=np.intp)
        if idx.shape != (other.n_series,) or (
            idx.size and (idx.max() >= self.n_series or idx.min() < 0)
        ):
            raise EstimatorError(
                f"index: expected {other.n_series} ints in [0, {self.n_series}), "
                f"got shape {idx.shape}"
            )
        if self._settings() != other._settings():
            raise EstimatorError("put: the estimators' settings differ")
        self._s[:, idx] = other._s
        for name in _PER_SERIES:
            getattr(self, _attr(name))[idx] = getattr(other, _attr(name))

    # ------------------------------------------------------------------ fit

    def _prior_a(self, dt_s: FloatArray) -> FloatArray:
        return np.exp(-dt_s / (self.prior_r_k_w * self.prior_c_j_k))

    def _seed(self, s: FloatArray, dt_s: FloatArray) -> None:
        """Initialise the statistics ``s`` (columns of fresh series) at steps ``dt_s``."""
        a0 = self._prior_a(dt_s)
        s[:] = 0.0
        s[ivfit.A] = a0
        s[ivfit.T] = 1.0 - a0  # t = b / R_prior = (1 - a) R / R_prior
        # the prior R as one sample of a GPU at ~1 kW in the fast fit (the slow one's centred
        # moments start empty: its R reads as the prior until it has data)
        pf0 = 1000.0 * self.prior_r_k_w
        s[ivfit.FP] = PRIOR_R_WEIGHT * pf0
        s[ivfit.FPP] = PRIOR_R_WEIGHT * pf0 * pf0
        s[ivfit.FPX] = s[ivfit.FPP]
        s[ivfit.RF] = 1.0
        s[ivfit.PF] = np.nan  # set from the first sample
        s[ivfit.CF] = np.nan
        s[ivfit.SIG2] = PRIOR_SIG2_K2
        s[ivfit.INFO_D] = ivfit.DELTA_PRIOR
        s[ivfit.VAR_A] = np.inf

    def _rediscretise(self, s: FloatArray, ratio: FloatArray) -> None:
        """Map the slow fit of ``s`` to steps ``ratio`` times longer, exactly; its moments
        (taken at the old step) start again, the ridge keeps the estimate."""
        a = s[ivfit.A]
        a_new = a**ratio
        s[ivfit.T] = s[ivfit.T] * (1.0 - a_new) / (1.0 - a)
        s[ivfit.A] = a_new
        s[:12] = 0.0
        s[ivfit.VAR_A] = np.inf

    def update(
        self,
        temp_die_c: npt.ArrayLike,
        temp_coolant_c: npt.ArrayLike,
        power_w: npt.ArrayLike,
        dt_s: npt.ArrayLike,
        group: npt.ArrayLike | None = None,
    ) -> None:
        """Feed one sample of every series taken ``dt_s`` [s] after its previous one.

        ``temp_die_c`` [C], ``temp_coolant_c`` [C] (the coolant reference: manifold sensors or
        a model, see the module docstring), ``power_w`` [W] are shaped ``(n_series,)``;
        ``dt_s`` is a scalar or ``(n_series,)``. ``group`` numbers the series that share one
        coolant offset (ints ``0..g-1``, e.g. the rack of each GPU); None: each its own.
        Series with a NaN input are skipped (their residual becomes NaN and their previous
        sample is forgotten). Updates :attr:`residual_k`.
        """
        self._update(slice(None), self.n_series, temp_die_c, temp_coolant_c, power_w, dt_s, group)

    def update_at(
        self,
        index: npt.ArrayLike,
        temp_die_c: npt.ArrayLike,
        temp_coolant_c: npt.ArrayLike,
        power_w: npt.ArrayLike,
        dt_s: npt.ArrayLike,
        group: npt.ArrayLike | None = None,
    ) -> None:
        """:meth:`update` for the series ``index`` only (distinct indices); the others keep
        their previous sample and residual.

        Inputs (and ``group``) are shaped like ``index``: one worker feeds the frames of many
        racks that arrived together in one call, whatever the rest of its racks are doing.
        """
        idx = np.asarray(index, dtype=np.intp)
        if idx.ndim != 1 or (idx.size and (idx.max() >= self.n_series or idx.min() < 0)):
            raise EstimatorError(
                f"index: expected 1-D ints in [0, {self.n_series}), got shape {idx.shape}"
            )
        m = idx.shape[0]
        inputs: list[npt.ArrayLike] = [temp_die_c, temp_coolant_c, power_w, dt_s]
        if m > 1 and bool(np.any(idx[1:] < idx[:-1])):
            # in series order: the statistics are updated in blocks (and a rack's GPUs keep
            # their order, so pooled sums do not depend on the batching)
            order = np.argsort(idx, kind="stable")
            idx = idx[order]
            inputs = [x if np.ndim(x) == 0 else np.asarray(x)[order] for x in inputs]
            if group is not None:
                group = np.asarray(group)[order] if np.ndim(group) else group
        sel: IntArray | slice = idx
        if m and int(idx[-1]) - int(idx[0]) + 1 == m:  # distinct and sorted: one block
            sel = slice(int(idx[0]), int(idx[-1]) + 1)
        self._update(sel, m, inputs[0], inputs[1], inputs[2], inputs[3], group)

    def _update(
        self,
        sel: IntArray | slice,
        m: int,
        temp_die_c: npt.ArrayLike,
        temp_coolant_c: npt.ArrayLike,
        power_w: npt.ArrayLike,
        dt_s: npt.ArrayLike,
        group: npt.ArrayLike | None,
    ) -> None:
        """One sample of the ``m`` series ``sel`` (all of them: ``slice(None)``)."""
        t_die = _series(temp_die_c, m, "temp_die_c")
        t_cool = _series(temp_coolant_c, m, "temp_coolant_c")
        p_w = _series(power_w, m, "power_w")
        dt = _series(dt_s, m, "dt_s")
        grp = None if group is None else _groups(group, m)
        valid = np.isfinite(t_die) & np.isfinite(t_cool) & np.isfinite(p_w)
        prev_die = self._prev_die_c[sel]
        can_fit = valid & np.isfinite(prev_die) & (dt > 0.0) & np.isfinite(dt)
        self._residual_k[sel] = np.nan
        self._steady_residual_k[sel] = np.nan
        # every series can be fitted (the usual frame): slices keep every access a view
        sub: IntArray | slice = slice(None) if can_fit.all() else np.flatnonzero(can_fit)
        if isinstance(sub, slice):
            fit: IntArray | slice = sel
        else:
            fit = sub + (sel.start or 0) if isinstance(sel, slice) else sel[sub]
        x_new = np.full(m, np.nan)
        if can_fit.size and (isinstance(sub, slice) or sub.size):
            args = (prev_die[sub], t_die[sub], t_cool[sub], p_w[sub], dt[sub])
            g_fit = None if grp is None else grp[sub]
            if isinstance(fit, slice):
                x_new[sub] = self._fit(fit, args, g_fit)
            else:
                x_new[sub] = self._fit_sparse(fit, args, g_fit)
        self._prev_x_k[sel] = x_new
        self._prev_die_c[sel] = np.where(valid, t_die, np.nan)
        self._prev_cool_c[sel] = np.where(valid, t_cool, np.nan)
        self._prev_power_w[sel] = np.where(valid, p_w, np.nan)

    def _fit_sparse(self, fit: IntArray, args: _Inputs, grp: IntArray | None) -> FloatArray:
        """:meth:`_fit` of the sorted series ``fit``. Where they fill at least half of their
        span, the span is updated in place with the others masked out: gathering and writing
        back every statistic of scattered series costs more than the arithmetic."""
        lo, hi = int(fit[0]), int(fit[-1]) + 1
        if 2 * fit.size < hi - lo:
            return self._fit(fit, args, grp)
        pos = fit - lo
        live = np.zeros(hi - lo, dtype=bool)
        live[pos] = True
        spread = []
        for arr, fill in zip(args, (0.0, 0.0, 0.0, 0.0, 1.0), strict=True):
            full = np.full(hi - lo, fill)
            full[pos] = arr
            spread.append(full)
        die0, die1, cool, power, dt = spread
        g_full = None
        if grp is not None:
            g_full = np.full(hi - lo, int(grp.max()) + 1 if grp.size else 0, dtype=np.intp)
            g_full[pos] = grp
        x = self._fit(slice(lo, hi), (die0, die1, cool, power, dt), g_full, live=live)
        return x[pos]

    def _fit(
        self,
        fit: IntArray | slice,
        inputs: _Inputs,
        grp: IntArray | None,
        live: npt.NDArray[np.bool_] | None = None,
    ) -> FloatArray:
        """One regression step of the series ``fit`` given (previous die [C], die [C], coolant
        reference [C], power [W], step [s]); returns their ``x`` [K]. ``live`` (a slice's
        columns): only these take the sample, the others stay as they are."""
        prev_die, t_die, t_cool, p_w, dt = inputs
        whole = isinstance(fit, slice)
        s = self._s[:, fit]  # a view for a slice, a copy for an index (written back below)
        dt_ref = self._dt_ref_s[fit]
        fresh = np.isnan(dt_ref)
        if live is not None:
            fresh &= live
        if fresh.any():
            cols = np.flatnonzero(fresh)
            seeded = s[:, cols]
            self._seed(seeded, dt[cols])
            s[:, cols] = seeded
            dt_ref = np.where(fresh, dt, dt_ref)
        ratio = dt / dt_ref
        if live is not None:
            ratio = np.where(live, ratio, 1.0)
        lo, hi = DT_RATIO_RANGE
        far = (ratio < lo) | (ratio > hi)
        if far.any():
            cols = np.flatnonzero(far)
            moved = s[:, cols]
            self._rediscretise(moved, ratio[cols])
            s[:, cols] = moved
            dt_ref = np.where(far, dt, dt_ref)
            ratio = np.where(far, 1.0, ratio)
        self._dt_ref_s[fit] = dt_ref
        same = bool(np.all(np.abs(ratio - 1.0) <= 1e-9))

        p = (self._prev_power_w[fit] if self.power_timing == "start" else p_w) * self.prior_r_k_w
        c_prev = self._prev_cool_c[fit]
        if live is not None:
            # masked columns: zero inputs (their increments are zero, their rows kept)
            c_prev = np.where(live, c_prev, 0.0)
            p = np.where(live, p, 0.0)
        x = prev_die - c_prev
        y = t_die - (c_prev if self.coolant_timing == "start" else t_cool)
        a = s[ivfit.A]
        delta = s[ivfit.DELTA]
        if live is not None:
            a = np.where(live, a, 0.5)
            delta = np.where(live, delta, 0.0)
        a_r = a if same else a**ratio
        one_ar = 1.0 - a_r
        # one-step prediction with the baseline R and the offset: y = a x + (1-a) (R p - delta)
        residual = y - a_r * x
        residual -= one_ar * (s[ivfit.RF] * p - delta)
        lam_s: float | FloatArray = self.forgetting
        lam_f: float | FloatArray = self.fast_forgetting
        lam_sig = lam_f
        if live is not None:
            residual = np.where(live, residual, 0.0)
            self._residual_k[fit] = np.where(live, residual, self._residual_k[fit])
            lam_s = np.where(live, lam_s, 1.0)
            lam_f = np.where(live, lam_f, 1.0)
            lam_sig = lam_f
        else:
            self._residual_k[fit] = residual
        s[ivfit.SIG2] *= lam_sig
        s[ivfit.SIG2] += (1.0 - lam_sig) * residual * residual
        # low-pass regressions of x on the filtered power (before this step's power)
        # the die is the low-pass of coolant and power: x_lp = die - cf, pf through the same
        # filter (before this step's inputs), so coolant swings do not leak into R
        pf = s[ivfit.PF]
        cf = s[ivfit.CF]
        z0 = self._prev_x_k[fit]
        usable = np.isfinite(z0)
        if live is not None:
            usable |= ~live  # (masked columns: their filters are kept below)
        if not usable.all():
            # a fresh series or the first step after a gap: the filters' states are unknown
            # or stale; the die itself is the low-pass of its inputs, so start from it
            cf = s[ivfit.CF] = np.where(usable, cf, c_prev)
            with np.errstate(invalid="ignore", divide="ignore"):
                from_die = (prev_die - cf + delta) / s[ivfit.RF]
            pf = s[ivfit.PF] = np.where(usable, pf, np.where(np.isfinite(from_die), from_die, p))
        one: float | FloatArray = 1.0
        if live is not None:
            pf = np.where(live, pf, 0.0)
            cf = np.where(live, cf, 0.0)
            one = live.astype(np.float64)
        x_lp = prev_die - cf
        s[ivfit.FAST_ROWS] *= lam_f
        pfx = pf * x_lp
        pfpf = pf * pf
        s[ivfit.FP] += pf
        s[ivfit.FPP] += pfpf
        s[ivfit.FPX] += pfx
        s[ivfit.L1 : ivfit.LPX + 1] *= lam_s
        s[ivfit.L1] += one
        s[ivfit.LX] += x_lp
        s[ivfit.LP] += pf
        s[ivfit.LPP] += pfpf
        s[ivfit.LPX] += pfx
        new_pf = a_r * pf + one_ar * p
        new_cf = a_r * cf + one_ar * c_prev
        if live is not None:
            new_pf = np.where(live, new_pf, s[ivfit.PF])
            new_cf = np.where(live, new_cf, s[ivfit.CF])
        s[ivfit.PF] = new_pf
        s[ivfit.CF] = new_cf
        # the die against the baseline model run through its own low-pass: a reference or
        # plate that moves shows in full after a few tau (the one-step residual sees 1 - a)
        steady = t_die - new_cf + delta - s[ivfit.RF] * new_pf
        if live is not None:
            steady = np.where(live, steady, self._steady_residual_k[fit])
        self._steady_residual_k[fit] = steady
        # the slow IV moments, at the reference step: y moved to what a reference step gives
        y_ref = y if same else y + (a - a_r) * (x - (s[ivfit.T] / (1.0 - a) * p - delta))
        if live is not None:
            usable &= live & np.isfinite(z0)
        if usable.all():
            ivfit.accumulate(s, (z0, p, 1.0), x, p, y_ref, lam_s, self.power_noise_rel)
        else:
            w = usable.astype(np.float64)
            ivfit.accumulate(
                s,
                (np.where(usable, z0, 0.0), p * w, w),
                x,
                p,
                y_ref,
                np.where(usable, lam_s, 1.0),
                self.power_noise_rel,
            )
        self._n_updates[fit] += 1 if live is None else live
        due = self._n_updates[fit] % self.solve_every == 0
        if live is not None:
            due &= live
        if due.any():
            self._solve(s, due, grp)
        if not whole:
            self._s[:, fit] = s
        return x

    def _solve(self, s: FloatArray, due: npt.NDArray[np.bool_], grp: IntArray | None) -> None:
        """Solve the slow fit of the columns ``due`` of ``s`` (whole groups at once)."""
        if grp is not None:
            due = (np.bincount(grp, due.astype(np.float64)) > 0.0)[grp]
        if due.all():
            ivfit.solve(s, grp, self.power_noise_rel)
            return
        cols = np.flatnonzero(due)
        part = s[:, cols]
        ivfit.solve(part, None if grp is None else grp[cols], self.power_noise_rel)
        s[:, cols] = part

    def predict(
        self, temp_coolant_c: npt.ArrayLike, power_w: npt.ArrayLike, dt_s: npt.ArrayLike
    ) -> FloatArray:
        """Expected die temperature [C] ``dt_s`` [s] after the last sample.

        Assumes the coolant reference stays at ``temp_coolant_c`` [C] (the plates see it less
        the fitted offset) and the GPU draws ``power_w`` [W] over the interval. NaN for series
        without a valid last sample.
        """
        n = self.n_series
        t_cool = _series(temp_coolant_c, n, "temp_coolant_c") - self._delta()
        p_w = _series(power_w, n, "power_w")
        dt = _series(dt_s, n, "dt_s")
        a = np.exp(-dt / self.tau_s)
        return t_cool + a * (self._prev_die_c - t_cool) + self.r_k_w * (1.0 - a) * p_w

    def steady_temp_die_c(
        self, temp_coolant_c: npt.ArrayLike, power_w: npt.ArrayLike
    ) -> FloatArray:
        """Steady-state die temperature [C] at coolant reference ``temp_coolant_c`` [C] and
        ``power_w`` [W]."""
        n = self.n_series
        t_cool = _series(temp_coolant_c, n, "temp_coolant_c") - self._delta()
        return t_cool + self.r_k_w * _series(power_w, n, "power_w")

    # ------------------------------------------------------------------ results

    @property
    def residual_k(self) -> FloatArray:
        """Last measured minus one-step-ahead predicted die temperature [K] (NaN where skipped)."""
        return self._residual_k.copy()

    @property
    def steady_residual_k(self) -> FloatArray:
        """Last die reading minus the baseline model's die [K]: the coolant reference less the
        offset, and the baseline ``R`` times the power, both through the die's low-pass. A
        coolant or reference change of D shows as -D here within a few ``tau`` (in
        :attr:`residual_k`, one step ahead, only as ``-(1 - a) * D``); NaN where skipped."""
        return self._steady_residual_k.copy()

    @property
    def n_updates(self) -> npt.NDArray[np.int64]:
        """Number of regressions each series has taken part in."""
        return self._n_updates.copy()

    def _delta(self, s: FloatArray | None = None) -> FloatArray:
        d = (self._s if s is None else s)[ivfit.DELTA]
        return np.where(np.isnan(d), 0.0, d)

    def _a(self) -> tuple[FloatArray, FloatArray]:
        dt = self._dt_ref_s
        fresh = np.isnan(dt)
        dt_eval = np.where(fresh, 1.0, dt)
        return np.where(fresh, self._prior_a(dt_eval), self._s[ivfit.A]), dt_eval

    def _r(self, n: int, pp: int, px: int, s: FloatArray | None = None) -> FloatArray:
        """R [K/W] of the fit in rows (n, pp, px) of the statistics ``s`` (default: all)."""
        s = self._s if s is None else s
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (s[px] + self._delta(s) * s[n]) / s[pp] * self.prior_r_k_w
        return np.where(np.isfinite(r) & (r > 0.0), r, self.prior_r_k_w)

    @property
    def tau_s(self) -> FloatArray:
        """Fitted time constant ``R*C`` [s] of the slow fit (the prior until fitted)."""
        a, dt = self._a()
        return -dt / np.log(a)

    @property
    def r_k_w(self) -> FloatArray:
        """Fitted die-to-coolant resistance [K/W], fast (``fast_forgetting``): follows fouling."""
        return self._r(ivfit.FP, ivfit.FPP, ivfit.FPX)

    @property
    def r_baseline_k_w(self) -> FloatArray:
        """Fitted die-to-coolant resistance [K/W], slow (``forgetting``): the baseline."""
        return self._r(ivfit.LP, ivfit.LPP, ivfit.LPX)

    @property
    def c_j_k(self) -> FloatArray:
        """Fitted die thermal capacitance [J/K]: slow ``tau`` over the baseline ``R``. Read
        :attr:`c_identified` before trusting it: without power changes it is the prior's."""
        return self.tau_s / self.r_baseline_k_w

    @property
    def coolant_offset_k(self) -> FloatArray:
        """Fitted offset [K] of the coolant reference above the coolant the plates see, per
        series (shared by its group): a rack sensor reading 1 K high gives +1. For detectors:
        the whole rack moving together is the sensor (or the coolant), one GPU's ``R`` alone is
        its cold plate."""
        return self._delta()

    @property
    def coolant_offset_sd_k(self) -> FloatArray:
        """Standard error [K] of :attr:`coolant_offset_k` (inf for series not fitted)."""
        return self._offset_sd(self._s)

    @staticmethod
    def _offset_sd(s: FloatArray) -> FloatArray:
        out = 1.0 / np.sqrt(s[ivfit.INFO_D])
        return np.where(np.isfinite(out), out, np.inf)

    @property
    def r_identified(self) -> npt.NDArray[np.bool_]:
        """Whether :attr:`r_baseline_k_w` is known to 1 % (1 sd), offset included: a GPU whose
        power never changes cannot tell its ``R`` from the coolant offset."""
        return self._r_identified(self._s)

    def r_identified_at(self, index: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """:attr:`r_identified` of the series ``index`` only, at a cost in proportion to them
        (a caller that keeps identification sticky asks only the GPUs not identified yet)."""
        return self._r_identified(self._s[:, np.asarray(index, dtype=np.intp)])

    def _r_identified(self, s: FloatArray) -> npt.NDArray[np.bool_]:
        """:attr:`r_identified` of the statistics ``s`` (columns of ``_s``)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            p_mean = s[ivfit.LP] / s[ivfit.L1]  # mean filtered P * R_prior [K]
        # die above the coolant [K]
        rise = self._r(ivfit.LP, ivfit.LPP, ivfit.LPX, s) / self.prior_r_k_w * p_mean
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = self._offset_sd(s) / rise
        return np.asarray(rel < R_IDENTIFIED_REL, dtype=bool)

    @property
    def c_identified(self) -> npt.NDArray[np.bool_]:
        """Whether ``tau`` (and so :attr:`c_j_k`) is known to ~5 % (1 sd); False for GPUs
        whose power has not changed enough (an idle GPU), which report the prior's ``C``."""
        a = self._s[ivfit.A]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.sqrt(self._s[ivfit.VAR_A]) / (a * np.abs(np.log(a)))
        return np.asarray(rel < TAU_IDENTIFIED_REL, dtype=bool) & self.r_identified

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, np.ndarray]:
        """Every array and setting of the estimator (copies), ready for ``np.savez``.

        Per-series arrays have the series on their first axis.
        """
        out: dict[str, np.ndarray] = {
            "version": np.array(SNAPSHOT_VERSION),
            "stats": self._s.T.copy(),
        }
        for name in _PER_SERIES:
            out[name] = getattr(self, _attr(name)).copy()
        for name in _SETTINGS:
            out[name] = np.array(getattr(self, name))
        return out

    @classmethod
    def restore(cls, snap: dict[str, np.ndarray]) -> ThermalEstimator:
        """Rebuild an estimator from :meth:`snapshot` output (exactly, bit for bit); a
        version-1 snapshot (two-parameter RLS) keeps its fitted ``R`` and ``tau``."""
        if "version" not in snap:
            return _restore_v1(snap)
        version = int(np.asarray(snap["version"]))
        if version != SNAPSHOT_VERSION:
            raise EstimatorError(f"snapshot: version {version} not known")
        missing = [k for k in ("stats", *_PER_SERIES, *_SETTINGS) if k not in snap]
        if missing:
            raise EstimatorError(f"snapshot: missing keys {missing}")
        n = int(np.asarray(snap["dt_ref_s"]).shape[0])
        shapes = {k: (n,) for k in _PER_SERIES} | {"stats": (n, ivfit.N_ROWS)}
        for key, shape in shapes.items():
            if np.asarray(snap[key]).shape != shape:
                raise EstimatorError(
                    f"snapshot[{key!r}]: expected shape {shape}, got {np.asarray(snap[key]).shape}"
                )
        est = cls(
            n,
            forgetting=float(snap["forgetting"]),
            fast_forgetting=float(snap["fast_forgetting"]),
            prior_r_k_w=float(snap["prior_r_k_w"]),
            prior_c_j_k=float(snap["prior_c_j_k"]),
            power_timing=cast(Timing, str(np.asarray(snap["power_timing"]))),
            coolant_timing=cast(CoolantTiming, str(np.asarray(snap["coolant_timing"]))),
            solve_every=int(snap["solve_every"]),
            power_noise_rel=float(snap["power_noise_rel"]),
        )
        est._s = np.ascontiguousarray(np.asarray(snap["stats"], dtype=np.float64).T)
        for name in _PER_SERIES:
            dtype = np.int64 if name == "n_updates" else np.float64
            setattr(est, _attr(name), np.array(snap[name], dtype=dtype))
        return est


def _attr(name: str) -> str:
    """Attribute of a per-series snapshot key."""
    return {
        "prev_temp_die_c": "_prev_die_c",
        "prev_temp_coolant_c": "_prev_cool_c",
    }.get(name, f"_{name}")


def _groups(group: npt.ArrayLike, m: int) -> IntArray:
    g = np.asarray(group)
    if g.shape != (m,) or (g.size and (g.dtype.kind not in "iu" or g.min() < 0)):
        raise EstimatorError(f"group: expected ({m},) ints >= 0, got {g.dtype} {g.shape}")
    return g.astype(np.intp, copy=False)


_V1_KEYS = ("theta", "dt_ref_s", "prev_temp_die_c", "prev_temp_coolant_c", "prev_power_w")


def _restore_v1(snap: dict[str, np.ndarray]) -> ThermalEstimator:
    """A version-1 snapshot (theta = (a, b / R_prior), cov): its R and tau as the estimate."""
    missing = [k for k in (*_V1_KEYS, "residual_k", "n_updates", "prior_r_k_w") if k not in snap]
    if missing:
        raise EstimatorError(f"snapshot: missing keys {missing}")
    n = int(np.asarray(snap["dt_ref_s"]).shape[0])
    theta = np.asarray(snap["theta"], dtype=np.float64)
    if theta.shape != (n, 2):
        raise EstimatorError(f"snapshot['theta']: expected shape {(n, 2)}, got {theta.shape}")
    est = ThermalEstimator(
        n,
        prior_r_k_w=float(snap["prior_r_k_w"]),
        prior_c_j_k=float(snap.get("prior_c_j_k", PRIOR_C_J_K)),
        power_timing=cast(Timing, str(np.asarray(snap.get("power_timing", "end")))),
        coolant_timing=cast(CoolantTiming, str(np.asarray(snap.get("coolant_timing", "start")))),
    )
    dt = np.array(snap["dt_ref_s"], dtype=np.float64)
    fitted = np.isfinite(dt)
    if fitted.any():
        cols = np.flatnonzero(fitted)
        s = est._s[:, cols]
        est._seed(s, dt[cols])
        s[ivfit.A] = theta[cols, 0]
        s[ivfit.T] = theta[cols, 1]
        r_rel = theta[cols, 1] / (1.0 - theta[cols, 0])
        s[ivfit.FPX] = s[ivfit.FPP] * r_rel
        s[ivfit.RF] = r_rel
        est._s[:, cols] = s
    est._dt_ref_s = dt
    est._prev_die_c = np.array(snap["prev_temp_die_c"], dtype=np.float64)
    est._prev_cool_c = np.array(snap["prev_temp_coolant_c"], dtype=np.float64)
    est._prev_power_w = np.array(snap["prev_power_w"], dtype=np.float64)
    est._residual_k = np.array(snap["residual_k"], dtype=np.float64)
    est._n_updates = np.array(snap["n_updates"], dtype=np.int64)
    return est
