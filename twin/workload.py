"""AI workload per rack: synchronous training jobs spanning many racks with periodic
checkpoint dips, inference with a daily cycle, idle racks, and power-capped jobs.

A :class:`WorkloadPlan` is drawn once from a seed; :func:`utilisation` evaluates it at an
instant with caller-supplied noise, so it stays pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.gpu import _m

FloatArray = NDArray[np.float64]
IDLE, TRAINING, INFERENCE = 0, 1, 2


@dataclass(frozen=True)
class WorkloadParams:
    """Workload mix (all estimates: typical AI-factory occupancy)."""

    training_frac: float = field(default=0.65, metadata=_m(0.0, 1.0))
    inference_frac: float = field(default=0.25, metadata=_m(0.0, 1.0))
    job_racks_min: int = field(default=4, metadata=_m(1))
    job_racks_max: int = field(default=32, metadata=_m(1))
    training_util: float = field(default=0.95, metadata=_m(0.0, 1.0))
    checkpoint_period_s: float = field(default=1800.0, metadata=_m(1.0))
    checkpoint_duration_s: float = field(default=60.0, metadata=_m(0.0))
    checkpoint_util: float = field(default=0.1, metadata=_m(0.0, 1.0))
    capped_job_frac: float = field(default=0.2, metadata=_m(0.0, 1.0))
    cap_w: float = field(default=1400.0, metadata=_m(0.0))  # Max-Q style limit
    inference_base_util: float = field(default=0.35, metadata=_m(0.0, 1.0))
    inference_amp_util: float = field(default=0.3, metadata=_m(0.0, 1.0))
    inference_peak_hour: float = field(default=14.0, metadata=_m(0.0, 24.0))
    util_jitter: float = field(default=0.02, metadata=_m(0.0, 1.0))  # per-GPU noise sd


@dataclass(frozen=True, eq=False)
class WorkloadPlan:
    """Per-rack assignment: kind (IDLE/TRAINING/INFERENCE), job index (-1 = none), the
    job's checkpoint phase [s] and period [s], and the rack's power limit [W]."""

    kind: NDArray[np.int64]
    job: NDArray[np.int64]
    phase_s: FloatArray
    period_s: FloatArray
    power_limit_w: FloatArray


def make_plan(
    n_racks: int, tdp_w: float, p: WorkloadParams, rng: np.random.Generator
) -> WorkloadPlan:
    """Draw a plan: contiguous blocks of racks form training jobs (sizes uniform in
    [job_racks_min, job_racks_max]) until training_frac of racks is used; the next
    inference_frac of racks serve inference; the rest idle. Then racks are shuffled in
    blocks so kinds interleave across halls."""
    kind = np.zeros(n_racks, dtype=np.int64)
    job = np.full(n_racks, -1, dtype=np.int64)
    phase = np.zeros(n_racks)
    period = np.full(n_racks, p.checkpoint_period_s)
    limit = np.full(n_racks, tdp_w)
    n_train = round(n_racks * p.training_frac)
    n_inf = min(round(n_racks * p.inference_frac), n_racks - n_train)
    i, j = 0, 0
    while i < n_train:
        size = min(int(rng.integers(p.job_racks_min, p.job_racks_max + 1)), n_train - i)
        kind[i : i + size] = TRAINING
        job[i : i + size] = j
        period[i : i + size] = p.checkpoint_period_s * rng.uniform(0.8, 1.2)
        phase[i : i + size] = rng.uniform(0.0, p.checkpoint_period_s)
        if rng.random() < p.capped_job_frac:
            limit[i : i + size] = p.cap_w
        i += size
        j += 1
    kind[n_train : n_train + n_inf] = INFERENCE
    return WorkloadPlan(kind, job, phase, period, limit)


def utilisation(
    plan: WorkloadPlan,
    t_s: float,
    hour_local: float,
    z: Any,
    p: WorkloadParams,
    *,
    out: FloatArray | None = None,
) -> FloatArray:
    """GPU utilisation [1] (n_racks, n_gpus) at t_s [s since start] and local hour [h].

    Training: training_util except during the checkpoint window, when all racks of the job
    dip together to checkpoint_util. Inference: base + amp * cos(hour - peak). ``z``:
    standard-normal noise (n_racks, n_gpus) scaled by util_jitter (not on idle racks).
    ``out``: an (n_racks, n_gpus) float64 array to write the result into (``z`` itself is
    allowed).
    """
    in_ckpt = ((t_s + plan.phase_s) % plan.period_s) < p.checkpoint_duration_s
    train = np.where(in_ckpt, p.checkpoint_util, p.training_util)
    daily = np.cos(2.0 * np.pi * (hour_local - p.inference_peak_hour) / 24.0)
    infer = p.inference_base_util + p.inference_amp_util * daily
    base = np.where(plan.kind == TRAINING, train, np.where(plan.kind == INFERENCE, infer, 0.0))
    # jitter on busy racks; idle racks read 0 (what 0 * z + 0 clipped gives). A scalar
    # multiply and a row assignment cost half of a multiply by a per-rack (R, 1) factor
    util = np.multiply(np.asarray(z), p.util_jitter, out=out)
    util += base[:, None]
    util[plan.kind == IDLE] = 0.0
    return np.clip(util, 0.0, 1.0, out=util)
