"""The thermal estimator (twin/estimator.py) measured: accuracy over the simulator, and speed.

``accuracy``: the simulator's mixed workload (twin/workload.py: training, inference, idle
racks), its own sensor noise (die 0.3 K + whole degrees, power 0.5 %), true ``R`` and ``C``
set away from the estimator's priors (0.025 K/W and 550 J/K against 0.018 and 400) so that a
fit stuck at its prior cannot pass. One simulation feeds three estimators, one per coolant
reference: the manifold sensors (inlet, outlet, flow), the same sensors reading 1 K high, and
no sensors at all (a model of the rack coolant from its GPU power, twin/coolant_ref.py). After
one hour at 1 Hz it reports, per workload kind, the share of GPUs whose fitted ``R`` is within
2 % and ``C`` within 10 % of the truth, how many the estimator calls identified, and the
fitted coolant offset; then it freezes the fit and predicts the second hour's die
temperatures from power (and the reference) alone, and reports the RMSE. A second, short run
fouls one cold plate and reports how the fast and the slow ``R`` follow it.

``speed``: one update of all series (90,000 GPUs: the campus; 720,000: 10,000 racks).

Prints figures; asserts nothing (speed and long runs are measured in bench/, never in tests).
Usage: python bench/bench_estimator.py [accuracy|speed|fouling|all] [--racks N] [--seed S]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from twin.coolant_ref import plate_coolant_rise_step
from twin.estimator import ThermalEstimator
from twin.gpu import cold_plate_resistance_k_w
from twin.rack import gpu_coolant_c
from twin.sim import Simulator, parse_fault
from twin.site import Site, load_site
from twin.step import rack_design_flow_kg_s
from twin.workload import IDLE, INFERENCE, TRAINING

#: 1,250 racks x 72 GPUs (full Borlänge campus) and 10,000 racks x 72 GPUs (headroom).
DEFAULT_SIZES = (90_000, 720_000)
TRUE_R_K_W = 0.025
TRUE_C_J_K = 550.0
START_MS = 1_784_124_000_000  # 2026-07-15 14:00 UTC: inference near its daily peak
KINDS = {TRAINING: "training", INFERENCE: "inference", IDLE: "idle"}
SCENARIOS = ("sensors", "bias +1 K", "no sensors")


def _site(racks: int, **workload: float) -> Site:
    base = load_site(racks=racks)
    return replace(
        base,
        gpu=replace(base.gpu, r_die_coolant_k_w=TRUE_R_K_W, c_th_j_k=TRUE_C_J_K),
        workload=replace(base.workload, **workload),
    )


def _references(
    site: Site, frame_thermal: dict, power_w: np.ndarray, rise_k: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-GPU coolant reference [C] of each scenario, and the modelled rack rise [K]."""
    design = rack_design_flow_kg_s(site)
    th = frame_thermal
    inlet, outlet, flow = (
        np.array([th[r][p] for r in site.rack_ids])
        for p in ("inlet_temp_c", "outlet_temp_c", "flow_kg_s")
    )
    measured = gpu_coolant_c(inlet, outlet, flow / design)
    # no sensors: the loop's supply setpoint and the rack's GPU power through its coolant
    rise = plate_coolant_rise_step(rise_k, power_w.sum(axis=1), 1.0, design)
    modelled = site.tcs.supply_temp_c + 0.5 * rise
    n = site.n_gpus
    return [np.repeat(c, n) for c in (measured, measured + 1.0, modelled)], rise


