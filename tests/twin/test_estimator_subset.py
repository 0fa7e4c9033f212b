"""update_at and put: one estimator over many racks gives what per-rack estimators give."""

from __future__ import annotations

import numpy as np
import pytest

from twin.estimator import EstimatorError, ThermalEstimator


def _samples(n: int, steps: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    r, c = rng.uniform(0.015, 0.025, n), rng.uniform(300, 600, n)
    die = np.full(n, 40.0)
    out = []
    for _ in range(steps):
        p = rng.uniform(500, 1800, n)
        a = np.exp(-1.0 / (r * c))
        die = 35.0 + a * (die - 35.0) + r * (1 - a) * p + rng.normal(0, 0.05, n)
        out.append((die.copy(), np.full(n, 35.0), p, np.ones(n)))
    return out


def _same(a: ThermalEstimator, b: ThermalEstimator) -> None:
    sa, sb = a.snapshot(), b.snapshot()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_update_at_every_series_is_update() -> None:
    a, b = ThermalEstimator(16), ThermalEstimator(16)
    for s in _samples(16, 50):
        a.update(*s)
        b.update_at(np.arange(16), *s)
    _same(a, b)


def test_two_racks_in_one_estimator_match_two_estimators() -> None:
    pool = ThermalEstimator(8)
    r1, r2 = ThermalEstimator(4), ThermalEstimator(4)
    s1, s2 = _samples(4, 60, seed=1), _samples(4, 60, seed=2)
    slot1, slot2 = np.array([6, 0, 3, 5]), np.array([1, 2, 4, 7])
    for k in range(60):
        r1.update(*s1[k])
        pool.update_at(slot1, *s1[k])
        if k % 2 == 0:  # rack 2 reports every other second (steps of 2 s)
            step2 = tuple(x * (2.0 if i == 3 else 1.0) for i, x in enumerate(s2[k]))
            r2.update(*step2)
            pool.update_at(slot2, *step2)
    _same(pool.take(slot1), r1)
    _same(pool.take(slot2), r2)


def test_put_then_take_round_trips() -> None:
    src = ThermalEstimator(3)
    for s in _samples(3, 20):
        src.update(*s)
    pool = ThermalEstimator(10)
    pool.put([9, 2, 4], src)
    _same(pool.take([9, 2, 4]), src)
    assert np.isnan(pool.take([0]).snapshot()["prev_temp_die_c"]).all()


def test_bad_indices_and_settings_are_refused() -> None:
    est = ThermalEstimator(4)
    with pytest.raises(EstimatorError, match="index"):
        est.update_at([4], 50.0, 35.0, 1000.0, 1.0)
    with pytest.raises(EstimatorError, match="index"):
        est.put([0, 1], ThermalEstimator(3))
    with pytest.raises(EstimatorError, match="settings"):
        est.put([0], ThermalEstimator(1, forgetting=0.99))


def test_pooled_offsets_of_racks_in_one_estimator_match_one_estimator_per_rack() -> None:
    # racks fed together, each its own group, interleaved in the series and given in any
    # order: the same as each rack on its own (its GPUs in ascending series, as a pool's)
    pool = ThermalEstimator(8)
    r1, r2 = ThermalEstimator(4), ThermalEstimator(4)
    s1, s2 = _samples(4, 200, seed=3), _samples(4, 200, seed=4)
    slot1, slot2 = np.array([0, 3, 5, 6]), np.array([1, 2, 4, 7])
    zeros = np.zeros(4, dtype=np.intp)
    for k in range(200):
        r1.update(*s1[k], group=zeros)
        r2.update(*s2[k], group=zeros)
        both = [
            np.concatenate([np.broadcast_to(x, 4), np.broadcast_to(y, 4)])
            for x, y in zip(s2[k], s1[k], strict=True)
        ]
        pool.update_at(np.r_[slot2, slot1], *both, group=np.r_[zeros, zeros + 5])
    _same(pool.take(slot1), r1)
    _same(pool.take(slot2), r2)
    assert np.isfinite(pool.coolant_offset_k).all()


def test_dense_and_sparse_subsets_update_only_their_series() -> None:
    # a dense subset (half its span or more) is updated in place with the rest masked out; a
    # sparse one is gathered: both must equal the series on their own, the rest untouched
    pool = ThermalEstimator(40)
    dense, sparse = np.array([8, 9, 11, 12]), np.array([0, 21, 30, 39])
    alone_d, alone_s = ThermalEstimator(4), ThermalEstimator(4)
    sd, ss = _samples(4, 80, seed=5), _samples(4, 80, seed=6)
    for k in range(80):
        pool.update_at(dense, *sd[k], group=np.zeros(4, dtype=np.intp))
        alone_d.update(*sd[k], group=np.zeros(4, dtype=np.intp))
        pool.update_at(sparse, *ss[k])
        alone_s.update(*ss[k])
    _same(pool.take(dense), alone_d)
    _same(pool.take(sparse), alone_s)
    rest = np.setdiff1d(np.arange(40), np.r_[dense, sparse])
    _same(pool.take(rest), ThermalEstimator(rest.size))
