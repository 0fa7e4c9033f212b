"""Synthetic fault traces for the detector contract test, one per fault shape (``kind``).

Every trace is ``T`` samples at 1 Hz of ``N`` series in two groups of 8 (racks); faults hit
known series over known windows. ``label`` marks the faulty samples, ``scored`` the samples
an AUC counts (after warm-up, without the samples right after a spike, which are its echo).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

T = 1800
N = 16


@dataclass
class Trace:
    ts_s: np.ndarray  # (T,) [s]
    x: np.ndarray  # (T, N)
    aux: np.ndarray | None  # (T, N)
    group: np.ndarray  # (N,)
    label: np.ndarray  # (T, N) bool
    scored: np.ndarray  # (T, N) bool


def _base(seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = 1.7e9 + np.arange(T, dtype=np.float64)
    label = np.zeros((T, N), dtype=bool)
    scored = np.zeros((T, N), dtype=bool)
    scored[400:] = True
    return rng, ts, label, scored


def make_trace(kind: str, seed: int = 1) -> Trace:
    """The trace for a detector ``kind`` (level, drift, stuck, spike, balance, residual,
    r_trend)."""
    rng, ts, label, scored = _base(seed)
    group = np.repeat(np.arange(2), N // 2)
    aux = None
    t = np.arange(T)[:, None]
    if kind == "level":
        x = 50.0 + rng.normal(0.0, 1.0, (T, N))
        x[900:1100, :4] += 6.0
        label[900:1100, :4] = True
    elif kind == "drift":
        x = 50.0 + rng.normal(0.0, 1.0, (T, N))
        ramp = np.clip((t - 800) / 600.0, 0.0, 1.0) * 4.0
        x[:, :4] += ramp
        label[950:, :4] = True  # from 1 sigma on
        scored[800:950, :4] = False
    elif kind == "stuck":
        power = 600.0 + 300.0 * rng.integers(0, 2, (T // 5 + 1, N)).repeat(5, axis=0)[:T]
        power += rng.normal(0.0, 3.0, (T, N))
        x = np.round(45.0 + 0.02 * power + rng.normal(0.0, 0.6, (T, N)))
        x[900:1200, :4] = x[900, :4]
        label[900:1200, :4] = True
        aux = power
    elif kind == "spike":
        x = 50.0 + np.cumsum(rng.normal(0.0, 0.2, (T, N)), axis=0)
        where = rng.choice(np.arange(500, T - 1), size=40, replace=False)
        cols = rng.integers(0, N, 40)
        x[where, cols] += rng.choice([-1.0, 1.0], 40) * 4.0
        label[where, cols] = True
        scored[where + 1, cols] = False  # the return to the level is the same event
    elif kind == "balance":
        aux = 20_000.0 * (1.0 + 0.3 * np.sin(t / 200.0 + np.arange(N)))
        x = 0.95 * aux * (1.0 + rng.normal(0.0, 0.004, (T, N)))
        x[900:1100, :4] *= 1.05
        label[900:1100, :4] = True
    elif kind == "residual":
        x = rng.normal(0.0, 0.5, (T, N)) + rng.normal(0.0, 0.5, N)
        x[900:1100, 0] += 4.0  # one GPU alone
        x[1300:1500, 8:] += 3.0  # a whole rack
        label[900:1100, 0] = True
        label[1300:1500, 8:] = True
    elif kind == "r_trend":
        x = 0.02 * (1.0 + rng.normal(0.0, 0.005, (T, N)))
        x[:, 0] *= 1.0 + np.clip((t[:, 0] - 800) / 400.0, 0.0, 1.0) * 0.3
        x[1300:, 8:] *= 1.2
        label[900:, 0] = True
        label[1300:, 8:] = True
        scored[800:900, 0] = False
    elif kind == "ups":
        # 16 UPS modules (rated 3.5 MW) at 20-60 % load; input and output read by class-0.2S
        # meters (0.2 % noise each); 4 modules lose 30 % more than their curve for 200 s
        from twin.power import PowerParams, ups_loss_w

        p = PowerParams()
        aux = p.ups_rated_w * (0.4 + 0.2 * np.sin(t / 300.0 + np.arange(N)))
        loss = ups_loss_w(aux, p.ups_rated_w, p.ups_loss_coeff)
        loss[900:1100, :4] *= 1.3
        x = (aux + loss) * (1.0 + rng.normal(0.0, 0.002, (T, N)))
        aux = aux * (1.0 + rng.normal(0.0, 0.002, (T, N)))
        label[900:1100, :4] = True
        scored[900:930, :4] = False  # the chart's mean needs a few samples to move
    else:
        raise ValueError(kind)
    return Trace(ts, x, aux, group, label, scored)


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties), numpy only."""
    s = np.asarray(score, dtype=np.float64).ravel()
    y = np.asarray(label, dtype=bool).ravel()
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    r = avg_rank[inv]
    n1 = int(y.sum())
    n0 = y.size - n1
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))
