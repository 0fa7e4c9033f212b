"""Servers for bench/storage_compare.py: VictoriaMetrics, Prometheus, PostgreSQL.

Each runs on 127.0.0.1 only, on a free port, with its data in a directory the caller owns
(a temp dir), and is stopped by :meth:`stop` (the caller registers it with try/finally and
atexit). Startup, imports and queries have time bounds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twin.errors import TwinError


class BenchServerError(TwinError):
    """A benchmark server failed to start, import or answer; the message says which."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dir_bytes(path: Path, exclude: Sequence[str] = ()) -> int:
    """Bytes of the regular files under ``path``, skipping top-level entries in exclude."""
    total = 0
    for p in path.rglob("*"):
        rel = p.relative_to(path).parts
        if rel and rel[0] in exclude:
            continue
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def _http(url: str, data: bytes | None = None, timeout_s: float = 120.0) -> bytes:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return bytes(resp.read())
    except OSError as exc:
        raise BenchServerError(f"{url}: {exc}") from exc


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchServerError(f"{url}: server exited ({proc.returncode}); see {log}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
            return
        time.sleep(0.2)
    raise BenchServerError(f"{url}: not ready within {timeout_s:g} s; see {log}")


def _stop_proc(proc: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (p / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


def set_priority(pids: Sequence[int], nice: int) -> None:
    """Set the nice value of every thread of ``pids`` (root may lower it again)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)


class _HttpTsdb:
    """Shared PromQL client of VictoriaMetrics and Prometheus."""

    name = "tsdb"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = work / f"{self.name}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query_range(self, promql: str, start_s: float, end_s: float, step_s: int) -> Any:
        q = {"query": promql, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": step_s}
        return self._query("/api/v1/query_range", q)

    def query(self, promql: str, at_s: float) -> Any:
        return self._query("/api/v1/query", {"query": promql, "time": f"{at_s:.3f}"})

    def _query(self, path: str, params: dict[str, Any]) -> Any:
        body = urllib.parse.urlencode({**params, **self._extra_params()}).encode()
        out = json.loads(_http(self.base + path, body, timeout_s=300))
        if out.get("status") != "success":
            raise BenchServerError(f"{self.name} {params['query']!r}: {out}")
        return out["data"]["result"]

    def _extra_params(self) -> dict[str, str]:
        return {}

    def stop(self) -> None:
        _stop_proc(self.proc)


class VictoriaMetrics(_HttpTsdb):
    """Debian's victoria-metrics; data under work/vm."""

    name = "victoria-metrics"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.data = work / "vm"

    def start(self, timeout_s: float = 60.0) -> None:
        cmd = [
            "victoria-metrics",
            f"-storageDataPath={self.data}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",  # the samples lie in the past; keep them all
            "-search.disableCache",  # time the query, not the response cache
            "-search.latencyOffset=0s",
            # a day of one series at 1 s in one range query (the ASOF-join panel)
            "-search.maxPointsPerTimeseries=200000",
            "-search.maxQueryDuration=600s",
            "-loggerLevel=WARN",
        ]
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _wait_http(self.base + "/health", self.proc, timeout_s, self.log)

    def _extra_params(self) -> dict[str, str]:
        return {"nocache": "1"}

    def stream_import(self, path: str = "/api/v1/import") -> VmStream:
        """A :class:`VmStream` that POSTs what it is given to ``path`` (JSON lines)."""
        return VmStream("127.0.0.1", self.port, path)

    def flush_and_merge(self, partition_prefixes: Sequence[str], timeout_s: float) -> None:
        """Force the in-memory buffers to disk, then a full merge of the given partitions,
        and wait until the data dir stops changing (the merge runs in the background)."""
        _http(self.base + "/internal/force_flush", timeout_s=120)
        for prefix in partition_prefixes:
            _http(f"{self.base}/internal/force_merge?partition_prefix={prefix}", timeout_s=600)
        deadline = time.monotonic() + timeout_s
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = self.size_bytes()
            if size != last:
                last, stable_since = size, time.monotonic()
            elif time.monotonic() - stable_since > 5.0:
                return
            time.sleep(1.0)

    def size_bytes(self) -> int:
        # data/ (samples) + indexdb/ (series index); cache/ and flock/metadata files excluded
        return dir_bytes(self.data, exclude=("cache", "snapshots", "tmp"))


class VmStream:
    """Feeds VictoriaMetrics' import endpoint from a background thread while the caller
    generates: :meth:`put` queues whole lines (bounded: the caller waits when the server
    falls behind), the thread sends them as a chunked HTTP body and starts a new request
    every ``request_bytes``. :meth:`close` waits for the last response and raises if any
    request failed."""

    def __init__(
        self, host: str, port: int, path: str, *, request_bytes: int = 1 << 30, depth: int = 4
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.request_bytes = request_bytes
        self.sent_bytes = 0
        self.requests = 0
        self.busy_s = 0.0  # time the thread spent sending or waiting for responses
        self.error: BaseException | None = None
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="vm-import", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        if self.error is not None:
            raise BenchServerError(f"victoria-metrics import: {self.error}")
        if data:
            self._q.put(data)

    def close(self, timeout_s: float = 3600.0) -> None:
        self._q.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise BenchServerError(f"victoria-metrics import: not done within {timeout_s:g} s")
        if self.error is not None:
            raise BenchServerError(f"victoria-metrics import: {self.error}")

    def _finish(self, conn: http.client.HTTPConnection) -> None:
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if resp.status // 100 != 2:
            raise BenchServerError(f"{self.path}: HTTP {resp.status}: {body[:500]!r}")
        self.requests += 1

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        in_request = 0
        try:
            while True:
                item = self._q.get()
                t0 = time.perf_counter()
                if item is None:
                    if conn is not None:
                        self._finish(conn)
                    self.busy_s += time.perf_counter() - t0
                    return
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=1800)
                    conn.putrequest("POST", self.path)
                    conn.putheader("Transfer-Encoding", "chunked")
                    conn.endheaders()
                    in_request = 0
                step = 8 << 20
                for i in range(0, len(item), step):
                    part = item[i : i + step]
                    conn.send(b"%x\r\n" % len(part) + part + b"\r\n")
                in_request += len(item)
                self.sent_bytes += len(item)
                if in_request >= self.request_bytes:
                    self._finish(conn)
                    conn = None
                self.busy_s += time.perf_counter() - t0
        except BaseException as exc:  # reported by put() and close()
            self.error = exc
            while True:  # drain so that put() never blocks forever
                with contextlib.suppress(queue.Empty):
                    if self._q.get(timeout=1.0) is None:
                        return


class Prometheus(_HttpTsdb):
    """Debian's prometheus: blocks backfilled with promtool, then served read-only."""

    name = "prometheus"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.data = work / "prom"

    def backfill(self, openmetrics: Path, timeout_s: float) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        cmd = ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(openmetrics)]
        with self.log.open("ab") as fh:
            try:
                subprocess.run(
                    [*cmd, str(self.data)],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                    check=True,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                raise BenchServerError(f"promtool backfill failed: {exc}; see {self.log}") from exc

    def size_bytes(self) -> int:
        return dir_bytes(self.data, exclude=("wal", "chunks_head", "lock", "queries.active"))

    def start(self, timeout_s: float = 120.0) -> None:
        cfg = self.work / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1h\nscrape_configs: []\n")
        cmd = [
            "prometheus",
            f"--config.file={cfg}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=100y",
            "--log.level=warn",
        ]
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _wait_http(self.base + "/-/ready", self.proc, timeout_s, self.log)


class Postgres:
    """Debian's PostgreSQL 15 in a temp cluster, run as the postgres user (it refuses root)."""

    name = "postgresql"

    def __init__(self, work: Path, user: str = "postgres") -> None:
        self.work = work
        self.data = work / "pg"
        self.port = free_port()
        self.user = user
        self.log = work / "postgresql.log"
        self.started = False

    def _as_user(self, cmd: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", self.user, "--", *cmd]
        return cmd

    def _bin(self, name: str) -> str:
        for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (d / name).exists():
                return str(d / name)
        found = shutil.which(name)
        if found is None:
            raise BenchServerError(f"{name} not found; install postgresql")
        return found

    def start(self, timeout_s: float = 120.0) -> None:
        self.data.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.data, self.user, self.user)
            shutil.chown(self.work, self.user)
        initdb = [self._bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
        self._run(self._as_user([*initdb, "-E", "UTF8", "--no-instructions"]), timeout_s)
        opts = (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
            # loading speed only: no effect on sizes or on the timed read-only queries
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c shared_buffers=1GB -c work_mem=256MB -c max_wal_size=4GB -c timezone=UTC"
        )
        pg_ctl = [self._bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w"]
        self._run(
            self._as_user([*pg_ctl, "-t", str(int(timeout_s)), "-o", opts, "start"]), timeout_s
        )
        self.started = True

    def _run(self, cmd: list[str], timeout_s: float, stdin: bytes | None = None) -> str:
        try:
            out = subprocess.run(
                cmd, input=stdin, capture_output=True, timeout=timeout_s, check=True
            )
        except subprocess.CalledProcessError as exc:
            raise BenchServerError(
                f"{cmd[0]} failed ({exc.returncode}): {exc.stderr.decode(errors='replace')}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise BenchServerError(f"{cmd[0]}: no answer within {timeout_s:g} s") from exc
        return out.stdout.decode(errors="replace")

    def pids(self) -> list[int]:
        """The postmaster's pid and its children (for renicing around the timed queries)."""
        try:
            main = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [main, *_children(main)]

    def psql(self, script: str, timeout_s: float = 600.0) -> str:
        cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"]
        cmd += ["-p", str(self.port), "-U", "postgres", "-d", "postgres", "-A", "-t"]
        return self._run(cmd, timeout_s, stdin=script.encode())

    def time_query(self, sql: str, repeats: int) -> list[float]:
        """Server round-trip times [s] of ``sql`` (psql's \\timing), output discarded."""
        body = "\\o /dev/null\n\\timing on\n" + (sql.rstrip().rstrip(";") + ";\n") * repeats
        out = self.psql(body)
        times = [float(m) / 1000.0 for m in re.findall(r"Time: ([0-9.]+) ms", out)]
        if len(times) != repeats:
            raise BenchServerError(f"postgresql: expected {repeats} timings, got {out[-500:]!r}")
        return times

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        pg_ctl = [self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
        with contextlib.suppress(BenchServerError):
            self._run(self._as_user(pg_ctl), 60)
