"""Vectorised recursive least squares for many independent two-parameter models.

Each series ``i`` fits ``y_i = theta_i . phi_i`` with ``phi_i = (u_i, v_i)``. The state of all
series lives in flat float64 arrays (one per parameter and one per covariance entry), so one
update is a few dozen whole-array numpy operations whatever the number of series.

Exponential forgetting (factor ``lam`` < 1) lets the fit follow slow drifts, but in a
direction that the data does not excite (a GPU at constant power) the covariance grows as
``lam**-k`` ("covariance wind-up") and the next excitation then throws the parameters about.
The trace of each covariance is therefore capped (Ljung & Soderstrom, Theory and Practice of
Recursive Identification, 1983, sec. 5.6: bounded-trace forgetting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class Rls2State:
    """Parameters and symmetric covariance of ``n`` two-parameter least-squares fits.

    All arrays are float64 and shaped ``(n,)``; ``p01`` is the off-diagonal entry.
    """

    theta0: FloatArray
    theta1: FloatArray
    p00: FloatArray
    p01: FloatArray
    p11: FloatArray

    @classmethod
    def empty(cls, n: int) -> Rls2State:
        """``n`` series with NaN parameters and covariance (to be initialised by the caller)."""
        return cls(*(np.full(n, np.nan) for _ in range(5)))

    def covariance(self) -> FloatArray:
        """Covariance as one ``(n, 2, 2)`` array."""
        cov = np.empty((self.theta0.shape[0], 2, 2))
        cov[:, 0, 0] = self.p00
        cov[:, 0, 1] = self.p01
        cov[:, 1, 0] = self.p01
        cov[:, 1, 1] = self.p11
        return cov

    def theta(self) -> FloatArray:
        """Parameters as one ``(n, 2)`` array."""
        return np.stack([self.theta0, self.theta1], axis=1)

    @classmethod
    def from_arrays(cls, theta: FloatArray, cov: FloatArray) -> Rls2State:
        """Inverse of :meth:`theta` and :meth:`covariance` (copies the inputs)."""
        theta = np.asarray(theta, dtype=np.float64)
        cov = np.asarray(cov, dtype=np.float64)
        return cls(
            theta[:, 0].copy(),
            theta[:, 1].copy(),
            cov[:, 0, 0].copy(),
            cov[:, 0, 1].copy(),
            cov[:, 1, 1].copy(),
        )

    def take(self, index: npt.NDArray[np.intp]) -> Rls2State:
        """Series ``index`` (``-1`` gives a NaN series) as a new state."""
        new = np.asarray(index) < 0
        safe = np.where(new, 0, index)
        out = []
        for arr in (self.theta0, self.theta1, self.p00, self.p01, self.p11):
            taken = arr[safe] if arr.shape[0] else np.full(safe.shape[0], np.nan)
            taken[new] = np.nan
            out.append(taken)
        return Rls2State(*out)


def rls2_update(
    state: Rls2State,
    idx: npt.NDArray[np.intp] | slice,
    u: FloatArray,
    v: FloatArray,
    y: FloatArray,
    lam: float,
    max_trace: float,
    valid_theta0: tuple[float, float] = (-np.inf, np.inf),
    valid_theta1: tuple[float, float] = (-np.inf, np.inf),
) -> FloatArray:
    """Update series ``idx`` of ``state`` in place with one sample each; return the innovations.

    ``u``, ``v``, ``y`` are the regressors and the measurement of those series (same length
    as ``idx`` selects). The innovation ``y - theta . phi`` uses the parameters before the
    update (the one-step-ahead prediction error). A new parameter estimate outside the
    open intervals ``valid_theta0`` / ``valid_theta1`` is rejected for that series (its
    parameters and covariance stay as they were), which keeps fits physical while a series
    is poorly excited.
    """
    a = state.theta0[idx]
    b = state.theta1[idx]
    p00 = state.p00[idx]
    p01 = state.p01[idx]
    p11 = state.p11[idx]

    g0 = p00 * u + p01 * v
    g1 = p01 * u + p11 * v
    s = lam + u * g0 + v * g1
    innovation = y - (a * u + b * v)
    k0 = g0 / s
    k1 = g1 / s
    a_new = a + k0 * innovation
    b_new = b + k1 * innovation
    inv_lam = 1.0 / lam
    q00 = (p00 - k0 * g0) * inv_lam
    q01 = (p01 - k0 * g1) * inv_lam
    q11 = (p11 - k1 * g1) * inv_lam
    trace = q00 + q11
    shrink = np.minimum(1.0, max_trace / np.maximum(trace, 1e-300))
    # the covariance must stay positive definite; rounding can break that after very long
    # runs, and such an update is dropped like an unphysical one
    ok = (
        (q00 > 0.0)
        & (q11 > 0.0)
        & (q00 * q11 > q01 * q01)
        & (a_new > valid_theta0[0])
        & (a_new < valid_theta0[1])
        & (b_new > valid_theta1[0])
        & (b_new < valid_theta1[1])
        & np.isfinite(s)
    )
    state.theta0[idx] = np.where(ok, a_new, a)
    state.theta1[idx] = np.where(ok, b_new, b)
    state.p00[idx] = np.where(ok, q00 * shrink, p00)
    state.p01[idx] = np.where(ok, q01 * shrink, p01)
    state.p11[idx] = np.where(ok, q11 * shrink, p11)
    return innovation
