"""CPU cost of the worker's alert evaluation at a site size, without Kafka or Faust.

    .venv/bin/python bench/bench_alerts.py [--racks 1250] [--ticks 20] [--hot 0.01]

Builds a runtime holding every rack's GPU frame (72 GPUs each) and every CDU and UPS point
set, then times what the worker's ``evaluate_alerts`` timer calls once a second: the rule
sources over every rack and unit (streams/alert_sources.py), the engine's housekeeping and the
changes taken for publication (models/alerting.py). ``--hot`` is the share of GPUs held 2 K
from their slowdown temperature (alerts raised, tracked and re-evaluated each tick). CPU time
(time.process_time), so the figures hold on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.alerting import AlertEngine
from models.rules import load_rules
from streams.alert_sources import evaluate_sources, site_map
from streams.codec import (
    decode_gpu_frame,
    decode_points_frame,
    encode_frame,
    gpu_batch,
    points_batch,
)
from streams.runtime import TwinRuntime
from twin.site import load_site

T0_MS = 1_800_000_000_000


def build(racks: int, hot: float, seed: int = 0) -> tuple[TwinRuntime, object]:
    site = load_site(racks=racks)
    sm = site_map(site)
    rt = TwinRuntime(partitions=8, clock_ms=lambda: T0_MS)
    rng = np.random.default_rng(seed)
    n = site.rack.gpus_per_rack if hasattr(site.rack, "gpus_per_rack") else 72
    for rack in site.rack_ids:
        temps = rng.uniform(45.0, 75.0, n)
        temps[rng.random(n) < hot] = site.gpu.slowdown_c - 2.0
        cols = {
            "power_w": rng.uniform(300, 1000, n).astype(np.float32),
            "energy_mj": np.zeros(n, dtype=np.uint64),
            "temp_gpu_c": temps.astype(np.float32),
            "temp_mem_c": (temps + 5).astype(np.float32),
            "sm_clock_mhz": np.full(n, 1800, dtype=np.uint16),
            "util_pct": np.full(n, 90.0, dtype=np.float32),
            "clock_event_reasons": np.where(rng.random(n) < 0.05, 4, 0).astype(np.uint64),
            "xid": np.zeros(n, dtype=np.uint32),
            "power_limit_w": np.full(n, 1000.0, dtype=np.float32),
        }
        data = encode_frame(gpu_batch(T0_MS, rack, cols))
        rt.apply_gpu(decode_gpu_frame(data, key=rack.encode(), now_ms=None), "gpu")
    for cdu in site.cdu_ids:
        pts = {"supply_temp_c": 45.0, "flow_kg_s": sm.cdu_design_flow_kg_s[cdu]}
        data = encode_frame(points_batch(T0_MS, cdu, pts))
        rt.apply_points(decode_points_frame(data, key=cdu.encode(), now_ms=None), "thermal")
    for ups in site.ups_ids:
        data = encode_frame(points_batch(T0_MS, ups, {"on_battery_bool": 0.0}))
        rt.apply_points(decode_points_frame(data, key=ups.encode(), now_ms=None), "power")
    return rt, sm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--racks", type=int, default=1250)
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--hot", type=float, default=0.01)
    args = ap.parse_args()
    rt, sm = build(args.racks, args.hot)
    engine = AlertEngine(load_rules(), clock=lambda: T0_MS / 1000)
    costs = []
    for i in range(args.ticks):
        now = T0_MS / 1000 + i
        t0 = time.process_time()
        evaluate_sources(engine, rt, sm, lambda _k: True, now)  # type: ignore[arg-type]
        engine.tick(now)
        engine.take_changes()
        costs.append(time.process_time() - t0)
    steady = np.array(costs[len(costs) // 2 :])
    gpus = args.racks * 72
    print(f"racks {args.racks}, GPUs {gpus}, hot share {args.hot}")
    print(f"alerts held {len(engine.alerts)}, flood {engine.flood}, events {engine.events_total}")
    print(
        f"first tick {costs[0] * 1e3:.1f} ms CPU (raises), steady median "
        f"{np.median(steady) * 1e3:.1f} ms CPU per 1 s tick = "
        f"{np.median(steady) * 100:.1f} % of one core"
    )


if __name__ == "__main__":
    main()
