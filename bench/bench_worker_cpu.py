"""CPU cost of the worker's own code at a site size, without Kafka or Faust.

    .venv/bin/python bench/bench_worker_cpu.py [--racks 1250] [--seconds 20]
        [--gpus-per-frame 72|4]

Feeds ``--seconds`` of the simulator's telemetry (every rack's GPU frame each second, the
plant and rack-manifold frames every 5 s) through what the worker's agents and timers call:
batch decode and validation, rack state, thermal fits (streams/codec_batch.py,
streams/runtime.py), and the per-interval work (twin.state documents, residual batches,
table checkpoints, the facility model). Prints CPU time per GPU frame and per timer call, and
the share of one core the site needs per second of telemetry at the worker's default
intervals: the part of a worker's load that is ours, beside the Faust and Kafka client cost
that bench/bench_pipeline.py measures end to end. CPU time (time.process_time) is used, so
the figures hold on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.codec import decode_points_frame
from streams.codec_batch import GpuMessage, decode_gpu_frames
from streams.detect_runtime import detect_runtime_for_site
from streams.facility import FacilityModel
from streams.runtime import TwinRuntime, partition_for
from streams.settings import Settings
from streams.sim_source import frames_of, make_simulator
from twin.site import load_site
from twin.step import rack_design_flow_kg_s


def cpu_ms(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Median CPU milliseconds of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append((time.process_time() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--racks", type=int, default=1250)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument(
        "--gpus-per-frame",
        type=int,
        choices=[4, 72],
        default=72,
        help="GPUs per telemetry.gpu message: 72 (one per rack) or 4 (one per compute tray)",
    )
    args = ap.parse_args()
    settings = Settings()
    site = load_site(None, racks=args.racks)
    start_ms = time.time_ns() // 1_000_000 - args.seconds * 1000
    sim = make_simulator(racks=args.racks, site_path=None, seed=0, faults=(), start_ms=start_ms)
    seconds: list[list[tuple[str, str, bytes]]] = []
    for s in range(args.seconds):
        seconds.append(
            frames_of(sim.step(1.0), plant=s % 5 == 0, gpus_per_frame=args.gpus_per_frame)
        )
    rt = TwinRuntime(
        partitions=settings.partitions, rack_design_flow_kg_s=rack_design_flow_kg_s(site)
    )
    now = start_ms + args.seconds * 1000 + 1000
    gpu_cpu = 0.0
    n_gpu = 0
    # detectors (streams/detect_runtime.py) each alert tick over every rack, as the worker's
    # evaluate_alerts timer runs them after each second's frames; the first seconds (state
    # still growing) are not counted
    from models.alerting import AlertEngine
    from models.rules import load_rules
    from streams.alert_sources import site_map

    det = detect_runtime_for_site(site)
    engine = AlertEngine(load_rules(None), clock=lambda: now / 1000.0)
    smap = site_map(site)
    det_cpu, det_n = 0.0, 0
    for second, frames in enumerate(seconds):
        for kind, key, value in frames:
            if kind != "gpu":
                contract = "telemetry.thermal" if kind == "thermal" else "telemetry.power"
                pf = decode_points_frame(value, key=key.encode(), now_ms=now, contract=contract)
                rt.apply_points(pf, contract)
        msgs = [GpuMessage(v, k.encode()) for kind, k, v in frames if kind == "gpu"]
        t0 = time.process_time()
        for i in range(0, len(msgs), 4096):
            good = decode_gpu_frames(msgs[i : i + 4096], now_ms=now)
            rt.apply_gpus([f for f in good if not isinstance(f, Exception)], "telemetry.gpu")
        gpu_cpu += time.process_time() - t0
        n_gpu += len(msgs)
        t0 = time.process_time()
        det.evaluate(rt, lambda _k: True)
        det.feed(engine, smap.gpu_names, smap.rack_where, now / 1000.0)
        if second >= 2:
            det_cpu += time.process_time() - t0
            det_n += 1
    det_ms = det_cpu / max(det_n, 1) * 1000.0
    per_frame_us = gpu_cpu / n_gpu * 1e6

    def group(key: str) -> int:
        return partition_for(key, settings.partitions)

    fm = FacilityModel(site, site_file="", start_ms=now)

    def facility_step() -> None:
        fm.observe(rt)
        fm.advance(now)
        rt.model_view = fm.view(rt)
        fm.residual_batches(rt)

    def dirty_all() -> None:
        for r in rt.racks:
            rt.dirty_publish.add(f"rack/{r}")
            rt.dirty_checkpoint_racks.add(r)
            rt.dirty_models.add(r)
            rt.dirty_residuals.add(r)
        for u in rt.units:
            rt.dirty_publish.add(f"unit/{u}")

    def timed_with_dirty(fn: Callable[[], Any]) -> float:
        def run() -> None:
            dirty_all()
            fn()

        return cpu_ms(run) - cpu_ms(dirty_all)

    import json

    def publish(detail: bool) -> None:
        docs = rt.take_publications(detail=detail)
        for doc in docs.values():
            json.dumps(doc, separators=(",", ":")).encode()

    timers = {
        "twin.state summaries": (
            timed_with_dirty(lambda: publish(False)),
            settings.publish_interval_s,
        ),
        "twin.state detail": (
            timed_with_dirty(lambda: publish(True)) - timed_with_dirty(lambda: publish(False)),
            settings.publish_interval_s * settings.detail_every,
        ),
        "facility summary + kpi": (
            cpu_ms(lambda: rt.kpi_batch(rt.facility()["facility"])),
            settings.publish_interval_s,
        ),
        "residual batches": (
            timed_with_dirty(lambda: rt.take_residuals(group)),
            settings.publish_interval_s,
        ),
        "rack checkpoints": (
            timed_with_dirty(lambda: rt.take_checkpoints()),
            settings.checkpoint_interval_s,
        ),
        "model checkpoints": (
            timed_with_dirty(lambda: rt.take_model_checkpoints()),
            settings.model_checkpoint_interval_s,
        ),
        "facility model step": (cpu_ms(facility_step), settings.model_interval_s),
        "detectors (all racks)": (det_ms, settings.alert_interval_s),
        "detector checkpoints": (
            cpu_ms(lambda: det.checkpoints(list(rt.racks), facility=True)),
            settings.model_checkpoint_interval_s,
        ),
    }
    frames_s = args.racks * -(-72 // args.gpus_per_frame)
    print(
        f"worker's own CPU at {args.racks} racks ({args.seconds} s of telemetry, "
        f"{args.gpus_per_frame} GPUs a message), 1 core"
    )
    print(
        f"  GPU frames: {per_frame_us:,.0f} us a frame (decode, validate, state, fit), "
        f"{per_frame_us * 1000 / args.gpus_per_frame:,.0f} ns a GPU sample"
        f" -> {frames_s * per_frame_us / 1e4:.1f}% of a core at {frames_s:,} frames/s"
    )
    total = frames_s * per_frame_us / 1e6
    for name, (ms, interval) in timers.items():
        share = ms / 1000 / interval
        total += share
        print(f"  {name:<24} {ms:8.1f} ms a call every {interval:>4.0f} s -> {100 * share:5.1f}%")
    print(f"  total (ours): {100 * total:.1f}% of one core per second of live telemetry")


if __name__ == "__main__":
    main()
