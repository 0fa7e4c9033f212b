"""ThermalEstimator: the coolant reference's offset (a biased sensor, no sensor at all), the
errors-in-variables bias of a noisy die reading, the fast and slow R, identification flags,
and version-1 snapshots."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

from twin import ivfit
from twin.coolant_ref import plate_coolant_reference_c, plate_coolant_rise_step
from twin.estimator import ThermalEstimator

RACKS, GPUS = 2, 8


def _racks(
    steps: int,
    *,
    seed: int,
    r_k_w: np.ndarray | None = None,
    c_j_k: np.ndarray | None = None,
    foul_rate_per_s: float = 0.0,
    hold_s: int = 60,
    idle: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Die readings (0.3 K noise, whole degrees), plate coolant and power of 2 racks x 8 GPUs.

    Each rack's GPUs step their power together every ``hold_s`` s (a job's phases) with 2 %
    jitter, and the rack's coolant follows its power (half its rise over the rack); GPU 3 of
    rack 0 fouls at ``foul_rate_per_s`` (R x (1 + rate t)). ``idle``: constant 200 W.
    Returns (die, coolant, power, true R at each step), each (steps, 16).
    """
    rng = np.random.default_rng(seed)
    n = RACKS * GPUS
    r0 = np.full(n, 0.025) if r_k_w is None else r_k_w
    c = np.full(n, 550.0) if c_j_k is None else c_j_k
    # idle: in equilibrium from the start (a free decay would show tau by itself)
    die = np.full(n, 45.0 + 0.025 * 200.0 + 0.5 * GPUS * 200.0 / 5.0 / 3980.0 if idle else 60.0)
    out = [np.empty((steps, n)) for _ in range(4)]
    level = np.full(RACKS, 1500.0)
    for k in range(steps):
        if k % hold_s == 0:
            level = rng.uniform(300.0, 1700.0, RACKS)
        power = np.repeat(level, GPUS) * (1.0 + 0.02 * rng.standard_normal(n))
        if idle:
            power = np.full(n, 200.0)
        cool = np.repeat(45.0 + 0.5 * power.reshape(RACKS, GPUS).sum(axis=1) / 5.0 / 3980.0, GPUS)
        r = r0.copy()
        r[3] *= 1.0 + foul_rate_per_s * k
        a = np.exp(-1.0 / (r * c))
        prev_cool = out[1][k - 1] if k else cool
        die = prev_cool + a * (die - prev_cool) + (1.0 - a) * r * power
        out[0][k] = np.round(die + rng.normal(0.0, 0.3, n))
        out[1][k] = cool
        out[2][k] = power * (1.0 + 0.005 * rng.standard_normal(n))
        out[3][k] = r
    return out[0], out[1], out[2], out[3]


GROUP = np.repeat(np.arange(RACKS), GPUS)


def _fit(est: ThermalEstimator, die: np.ndarray, ref: np.ndarray, power: np.ndarray) -> None:
    for k in range(die.shape[0]):
        est.update(die[k], ref[k], power[k], 1.0, group=GROUP)


def test_a_biased_rack_sensor_moves_the_offset_not_r() -> None:
    die, cool, power, r_true = _racks(1800, seed=1)
    bias = np.where(GROUP == 0, 1.0, 0.0)  # rack 0's manifold sensors read 1 K high
    est = ThermalEstimator(RACKS * GPUS)
    _fit(est, die, cool + bias, power)
    # 8 GPUs a rack here (72 in a real one): the offset to ~0.2 K
    assert_allclose(est.coolant_offset_k, bias, atol=0.3)
    assert np.all(est.coolant_offset_sd_k < 0.3)
    assert np.max(np.abs(est.r_k_w / r_true[-1] - 1.0)) < 0.015
    assert est.r_identified.all()
    # the old model (the reference taken as the plates' coolant) reads the bias as R: the
    # test can fail
    trusting = ThermalEstimator(RACKS * GPUS)
    for k in range(die.shape[0]):
        trusting.update(die[k], cool[k] + bias, power[k], 1.0)  # one offset per GPU
    blind = np.median(np.abs(est.r_k_w[:GPUS] / r_true[-1, :GPUS] - 1.0))
    assert blind < 0.005
    # a plain fit of (T - T_ref) = R P at 1 kW and 25 K: 1 K is 4 % of R
    naive = np.mean((die[-600:] - cool[-600:] - bias) / power[-600:], axis=0)
    assert np.median(np.abs(naive[:GPUS] / r_true[-1, :GPUS] - 1.0)) > 0.02


