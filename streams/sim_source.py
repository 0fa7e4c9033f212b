"""Publish the physics simulator's sensor readings in the telemetry contracts (``twin sim``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from streams.codec import encode_frame, gpu_batch, points_batch
from streams.kafka_security import KafkaSecurity
from streams.producer import FramePublisher
from streams.schema import POINTS_SCHEMA
from streams.settings import Topics
from twin.errors import ConfigError

REPLAY_HEADER = ("twin-replay", b"sim")


@dataclass
class SimStats:
    """What a simulation run published."""

    ticks: int = 0
    gpu_frames: int = 0
    point_frames: int = 0
    gpu_samples: int = 0
    faults: int = 0


#: Seconds between plant readings (CDUs, rack manifolds, dry coolers, power chain). BMS and
#: DCIM points are polled every few seconds, not at NVML's 1 Hz (est.: 5 s).
DEFAULT_PLANT_DT_S = 5.0


def frames_of(
    sim_frame: Any, *, plant: bool = True, gpus_per_frame: int | None = None
) -> list[tuple[str, str, bytes]]:
    """(topic kind, key, Arrow IPC bytes) of every frame in one simulator step.

    The GPU arrays are (n_racks, n_gpus); each rack becomes one telemetry.gpu frame, or
    frames of ``gpus_per_frame`` GPUs each with their rack-wide indices, as the collector
    on each compute tray of a rack sends them (4 in an NVL144 rack).
    ``plant=False`` leaves out the thermal and power frames (between plant polls).
    """
    out: list[tuple[str, str, bytes]] = []
    gpu: dict[str, np.ndarray] = sim_frame.gpu
    for i, rack in enumerate(sim_frame.rack_ids):
        cols = {name: arr[i] for name, arr in gpu.items()}
        batch = gpu_batch(sim_frame.ts_ms, rack, cols)
        step = gpus_per_frame or batch.num_rows
        for lo in range(0, batch.num_rows, step):
            out.append(("gpu", rack, encode_frame(batch.slice(lo, step))))
    if not plant:
        return out
    groups = getattr(sim_frame, "plant", None)
    if groups is None:  # a frame with the unit -> point dicts only
        for kind, units in (("thermal", sim_frame.thermal), ("power", sim_frame.power)):
            for unit, points in units.items():
                batch = points_batch(sim_frame.ts_ms, unit, points)
                out.append((kind, unit, encode_frame(batch)))
        return out
    # from the simulator's columnar readings (twin/sensors.py PlantGroup): one record batch
    # per group of like units, a slice of it per unit, in the order of frame.thermal then
    # frame.power, without building the per-unit dicts
    for kind in ("thermal", "power"):
        for g in groups:
            if g.kind == kind:
                for unit, batch in zip(g.ids, _unit_batches(sim_frame.ts_ms, g), strict=True):
                    out.append((kind, unit, encode_frame(batch)))
    return out


def _unit_batches(ts_ms: int, group: Any) -> list[pa.RecordBatch]:
    """One telemetry.thermal / .power record batch per unit of a PlantGroup (ids, names,
    values (n_units, n_points)); the ts and point columns are built once for the group."""
    k = len(group.names)
    ts = pa.array(np.full(k, ts_ms, dtype=np.int64)).cast(POINTS_SCHEMA.field("ts").type)
    points = pa.array(group.names, type=pa.string())
    values = np.ascontiguousarray(group.values, dtype=np.float64)
    return [
        pa.RecordBatch.from_arrays(
            [ts, pa.array([unit] * k, type=pa.string()), points, pa.array(row)],
            schema=POINTS_SCHEMA,
        )
        for unit, row in zip(group.ids, values, strict=True)
    ]


def make_simulator(
    *,
    racks: int | None,
    site_path: Path | None,
    seed: int,
    faults: Sequence[str],
    start_ms: int,
) -> Any:
    """A Simulator of the site starting at ``start_ms`` [ms since epoch] with these faults."""
    from twin.faults import parse_fault
    from twin.sim import Simulator
    from twin.site import load_site

    site = load_site(site_path, racks=racks)
    specs = [parse_fault(f) for f in faults]
    return Simulator(site, seed=seed, start_ms=start_ms, faults=specs)


async def publish_simulation(
    sim: Any,
    *,
    bootstrap: str,
    topics: Topics,
    dt_s: float,
    speed: float,
    duration_s: float | None,
    stop: asyncio.Event,
    faults_log: Path | None = None,
    replay: bool = False,
    stats: SimStats | None = None,
    on_tick: Callable[[SimStats], None] | None = None,
    plant_dt_s: float = DEFAULT_PLANT_DT_S,
    security: KafkaSecurity | None = None,
) -> SimStats:
    """Step ``sim`` and publish its readings until ``duration_s`` simulated or ``stop``.

    ``speed`` is simulated seconds per wall second; 0 publishes as fast as possible.

    GPU frames go out every step; plant frames every ``plant_dt_s`` [s] of simulated time.

    ``on_tick`` is called after each step (progress display).
    """
    topic_of = {"gpu": topics.gpu, "thermal": topics.thermal, "power": topics.power}
    headers = [REPLAY_HEADER] if replay else None
    stats = stats if stats is not None else SimStats()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    ticks0 = stats.ticks
    fault_file = faults_log.open("a", encoding="utf-8") if faults_log else None
    try:
        async with FramePublisher(bootstrap, security=security) as pub:
            while not stop.is_set():
                done = stats.ticks - ticks0
                if duration_s is not None and done * dt_s >= duration_s:
                    break
                frame = sim.step(dt_s)
                stats.ticks += 1
                plant = (stats.ticks - 1) % max(1, round(plant_dt_s / dt_s)) == 0
                for kind, key, value in frames_of(frame, plant=plant):
                    await pub.send(topic_of[kind], key, value, headers)
                    if kind == "gpu":
                        stats.gpu_frames += 1
                    else:
                        stats.point_frames += 1
                stats.gpu_samples += int(next(iter(frame.gpu.values())).size)
                if on_tick is not None:
                    on_tick(stats)
                for fault in frame.faults_started:
                    stats.faults += 1
                    doc = json.dumps(fault, default=str).encode()
                    await pub.send(topics.faults, str(fault.get("target", "")), doc)
                    if fault_file is not None:
                        fault_file.write(doc.decode() + "\n")
                        fault_file.flush()
                if speed <= 0:
                    delay = 0.0  # as fast as possible
                elif speed == 1.0 and not replay:
                    # Real time: the next sample is due at its own timestamp. After a pause
                    # (a broker recycle) the simulator catches up at full speed, as a
                    # collector with a buffer would, so the history has no gap.
                    delay = (frame.ts_ms + dt_s * 1000) / 1000 - time.time()
                else:
                    delay = t0 + (done + 1) * dt_s / speed - loop.time()
                # A fast run that has caught up with the wall clock goes on in real time:
                # no sample is ever from the future.
                delay = max(delay, (frame.ts_ms + dt_s * 1000) / 1000 - time.time())
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                else:
                    await asyncio.sleep(0)  # flat out: still let signals and the sender run
            await pub.flush()
    finally:
        if fault_file is not None:
            fault_file.close()
    return stats


async def run_simulation(
    *,
    bootstrap: str,
    topics: Topics,
    racks: int | None,
    site_path: Path | None,
    seed: int,
    dt_s: float,
    speed: float,
    duration_s: float | None,
    faults: Sequence[str],
    faults_log: Path | None,
    stop: asyncio.Event,
    on_tick: Callable[[SimStats], None] | None = None,
    plant_dt_s: float = DEFAULT_PLANT_DT_S,
    security: KafkaSecurity | None = None,
) -> SimStats:
    """``twin sim``: build the simulator and publish until done.

    At ``speed`` 1 the samples carry wall-clock time. Faster runs (``speed`` > 1, or 0: as
    fast as possible) start in the past (so no sample is ever from the future) and mark
    frames as replayed history.
    """
    if not speed >= 0:
        raise ConfigError(f"--speed must be >= 0 (0: as fast as possible), got {speed}")
    now_ms = time.time_ns() // 1_000_000
    fast = speed == 0 or speed > 1.0
    span_s = duration_s if duration_s is not None else 86_400.0
    start_ms = now_ms - int(span_s * 1000) if fast else now_ms
    sim = make_simulator(
        racks=racks, site_path=site_path, seed=seed, faults=faults, start_ms=start_ms
    )
    return await publish_simulation(
        sim,
        bootstrap=bootstrap,
        topics=topics,
        dt_s=dt_s,
        speed=speed,
        duration_s=duration_s,
        stop=stop,
        faults_log=faults_log,
        replay=fast,
        on_tick=on_tick,
        plant_dt_s=plant_dt_s,
        security=security,
    )
