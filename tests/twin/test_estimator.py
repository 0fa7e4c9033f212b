"""ThermalEstimator: convergence, drift tracking, NaN handling, snapshots, reindexing.

The coolant offset, the errors-in-variables bias and the two-speed fit: test_estimator_offset.py.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from twin.estimator import EstimatorError, ThermalEstimator
from twin.faults import parse_fault
from twin.gpu import cold_plate_resistance_k_w
from twin.rack import gpu_coolant_c
from twin.sim import Simulator
from twin.site import load_site
from twin.snapshot import (
    SnapshotError,
    TwinSnapshot,
    load_snapshot,
    load_snapshot_bytes,
    save_snapshot,
    snapshot_bytes,
)
from twin.state import FacilityState
from twin.step import rack_design_flow_kg_s


def _synthetic(
    r_k_w: np.ndarray,
    c_j_k: np.ndarray,
    steps: int,
    *,
    dt_s: float = 1.0,
    seed: int = 0,
    quantise: bool = True,
    hold_s: int = 20,
    textbook: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Die temp, coolant temp and power of first-order GPUs with known R and C.

    Power steps to a new random level every ``hold_s`` samples (training phases, checkpoint
    dips); the coolant wanders slowly with sensor noise; die temperatures are rounded to
    integers like NVML's (docs/sources.md S7). By default sample k+1 reports the power of
    the step that ended at it and the coolant of step k is held over the step (the
    estimator's defaults, and the simulator's); ``textbook``: y[k+1] = a*y[k] + b*P[k] with
    y = T_die - T_coolant. Returns arrays shaped (steps, n).
    """
    rng = np.random.default_rng(seed)
    n = r_k_w.shape[0]
    a = np.exp(-dt_s / (r_k_w * c_j_k))
    b = r_k_w * (1.0 - a)
    levels = rng.uniform(200.0, 1800.0, (steps // hold_s + 1, n))
    pw = np.repeat(levels, hold_s, axis=0)[:steps]
    k = np.arange(steps)[:, None]
    cool = 45.0 + 0.5 * np.sin(k * dt_s / 300.0) + rng.normal(0.0, 0.05, (steps, n))
    die = np.empty((steps, n))
    die[0] = cool[0] + 20.0
    y = die[0] - cool[0]
    for i in range(steps - 1):
        if textbook:
            y = a * y + b * pw[i]
            die[i + 1] = cool[i + 1] + y
        else:
            die[i + 1] = cool[i] + a * (die[i] - cool[i]) + b * pw[i + 1]
    if quantise:
        die = np.round(die)
    return die, cool, pw


def _feed(
    est: ThermalEstimator, die: np.ndarray, cool: np.ndarray, pw: np.ndarray, dt_s: float
) -> None:
    for k in range(die.shape[0]):
        est.update(die[k], cool[k], pw[k], dt_s)


def test_converges_to_known_r_and_c_with_integer_temperatures() -> None:
    rng = np.random.default_rng(42)
    n = 64
    r_true = rng.uniform(0.012, 0.030, n)
    c_true = rng.uniform(250.0, 600.0, n)
    die, cool, pw = _synthetic(r_true, c_true, 2500, seed=1)
    est = ThermalEstimator(n)
    _feed(est, die, cool, pw, 1.0)
    assert np.max(np.abs(est.r_k_w / r_true - 1.0)) < 0.02
    assert np.max(np.abs(est.r_baseline_k_w / r_true - 1.0)) < 0.01
    assert np.median(np.abs(est.c_j_k / c_true - 1.0)) < 0.01
    assert np.max(np.abs(est.c_j_k / c_true - 1.0)) < 0.03
    assert_allclose(est.tau_s, est.r_baseline_k_w * est.c_j_k, rtol=1e-12)
    # the innovations are the quantisation noise: std of a uniform on [-0.5, 0.5] twice
    assert 0.2 < np.nanstd(est.residual_k) < 0.6


def test_noise_free_data_recovers_parameters() -> None:
    # exact die temperatures; the coolant reference still has its 0.05 K noise, which the
    # low-pass R fit sees as noise (the die follows the coolant's mean): 1e-3, not 1e-9
    r_true = np.array([0.018, 0.025, 0.040])
    c_true = np.array([400.0, 300.0, 550.0])
    die, cool, pw = _synthetic(r_true, c_true, 800, seed=3, quantise=False)
    est = ThermalEstimator(3, forgetting=0.98, power_noise_rel=0.0)
    _feed(est, die, cool, pw, 1.0)
    assert_allclose(est.r_k_w, r_true, rtol=1e-3)
    assert_allclose(est.r_baseline_k_w, r_true, rtol=1e-3)
    assert_allclose(est.c_j_k, c_true, rtol=1e-3)
    assert_allclose(est.coolant_offset_k, 0.0, atol=1e-6)
    assert_allclose(est.residual_k, 0.0, atol=0.01)


def test_textbook_timing_fits_textbook_data() -> None:
    # power of the previous sample held over the step, coolant of the new sample
    r_true = np.array([0.02, 0.03])
    c_true = np.array([350.0, 500.0])
    die, cool, pw = _synthetic(r_true, c_true, 800, seed=4, quantise=False, textbook=True)
    est = ThermalEstimator(
        2, forgetting=0.98, power_timing="start", coolant_timing="sample", power_noise_rel=0.0
    )
    _feed(est, die, cool, pw, 1.0)
    assert_allclose(est.r_baseline_k_w, r_true, rtol=2e-3)
    assert_allclose(est.c_j_k, c_true, rtol=2e-3)
    # the default timings on the same data are off: the test can fail
    wrong = ThermalEstimator(2, forgetting=0.98, power_noise_rel=0.0)
    _feed(wrong, die, cool, pw, 1.0)
    assert np.max(np.abs(wrong.c_j_k / c_true - 1.0)) > 0.05


def test_tracks_slow_resistance_drift_of_fouling() -> None:
    n, steps = 16, 10_000
    r0, c = 0.018, 400.0
    rng = np.random.default_rng(7)
    drift = np.linspace(1.0, 1.25, steps)  # +25 % resistance over 2.8 h
    a_c = np.exp(-1.0 / (r0 * drift[:, None] * c))
    tracking = ThermalEstimator(n)
    frozen = ThermalEstimator(n, forgetting=1.0, fast_forgetting=1.0)
    die_true = np.full(n, 65.0)
    cool_prev = np.full(n, 45.0)
    power = np.zeros(n)
    for k in range(steps):
        if k % 20 == 0:
            power = rng.uniform(200.0, 1800.0, n)
        cool = 45.0 + rng.normal(0.0, 0.05, n)
        a = a_c[k]
        die_true = cool_prev + a * (die_true - cool_prev) + r0 * drift[k] * (1.0 - a) * power
        tracking.update(np.round(die_true), cool, power, 1.0)
        frozen.update(np.round(die_true), cool, power, 1.0)
        cool_prev = cool
    r_end = r0 * drift[-1]
    assert np.max(np.abs(tracking.r_k_w / r_end - 1.0)) < 0.02
    assert np.median(np.abs(tracking.r_k_w / r_end - 1.0)) < 0.01
    # without forgetting the fit averages the whole history and lags by about half the drift
    assert np.median(frozen.r_k_w / r_end - 1.0) < -0.08


def test_nan_samples_skip_only_their_series() -> None:
    r_true = np.array([0.015, 0.02, 0.03, 0.025])
    c_true = np.array([300.0, 400.0, 500.0, 450.0])
    die, cool, pw = _synthetic(r_true, c_true, 300, seed=5)
    holed = die.copy()
    holed[100:110, 1] = np.nan  # GPU 1 drops out for 10 samples
    pw_holed = pw.copy()
    pw_holed[200, 2] = np.nan  # GPU 2 loses one power reading
    est = ThermalEstimator(4)
    alone = ThermalEstimator(1)  # series 0 on its own: the others must not influence it
    for k in range(300):
        est.update(holed[k], cool[k], pw_holed[k], 1.0)
        alone.update(holed[k, :1], cool[k, :1], pw_holed[k, :1], 1.0)
        if k == 105:
            assert np.isnan(est.residual_k[1])
            assert np.isfinite(est.residual_k[[0, 2, 3]]).all()
        if k in (200, 201):  # the NaN sample and the one after it (no previous sample)
            assert np.isnan(est.residual_k[2])
    assert_array_equal(est.n_updates, [299, 299 - 11, 299 - 2, 299])
    assert_array_equal(est.r_k_w[:1], alone.r_k_w)
    assert np.all(np.isfinite(est.r_k_w))


def test_a_die_jump_shows_once_in_the_one_step_residual_and_clears() -> None:
    """The one-step residual of a die that jumps by J and stays is J once, then only the
    (1 - a) J the model's own relaxation does not explain; back to normal it returns near 0
    (a residual that stayed at J would raise an event that never clears)."""
    group = np.zeros(8, dtype=np.intp)
    est = ThermalEstimator(8)
    die = np.full(8, 60.0)
    for _ in range(30):  # a steady rack: 700 W, coolant reference 40 C
        est.update(die, 40.0, 700.0, 1.0, group=group)
    base = est.residual_k[4]
    die[4] = 80.0
    est.update(die, 40.0, 700.0, 1.0, group=group)
    assert est.residual_k[4] - base == pytest.approx(20.0, abs=0.01)
    one_a = 1.0 - np.exp(-1.0 / est.tau_s[4])
    for _ in range(5):
        est.update(die, 40.0, 700.0, 1.0, group=group)
        assert abs(est.residual_k[4]) < 1.5 * one_a * 20.0 < 4.0  # under the rule's clear_at
    die[4] = 60.0
    est.update(die, 40.0, 700.0, 1.0, group=group)
    for _ in range(5):
        est.update(die, 40.0, 700.0, 1.0, group=group)
        assert abs(est.residual_k[4]) < 1.0
    assert np.abs(np.delete(est.residual_k, 4)).max() < 1.0  # the others never moved


def test_prior_before_any_fit_and_first_prediction_by_hand() -> None:
    est = ThermalEstimator(2)
    assert_allclose(est.r_k_w, 0.018)
    assert_allclose(est.c_j_k, 400.0)
    assert_allclose(est.tau_s, 7.2)
    assert np.isnan(est.predict(45.0, 1000.0, 1.0)).all()  # no last sample yet
    est.update([80.0, 60.0], [45.0, 44.0], [1500.0, 500.0], 1.0)
    # one sample, no regression yet: prediction uses the prior, by hand:
    # a = exp(-1/7.2) = 0.870325; 45 + 0.870325*35 + 0.018*0.129675*1200 = 78.2624
    assert_allclose(est.predict(45.0, [1200.0, 0.0], 1.0)[0], 78.262351, rtol=1e-6)
    # GPU 2: 44.5 + 0.870325*16 = 58.4252
    assert_allclose(est.predict(44.5, [1200.0, 0.0], 1.0)[1], 57.990033, rtol=1e-6)
    assert_allclose(est.steady_temp_die_c(45.0, 1800.0), 45.0 + 0.018 * 1800.0)
    assert np.isnan(est.residual_k).all()


def test_rediscretisation_keeps_r_and_c_and_fits_mixed_steps() -> None:
    r_true = np.array([0.02, 0.03])
    c_true = np.array([350.0, 500.0])
    die1, cool1, pw1 = _synthetic(r_true, c_true, 800, dt_s=1.0, seed=8, quantise=False)
    est = ThermalEstimator(2, forgetting=0.98, power_noise_rel=0.0)
    _feed(est, die1, cool1, pw1, 1.0)
    r_before, c_before, tau_before = est.r_k_w, est.c_j_k, est.tau_s
    die2, cool2, pw2 = _synthetic(r_true, c_true, 800, dt_s=2.5, seed=9, quantise=False)
    est.update(np.full(2, np.nan), cool2[0], pw2[0], 2.5)  # a gap, then 2.5 s sampling
    est.update(die2[0], cool2[0], pw2[0], 2.5)
    est.update(die2[1], cool2[1], pw2[1], 2.5)  # first 2.5 s regression: re-discretised
    assert_allclose(est.tau_s, tau_before, rtol=1e-9)  # tau mapped exactly to the new step
    _feed(est, die2[2:], cool2[2:], pw2[2:], 2.5)
    assert_allclose(r_before, r_true, rtol=2e-3)
    assert_allclose(c_before, c_true, rtol=2e-3)
    assert_allclose(est.r_k_w, r_true, rtol=2e-3)
    assert_allclose(est.c_j_k, c_true, rtol=2e-3)
    assert_allclose(est.snapshot()["dt_ref_s"], 2.5)


def test_clock_jitter_is_fitted_at_the_reference_step() -> None:
    # NVML sample times jitter by milliseconds: each step is corrected to the reference step
    r_true = np.array([0.02, 0.03])
    c_true = np.array([350.0, 500.0])
    die, cool, pw = _synthetic(r_true, c_true, 1500, seed=13, quantise=False)
    est = ThermalEstimator(2, power_noise_rel=0.0)
    rng = np.random.default_rng(13)
    for k in range(die.shape[0]):
        est.update(die[k], cool[k], pw[k], 1.0 + rng.uniform(-0.02, 0.02))
    assert_allclose(est.r_k_w, r_true, rtol=5e-3)
    assert_allclose(est.c_j_k, c_true, rtol=0.03)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), cut=st.integers(1, 60))