def test_fouling_moves_one_gpu_and_a_bias_moves_the_rack() -> None:
    die, cool, power, r_true = _racks(2400, seed=2, foul_rate_per_s=1e-4)
    bias = np.where(GROUP == 0, 1.0, 0.0)
    est = ThermalEstimator(RACKS * GPUS)
    _fit(est, die, cool + bias, power)
    change = est.r_k_w / r_true[0] - 1.0
    assert change[3] > 0.15  # the fouling plate (+24 % by the end)
    assert np.max(np.abs(np.delete(change, 3))) < 0.015  # the rest did not move
    assert_allclose(est.coolant_offset_k[:GPUS], 1.0, atol=0.3)  # the sensor did
    assert abs(est.r_k_w[3] / r_true[-1, 3] - 1.0) < 0.02


def test_without_coolant_sensors_a_modelled_reference_is_fitted_through() -> None:
    die, cool, power, r_true = _racks(1800, seed=3)
    # the worker's model: supply setpoint (here 2 K off the loop's real 45 C) plus the rack's
    # GPU power through its design flow and coolant volume (twin/coolant_ref.py)
    rise = np.full(RACKS, np.nan)
    ref = np.empty_like(cool)
    for k in range(die.shape[0]):
        q_w = power[k].reshape(RACKS, GPUS).sum(axis=1)
        rise = plate_coolant_rise_step(rise, q_w, 1.0, 5.0, heat_per_gpu_w=1.0)
        ref[k] = np.repeat(43.0 + 0.5 * rise, GPUS)
    est = ThermalEstimator(RACKS * GPUS)
    _fit(est, die, ref, power)
    assert_allclose(est.coolant_offset_k, -2.0, atol=0.15)
    assert np.max(np.abs(est.r_k_w / r_true[-1] - 1.0)) < 0.02
    assert np.max(np.abs(est.c_j_k / 550.0 - 1.0)) < 0.10


def test_instrumental_variables_remove_the_errors_in_variables_bias_of_c() -> None:
    die, cool, power, _ = _racks(3600, seed=4)
    est = ThermalEstimator(RACKS * GPUS)
    _fit(est, die, cool, power)
    assert np.median(np.abs(est.c_j_k / 550.0 - 1.0)) < 0.03
    assert np.max(np.abs(est.c_j_k / 550.0 - 1.0)) < 0.10
    assert est.c_identified.all()
    # ordinary least squares of y = a x + b P + c on the same noisy readings: a (and so tau
    # and C) biased low, the bias this estimator exists to remove
    x = die[:-1] - cool[:-1]
    y = die[1:] - cool[:-1]
    tau_ols = []
    for i in range(RACKS * GPUS):
        phi = np.column_stack([x[:, i], power[1:, i], np.ones(x.shape[0])])
        a_ols = np.linalg.lstsq(phi, y[:, i], rcond=None)[0][0]
        tau_ols.append(-1.0 / np.log(a_ols))
    assert np.median(np.array(tau_ols) / (0.025 * 550.0)) < 0.9


def test_two_speeds_fast_follows_fouling_slow_keeps_the_baseline() -> None:
    die, cool, power, r_true = _racks(3000, seed=5, foul_rate_per_s=1e-4)
    est = ThermalEstimator(RACKS * GPUS)
    _fit(est, die, cool, power)
    fast, slow = est.r_k_w[3] / r_true[-1, 3], est.r_baseline_k_w[3] / r_true[-1, 3]
    assert abs(fast - 1.0) < 0.015  # R +30 %: the fast fit is ~100 s (1 %) behind
    assert slow < 0.95  # the slow one lags by minutes: it is the baseline
    # forgetting 0.999 for both (the old setting) lags the fouling by several %
    old = ThermalEstimator(RACKS * GPUS, forgetting=0.999, fast_forgetting=0.999)
    _fit(old, die, cool, power)
    assert old.r_k_w[3] / r_true[-1, 3] < 0.97


