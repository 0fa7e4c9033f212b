"""The twin's processes under a broker fault: simulator, worker and sink as subprocesses.

Used by test_broker_faults_integration.py. Everything here talks to a real broker; the
figures it measures (seconds to recover) are reported, never asserted against a target.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.layout import list_parts
from tests.streams.workerproc import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
GPUS_PER_RACK = 72  # the default site's racks (GB200 NVL72)
DT_MS = 1000  # the simulator's sample interval


def _env() -> dict[str, str]:
    # The processes take their settings from flags only, not from the caller's TWIN_*.
    return {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "streams", *argv],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    finally:
        log.close()  # the child has its own copy of the descriptor


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class Twin:
    """A worker, a sink and a simulator publishing ``racks`` racks at 1 Hz, one broker URL."""

    url: str
    prefix: str
    tmp: Path
    racks: int = 4
    replication: int = 1
    worker: WorkerProcess | None = None
    sink: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    rack_ids: list[str] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.tmp / "store"

    @property
    def sim_log(self) -> Path:
        return self.tmp / "sim.log"

    @property
    def sink_log(self) -> Path:
        return self.tmp / "sink.log"

    def start(self) -> None:
        """Worker first (it creates the topics), then the sink, then the simulator."""
        self.rack_ids = [f"R{i:04d}" for i in range(1, self.racks + 1)]
        repl = ("--replication", str(self.replication))
        # Short timeouts so a dead group coordinator is noticed in seconds (default 10 s+).
        self.worker = WorkerProcess(self.url, self.prefix, self.tmp / "worker", extra=repl)
        self.worker.wait_healthy(timeout_s=120)
        self.sink = _spawn(
            [
                "sink",
                "--broker",
                self.url,
                "--data-dir",
                str(self.store),
                "--topic-prefix",
                self.prefix,
                "--group",
                f"{self.prefix}-sink",
                "--racks",
                str(self.racks),
                "--flush-rows",
                "100000",
                "--flush-seconds",
                "1",
                "--retry-seconds",
                "1",
            ],
            self.sink_log,
        )
        self.sim = _spawn(
            [
                "sim",
                "--broker",
                self.url,
                "--topic-prefix",
                self.prefix,
                "--racks",
                str(self.racks),
                *repl,
            ],
            self.sim_log,
        )

    def assert_alive(self) -> None:
        """No process of the twin has exited (none may be restarted during a fault)."""
        assert self.worker is not None and self.sink is not None and self.sim is not None
        assert self.worker.proc.poll() is None, f"worker exited:\n{self.worker.log_tail()}"
        assert self.sink.poll() is None, f"sink exited:\n{_tail(self.sink_log)}"
        assert self.sim.poll() is None, f"simulator exited:\n{_tail(self.sim_log)}"

    def stop_sim(self) -> int:
        """SIGTERM the simulator (it flushes); the number of GPU frames it published."""
        assert self.sim is not None
        self.sim.send_signal(signal.SIGTERM)
        self.sim.wait(90)
        text = _tail(self.sim_log, 20_000)
        match = re.search(r"sim: (\d+) steps, (\d+) GPU frames", text)
        assert self.sim.returncode == 0 and match, f"simulator did not finish cleanly:\n{text}"
        return int(match.group(2))

    def stop(self) -> None:
        """Stop whatever still runs (SIGTERM, then SIGKILL)."""
        for proc in (self.sim, self.sink):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if self.worker is not None:
            self.worker.stop()

    # -- observations ------------------------------------------------------------------------
    def store_rows(self) -> pa.Table:
        """(rack, gpu, ts_ms) of every row of the gpu table in the store."""
        for _ in range(50):
            parts = list_parts(self.store / "gpu")
            try:
                tables = [pq.read_table(p, columns=["rack", "gpu", "ts"]) for p in parts]
            except FileNotFoundError:
                continue  # replaced by a compaction while listing: list again
            if not tables:
                break
            t = pa.concat_tables(tables)
            ts = pc.cast(pc.cast(t.column("ts"), pa.timestamp("ms")), pa.int64())
            return pa.table({"rack": t.column("rack"), "gpu": t.column("gpu"), "ts_ms": ts})
        return pa.table(
            {"rack": pa.array([], pa.string()), "gpu": pa.array([], pa.int32()), "ts_ms": []}
        )

    def store_latest_ms(self, rack: str) -> int:
        """Newest sample of ``rack`` in the store [ms since epoch], 0 if none."""
        t = self.store_rows()
        mask = pc.equal(t.column("rack"), rack)
        ts = t.filter(mask).column("ts_ms")
        return int(pc.max(ts).as_py() or 0) if len(ts) else 0

    def worker_rack(self, rack: str) -> dict[str, Any] | None:
        """The worker's /api/racks/{rack}, None while unknown or unreachable."""
        assert self.worker is not None
        with contextlib.suppress(OSError, ValueError):
            status, doc = self.worker.get_json(f"/api/racks/{rack}")
            if status == 200 and isinstance(doc, dict):
                return doc
        return None

    def worker_latest_ms(self, rack: str) -> int:
        """Newest sample of ``rack`` the worker holds [ms since epoch], 0 if none."""
        doc = self.worker_rack(rack)
        return max((g["ts_ms"] for g in doc["gpus"]), default=0) if doc else 0

    def model_updates(self, rack: str) -> int:
        """Sum over the rack's GPUs of the fitted model's update counts."""
        doc = self.worker_rack(rack)
        if not doc:
            return 0
        return int(sum(g["model"]["updates"] for g in doc["gpus"] if g.get("model")))

    def wait_until(
        self, cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.25
    ) -> float:
        """Wait for ``cond`` with every process alive; the monotonic time it became true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.assert_alive_but_sim_done()
            if cond():
                return time.monotonic()
            time.sleep(poll_s)
        raise AssertionError(
            f"timed out after {timeout_s} s waiting for {what}\n"
            f"worker:\n{self.worker.log_tail() if self.worker else ''}\n"
            f"sink:\n{_tail(self.sink_log)}\nsim:\n{_tail(self.sim_log)}"
        )

    def assert_alive_but_sim_done(self) -> None:
        assert self.worker is not None and self.sink is not None
        assert self.worker.proc.poll() is None, f"worker exited:\n{self.worker.log_tail()}"
        assert self.sink.poll() is None, f"sink exited:\n{_tail(self.sink_log)}"
        if self.sim is not None and self.sim.returncode is None:
            assert self.sim.poll() is None, f"simulator exited:\n{_tail(self.sim_log)}"

    def recovery_after(self, t_fault_mono: float, t_fault_ms: int, timeout_s: float) -> dict:
        """Seconds from the fault until every rack has a sample newer than the fault
        stamped ``t_fault_ms`` [ms], in the worker and in the store; per rack, the slowest.
        """
        worker_at: dict[str, float] = {}
        store_at: dict[str, float] = {}

        def done() -> bool:
            now = time.monotonic()
            for rack in self.rack_ids:
                if rack not in worker_at and self.worker_latest_ms(rack) > t_fault_ms:
                    worker_at[rack] = now
            rows = self.store_rows()
            newer = rows.filter(pc.greater(rows.column("ts_ms"), t_fault_ms))
            for rack in set(newer.column("rack").to_pylist()):
                store_at.setdefault(rack, now)
            return len(worker_at) == len(store_at) == len(self.rack_ids)

        self.wait_until(done, timeout_s, "a sample newer than the fault in worker and store")
        return {
            "worker_s": round(max(worker_at.values()) - t_fault_mono, 1),
            "store_s": round(max(store_at.values()) - t_fault_mono, 1),
        }

    def assert_store_exact(self, gpu_frames: int, timeout_s: float = 90.0) -> dict:
        """Wait for the store to hold every published sample; then check it holds each once.

        The simulator stamps consecutive steps DT_MS apart from its start, every rack and
        GPU at each step, so the samples it published are exactly the contiguous grid of
        its ``gpu_frames / racks`` steps: any loss leaves a hole, any repeat a duplicate.
        """
        want = gpu_frames * GPUS_PER_RACK
        self.wait_until(
            lambda: self.store_rows().num_rows >= want, timeout_s, f"{want} rows in the store"
        )
        time.sleep(2.0)  # anything beyond ``want`` (a duplicate) would land by now
        rows = self.store_rows()
        keys = np.rec.fromarrays(
            [
                np.asarray(rows.column("rack").to_pylist()),
                rows.column("gpu").to_numpy(),
                rows.column("ts_ms").to_numpy(),
            ]
        )
        distinct = np.unique(keys)
        duplicated = len(keys) - len(distinct)
        steps = gpu_frames // self.racks
        assert gpu_frames % self.racks == 0, gpu_frames
        ts = rows.column("ts_ms").to_numpy()
        t0 = int(ts.min())
        grid = {
            (r, g, t0 + k * DT_MS)
            for r in self.rack_ids
            for g in range(GPUS_PER_RACK)
            for k in range(steps)
        }
        got = {(str(r), int(g), int(t)) for r, g, t in distinct.tolist()}
        lost = len(grid - got)
        extra = len(got - grid)
        assert (lost, duplicated, extra) == (0, 0, 0), (
            f"{lost} lost, {duplicated} duplicated, {extra} outside the published grid "
            f"of {len(grid)} samples"
        )
        return {"samples": len(grid), "lost": lost, "duplicated": duplicated}