def test_snapshot_restore_round_trips_exactly(seed: int, n: int, cut: int) -> None:
    rng = np.random.default_rng(seed)
    r_true = rng.uniform(0.01, 0.04, n)
    c_true = rng.uniform(200.0, 700.0, n)
    die, cool, pw = _synthetic(r_true, c_true, 80, seed=seed)
    die[rng.random(die.shape) < 0.05] = np.nan
    est = ThermalEstimator(n, forgetting=0.995)
    _feed(est, die[:cut], cool[:cut], pw[:cut], 1.0)
    copy = ThermalEstimator.restore(est.snapshot())
    for key, value in est.snapshot().items():
        assert_array_equal(copy.snapshot()[key], value, err_msg=key)
    _feed(est, die[cut:], cool[cut:], pw[cut:], 1.0)
    _feed(copy, die[cut:], cool[cut:], pw[cut:], 1.0)
    for key, value in est.snapshot().items():
        assert_array_equal(copy.snapshot()[key], value, err_msg=key)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 10))
def test_series_are_independent_and_take_reorders(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    r_true = rng.uniform(0.01, 0.04, n)
    c_true = rng.uniform(200.0, 700.0, n)
    die, cool, pw = _synthetic(r_true, c_true, 60, seed=seed)
    perm = rng.permutation(n)
    full = ThermalEstimator(n)
    permuted = ThermalEstimator(n)
    _feed(full, die, cool, pw, 1.0)
    _feed(permuted, die[:, perm], cool[:, perm], pw[:, perm], 1.0)
    assert_array_equal(full.take(perm).r_k_w, permuted.r_k_w)
    assert_array_equal(full.take(perm).c_j_k, permuted.c_j_k)


def test_grow_and_take_add_fresh_series() -> None:
    r_true = np.array([0.03, 0.02])
    c_true = np.array([300.0, 500.0])
    die, cool, pw = _synthetic(r_true, c_true, 800, seed=10, quantise=False)
    est = ThermalEstimator(2, forgetting=0.98, power_noise_rel=0.0)
    _feed(est, die, cool, pw, 1.0)
    grown = est.grow(3)
    assert grown.n_series == 5
    assert_allclose(grown.r_k_w, [0.03, 0.02, 0.018, 0.018, 0.018], rtol=2e-3)
    picked = est.take([1, -1])
    assert_allclose(picked.r_k_w, [0.02, 0.018], rtol=2e-3)
    assert_array_equal(picked.n_updates, [799, 0])
    # the grown estimator keeps fitting the old series and starts the new ones
    grown.update(np.r_[die[-1], 70.0, 70.0, np.nan], np.full(5, 45.0), np.full(5, 1000.0), 1.0)
    assert_array_equal(grown.n_updates, [800, 800, 0, 0, 0])
    assert ThermalEstimator(0).grow(2).n_series == 2


def test_constant_power_keeps_the_fit_and_reports_c_not_identified() -> None:
    # 3 h at exactly constant power: only R = (T - Tc)/P is seen; tau is not, so C stays at
    # the prior and is reported as not identified. A recursive fit with forgetting would wind
    # its covariance up there; the moments only fade, and the next load steps fit cleanly.
    r_true, c_true = 0.02, 450.0
    a = np.exp(-1.0 / (r_true * c_true))
    est = ThermalEstimator(4)
    die = np.full(4, 45.0 + r_true * 1700.0)
    for _ in range(10_800):
        est.update(die, 45.0, 1700.0, 1.0)
    assert_allclose(est.r_k_w, r_true, rtol=1e-6)
    assert_allclose(est.c_j_k * est.r_baseline_k_w, 0.018 * 400.0, rtol=1e-6)  # prior tau
    assert not est.c_identified.any()
    rng = np.random.default_rng(12)
    for k in range(900):
        power = np.full(4, 400.0 if (k // 60) % 2 == 0 else 1700.0)
        cool = 45.0 + rng.normal(0.0, 0.05, 4)
        die = 45.0 + a * (die - 45.0) + r_true * (1.0 - a) * power
        est.update(np.round(die), cool, power, 1.0)
        assert np.max(np.abs(est.r_k_w / r_true - 1.0)) < 0.02
    assert np.max(np.abs(est.c_j_k / c_true - 1.0)) < 0.05
    assert est.c_identified.all()


def test_unphysical_update_is_rejected() -> None:
    est = ThermalEstimator(1)
    # a die colder than its coolant at full power would need R < 0: parameters stay physical
    for die in (80.0, 10.0, 90.0, 5.0, 95.0):
        est.update(die, 45.0, 1800.0, 1.0)
    assert est.r_k_w[0] > 0.0
    assert est.c_j_k[0] > 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"forgetting": 0.0}, "forgetting"),
        ({"forgetting": 1.5}, "forgetting"),
        ({"prior_r_k_w": -1.0}, "priors"),
        ({"power_timing": "middle"}, "power_timing"),
        ({"fast_forgetting": 0.0}, "fast_forgetting"),
        ({"solve_every": 0}, "solve_every"),
        ({"power_noise_rel": -0.1}, "power_noise_rel"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(EstimatorError, match=match):
        ThermalEstimator(2, **kwargs)  # type: ignore[arg-type]


def test_bad_shapes_and_snapshots_are_rejected() -> None:
    est = ThermalEstimator(3)
    with pytest.raises(EstimatorError, match=r"temp_die_c: expected shape \(3,\)"):
        est.update(np.zeros(4), np.zeros(3), np.zeros(3), 1.0)
    snap = est.snapshot()
    del snap["stats"]
    with pytest.raises(EstimatorError, match="missing keys"):
        ThermalEstimator.restore(snap)
    snap = est.snapshot()
    snap["stats"] = np.zeros((2, 2))
    with pytest.raises(EstimatorError, match="stats"):
        ThermalEstimator.restore(snap)
    snap = est.snapshot()
    snap["version"] = np.array(7)
    with pytest.raises(EstimatorError, match="version 7"):
        ThermalEstimator.restore(snap)
    with pytest.raises(EstimatorError, match="group"):
        est.update(np.zeros(3), np.zeros(3), np.zeros(3), 1.0, group=[0, -1, 0])
    with pytest.raises(EstimatorError, match="index"):
        est.take([3])


# ---------------------------------------------------------------- twin/snapshot.py


def _dummy_state(seed: int) -> FacilityState:
    """A FacilityState with distinct random values in every field, typed as declared."""
    rng = np.random.default_rng(seed)
    kwargs: dict[str, object] = {}
    for f in fields(FacilityState):
        tp = str(f.type)
        if tp == "float":
            kwargs[f.name] = float(rng.normal())
        elif "uint64" in tp:
            kwargs[f.name] = rng.integers(0, 2**40, (3, 4)).astype(np.uint64)
        elif "bool" in tp:
            kwargs[f.name] = rng.random(2) < 0.5
        else:
            kwargs[f.name] = rng.normal(size=(3, 4))
    return FacilityState(**kwargs)  # type: ignore[arg-type]


def test_twin_snapshot_file_round_trips_state_estimator_and_extras(tmp_path: Path) -> None:
    state = _dummy_state(1)
    r_true = np.array([0.02, 0.03])
    c_true = np.array([350.0, 500.0])
    die, cool, pw = _synthetic(r_true, c_true, 50, seed=11)
    est = ThermalEstimator(2)
    _feed(est, die, cool, pw, 1.0)
    snap = TwinSnapshot(
        state=state,
        estimator=est,
        extras={"detector.mean": np.arange(5.0)},
        meta={"site": "borlange", "racks": "2"},
    )
    path = save_snapshot(tmp_path / "twin.npz", snap)
    assert [p.name for p in tmp_path.iterdir()] == ["twin.npz"]  # no temporary file left
    back = load_snapshot(path)
    assert back.state is not None and back.estimator is not None
    for f in fields(FacilityState):
        value = getattr(state, f.name)
        got = getattr(back.state, f.name)
        assert type(got) is type(value), f.name
        assert_array_equal(got, value, err_msg=f.name)
    for key, value in est.snapshot().items():
        assert_array_equal(back.estimator.snapshot()[key], value, err_msg=key)
    assert_array_equal(back.extras["detector.mean"], np.arange(5.0))
    assert back.meta == {"site": "borlange", "racks": "2"}
    # in-memory form (GET /api/snapshot) is the same archive
    again = load_snapshot_bytes(snapshot_bytes(snap))
    assert_array_equal(again.estimator.r_k_w, est.r_k_w)  # type: ignore[union-attr]


def test_snapshot_overwrite_is_atomic_and_bad_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "twin.npz"
    save_snapshot(path, TwinSnapshot(meta={"v": "1"}))
    save_snapshot(path, TwinSnapshot(meta={"v": "2"}))
    loaded = load_snapshot(path)
    assert loaded.meta == {"v": "2"}
    assert loaded.state is None and loaded.estimator is None
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SnapshotError, match="not a readable"):
        load_snapshot(tmp_path / "junk.npz")
    with pytest.raises(SnapshotError, match="cannot read"):
        load_snapshot(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(2))
    with pytest.raises(SnapshotError, match="expected format"):
        load_snapshot(other)


# ---------------------------------------------------------------- against the simulator


def test_fed_the_simulator_converges_to_its_true_parameters_and_tracks_fouling() -> None:
    # true parameters away from the estimator's priors (0.018 K/W, 400 J/K); short training
    # checkpoints every 2 min excite the dynamics; GPU 5 of rack 1 fouls from t = 0
    base = load_site(racks=2)
    site = replace(
        base,
        gpu=replace(base.gpu, r_die_coolant_k_w=0.025, c_th_j_k=550.0),
        workload=replace(
            base.workload,
            training_frac=1.0,
            inference_frac=0.0,
            job_racks_min=1,
            job_racks_max=1,
            checkpoint_period_s=120.0,
            checkpoint_duration_s=40.0,
        ),
    )
    rate = 2e-4  # fouling: R x (1 + rate * t), +30 % after 1,500 s
    sim = Simulator(
        site,
        seed=3,
        start_ms=1_784_124_000_000,
        faults=[parse_fault(f"fouling:R0001/G04@0,rate_per_s={rate}")],
    )
    n = site.n_racks * site.n_gpus
    est = ThermalEstimator(n)  # slow baseline and fast tracking R in one
    group = np.repeat(np.arange(site.n_racks), site.n_gpus)
    design = rack_design_flow_kg_s(site)
    steps = 1500
    for _ in range(steps):
        frame = sim.step(1.0)
        th = frame.thermal
        inlet, outlet, flow = (
            np.array([th[r][p] for r in site.rack_ids])
            for p in ("inlet_temp_c", "outlet_temp_c", "flow_kg_s")
        )
        # the coolant the cold plates see, from the rack's inlet, outlet and flow sensors
        coolant = np.repeat(gpu_coolant_c(inlet, outlet, flow / design), site.n_gpus)
        est.update(
            frame.gpu["temp_gpu_c"].ravel(), coolant, frame.gpu["power_w"].ravel(), 1.0, group=group
        )
    state = sim.state
    r_true = cold_plate_resistance_k_w(
        state.rack_flow_kg_s[:, None] / design, np.ones((2, site.n_gpus)), site.gpu
    ).ravel()
    fouled = 4  # R0001/G04
    clean = np.arange(n) != fouled
    assert np.max(np.abs(est.r_baseline_k_w[clean] / r_true[clean] - 1.0)) < 0.01
    assert np.max(np.abs(est.r_k_w[clean] / r_true[clean] - 1.0)) < 0.01
    assert np.median(np.abs(est.c_j_k[clean] / 550.0 - 1.0)) < 0.03
    assert np.max(np.abs(est.c_j_k[clean] / 550.0 - 1.0)) < 0.08
    assert np.max(np.abs(est.coolant_offset_k)) < 0.1  # the sensors are right
    r_fouled = r_true[fouled] * (1.0 + rate * steps)
    # a ramp of rate/s is followed ~1/(1 - 0.99) = 100 s late: 2 % at this (fast) fouling
    assert abs(est.r_k_w[fouled] / r_fouled - 1.0) < 0.03
    assert est.r_baseline_k_w[fouled] < est.r_k_w[fouled]  # the slow one lags further
    assert est.r_k_w[fouled] > 1.2 * np.median(est.r_k_w[clean])
