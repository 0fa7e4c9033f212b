"""End-to-end pipeline benchmark: GPU samples/s through one worker, and telemetry-to-API latency.

    .venv/bin/python bench/bench_pipeline.py [--racks 64,1250] [--frames 40000]
        [--latency-seconds 60] [--broker tansu|kafka] [--gpus-per-frame 72|4]
        [--workers 1|2] [--partitions N]

For each site size, in one run on one machine (broker, worker and this script share it):

1. Throughput. ``--frames`` rack-seconds of telemetry.gpu frames are produced first: one
   message per rack and instant with all 72 GPUs (``--gpus-per-frame 72``, a rack-level
   collector), or one per compute tray of 4 GPUs (``--gpus-per-frame 4``: 18 messages per
   rack and instant, as NVML or dcgm-exporter on each host of an NVL144 rack send them),
   with everything else the simulator publishes beside them (rack-manifold, CDU, plant
   and power frames, every 5 s as a BMS polls).
   A plain aiokafka consumer reads the GPU frames (the raw consume rate: no decode, no
   state); then a real ``twin worker`` subprocess consumes all of it (decode, validate,
   state, thermal fits, facility model, checkpoints, twin.state) and its counter of GPU
   samples (GET /healthz) is polled until it has taken them all. The ratio of the two
   rates is the pipeline's overhead. With ``--workers 2`` two worker processes in one
   consumer group share the site (scale-out, docs/scaling.md): the throughput and the CPU
   are counted from the moment the group has settled (every worker holds partitions and the
   split has not changed for at least 2 s) to the last sample, the CPU-seconds summed over both
   workers; samples taken before that (the first worker alone, the rebalance) are left out.
   Samples a rebalance makes a worker take again (at most the last commit interval, 1 s)
   count twice, so the throughput of two workers is an upper bound by that much.
2. Latency (one worker only: with two, a rack's API view on the other worker is as old as
   its last twin.state publication). GPU frames stamped with the wall clock are published
   at 1 Hz for every rack, as a live site would; a poller reads /api/racks/{rack} of 4
   racks round-robin every 20 ms and records, each time a rack's newest sample changes, now
   minus that sample's timestamp: the time from measurement to visible in the API. p50 and
   p99 are printed.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.brokers import start_broker
from streams.brokers.ports import free_port
from streams.codec import encode_frame, gpu_batch
from streams.producer import FramePublisher
from streams.settings import Topics
from streams.topics_admin import ensure_topics, resolve_partitions

GPUS = 72


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rack_ids(n: int) -> list[str]:
    return [f"R{i:04d}" for i in range(1, n + 1)]


def host_frames(ts_ms: int, rack: str, cols: dict[str, np.ndarray], per_frame: int) -> list[bytes]:
    """One rack's GPU columns as encoded telemetry.gpu frames of ``per_frame`` GPUs each,
    every one carrying its GPUs' rack-wide indices (a host collector's --gpu-offset)."""
    batch = gpu_batch(ts_ms, rack, cols)  # gpu = 0..n-1, sliced per host below
    return [encode_frame(batch.slice(lo, per_frame)) for lo in range(0, batch.num_rows, per_frame)]


#: An int64 that no real column holds: frames are encoded once with it as their timestamp,
#: and each second's copies get the real one patched in (encoding 22,500 frames a second
#: would take the load generator more than the 2-core machine has).
_TS_SENTINEL = 0x5EA1_0F_7E57_1A57


class FrameTemplate:
    """Encoded frames of one rack whose timestamp is replaced byte for byte."""

    def __init__(self, rack: str, cols: dict[str, np.ndarray], per_frame: int) -> None:
        self.frames = host_frames(_TS_SENTINEL, rack, cols, per_frame)
        self._pattern = _TS_SENTINEL.to_bytes(8, "little")
        if any(f.count(self._pattern) != min(per_frame, GPUS) for f in self.frames):
            raise RuntimeError("timestamp sentinel not found once per row")

    def at(self, ts_ms: int) -> list[bytes]:
        """The frames stamped ``ts_ms`` [ms since epoch]."""
        stamp = ts_ms.to_bytes(8, "little")
        return [f.replace(self._pattern, stamp) for f in self.frames]


def columns(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Plausible NVML-resolution readings of one rack."""
    return {
        "power_w": np.round(rng.uniform(900, 1800, n), 3).astype(np.float32),
        "energy_mj": rng.integers(0, 10**12, n).astype(np.uint64),
        "temp_gpu_c": rng.integers(55, 80, n).astype(np.float32),
        "temp_mem_c": rng.integers(60, 85, n).astype(np.float32),
        "sm_clock_mhz": rng.integers(1500, 1980, n).astype(np.uint16),
        "util_pct": rng.integers(60, 101, n).astype(np.float32),
        "clock_event_reasons": np.zeros(n, dtype=np.uint64),
        "xid": np.zeros(n, dtype=np.uint32),
        "power_limit_w": np.full(n, 1800.0, dtype=np.float32),
    }


