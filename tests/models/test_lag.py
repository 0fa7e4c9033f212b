"""The plant-lag tolerant residual of the unit detectors (models/lag.py)."""

from __future__ import annotations

import numpy as np

from models.lag import lag_tolerant_residual, push_history, transient_residual


def test_reading_inside_the_swept_range_is_no_residual() -> None:
    # a checkpoint dip: the model fell 53.75 -> 49.43 C over 20 s, the sensor is halfway
    hist = np.array([[53.75, 51.28, 49.43, np.nan], [53.75, 51.28, 49.43, np.nan]])
    r = lag_tolerant_residual(np.array([50.8, 48.9]), hist)
    assert r[0] == 0.0
    assert np.isclose(r[1], 48.9 - 49.43)  # below every recent expectation: signed distance


def test_no_expectation_gives_nan_not_zero() -> None:
    r = lag_tolerant_residual(np.array([1.0, np.nan]), np.array([[np.nan] * 3, [2.0] * 3]))
    assert np.isnan(r).all()


def test_push_overwrites_the_oldest_and_blanks_stale_views() -> None:
    hist = np.full((2, 3), np.nan)
    ts = np.full((2, 3), np.nan)
    both = np.array([0, 1])
    for t, v in ((0.0, 1.0), (10.0, 2.0), (20.0, 3.0), (30.0, 4.0)):
        push_history(hist, ts, both, np.array([v, v]), t, window_s=30.0)
    assert sorted(hist[0].tolist()) == [2.0, 3.0, 4.0]
    push_history(hist, ts, np.array([0]), np.array([9.0]), 100.0, window_s=30.0)
    assert np.isfinite(hist[0]).sum() == 1 and np.nanmax(hist[0]) == 9.0
    assert sorted(hist[1].tolist()) == [2.0, 3.0, 4.0]  # the other point is untouched


def test_steady_expectation_keeps_the_plain_residual() -> None:
    rng = np.random.default_rng(0)
    jit = np.full(1, np.nan)
    hist = np.full((1, 4), np.nan)
    ts = np.full((1, 4), np.nan)
    out = []
    for k in range(200):
        e = 40_000.0 + 200.0 * rng.standard_normal(1)  # a derived point's jitter [W]
        m = e + 300.0 * rng.standard_normal(1)
        push_history(hist, ts, np.array([0]), e, 10.0 * k)
        r, jit, _ = transient_residual(m, e, hist[[0]], jit)
        out.append((r[0], (m - e)[0]))
    tail = np.array(out[20:])
    # steady: the detectors see the same residual as measured - expected (nearly always)
    assert np.mean(tail[:, 0] == tail[:, 1]) > 0.95
    assert np.isfinite(jit).all() and 200.0 < jit[0] < 1_000.0


def test_a_dip_the_plant_follows_late_is_tolerated_and_a_bias_is_not() -> None:
    jit = np.full(2, np.nan)
    hist = np.full((2, 4), np.nan)
    ts = np.full((2, 4), np.nan)
    exp = [53.75] * 10 + [51.28, 49.43, 48.42, 47.92, 47.66] + [47.6] * 10
    # point 0 follows the model 20 s late; point 1 reads steady 0.5 K high (a biased sensor)
    seen = []
    for k in range(len(exp)):
        e = np.array([exp[k], 45.0]) + 0.005 * (k % 2)
        m = np.array([exp[max(k - 2, 0)], 45.5])
        push_history(hist, ts, np.array([0, 1]), e, 10.0 * k)
        r, jit, _ = transient_residual(m, e, hist, jit)
        seen.append(r)
    seen_a = np.array(seen)
    assert np.abs(seen_a[10:16, 0]).max() == 0.0  # plain residual there: up to 2.3 K
    assert np.allclose(seen_a[:, 1], 0.5, atol=0.01)


def test_drift_sums_nothing_in_a_transient_and_takes_the_settled_level_as_normal() -> None:
    from models.robust import Drift

    rng = np.random.default_rng(3)
    plain, gated = Drift(h=10.0), Drift(h=10.0)
    n = 1_200
    x = 0.05 * rng.standard_normal((n, 1))
    x[600:, 0] += 0.5  # a load step moves the steady model's bias to a new level (10 sd)
    settling = np.zeros(n)
    settling[600:660] = 1.0  # the caller's transient flag: 60 samples after the step
    s_plain = np.array([plain.update(float(t), x[t])[0] for t in range(n)])
    s_gated = np.array([gated.update(float(t), x[t], aux=settling[t : t + 1])[0] for t in range(n)])
    assert s_plain[600:].max() > 0.9  # a plain CUSUM reads the new operating point as drift
    assert s_gated.max() < 0.5  # gated: silent through the step and after it
    # a real drift after the transient is still found
    y = x.copy()
    y[800:, 0] += np.linspace(0.0, 1.0, n - 800)
    g2 = Drift(h=10.0)
    s2 = np.array([g2.update(float(t), y[t], aux=settling[t : t + 1])[0] for t in range(n)])
    assert s2[900:].max() > 0.9


def test_drift_without_aux_is_unchanged_and_snapshots_the_settling_flag() -> None:
    from models.robust import Drift

    d = Drift()
    d.update(0.0, np.zeros(3), aux=np.array([1.0, 0.0, np.nan]))
    snap = d.snapshot()
    assert snap["settling"].tolist() == [1.0, 0.0, 0.0]
    e = Drift()
    e.restore(snap)
    assert np.array_equal(e.update(1.0, np.ones(3)), d.update(1.0, np.ones(3)))