def accuracy(racks: int, seed: int, hours: float = 1.0) -> None:
    """Fit for ``hours`` at 1 Hz, predict as long again; print a table per scenario."""
    site = _site(racks)
    sim = Simulator(site, seed=seed, start_ms=START_MS)
    n_g = site.n_gpus
    n = site.n_racks * n_g
    group = np.repeat(np.arange(site.n_racks), n_g)
    kind = np.repeat(sim._plan.kind, n_g)
    ests = [ThermalEstimator(n) for _ in SCENARIOS]
    fit_steps = round(hours * 3600)
    t0 = time.perf_counter()
    est_s = 0.0
    rise = np.full(site.n_racks, np.nan)
    for _ in range(fit_steps):
        frame = sim.step(1.0)
        power = frame.gpu["power_w"].astype(np.float64)
        die = frame.gpu["temp_gpu_c"].ravel().astype(np.float64)
        refs, rise = _references(site, frame.thermal, power, rise)
        t1 = time.perf_counter()
        for est, ref in zip(ests, refs, strict=True):
            est.update(die, ref, power.ravel(), 1.0, group=group)
        est_s += time.perf_counter() - t1
    design = rack_design_flow_kg_s(site)
    r_true = cold_plate_resistance_k_w(
        np.repeat(sim.state.rack_flow_kg_s / design, n_g), 1.0, site.gpu
    )
    # the second hour: the fit frozen, the die predicted from power and the reference alone
    frozen = [
        (est.r_k_w, est.tau_s, est.coolant_offset_k, est.snapshot()["prev_temp_die_c"])
        for est in ests
    ]
    pred = [f[3].copy() for f in frozen]
    ref_prev = refs
    sq = [np.zeros(n) for _ in ests]
    for _ in range(fit_steps):
        frame = sim.step(1.0)
        power = frame.gpu["power_w"].astype(np.float64)
        die = frame.gpu["temp_gpu_c"].ravel().astype(np.float64)
        for i, (r, tau, delta, _) in enumerate(frozen):
            a = np.exp(-1.0 / tau)
            plate = ref_prev[i] - delta  # the coolant held over the step (its start)
            pred[i] = plate + a * (pred[i] - plate) + (1.0 - a) * r * power.ravel()
            sq[i] += (pred[i] - die) ** 2
        ref_prev, rise = _references(site, frame.thermal, power, rise)
    wall = time.perf_counter() - t0
    print(
        f"{site.n_racks} racks x {n_g} GPUs, seed {seed}, fit {hours:g} h at 1 Hz, predict "
        f"{hours:g} h; true R {TRUE_R_K_W} K/W (at design flow), C {TRUE_C_J_K} J/K; "
        f"{wall:.0f} s wall ({est_s / fit_steps / 3 * 1e3:.2f} ms per estimator update)"
    )
    for name, est, s in zip(SCENARIOS, ests, sq, strict=True):
        rmse = np.sqrt(s / fit_steps)
        r_err = np.abs(est.r_k_w / r_true - 1.0)
        rb_err = np.abs(est.r_baseline_k_w / r_true - 1.0)
        c_err = np.abs(est.c_j_k / TRUE_C_J_K - 1.0)
        r_id, c_id = est.r_identified, est.c_identified
        offset = est.coolant_offset_k
        print(f"\n== {name}")
        print(
            f"{'kind':>10} {'GPUs':>5} {'R<2%':>6} {'Rbase<2%':>8} {'R p95':>6} {'R id':>5} "
            f"{'C<10%':>6} {'C med':>6} {'C p95':>6} {'C id':>5} {'C<10% of id':>11} "
            f"{'offset K':>13} {'RMSE C':>13}"
        )
        for k, label in KINDS.items():
            m = kind == k
            if not m.any():
                continue
            c_ok_id = float(np.mean(c_err[m & c_id] < 0.10)) if (m & c_id).any() else np.nan
            print(
                f"{label:>10} {m.sum():>5} {np.mean(r_err[m] < 0.02):>6.1%} "
                f"{np.mean(rb_err[m] < 0.02):>8.1%} {np.percentile(r_err[m], 95):>6.1%} "
                f"{np.mean(r_id[m]):>5.0%} {np.mean(c_err[m] < 0.10):>6.1%} "
                f"{np.median(c_err[m]):>6.1%} {np.percentile(c_err[m], 95):>6.1%} "
                f"{np.mean(c_id[m]):>5.0%} {c_ok_id:>11.1%} "
                f"{np.min(offset[m]):>6.2f}-{np.max(offset[m]):<6.2f} "
                f"{np.median(rmse[m]):>6.2f}/{np.percentile(rmse[m], 95):<6.2f}"
            )
    print(
        "\nR<2%: fast R (r_k_w); Rbase: slow R; p95: 95th percentile of |error|; id: share "
        "the estimator calls identified; offset: fitted reference minus plate coolant (min-max "
        "over racks); RMSE: free-run die prediction over the second hour, median/p95 [C]"
    )


