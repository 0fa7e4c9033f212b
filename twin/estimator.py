"""Online fit of every GPU's die-to-coolant thermal resistance and capacitance.

Model (first-order thermal network, die capacitance ``C`` behind resistance ``R`` to the
coolant), discretised exactly for a power ``P`` and a coolant temperature ``Tc`` held over
the step::

    T[k+1] - Tc = a * (T[k] - Tc) + b * P,   a = exp(-dt/(R*C)),   b = R*(1-a)

Which samples of ``P`` and ``Tc`` are "held over the step" is a setting (``power_timing``,
``coolant_timing``); the defaults match sources that report the power averaged over the
interval just ended (NVML on Ampere and newer, docs/sources.md S7; the simulator, whose
state carries the power of the step just simulated) and a coolant that changes slowly
(the simulator holds the coolant of the step's start). ``power_timing="start"`` with
``coolant_timing="sample"`` gives the textbook form ``y[k+1] = a*y[k] + b*P[k]`` with
``y = T_die - T_coolant`` of each sample.

``(a, b)`` enter linearly, so all GPUs are fitted at once by vectorised recursive least
squares with exponential forgetting (twin/rls.py); ``R = b/(1-a)``, ``tau = -dt/ln(a)`` and
``C = tau/R`` follow. The power regressor is scaled by the prior resistance so both
parameters are dimensionless and of order 0.1-1, which keeps the 2x2 covariances well
conditioned. Series may be sampled at different or changing intervals: a series whose step
differs from the one its parameters were discretised for is re-discretised exactly, with its
covariance carried through the Jacobian of that map.

A NaN in any input of a series skips it and forgets its previous sample, so the next valid
sample only seeds the regression (a gap never becomes a fake one-step transition).
"""

from __future__ import annotations

from typing import Literal, cast

import numpy as np
import numpy.typing as npt

from twin.errors import TwinError
from twin.rls import FloatArray, Rls2State, rls2_update

Timing = Literal["start", "end"]
CoolantTiming = Literal["start", "sample"]

#: Prior die-to-coolant resistance [K/W] (docs/sources.md S8: R_j_coolant_K_per_W 0.018).
PRIOR_R_K_W = 0.018
#: Prior die thermal capacitance [J/K] (docs/sources.md S8: C_th_J_per_K 400; section 2: 300-600).
PRIOR_C_J_K = 400.0
#: Prior standard deviation of both normalised parameters; a = exp(-1/7.2) = 0.87 at 1 s, so
#: 0.1 spans tau of about 4-20 s (docs/sources.md S2: tau 5-20 s estimated).
PRIOR_STD = 0.1
#: Cap on each covariance trace (100x the prior's) against wind-up at constant power.
MAX_COV_TRACE = 2.0
#: Relative step change that triggers re-discretisation (clock jitter below it is ignored).
DT_REL_TOL = 1e-6