async def produce_backlog(
    bootstrap: str, topics: Topics, racks: list[str], seconds: int, per_frame: int
) -> int:
    """``seconds`` of the simulator's telemetry (GPU frames and every plant and rack-manifold
    frame, as ``twin sim`` publishes them), stamped over the last ``seconds``, with
    ``per_frame`` GPUs a GPU message; returns the number of GPU messages."""
    from streams.sim_source import DEFAULT_PLANT_DT_S, frames_of, make_simulator

    sim = make_simulator(
        racks=len(racks), site_path=None, seed=0, faults=(), start_ms=now_ms() - seconds * 1000
    )
    topic_of = {"gpu": topics.gpu, "thermal": topics.thermal, "power": topics.power}
    n = 0
    async with FramePublisher(bootstrap, linger_ms=20) as pub:
        for s in range(seconds):
            plant = s % round(DEFAULT_PLANT_DT_S) == 0
            frame = sim.step(1.0)
            for kind, key, value in frames_of(frame, plant=plant):
                if kind == "gpu" and per_frame < GPUS:
                    continue  # sent per host below
                await pub.send(topic_of[kind], key, value)
                n += kind == "gpu"
            if per_frame < GPUS:
                for i, rack in enumerate(frame.rack_ids):
                    cols = {name: arr[i] for name, arr in frame.gpu.items()}
                    for value in host_frames(frame.ts_ms, rack, cols, per_frame):
                        await pub.send(topics.gpu, rack, value)
                        n += 1
        await pub.flush()
    return n


async def raw_consume(bootstrap: str, topic: str, expected: int, partitions: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
    )  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = 0
        t0 = time.perf_counter()
        while got < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            got += sum(len(v) for v in batches.values())
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


def healthz(api: str) -> dict[str, object]:
    # /healthz carries the counters and costs nothing; /metrics renders every rack.
    try:
        with urllib.request.urlopen(api + "/healthz", timeout=5) as r:
            doc = json.loads(r.read())
            return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def samples_in(api: str) -> int:
    return int(healthz(api).get("gpu_samples_in", 0))  # type: ignore[call-overload]


def assigned(api: str) -> int:
    """Topic partitions the worker holds now (0 while it has none, or is rebalancing)."""
    return int(healthz(api).get("assigned_partitions", 0))  # type: ignore[call-overload]


def start_worker(
    url: str, prefix: str, port: int, racks: int, state: Path, partitions: int
) -> subprocess.Popen[bytes]:
    """One ``twin worker``; workers of one ``prefix`` share its consumer group."""
    state.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "streams", "worker", "--broker", url, "--web-port", str(port),
        "--topic-prefix", prefix, "--app-id", f"{prefix}twin", "--state-dir", str(state),
        "--data-dir", str(state / "history"), "--racks", str(racks),
        "--partitions", str(partitions),
    ]  # fmt: skip
    profile = os.environ.get("BENCH_PROFILE_DIR")
    if profile:
        # py-spy's collapsed stacks of the worker, to see where its time goes
        out = Path(profile) / f"worker-{racks}-{port}.txt"
        argv = [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--format",
            "raw",
            "-r",
            "50",
            "-o",
            str(out),
            "--",
            *argv,
        ]
    log = (state / "worker.log").open("ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process (and its waited-for children) used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def worker_pid(proc: subprocess.Popen[bytes]) -> int:
    """The Python worker's pid (under py-spy when profiling)."""
    if not os.environ.get("BENCH_PROFILE_DIR"):
        return proc.pid
    for _ in range(100):
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.1)
    raise SystemExit("py-spy did not start the worker")


