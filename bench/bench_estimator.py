"""Time one ThermalEstimator.update for the full campus and for 10,000 racks.

Prints figures; asserts nothing about speed (measured in bench/, never asserted in tests).
Usage: python bench/bench_estimator.py [--repeat N] [--series N ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from twin.estimator import ThermalEstimator

#: 1,250 racks x 72 GPUs (full Borlänge campus) and 10,000 racks x 72 GPUs (headroom).
DEFAULT_SIZES = (90_000, 720_000)


def bench(n: int, repeat: int, seed: int = 0) -> tuple[float, float]:
    """(median, min) seconds of one update of ``n`` series in steady operation."""
    rng = np.random.default_rng(seed)
    est = ThermalEstimator(n)
    cool = np.full(n, 45.0)
    dtemp = np.full(n, 20.0)
    times = []
    for k in range(repeat + 3):
        power = rng.uniform(200.0, 1800.0, n)
        die = np.round(cool + dtemp)
        t0 = time.perf_counter()
        est.update(die, cool, power, 1.0)
        elapsed = time.perf_counter() - t0
        if k >= 3:  # the first updates seed the series and discretise the prior
            times.append(elapsed)
        dtemp = 0.87 * dtemp + 0.0023 * power
    return float(np.median(times)), float(np.min(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--series", type=int, nargs="*", default=list(DEFAULT_SIZES))
    args = parser.parse_args()
    print(f"{'series':>10} {'median ms':>10} {'min ms':>8} {'ns/series':>10} {'series/s':>12}")
    for n in args.series:
        med, best = bench(n, args.repeat)
        ns_per = med / n * 1e9
        print(f"{n:>10,} {med * 1e3:>10.2f} {best * 1e3:>8.2f} {ns_per:>10.1f} {n / med:>12,.0f}")


if __name__ == "__main__":
    main()
