"""Vectorised instrumental-variable fit of many first-order thermal models with a pooled offset.

Each series ``i`` (a GPU) obeys ``y = a*x + t*p + c`` with ``x`` the die-to-reference
temperature at the start of a step [K], ``y`` the same at its end [K], ``p`` the power
scaled to kelvin (``P * R_prior``) and ``c = -(1 - a) * delta``: ``delta`` [K] is how far the
coolant reference (a sensor, or a model when there is none) reads above the coolant that the
cold plates really see. Series of one group (the GPUs of a rack) share ``delta``.

Why instrumental variables: ``x`` is a noisy die reading, so ordinary least squares
attenuates ``a`` (errors in variables; Soderstrom & Stoica, System Identification, 1989,
ch. 8). The die reading one step earlier (``x[k-1]``) is correlated with the true ``x[k]``
but not with the noise of ``x[k]`` or ``y``, so it instruments ``x``; ``p`` and the constant
instrument themselves. The fit keeps, per series, the exponentially forgotten moments
``M = sum lam^j z phi'`` (3x3, not symmetric) and ``v = sum lam^j z y`` and solves
``M theta = v`` now and then (every few samples), which costs less per sample than a
recursive IV update and needs no covariance wind-up guard: a direction the data do not
excite keeps its last estimate through a small ridge towards it.

The shared ``delta`` is found by eliminating each series' own ``(a, t)`` (a Schur complement
per series) and pooling the remaining one-parameter equations over the group with
``np.bincount``: all arrays are flat float64, one row of a 2-D array per statistic.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# rows of the per-series statistics array (shape (N_ROWS, n)); rows 0..16 forget slowly,
# 17..19 fast (contiguous, so that each block is scaled in one call)
M00, M01, M02, M10, M11, M12, M20, M21, M22 = range(9)
V0, V1, V2 = 9, 10, 11
#: slow low-pass regression of x on the filtered power: sums of 1, x, pf, pf^2, pf*x
L1, LX, LP, LPP, LPX = 12, 13, 14, 15, 16
#: fast regression through the offset: sums of pf, pf^2, pf*x
FP, FPP, FPX = 17, 18, 19
SLOW_ROWS = slice(0, 17)
FAST_ROWS = slice(17, 20)
PF = 20  # power through the die's own low-pass (1-a)/(1 - a q^-1), scaled to K
SIG2 = 21  # exponentially weighted mean squared one-step residual [K^2]
A, T, DELTA = 22, 23, 24  # the current estimate (a, t = b / R_prior, delta [K])
INFO_D = 25  # information on the group's delta [1/K^2]
VAR_A = 26  # variance of a [1]
RF = 27  # slow (baseline) R / R_prior at the last solve (for the one-step prediction)
CF = 28  # coolant reference through the same low-pass as PF [C]
N_ROWS = 29

#: Ridge towards the last estimate, per parameter (a, t) in the moments' units (K^2), and for
#: the constant (samples): about one sample's worth, negligible once a direction is excited.
RIDGE = (10.0, 10.0)
RIDGE_C = 1.0
#: A new (a, t) is taken only once the data give tau to 50 % (1 sd): until then, the last.
ACCEPT_TAU_REL = 0.5
#: A tau that moves by more than 20 % keeps 1 % of the low-pass fit's past.
TAU_JUMP_REL = 0.2
TAU_JUMP_KEEP = 0.01
#: Only series with tau's standard error under 20 % inform the offset. The standard error
#: takes the one-step residual as white noise; over load steps it overstates the scatter of
#: tau about 4x (bench/bench_estimator.py: 8.5 % stated, 2 % measured), so 20 % is ~5 %.
OFFSET_TAU_REL = 0.2
#: Resolution of the die readings [K] (NVML reports whole degrees, docs/sources.md S7).
QUANTUM_K = 1.0
#: Smallest die swing with the power (sd, in resolutions) that informs tau or the offset.
SWING_MIN_FRAC = 0.1
#: Prior precision [1/K^2] of delta towards 0 (trust the reference): a 5 K prior sd.
DELTA_PRIOR = 0.04


def accumulate(
    s: FloatArray,
    z: tuple[FloatArray, FloatArray, FloatArray | float],
    x: FloatArray,
    p: FloatArray,
    y: FloatArray,
    lam: float | FloatArray,
    p_noise_rel: float,
) -> None:
    """Forget the moments of ``s`` (a (N_ROWS, m) array, updated in place) by ``lam`` and add
    one sample: instruments ``z`` (for ``x``, ``p`` and the constant), regressors
    ``(x, p, 1)``, measurement ``y``. A zero instrument triple adds nothing.

    ``p`` instruments itself, so its own noise (relative sd ``p_noise_rel``) would bias ``b``
    low where the power hardly varies; its expected square is taken off ``p*p``
    (bias-compensated least squares, Soderstrom & Stoica 1989, sec. 8.5).
    """
    s[:12] *= lam
    phi = (x, p)
    for i in range(3):
        for j in range(2):
            s[3 * i + j] += z[i] * phi[j]
        s[3 * i + 2] += z[i]
        s[9 + i] += z[i] * y
    if p_noise_rel:
        s[M11] -= (p_noise_rel * p_noise_rel) * (z[1] * p)


def solve(s: FloatArray, group: npt.NDArray[np.intp] | None, p_noise_rel: float) -> None:
    """Solve every series of ``s`` (a (N_ROWS, m) array, updated in place) for ``(a, t, c)``
    and pool ``delta = -c / (1 - a)`` over its group; ``group`` numbers the groups
    ``0..g-1`` (None: one per series).

    Each series' ``delta`` is weighted by its information: the IV covariance (the one-step
    noise for ``a``, its long-run part for the level ``c``), and the resolution of integer die
    readings over small swings. Estimates that would give ``a`` outside (0, 1) or ``t <= 0``
    keep their previous values.
    """
    ra, rt = RIDGE
    rc = RIDGE_C
    a_prev, t_prev = s[A], s[T]
    c_prev = -(1.0 - a_prev) * s[DELTA]
    # eliminate the constant (its row: sums of x, p, 1): the centred 2x2 system in (a, t),
    # with a ridge towards the last estimate; c follows from the means
    n_c = s[M22] + rc
    wc = s[V2] + rc * c_prev
    s00 = s[M00] + ra - s[M02] * s[M20] / n_c
    s01 = s[M01] - s[M02] * s[M21] / n_c
    s10 = s[M10] - s[M12] * s[M20] / n_c
    s11 = s[M11] + rt - s[M12] * s[M21] / n_c
    r0 = s[V0] + ra * a_prev - s[M02] * wc / n_c
    r1 = s[V1] + rt * t_prev - s[M12] * wc / n_c
    det = s00 * s11 - s01 * s10
    ok = np.isfinite(det) & (det != 0.0)
    det = np.where(ok, det, 1.0)
    a_new = (s11 * r0 - s01 * r1) / det
    t_new = (s00 * r1 - s10 * r0) / det
    c_new = (wc - s[M20] * a_new - s[M21] * t_new) / n_c
    # variances from the data alone (the ridge holds an estimate, it is no information)
    sig2 = s[SIG2]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        n = s[M22]
        d00 = s[M00] - s[M02] * s[M20] / n
        d01 = s[M01] - s[M02] * s[M21] / n
        d10 = s[M10] - s[M12] * s[M20] / n
        d11 = s[M11] - s[M12] * s[M21] / n
        det_d = d00 * d11 - d01 * d10
        var_a = sig2 * d11 / det_d
        var_t = sig2 * d00 / det_d
        cov_at = -0.5 * sig2 * (d01 + d10) / det_d
        var_a = np.where((det_d > 0.0) & (var_a > 0.0) & (var_t > 0.0), var_a, np.inf)
        rel_tau = np.sqrt(var_a) / (a_new * np.abs(np.log(a_new)))
    # the die's swing [K^2] with the power (the filtered power's spread, its noise taken
    # off, times the last fitted R): below a tenth of the readings' resolution it is noise
    with np.errstate(invalid="ignore", divide="ignore"):
        n_l = s[L1]
        pf_mean = s[LP] / n_l
        var_pf = s[LPP] / n_l - pf_mean * pf_mean
        var_pf = var_pf - p_noise_rel**2 * (s[LPP] / n_l) * (1.0 - a_prev) / (1.0 + a_prev)
        swing2 = np.maximum(s[RF] * s[RF] * var_pf, 0.0)
    excited = swing2 > (SWING_MIN_FRAC * QUANTUM_K) ** 2
    # a new estimate must be physical and the data must have said something about it
    good = ok & (a_new > 0.0) & (a_new < 1.0) & (t_new > 0.0) & (rel_tau < ACCEPT_TAU_REL)
    good &= excited
    a_fit = np.where(good, a_new, a_prev)
    # the low-pass fit filtered its power with the old tau: after a large change of tau (the
    # first one the data pin down, at start-up) its transients mislead, so its past fades
    with np.errstate(invalid="ignore", divide="ignore"):
        jump = np.abs(np.log(np.log(a_fit) / np.log(a_prev))) > np.log(1.0 + TAU_JUMP_REL)
    if jump.any():
        s[L1 : LPX + 1] *= np.where(jump, TAU_JUMP_KEEP, 1.0)
    s[A] = a_fit
    s[T] = np.where(good, t_new, t_prev)
    s[VAR_A] = var_a
    # --- delta = -c / (1 - a) of each series and its variance (delta method): the dynamic
    # gain t / (1 - a) times the mean power, and the level's own noise
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        one_a = 1.0 - a_new
        d_own = -c_new / one_a
        p_mean = s[M21] / n
        var_gain = var_t / one_a**2 + t_new**2 * var_a / one_a**4 + 2.0 * t_new * cov_at / one_a**3
        # one-step errors of a first-order model cancel over a level: (1-a)^2/(1+a^2) of them
        sig2_lr = sig2 * one_a * one_a / (1.0 + a_new * a_new)
        var_d = p_mean * p_mean * np.abs(var_gain) + sig2_lr / (n * one_a**2)
        # integer readings: over die swings (sd) well below 1 K the mean reading follows the
        # die with a slope anywhere in about 0 to 2 (where the die sits between two integers),
        # so a gain seen in small swings is known only to ~exp(-2 pi^2 sd^2); random from GPU
        # to GPU, it averages out over a rack but bounds what one GPU tells. The swing is
        # the filtered power's spread times the last fitted R (not this fit's: weights must
        # not follow its errors).
        g_q = np.exp(-2.0 * np.pi**2 * swing2 / QUANTUM_K**2)
        var_d = var_d + (g_q * s[RF] * pf_mean) ** 2
        w_d = 1.0 / var_d
    use = (
        ok
        & (a_new > 0.0)
        & (a_new < 1.0)
        & (t_new > 0.0)
        & np.isfinite(w_d)
        & np.isfinite(d_own)
        & (w_d > 0.0)
    )
    use &= excited
    # only a series whose dynamics the data pin down (OFFSET_TAU_REL) tells its gain, and so the
    # offset, without the bias of weak instruments (small white power jitter)
    use &= rel_tau < OFFSET_TAU_REL
    w_d = np.where(use, w_d, 0.0)
    wd = np.where(use, w_d * d_own, 0.0)
    info: FloatArray
    d_new: FloatArray
    if group is None:
        info = w_d + DELTA_PRIOR
        d_new = wd / info
    else:
        n_g = int(group.max()) + 1 if group.size else 0
        info_g = np.asarray(np.bincount(group, w_d, n_g) + DELTA_PRIOR, dtype=np.float64)
        d_new = np.asarray(np.bincount(group, wd, n_g) / info_g, dtype=np.float64)[group]
        info = info_g[group]
    s[DELTA] = d_new
    s[INFO_D] = info
    with np.errstate(invalid="ignore", divide="ignore"):
        # the one-step prediction is the baseline model's: a fault shows in the residual for
        # the slow fit's memory (~30 min), while the fast R follows it
        rf = (s[LPX] + d_new * s[LP]) / s[LPP]
    s[RF] = np.where(np.isfinite(rf) & (rf > 0.0), rf, s[RF])