def test_an_idle_rack_reports_c_and_r_with_an_unknown_offset_as_not_identified() -> None:
    die, cool, power, _ = _racks(1800, seed=6, idle=True)
    est = ThermalEstimator(RACKS * GPUS)
    _fit(est, die, cool + 1.0, power)
    assert not est.c_identified.any()  # no power change: tau cannot be seen
    assert not est.r_identified.any()  # R * 200 W and a 1 K offset are one number
    assert np.all(est.coolant_offset_sd_k > 1.0)
    assert_allclose(est.coolant_offset_k, 0.0, atol=0.05)  # stays at the prior (trust it)
    # tau stays the prior's rather than being fitted to noise
    assert_allclose(est.tau_s, 0.018 * 400.0, rtol=1e-9)


def test_version_1_snapshots_restore_with_their_fitted_r_and_tau() -> None:
    n = 3
    a = np.exp(-1.0 / np.array([8.0, 10.0, 12.0]))
    r = np.array([0.02, 0.025, 0.03])
    v1 = {
        "theta": np.column_stack([a, (1.0 - a) * r / 0.018]),
        "cov": np.tile(np.eye(2) * 0.01, (n, 1, 1)),
        "dt_ref_s": np.ones(n),
        "prev_temp_die_c": np.full(n, 70.0),
        "prev_temp_coolant_c": np.full(n, 45.0),
        "prev_power_w": np.full(n, 1000.0),
        "residual_k": np.zeros(n),
        "n_updates": np.full(n, 500),
        "forgetting": np.array(0.999),
        "prior_r_k_w": np.array(0.018),
        "prior_c_j_k": np.array(400.0),
        "max_cov_trace": np.array(2.0),
        "power_timing": np.array("end"),
        "coolant_timing": np.array("start"),
    }
    est = ThermalEstimator.restore(v1)
    assert_allclose(est.r_k_w, r, rtol=1e-12)
    assert_allclose(est.tau_s, [8.0, 10.0, 12.0], rtol=1e-12)
    assert est.n_updates.tolist() == [500] * 3
    # it fits on from there, and saves as version 2
    est.update(np.full(n, 70.5), 45.0, 1000.0, 1.0)
    assert est.n_updates.tolist() == [501] * 3
    snap = est.snapshot()
    assert int(snap["version"]) == 2 and snap["stats"].shape == (n, ivfit.N_ROWS)


def test_plate_coolant_reference_is_the_supply_plus_half_the_rise() -> None:
    assert_allclose(plate_coolant_reference_c(100_000.0, 45.0, 5.0), 45.0 + 0.5 * 100e3 / 19_900)
    rise = plate_coolant_rise_step(np.nan, 100_000.0, 1.0, 5.0)
    assert_allclose(rise, 1.54 * 100e3 / 19_900)  # the steady rise, the rack's other heat in
    # a load step reaches the plates with the coolant's transit (0.06 m3 at 5 kg/s: ~12 s)
    later = plate_coolant_rise_step(rise, 0.0, 12.08, 5.0)
    assert_allclose(later, rise * np.exp(-1.0), rtol=1e-3)


def test_a_reference_step_shows_in_full_in_the_steady_residual() -> None:
    die, cool, power, _ = _racks(1500, seed=7)
    ref = cool.copy()
    ref[-60:, GROUP == 1] += 1.5  # rack 1's sensor jumps 1.5 K for the last minute
    est = ThermalEstimator(RACKS * GPUS)
    _fit(est, die, ref, power)
    steady = est.steady_residual_k
    assert abs(np.median(steady[GROUP == 1]) + 1.5) < 0.4
    assert abs(np.median(steady[GROUP == 0])) < 0.4
    # one step ahead, the same jump is only (1 - a) of it: tau 13.75 s, 7 %
    assert abs(np.median(est.residual_k[GROUP == 1])) < 0.4