def wait_healthy(api: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(api + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("worker did not become healthy")


async def live_load(
    bootstrap: str, topics: Topics, racks: list[str], seconds: int, per_frame: int
) -> float:
    """Publish every rack's frame each second for ``seconds``; return how far behind its
    schedule the load generator itself fell at worst [s] (its lag is in the latencies)."""
    rng = np.random.default_rng(1)
    worst_lag = 0.0
    cols = [columns(rng, GPUS) for _ in range(8)]
    templates = {
        (k, rack): FrameTemplate(rack, cols[k], per_frame) for k in range(8) for rack in racks
    }
    async with FramePublisher(bootstrap, linger_ms=2) as pub:
        t_next = time.monotonic()
        for s in range(seconds):
            ts = now_ms()
            for i, rack in enumerate(racks):
                for value in templates[((i + s) % 8, rack)].at(ts):
                    await pub.send(topics.gpu, rack, value)
            t_next += 1.0
            worst_lag = max(worst_lag, time.monotonic() - t_next)
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        await pub.flush()
    return worst_lag


def poll_latency(api: str, racks: list[str], stop: threading.Event, out: list[float]) -> None:
    seen: dict[str, int] = {}
    i = 0
    while not stop.is_set():
        rack = racks[i % len(racks)]
        i += 1
        try:
            with urllib.request.urlopen(f"{api}/api/racks/{rack}", timeout=5) as r:
                doc = json.loads(r.read())
        except OSError:
            time.sleep(0.05)
            continue
        gpus = doc["gpus"]
        # a list of per-GPU objects, or (older workers) parallel arrays
        ts = max(g["ts_ms"] for g in gpus) if isinstance(gpus, list) else max(gpus["ts_ms"])
        if rack in seen and ts != seen[rack]:
            out.append(now_ms() - ts)
        seen[rack] = ts
        time.sleep(0.02)  # 50 API reads a second: the reads cost the worker CPU too


def settled(apis: list[str], split: list[tuple[int, ...]]) -> bool:
    """Every worker holds partitions and the split has not changed for 20 polls in a row
    (at least 2 s: ``split`` keeps the last 20 observations)."""
    split.append(tuple(assigned(a) for a in apis))
    del split[:-20]
    return len(split) == 20 and len(set(split)) == 1 and min(split[0]) > 0


def run_size(
    broker: object,
    n_racks: int,
    seconds: int,
    latency_s: int,
    partitions: int,
    per_frame: int,
    n_workers: int = 1,
) -> dict[str, float]:
    bootstrap: str = broker.bootstrap  # type: ignore[attr-defined]
    url: str = broker.url  # type: ignore[attr-defined]
    prefix = f"bench{n_racks}."
    topics = Topics(prefix)
    racks = rack_ids(n_racks)
    asyncio.run(ensure_topics(bootstrap, topics, partitions))
    t0 = time.perf_counter()
    frames = asyncio.run(produce_backlog(bootstrap, topics, racks, seconds, per_frame))
    produce_s = time.perf_counter() - t0
    samples = seconds * n_racks * GPUS
    raw_s = asyncio.run(raw_consume(bootstrap, topics.gpu, frames, partitions))
    state = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    ports = [free_port() for _ in range(n_workers)]
    apis = [f"http://127.0.0.1:{port}" for port in ports]
    workers = [
        start_worker(url, prefix, port, n_racks, state / f"w{i}", partitions)
        for i, port in enumerate(ports)
    ]
    pids: list[int] = []

    def cpu_all() -> float:
        return sum(cpu_s(pid) for pid in pids)

    def got_all() -> int:
        return sum(samples_in(a) for a in apis)

    try:
        for api in apis:
            wait_healthy(api)
        pids = [worker_pid(w) for w in workers]
        t_first = t_last = None
        deadline = time.monotonic() + 600
        last_got, last_change = -1, time.monotonic()
        split: list[tuple[int, ...]] = []
        next_note = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = got_all()
            t = time.perf_counter()
            if n_workers > 1 and time.monotonic() > next_note:
                # progress of a group run: samples and partitions per worker
                docs = [healthz(a) for a in apis]
                each = [(d.get("gpu_samples_in"), d.get("assigned_partitions")) for d in docs]
                print(f"  {got:,} of {samples:,} samples; (samples, partitions) {each}", flush=True)
                next_note += 10
            if got != last_got:
                last_got, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > 60:
                raise SystemExit(f"workers stalled at {got} of {samples} samples (log: {state})")
            # one worker: from its first sample; several: from the settled group on
            ready = got > 0 if n_workers == 1 else settled(apis, split)
            if ready and t_first is None:
                t_first, first_n, cpu_first = t, got, cpu_all()
            if got >= samples:
                t_last, cpu_last = t, cpu_all()
                break
            time.sleep(0.1)
        if t_first is None and t_last is not None:
            raise SystemExit("the backlog was taken before the group settled: more --frames")
        if t_first is None or t_last is None:
            raise SystemExit(f"workers did not take all {samples} samples (log: {state})")
        if samples - first_n < samples // 4:
            print(f"  note: only {samples - first_n} of {samples} samples after the group settled")
        pipe_rate = (samples - first_n) / max(t_last - t_first, 1e-9)
        # Samples per CPU-second of the workers (summed): what one core given to the
        # workers alone would take, whatever else shares this machine (broker, load, jobs).
        cpu_rate = (samples - first_n) / max(cpu_last - cpu_first, 1e-9)
        lat: list[float] = []
        stop = threading.Event()
        poller = threading.Thread(target=poll_latency, args=(apis[0], racks[:4], stop, lat))
        if n_workers == 1:
            poller.start()
        cpu0, t0 = cpu_all(), time.perf_counter()
        load_lag_s = asyncio.run(live_load(bootstrap, topics, racks, latency_s, per_frame))
        # Share of one core the workers used while the site streamed live at 1 Hz (the
        # poller's API reads included): 1 / this is the headroom on a core of its own.
        live_cpu = (cpu_all() - cpu0) / (time.perf_counter() - t0)
        if n_workers == 1:
            time.sleep(2)
            stop.set()
            poller.join()
        lat_arr = np.array(lat[5:] or [np.nan])
        return {
            "workers": n_workers,
            "partitions": partitions,
            "samples_measured": samples - first_n,
            "cpu_us_per_sample": 1e6 / cpu_rate,
            "racks": n_racks,
            "frames": frames,
            "samples": samples,
            "produce_samples_s": samples / produce_s,
            "raw_samples_s": samples / raw_s,
            "pipeline_samples_s": pipe_rate,
            "ratio": pipe_rate / (samples / raw_s),
            "cpu_samples_s": cpu_rate,
            "live_cpu_share": live_cpu,
            "load_lag_s": load_lag_s,
            "live_samples_s": n_racks * GPUS,
            "live_messages_s": n_racks * -(-GPUS // per_frame),
            "lat_n": float(len(lat)),
            "lat_p50_ms": float(np.percentile(lat_arr, 50)),
            "lat_p99_ms": float(np.percentile(lat_arr, 99)),
        }
    finally:
        for worker in workers:
            if os.environ.get("BENCH_PROFILE_DIR"):
                worker.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            else:
                worker.terminate()
        for worker in workers:
            worker.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--racks", default="64,1250", help="comma list of site sizes")
    ap.add_argument(
        "--frames",
        type=int,
        default=40_000,
        help="backlog size in frames (rounded up to whole seconds of the site)",
    )
    ap.add_argument("--latency-seconds", type=int, default=60)
    ap.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    ap.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions of the keyed topics (default: the shipped site file's, 24)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        choices=[1, 2],
        default=1,
        help="worker processes in one consumer group sharing the site (2: scale-out)",
    )
    ap.add_argument(
        "--gpus-per-frame",
        type=int,
        choices=[4, 72],
        default=72,
        help="GPUs per telemetry.gpu message: 72 (one per rack) or 4 (one per compute tray)",
    )
    args = ap.parse_args()
    partitions = resolve_partitions(args.partitions)
    broker = start_broker(args.broker)
    try:
        rows = [
            run_size(
                broker,
                int(r),
                -(-args.frames // int(r)),
                args.latency_seconds,
                partitions,
                args.gpus_per_frame,
                args.workers,
            )
            for r in args.racks.split(",")
        ]
    finally:
        broker.stop()
    load1, load5, _ = os.getloadavg()
    who = "one worker" if args.workers == 1 else f"{args.workers} workers in one group"
    print(
        f"\npipeline on {args.broker}, {args.gpus_per_frame} GPUs a message, {who}, "
        f"{partitions} partitions, {os.cpu_count()}-core machine shared by broker, workers and "
        f"load generator (load average {load1:.1f} / {load5:.1f} at the end, 1 / 5 min)"
    )
    print(
        f"{'racks':>6} {'samples':>10} {'raw consume/s':>14} {'pipeline/s':>12} {'ratio':>6} "
        f"{'live need/s':>12} {'msgs/s':>7} {'headroom':>9} {'per cpu-s':>10} {'cpu head':>8} "
        f"{'live cpu':>8} {'p50 ms':>7} {'p99 ms':>7} {'n':>5} {'load lag s':>10} "
        f"{'CPU us/sample':>13} {'measured':>9}"
    )
    for r in rows:
        print(
            f"{r['racks']:>6} {r['samples']:>10} {r['raw_samples_s']:>14,.0f} "
            f"{r['pipeline_samples_s']:>12,.0f} {r['ratio']:>6.2f} {r['live_samples_s']:>12,} "
            f"{r['live_messages_s']:>7,} "
            f"{r['pipeline_samples_s'] / r['live_samples_s']:>8.1f}x "
            f"{r['cpu_samples_s']:>10,.0f} {r['cpu_samples_s'] / r['live_samples_s']:>7.1f}x "
            f"{100 * r['live_cpu_share']:>7.0f}% "
            f"{r['lat_p50_ms']:>7.0f} {r['lat_p99_ms']:>7.0f} {r['lat_n']:>5.0f} "
            f"{r['load_lag_s']:>10.1f} {r['cpu_us_per_sample']:>13.2f} "
            f"{r['samples_measured']:>9,.0f}"
        )


if __name__ == "__main__":
    main()
