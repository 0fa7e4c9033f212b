"""Behaviour of single detectors beyond the shared contract."""

from __future__ import annotations

import numpy as np
import pytest

from models.registry import make_detector


def _feed(det, ts, x, aux=None):  # type: ignore[no-untyped-def]
    return np.array(
        [det.update(ts[i], x[i], aux=None if aux is None else aux[i]) for i in range(len(ts))]
    )


def test_daily_profile_finds_a_shift_hidden_in_the_daily_cycle() -> None:
    # 12 days every 5 min; a 10 K daily swing; on the last day +4 K (8 sigma of the noise)
    # for two hours around the cycle's minimum (18:00), where it is flat within an hour bin.
    rng = np.random.default_rng(3)
    ts = 1.7e9 - (1.7e9 % 86_400) + np.arange(0, 12 * 86_400, 300.0)
    hour = (ts % 86_400) / 3600.0
    x = (30.0 + 10.0 * np.sin(2 * np.pi * hour / 24.0) + rng.normal(0, 0.5, ts.size))[:, None]
    fault = (ts >= ts[0] + 11 * 86_400 + 17 * 3600) & (ts < ts[0] + 11 * 86_400 + 19 * 3600)
    x[fault] += 4.0
    with_profile = _feed(make_detector("zscore", daily=True), ts, x)[:, 0]
    plain = _feed(make_detector("zscore"), ts, x)[:, 0]
    late = ts >= ts[0] + 8 * 86_400
    assert with_profile[fault].mean() > 0.5
    assert plain[fault].mean() < 0.2  # lost in the cycle's spread
    assert (with_profile[late & ~fault] > 0.5).mean() < 0.01


def test_drift_resets_and_finds_a_second_change() -> None:
    rng = np.random.default_rng(4)
    ts = np.arange(6000.0)
    x = rng.normal(0.0, 1.0, (6000, 1))
    x[1000:] += 3.0
    x[4000:] += 3.0
    s = _feed(make_detector("drift"), ts, x)[:, 0]
    assert s[1000:1100].max() > 0.9
    assert s[3500:4000].max() < 0.5  # the first shift became the new normal
    assert s[4000:4100].max() > 0.9


def test_stuck_needs_the_companion_to_move() -> None:
    rng = np.random.default_rng(5)
    ts = np.arange(2000.0)
    power = np.where((np.arange(2000) // 10) % 2 == 0, 500.0, 1500.0)[:, None].repeat(2, 1)
    power[1200:, 1] = 1000.0  # GPU 1 idles steadily: its temperature may hold
    temp = np.round(40.0 + 0.02 * power + rng.normal(0, 0.4, power.shape))
    temp[1200:, :] = temp[1200, :]  # both readings freeze
    s = _feed(make_detector("stuck"), ts, temp, aux=power)
    assert s[1300:, 0].min() > 0.9  # power swings, temperature does not: stuck
    assert s[1200:, 1].max() == 0.0  # nothing moved: no evidence


def test_rate_scales_the_allowed_change_with_the_gap() -> None:
    # A random walk sampled every second, then one sample after a 400 s gap: the walk may
    # have moved ~20x a one-second step; that is no jump.
    rng = np.random.default_rng(6)
    ts = np.concatenate([np.arange(600.0), [1000.0, 1001.0]])
    x = np.cumsum(rng.normal(0, 1.0, ts.size))[:, None]
    x[-2] = x[-3] + 20.0
    x[-1] = x[-2] + 20.0  # the same change in one second is
    s = _feed(make_detector("rate"), ts, x)[:, 0]
    assert s[-2] < 0.3 and s[-1] > 0.9


def test_balance_scores_the_relative_mismatch() -> None:
    rng = np.random.default_rng(7)
    ts = np.arange(1000.0)
    power = (30_000.0 + 10_000.0 * np.sin(ts / 50.0))[:, None]
    heat = 0.96 * power * (1.0 + rng.normal(0, 0.003, power.shape))
    heat[800:] *= 0.9  # 10 % of the heat goes missing (a leak, a flow meter drifting)
    s = _feed(make_detector("balance"), ts, heat, aux=power)[:, 0]
    assert s[200:800].max() < 0.5 and s[800:].min() > 0.9


def test_ups_efficiency_flags_a_module_losing_more_than_its_curve() -> None:
    from models.physics import UpsEfficiency
    from twin.power import PowerParams, ups_loss_w

    p = PowerParams()
    rng = np.random.default_rng(4)
    n, steps = 6, 1500
    det = UpsEfficiency(n, rated_w=p.ups_rated_w, loss_coeff=p.ups_loss_coeff)
    scores = np.zeros((steps, n))
    for i in range(steps):
        out = p.ups_rated_w * (0.3 + 0.05 * np.arange(n)) * (1 + 0.05 * np.sin(i / 50.0))
        loss = ups_loss_w(out, p.ups_rated_w, p.ups_loss_coeff) * 1.01  # meters a bit off
        if i >= 1000:
            loss[0] *= 1.0 + min((i - 1000) / 200.0, 1.0) * 0.5  # module 0 degrades to x1.5
        inp = (out + loss) * (1 + rng.normal(0.0, 0.002, n))
        if 600 <= i < 620:
            inp[1] = 0.0  # module 1 on battery: draws nothing from the mains
        if i >= 1000:
            inp[2] = out[2] * 1.002  # module 2 in static bypass: better than its curve
        scores[i] = det.update(float(i * 5), inp, aux=out * (1 + rng.normal(0.0, 0.002, n)))
    assert scores[100:1000].max() < 0.5  # healthy, the bias learnt, the battery ride skipped
    assert scores[1100:, 0].min() > 0.9  # half way up the ramp on
    assert scores[1000:, 1:].max() < 0.5
    curve = det.expected_efficiency(np.array([0.5 * p.ups_rated_w]))[0]
    assert curve == pytest.approx(0.5 / (0.5 + 0.010 + 0.015 * 0.5 + 0.010 * 0.25))
