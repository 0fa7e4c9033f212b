"""Residuals that tolerate a model which leads or lags its measurement by a few seconds.

The facility model (streams/facility.py) is stepped every 10 s from the GPUs' current
power, while a plant point (a rack's outlet temperature, a dry cooler's fan speed, the
heat to district heating) follows through the loop's transport delay and thermal mass:
at a training job's checkpoint dip the expectation moves 10-20 s before the reading
(seen: rack outlet expected 51.3 C while the sensor still read 53.3 C). A plain
``measured - expected`` is then 40 times its steady spread for a minute, and a CUSUM on
it alarms at every dip. The reading is instead compared with the *range* the expectation
swept over the last ``window_s``: inside it, the model and the plant agree up to a time
shift, and the residual is 0; outside, it is the distance to the nearer edge. In steady
state the range is the expectation's own jitter, so a biased or drifting sensor, or a
plant that no longer does what the model says, still shows its full offset.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Seconds of expectation history a reading may match: the loop's lag behind the model
#: (10-20 s seen in the simulator, bench/bench_detection_eval.py) plus one model step.
LAG_WINDOW_S = 30.0


def lag_tolerant_residual(measured: FloatArray, expected_hist: FloatArray) -> FloatArray:
    """Distance of each reading from the range of its recent expectations (same unit).

    ``measured``: shape (n,). ``expected_hist``: shape (n, k), the expectations of the
    last ``window_s`` with NaN where a view had none; column order does not matter. A
    point with no finite expectation gets NaN. Signed: positive when the reading is above
    every recent expectation, negative when below all of them, 0 inside their range.
    """
    m = np.asarray(measured, dtype=np.float64)
    h = np.asarray(expected_hist, dtype=np.float64)
    finite = np.isfinite(h)
    any_e = finite.any(axis=1)
    lo = np.min(np.where(finite, h, np.inf), axis=1)
    hi = np.max(np.where(finite, h, -np.inf), axis=1)
    out = np.where(m > hi, m - hi, np.where(m < lo, m - lo, 0.0))
    return np.where(any_e & np.isfinite(m), out, np.nan)


#: A point's expectation is "moving" when its range over the window exceeds this many
#: times its usual range (its jitter from noisy inputs, learnt while steady).
MOVING_K = 3.0
#: Half-life [views] of the learnt usual range: an hour of 10 s views.
JITTER_HALF_LIFE_VIEWS = 360.0


def transient_residual(
    measured: FloatArray,
    expected: FloatArray,
    expected_hist: FloatArray,
    jitter: FloatArray,
    *,
    moving_k: float = MOVING_K,
    half_life_views: float = JITTER_HALF_LIFE_VIEWS,
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """``measured - expected`` while the expectation is steady, the lag-tolerant residual
    (:func:`lag_tolerant_residual`) while it moves; returns it, the updated jitter and
    whether the expectation is moving.

    The expectation of a derived point (a rack's heat to liquid from noisy GPU power)
    jitters from view to view even in steady state; taking the range of that jitter as
    "agreement" would zero most steady residuals and leave the detectors a scale too small
    for the noise they see. So the tolerance applies only when the range over the window
    exceeds ``moving_k`` times the point's usual range ``jitter`` (same unit as the
    point; NaN = not yet known, learnt from the first view), which is learnt with a
    half-life of ``half_life_views`` views from steady views only.
    """
    m = np.asarray(measured, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    h = np.asarray(expected_hist, dtype=np.float64)
    finite = np.isfinite(h)
    rng = np.max(np.where(finite, h, -np.inf), axis=1) - np.min(np.where(finite, h, np.inf), axis=1)
    # a range is known once the window is full (one view has no range)
    rng = np.where(finite.all(axis=1), rng, np.nan)
    jit = np.where(np.isfinite(jitter), jitter, rng)
    moving = np.isfinite(rng) & np.isfinite(jit) & (rng > moving_k * jit)
    a = -np.expm1(-np.log(2.0) / half_life_views)
    learn = np.isfinite(rng) & ~moving
    new_jit = np.where(learn, jit + a * (rng - jit), jit)
    r = np.where(moving, lag_tolerant_residual(m, h), m - e)
    return r, new_jit, moving


#: A rack's load has stepped when its power is this far from its recent level [fraction]:
#: a checkpoint dip or a job's start or end moves it by half or more, an inference rack's
#: request jitter by ~2 % (twin/workload.py).
LOAD_STEP_REL = 0.1
#: Half-life [s] of the recent level: a dip of a minute is a step, a daily cycle is not.
LOAD_LEVEL_HALF_LIFE_S = 30.0


def load_step(
    power_w: FloatArray,
    level_w: FloatArray,
    dt_s: FloatArray,
    *,
    rel: float = LOAD_STEP_REL,
    half_life_s: float = LOAD_LEVEL_HALF_LIFE_S,
) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    """Whether each load [W] is away from its recent level (a step), and the new level.

    ``level_w`` NaN = none yet (taken from ``power_w``); ``dt_s`` [s] since the level's
    last sample (NaN or <= 0: no update). A NaN power leaves the level and is no step.
    """
    p = np.asarray(power_w, dtype=np.float64)
    lvl = np.where(np.isfinite(level_w), level_w, p)
    step = np.isfinite(p) & (np.abs(p - lvl) > rel * np.abs(lvl))
    dt = np.where(np.isfinite(dt_s) & (dt_s > 0.0), dt_s, 0.0)
    a = -np.expm1(-np.log(2.0) * dt / half_life_s)
    new = np.where(np.isfinite(p), lvl + a * (p - lvl), lvl)
    return step, new


def push_history(
    hist: FloatArray,
    hist_ts_s: FloatArray,
    index: npt.NDArray[np.int64],
    expected: FloatArray,
    ts_s: float,
    window_s: float = LAG_WINDOW_S,
) -> tuple[FloatArray, FloatArray]:
    """Add one view's expectations (for the points ``index``) to a ring of views.

    ``hist`` (n, k) and ``hist_ts_s`` (n, k) [s] are updated in place and returned;
    the oldest column of each point is overwritten, and entries older than ``window_s``
    before ``ts_s`` are blanked so a point that was absent for a while starts afresh.
    """
    if hist.shape[1] == 0 or index.size == 0:
        return hist, hist_ts_s
    rows = index
    col = np.argmin(np.where(np.isfinite(hist_ts_s[rows]), hist_ts_s[rows], -np.inf), axis=1)
    hist[rows, col] = expected
    hist_ts_s[rows, col] = ts_s
    old = hist_ts_s[rows] < ts_s - window_s
    sub = hist[rows]
    sub[old] = np.nan
    hist[rows] = sub
    return hist, hist_ts_s