_SNAPSHOT_KEYS = (
    "theta",
    "cov",
    "dt_ref_s",
    "prev_temp_die_c",
    "prev_temp_coolant_c",
    "prev_power_w",
    "residual_k",
    "n_updates",
    "forgetting",
    "prior_r_k_w",
    "prior_c_j_k",
    "max_cov_trace",
    "power_timing",
    "coolant_timing",
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
    """Recursive least-squares fit of ``R`` [K/W] and ``C`` [J/K] for ``n_series`` GPUs.

    Parameters
    ----------
    n_series : number of GPUs (series), fixed until :meth:`grow` or :meth:`take`.
    forgetting : RLS forgetting factor in (0, 1]; 0.999 weighs about the last 1,000 samples
        (17 min at 1 Hz), fast enough to follow cold-plate fouling over hours.
    prior_r_k_w : prior resistance [K/W]; also the scale of the power regressor.
    prior_c_j_k : prior capacitance [J/K].
    power_timing : which power sample drives a step. ``"end"`` (default): the power reported
        with the new sample, for sources whose power is an average over the interval just
        ended (NVML on Ampere and newer, 1 s average, docs/sources.md S7; the simulator).
        ``"start"``: the power reported with the previous sample is held over the step.
    coolant_timing : ``"start"`` (default): the coolant of the previous sample is held over
        the step (the simulator's convention; on hardware within half a step's coolant change
        of the truth). ``"sample"``: each sample's own die-to-coolant difference, the textbook
        ``y[k+1] = a*y[k] + b*P``.
    max_cov_trace : cap on each covariance trace (normalised units).
    """

    def __init__(
        self,
        n_series: int,
        *,
        forgetting: float = 0.999,
        prior_r_k_w: float = PRIOR_R_K_W,
        prior_c_j_k: float = PRIOR_C_J_K,
        power_timing: Timing = "end",
        coolant_timing: CoolantTiming = "start",
        max_cov_trace: float = MAX_COV_TRACE,
    ) -> None:
        if n_series < 0:
            raise EstimatorError(f"n_series: expected >= 0, got {n_series}")
        if not 0.0 < forgetting <= 1.0:
            raise EstimatorError(f"forgetting: expected in (0, 1], got {forgetting}")
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
        if max_cov_trace <= 0.0:
            raise EstimatorError(f"max_cov_trace: expected > 0, got {max_cov_trace}")
        self.forgetting = float(forgetting)
        self.prior_r_k_w = float(prior_r_k_w)
        self.prior_c_j_k = float(prior_c_j_k)
        self.power_timing: Timing = power_timing
        self.coolant_timing: CoolantTiming = coolant_timing
        self.max_cov_trace = float(max_cov_trace)
        self._rls = Rls2State.empty(n_series)
        # NaN until a series' first regression discretises the prior at its step.
        self._dt_ref_s = np.full(n_series, np.nan)
        self._prev_die_c = np.full(n_series, np.nan)
        self._prev_cool_c = np.full(n_series, np.nan)
        self._prev_power_w = np.full(n_series, np.nan)
        self._residual_k = np.full(n_series, np.nan)
        self._n_updates = np.zeros(n_series, dtype=np.int64)

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
        out = ThermalEstimator(
            idx.shape[0],
            forgetting=self.forgetting,
            prior_r_k_w=self.prior_r_k_w,
            prior_c_j_k=self.prior_c_j_k,
            power_timing=self.power_timing,
            coolant_timing=self.coolant_timing,
            max_cov_trace=self.max_cov_trace,
        )
        out._rls = self._rls.take(idx)
        new = idx < 0
        safe = np.where(new, 0, idx)
        for name in ("_dt_ref_s", "_prev_die_c", "_prev_cool_c", "_prev_power_w", "_residual_k"):
            src = getattr(self, name)
            arr = src[safe] if src.shape[0] else np.full(idx.shape[0], np.nan)
            arr[new] = np.nan
            setattr(out, name, arr)
        counts = self._n_updates[safe] if self.n_series else np.zeros(idx.shape[0], np.int64)
        counts[new] = 0
        out._n_updates = counts
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
        mine = (self.forgetting, self.prior_r_k_w, self.prior_c_j_k, self.max_cov_trace)
        theirs = (other.forgetting, other.prior_r_k_w, other.prior_c_j_k, other.max_cov_trace)
        if mine != theirs or (self.power_timing, self.coolant_timing) != (
            other.power_timing,
            other.coolant_timing,
        ):
            raise EstimatorError("put: the estimators' settings differ")
        for name in ("theta0", "theta1", "p00", "p01", "p11"):
            getattr(self._rls, name)[idx] = getattr(other._rls, name)
        for name in (
            "_dt_ref_s",
            "_prev_die_c",
            "_prev_cool_c",
            "_prev_power_w",
            "_residual_k",
            "_n_updates",
        ):
            getattr(self, name)[idx] = getattr(other, name)

    # ------------------------------------------------------------------ fit

    def _prior_theta(self, dt_s: FloatArray) -> tuple[FloatArray, FloatArray]:
        a = np.exp(-dt_s / (self.prior_r_k_w * self.prior_c_j_k))
        return a, 1.0 - a  # theta1 = b / R_prior

    def _discretise(self, idx: npt.NDArray[np.intp] | slice, dt_s: FloatArray) -> None:
        """Make series ``idx`` describe steps of ``dt_s``: seed fresh ones, convert others."""
        dt_ref = self._dt_ref_s[idx].copy()
        fresh = np.isnan(dt_ref)
        all_idx = np.arange(self.n_series) if isinstance(idx, slice) else idx
        if fresh.any():
            f_idx = all_idx[fresh]
            a0, t0 = self._prior_theta(dt_s[fresh])
            self._rls.theta0[f_idx] = a0
            self._rls.theta1[f_idx] = t0
            self._rls.p00[f_idx] = PRIOR_STD**2
            self._rls.p01[f_idx] = 0.0
            self._rls.p11[f_idx] = PRIOR_STD**2
            self._dt_ref_s[f_idx] = dt_s[fresh]
        change = ~fresh & (np.abs(dt_s - dt_ref) > DT_REL_TOL * dt_ref)
        if not change.any():
            return
        c_idx = all_idx[change]
        ratio = dt_s[change] / dt_ref[change]
        a = self._rls.theta0[c_idx]
        t = self._rls.theta1[c_idx]
        a_new = a**ratio
        one_a = 1.0 - a
        t_new = t * (1.0 - a_new) / one_a
        # Jacobian of (a, t) -> (a**r, t*(1-a**r)/(1-a)); a' does not depend on t.
        j00 = ratio * a ** (ratio - 1.0)
        j10 = t * (-j00 * one_a + (1.0 - a_new)) / one_a**2
        j11 = (1.0 - a_new) / one_a
        p00 = self._rls.p00[c_idx]
        p01 = self._rls.p01[c_idx]
        p11 = self._rls.p11[c_idx]
        self._rls.theta0[c_idx] = a_new
        self._rls.theta1[c_idx] = t_new
        self._rls.p00[c_idx] = j00 * j00 * p00
        self._rls.p01[c_idx] = j00 * (j10 * p00 + j11 * p01)
        self._rls.p11[c_idx] = j10 * j10 * p00 + 2.0 * j10 * j11 * p01 + j11 * j11 * p11
        self._dt_ref_s[c_idx] = dt_s[change]

    def update(
        self,
        temp_die_c: npt.ArrayLike,
        temp_coolant_c: npt.ArrayLike,
        power_w: npt.ArrayLike,
        dt_s: npt.ArrayLike,
    ) -> None:
        """Feed one sample of every series taken ``dt_s`` [s] after its previous one.

        ``temp_die_c`` [C], ``temp_coolant_c`` [C] (the coolant at the cold plate), ``power_w``
        [W] are shaped ``(n_series,)``; ``dt_s`` is a scalar or ``(n_series,)``. Series with a
        NaN input are skipped (their residual becomes NaN and their previous sample is
        forgotten). Updates :attr:`residual_k`.
        """
        self._update(slice(None), self.n_series, temp_die_c, temp_coolant_c, power_w, dt_s)

    def update_at(
        self,
        index: npt.ArrayLike,
        temp_die_c: npt.ArrayLike,
        temp_coolant_c: npt.ArrayLike,
        power_w: npt.ArrayLike,
        dt_s: npt.ArrayLike,
    ) -> None:
        """:meth:`update` for the series ``index`` only (distinct indices); the others keep
        their previous sample and residual.

        Inputs are shaped like ``index``: one worker feeds the frames of many racks that
        arrived together in one call, whatever the rest of its racks are doing.
        """
        idx = np.asarray(index, dtype=np.intp)
        if idx.ndim != 1 or (idx.size and (idx.max() >= self.n_series or idx.min() < 0)):
            raise EstimatorError(
                f"index: expected 1-D ints in [0, {self.n_series}), got shape {idx.shape}"
            )
        self._update(idx, idx.shape[0], temp_die_c, temp_coolant_c, power_w, dt_s)

    def _update(
        self,
        sel: npt.NDArray[np.intp] | slice,
        m: int,
        temp_die_c: npt.ArrayLike,
        temp_coolant_c: npt.ArrayLike,
        power_w: npt.ArrayLike,
        dt_s: npt.ArrayLike,
    ) -> None:
        """One sample of the ``m`` series ``sel`` (all of them: ``slice(None)``)."""
        t_die = _series(temp_die_c, m, "temp_die_c")
        t_cool = _series(temp_coolant_c, m, "temp_coolant_c")
        p_w = _series(power_w, m, "power_w")
        dt = _series(dt_s, m, "dt_s")
        valid = np.isfinite(t_die) & np.isfinite(t_cool) & np.isfinite(p_w)
        prev_die = self._prev_die_c[sel]
        can_fit = valid & np.isfinite(prev_die) & (dt > 0.0) & np.isfinite(dt)
        self._residual_k[sel] = np.nan
        # every series can be fitted (the usual frame): slices keep every access a view
        sub: npt.NDArray[np.intp] | slice = (
            slice(None) if can_fit.all() else np.flatnonzero(can_fit)
        )
        if isinstance(sub, slice):
            fit: npt.NDArray[np.intp] | slice = sel
        else:
            fit = sub if isinstance(sel, slice) else sel[sub]
        if can_fit.size and (isinstance(sub, slice) or sub.size):
            self._discretise(fit, dt[sub])
            p_held = self._prev_power_w[fit] if self.power_timing == "start" else p_w[sub]
            c_prev = self._prev_cool_c[fit]
            c_now = c_prev if self.coolant_timing == "start" else t_cool[sub]
            innovation = rls2_update(
                self._rls,
                fit,
                prev_die[sub] - c_prev,
                p_held * self.prior_r_k_w,
                t_die[sub] - c_now,
                self.forgetting,
                self.max_cov_trace,
                valid_theta0=(0.0, 1.0),
                valid_theta1=(0.0, np.inf),
            )
            self._residual_k[fit] = innovation
            self._n_updates[fit] += 1
        self._prev_die_c[sel] = np.where(valid, t_die, np.nan)
        self._prev_cool_c[sel] = np.where(valid, t_cool, np.nan)
        self._prev_power_w[sel] = np.where(valid, p_w, np.nan)

    def predict(
        self, temp_coolant_c: npt.ArrayLike, power_w: npt.ArrayLike, dt_s: npt.ArrayLike
    ) -> FloatArray:
        """Expected die temperature [C] ``dt_s`` [s] after the last sample.

        Assumes the coolant at the cold plate stays at ``temp_coolant_c`` [C] and the GPU draws
        ``power_w`` [W] over the interval. NaN for series without a valid last sample.
        """
        n = self.n_series
        t_cool = _series(temp_coolant_c, n, "temp_coolant_c")
        p_w = _series(power_w, n, "power_w")
        dt = _series(dt_s, n, "dt_s")
        tau = self.tau_s
        r = self.r_k_w
        a = np.exp(-dt / tau)
        return t_cool + a * (self._prev_die_c - t_cool) + r * (1.0 - a) * p_w

    def steady_temp_die_c(
        self, temp_coolant_c: npt.ArrayLike, power_w: npt.ArrayLike
    ) -> FloatArray:
        """Steady-state die temperature [C] at coolant ``temp_coolant_c`` [C], ``power_w`` [W]."""
        n = self.n_series
        t_cool = _series(temp_coolant_c, n, "temp_coolant_c")
        return t_cool + self.r_k_w * _series(power_w, n, "power_w")

    # ------------------------------------------------------------------ results

    @property
    def residual_k(self) -> FloatArray:
        """Last measured minus one-step-ahead predicted die temperature [K] (NaN where skipped)."""
        return self._residual_k.copy()

    @property
    def n_updates(self) -> npt.NDArray[np.int64]:
        """Number of regressions each series has taken part in."""
        return self._n_updates.copy()

    def _a_t(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        dt = self._dt_ref_s
        fresh = np.isnan(dt)
        dt_eval = np.where(fresh, 1.0, dt)
        a0, t0 = self._prior_theta(dt_eval)
        a = np.where(fresh, a0, self._rls.theta0)
        t = np.where(fresh, t0, self._rls.theta1)
        return a, t, dt_eval

    @property
    def tau_s(self) -> FloatArray:
        """Fitted time constant ``R*C`` [s] (the prior for series not yet fitted)."""
        a, _, dt = self._a_t()
        return -dt / np.log(a)

    @property
    def r_k_w(self) -> FloatArray:
        """Fitted die-to-coolant thermal resistance [K/W] (the prior for series not yet fitted)."""
        a, t, _ = self._a_t()
        return t * self.prior_r_k_w / (1.0 - a)

    @property
    def c_j_k(self) -> FloatArray:
        """Fitted die thermal capacitance [J/K] (the prior for series not yet fitted)."""
        return self.tau_s / self.r_k_w

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, np.ndarray]:
        """Every array and setting of the estimator (copies), ready for ``np.savez``."""
        return {
            "theta": self._rls.theta(),
            "cov": self._rls.covariance(),
            "dt_ref_s": self._dt_ref_s.copy(),
            "prev_temp_die_c": self._prev_die_c.copy(),
            "prev_temp_coolant_c": self._prev_cool_c.copy(),
            "prev_power_w": self._prev_power_w.copy(),
            "residual_k": self._residual_k.copy(),
            "n_updates": self._n_updates.copy(),
            "forgetting": np.array(self.forgetting),
            "prior_r_k_w": np.array(self.prior_r_k_w),
            "prior_c_j_k": np.array(self.prior_c_j_k),
            "max_cov_trace": np.array(self.max_cov_trace),
            "power_timing": np.array(self.power_timing),
            "coolant_timing": np.array(self.coolant_timing),
        }

    @classmethod
    def restore(cls, snap: dict[str, np.ndarray]) -> ThermalEstimator:
        """Rebuild an estimator from :meth:`snapshot` output (exactly, bit for bit)."""
        missing = [k for k in _SNAPSHOT_KEYS if k not in snap]
        if missing:
            raise EstimatorError(f"snapshot: missing keys {missing}")
        n = int(np.asarray(snap["dt_ref_s"]).shape[0])
        shapes = {"theta": (n, 2), "cov": (n, 2, 2)}
        for key in (
            "prev_temp_die_c",
            "prev_temp_coolant_c",
            "prev_power_w",
            "residual_k",
            "n_updates",
        ):
            shapes[key] = (n,)
        for key, shape in shapes.items():
            if np.asarray(snap[key]).shape != shape:
                raise EstimatorError(
                    f"snapshot[{key!r}]: expected shape {shape}, got {np.asarray(snap[key]).shape}"
                )
        est = cls(
            n,
            forgetting=float(snap["forgetting"]),
            prior_r_k_w=float(snap["prior_r_k_w"]),
            prior_c_j_k=float(snap["prior_c_j_k"]),
            power_timing=cast(Timing, str(np.asarray(snap["power_timing"]))),
            coolant_timing=cast(CoolantTiming, str(np.asarray(snap["coolant_timing"]))),
            max_cov_trace=float(snap["max_cov_trace"]),
        )
        est._rls = Rls2State.from_arrays(snap["theta"], snap["cov"])
        est._dt_ref_s = np.array(snap["dt_ref_s"], dtype=np.float64)
        est._prev_die_c = np.array(snap["prev_temp_die_c"], dtype=np.float64)
        est._prev_cool_c = np.array(snap["prev_temp_coolant_c"], dtype=np.float64)
        est._prev_power_w = np.array(snap["prev_power_w"], dtype=np.float64)
        est._residual_k = np.array(snap["residual_k"], dtype=np.float64)
        est._n_updates = np.array(snap["n_updates"], dtype=np.int64)
        return est
