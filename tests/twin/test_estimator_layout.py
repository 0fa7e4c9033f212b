"""The estimator's statistics stay in C order through take/grow, and r_identified_at asks a
subset of the series exactly as r_identified does (the detector runtime relies on both)."""

from __future__ import annotations

import numpy as np

from twin.estimator import ThermalEstimator


def _fitted(n: int, steps: int, seed: int = 0) -> ThermalEstimator:
    rng = np.random.default_rng(seed)
    r, c = rng.uniform(0.015, 0.025, n), rng.uniform(300, 600, n)
    est = ThermalEstimator(n)
    die = np.full(n, 40.0)
    # half the GPUs change power (identifiable), half hold it (not)
    moving = np.arange(n) % 2 == 0
    for k in range(steps):
        p = np.where(moving & (k // 40 % 2 == 1), 1700.0, 600.0) + rng.normal(0, 3, n)
        a = np.exp(-1.0 / (r * c))
        die = 35.0 + a * (die - 35.0) + r * (1 - a) * p + rng.normal(0, 0.05, n)
        est.update(die, np.full(n, 35.0), p, 1.0)
    return est


def test_r_identified_at_is_r_identified_of_those_series() -> None:
    est = _fitted(24, 400)
    every = est.r_identified
    assert every.any() and not every.all()  # both kinds present
    for idx in (np.arange(24), np.array([3, 0, 17, 5]), np.array([], dtype=np.intp)):
        np.testing.assert_array_equal(est.r_identified_at(idx), every[idx])


def test_take_and_grow_keep_c_order_and_values() -> None:
    est = _fitted(8, 120)
    for out, src in (
        (est.grow(5), np.arange(8)),
        (est.take(np.array([7, 2, -1, 0])), np.array([7, 2, 0])),
    ):
        # row reads (a statistic over the series) are contiguous, as after restore()
        assert out._s.flags.c_contiguous
        kept = np.flatnonzero(np.isfinite(out._dt_ref_s))
        np.testing.assert_array_equal(out.r_k_w[kept], est.r_k_w[src])
        np.testing.assert_array_equal(out.r_identified[kept], est.r_identified[src])
