"""Workload plan: job mix, synchronous checkpoint dips, daily inference cycle, caps."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

from twin.workload import IDLE, INFERENCE, TRAINING, WorkloadParams, make_plan, utilisation

P = WorkloadParams()


def _plan(n: int = 200, seed: int = 0):  # type: ignore[no-untyped-def]
    return make_plan(n, 1800.0, P, np.random.default_rng(seed))


def test_mix_matches_fractions() -> None:
    plan = _plan()
    assert np.count_nonzero(plan.kind == TRAINING) == 130
    assert np.count_nonzero(plan.kind == INFERENCE) == 50
    assert np.count_nonzero(plan.kind == IDLE) == 20
    sizes = np.bincount(plan.job[plan.job >= 0])
    assert sizes.max() <= P.job_racks_max
    assert len(sizes) > 1  # training spans several multi-rack jobs


def test_checkpoint_dips_are_synchronous_within_a_job() -> None:
    plan = _plan()
    z = np.zeros((200, 4))
    job0 = plan.job == 0
    period, phase = plan.period_s[job0][0], plan.phase_s[job0][0]
    t_dip = (period - phase) % period + 1.0  # just after the checkpoint starts
    util = utilisation(plan, t_dip, 12.0, z, P)
    assert_allclose(util[job0], P.checkpoint_util)
    util2 = utilisation(plan, t_dip + P.checkpoint_duration_s + 1.0, 12.0, z, P)
    assert_allclose(util2[job0], P.training_util)


def test_inference_daily_cycle_and_idle() -> None:
    plan = _plan()
    z = np.zeros((200, 2))
    peak = utilisation(plan, 0.0, 14.0, z, P)[plan.kind == INFERENCE]
    trough = utilisation(plan, 0.0, 2.0, z, P)[plan.kind == INFERENCE]
    assert_allclose(peak, 0.65)
    assert_allclose(trough, 0.05)
    assert np.all(utilisation(plan, 0.0, 14.0, np.ones((200, 2)), P)[plan.kind == IDLE] == 0.0)


def test_capped_jobs_and_jitter_bounds() -> None:
    plan = _plan(1000, seed=5)
    assert set(np.unique(plan.power_limit_w)) == {1400.0, 1800.0}
    capped = plan.power_limit_w == 1400.0
    assert np.all(plan.kind[capped] == TRAINING)
    u = utilisation(plan, 10.0, 3.0, np.random.default_rng(1).standard_normal((1000, 72)) * 50, P)
    assert u.min() >= 0.0 and u.max() <= 1.0


def test_same_seed_same_plan() -> None:
    a, b = _plan(seed=7), _plan(seed=7)
    assert np.array_equal(a.job, b.job) and np.array_equal(a.phase_s, b.phase_s)