def fouling(seed: int = 3) -> None:
    """One cold plate fouls (R +30 % over 25 min): how the fast and slow R follow it."""
    site = _site(
        2,
        training_frac=1.0,
        inference_frac=0.0,
        job_racks_min=1,
        job_racks_max=1,
        checkpoint_period_s=600.0,
        checkpoint_duration_s=60.0,
    )
    rate = 2e-4
    start = 1800
    sim = Simulator(
        site,
        seed=seed,
        start_ms=START_MS,
        faults=[parse_fault(f"fouling:R0001/G04@{start},rate_per_s={rate}")],
    )
    n_g = site.n_gpus
    n = site.n_racks * n_g
    group = np.repeat(np.arange(site.n_racks), n_g)
    est = ThermalEstimator(n)
    old = ThermalEstimator(n, forgetting=0.999, fast_forgetting=0.999)
    design = rack_design_flow_kg_s(site)
    print(f"\nfouling R0001/G04 from t = {start} s, R x (1 + {rate:g}/s): fitted / true R")
    print(f"{'t s':>6} {'fast':>7} {'slow':>7} {'0.999':>7}")
    rise = np.full(site.n_racks, np.nan)
    for k in range(1, start + 1501):
        frame = sim.step(1.0)
        power = frame.gpu["power_w"].astype(np.float64)
        refs, rise = _references(site, frame.thermal, power, rise)
        ref = refs[0]
        die = frame.gpu["temp_gpu_c"].ravel()
        est.update(die, ref, power.ravel(), 1.0, group=group)
        old.update(die, ref, power.ravel(), 1.0, group=group)
        if k >= start and (k - start) % 300 == 0:
            r0 = cold_plate_resistance_k_w(sim.state.rack_flow_kg_s[0] / design, 1.0, site.gpu)
            r_true = float(r0) * (1.0 + rate * (k - start))
            print(
                f"{k:>6} {est.r_k_w[4] / r_true:>7.3f} {est.r_baseline_k_w[4] / r_true:>7.3f} "
                f"{old.r_k_w[4] / r_true:>7.3f}"
            )


def bench(n: int, repeat: int, seed: int = 0) -> tuple[float, float]:
    """(median, min) seconds of one update of ``n`` series (racks of 72) in steady operation,
    over whole solve cycles (the slow fit is solved every ``solve_every`` samples)."""
    rng = np.random.default_rng(seed)
    est = ThermalEstimator(n)
    group = np.arange(n) // 72
    cool = np.full(n, 45.0)
    dtemp = np.full(n, 20.0)
    times = []
    for k in range(repeat + 3):
        power = rng.uniform(200.0, 1800.0, n)
        die = np.round(cool + dtemp)
        t0 = time.perf_counter()
        est.update(die, cool, power, 1.0, group=group)
        elapsed = time.perf_counter() - t0
        if k >= 3:  # the first updates seed the series
            times.append(elapsed)
        dtemp = 0.87 * dtemp + 0.0023 * power
    return float(np.mean(times)), float(np.min(times))


def speed(sizes: list[int], repeat: int) -> None:
    """Print the cost of one update (mean over solve cycles) per size."""
    print(f"{'series':>10} {'mean ms':>10} {'min ms':>8} {'ns/series':>10} {'series/s':>12}")
    for n in sizes:
        mean, best = bench(n, repeat)
        ns_per = mean / n * 1e9
        print(f"{n:>10,} {mean * 1e3:>10.2f} {best * 1e3:>8.2f} {ns_per:>10.1f} {n / mean:>12,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "what", nargs="?", default="all", choices=["accuracy", "speed", "fouling", "all"]
    )
    parser.add_argument("--racks", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--series", type=int, nargs="*", default=list(DEFAULT_SIZES))
    args = parser.parse_args()
    if args.racks < 1 or args.hours <= 0 or args.repeat < 1:
        parser.error("--racks, --hours and --repeat must be positive")
    if args.what in ("speed", "all"):
        speed(args.series, args.repeat)
    if args.what in ("accuracy", "all"):
        accuracy(args.racks, args.seed, args.hours)
    if args.what in ("fouling", "all"):
        fouling()


if __name__ == "__main__":
    main()
