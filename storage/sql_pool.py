"""Bounded concurrency for SQL: a few worker processes, one express lane, deadlines.

- ``workers`` general processes (storage/sql_worker.py) run queries in arrival order.
- One express process takes the newest query that is waiting for a general process and
  runs it for at most ``express_s`` [s]: a short query (``SELECT 1``, a rollup lookup)
  answers at once however many long ones hold the general processes; a long one is
  interrupted there and goes back to wait for a general process, its deadline unchanged.
- Every query's deadline counts from submission (``query`` being called): time spent
  waiting for a process is part of it. A worker that does not answer within its share
  plus ``grace_s`` is killed and replaced, so a stuck query cannot hold a slot.
- At most ``max_waiting`` queries wait or run at once; more are refused at once.
- A worker whose resident memory ends a query more than ``recycle_mb`` above its baseline
  exits after replying and is replaced, so memory returns to its baseline; its address
  space is capped at its start-up size + ``headroom_mb`` (see storage/sql_worker.py).

No thread of its own: callers' threads (the web server's executor, the CLI) do the work.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage.sql_check import SqlRefused, SqlTimeout, check_text

_ROOT = Path(__file__).resolve().parents[1]
_ENV_PASS = ("PATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "TMPDIR")


class _Dead(Exception):
    """The worker died or did not answer in time."""


def _worker_env() -> dict[str, str]:
    # A clean environment: nothing of the parent's (tokens, credentials) reaches a query.
    env = {k: os.environ[k] for k in _ENV_PASS if k in os.environ}
    env.update(PYTHONPATH=str(_ROOT), PYTHONNOUSERSITE="1", TZ="UTC")
    return env


class _Worker:
    """One worker process and its framed pipe protocol."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_worker_env(), cwd="/"
        )
        self.ready = False
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, n: int, until: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        while len(buf) < n:
            left = until - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise _Dead("no answer in time")
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise _Dead("worker exited")
            buf += chunk
        return bytes(buf)

    def recv(self, until: float) -> bytes:
        return self._read(int.from_bytes(self._read(4, until), "big"), until)

    def send(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(len(payload).to_bytes(4, "big") + payload)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _Dead("worker exited") from exc

    def wait_ready(self, until: float) -> None:
        if not self.ready:
            self.info = json.loads(self.recv(until))
            self.ready = True

    def poll_ready(self) -> bool:
        """True once the process has started (does not block; its ready frame is tiny)."""
        out = self.proc.stdout
        if not self.ready and out is not None and select.select([out.fileno()], [], [], 0)[0]:
            try:
                self.wait_ready(time.monotonic() + 1.0)
            except _Dead:
                return False
        return self.ready

    def stop(self) -> None:
        """End the process (kill: it may be in the middle of a query) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def rss_bytes(self) -> int:
        """Resident set size of the process now [bytes] (0 if it has exited)."""
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            return 0


@dataclass(eq=False)
class _Ticket:
    deadline: float
    running: bool = False
    tried_express: bool = False
    worker: _Worker | None = None  # the process running it now (replaced if it dies)


def _stop_all(workers: set[_Worker]) -> None:
    for w in list(workers):
        w.stop()
    workers.clear()


class SqlPool:
    """Worker processes running read-only SQL over ``data_dir`` (see module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 2,
        express: bool = True,
        express_s: float = 0.5,
        memory_limit: str = "1GB",
        threads: int | None = None,
        recycle_mb: float = 100.0,
        headroom_mb: float = 3072.0,
        max_waiting: int = 16,
        grace_s: float = 2.0,
    ) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self._cmd = [
            sys.executable,
            "-m",
            "storage.sql_worker",
            "--data-dir",
            str(Path(data_dir).resolve()),
            "--memory-limit",
            memory_limit,
            "--threads",
            str(threads or 0),
            "--recycle-mb",
            str(recycle_mb),
            "--headroom-mb",
            str(headroom_mb),
        ]
        self.express_s = express_s
        self.max_waiting = max_waiting
        self.grace_s = grace_s
        self._cv = threading.Condition()
        self._live: set[_Worker] = set()
        self._closed = False
        self._idle: list[_Worker] = [self._spawn() for _ in range(workers)]
        self._n_general = workers
        self._express: _Worker | None = self._spawn() if express else None
        self._express_busy = False
        self._waiting: list[_Ticket] = []
        self._finalizer = weakref.finalize(self, _stop_all, self._live)

    # ---- processes -----------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        w = _Worker(self._cmd)
        self._live.add(w)
        return w

    def _replace(self, w: _Worker) -> _Worker:
        w.stop()
        with self._cv:
            self._live.discard(w)
            return w if self._closed else self._spawn()

    def worker_pids(self) -> list[int]:
        with self._cv:
            return sorted(w.pid for w in self._live)

    def worker_rss_bytes(self) -> dict[int, int]:
        """Resident memory of each live worker process [bytes], by pid."""
        with self._cv:
            live = list(self._live)
        return {w.pid: w.rss_bytes() for w in live}

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until every idle worker has started (for benches and tests)."""
        until = time.monotonic() + timeout_s
        with self._cv:
            idle = list(self._idle) + ([self._express] if self._express else [])
        for w in idle:
            w.wait_ready(until)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._finalizer()

    # ---- scheduling ----------------------------------------------------------------------

    def _acquire(self, t: _Ticket, timeout_s: float) -> tuple[bool, _Worker]:
        """(is_express, worker) for ticket t; raises SqlTimeout when its deadline passes."""
        with self._cv:
            while True:
                if self._closed:
                    raise SqlRefused("the SQL service is shut down")
                queued = [x for x in self._waiting if not x.running]
                express = self._express
                express_free = bool(express and not self._express_busy and not t.tried_express)
                if self._idle and queued and queued[0] is t:
                    ready = [w for w in self._idle if w.poll_ready()]
                    # a general process still starting (just replaced): the express lane
                    # tries the query meanwhile, if it is up
                    if ready or not (express_free and express and express.poll_ready()):
                        w = ready[0] if ready else self._idle[0]
                        self._idle.remove(w)
                        t.running = True
                        return False, w
                    t.running = t.tried_express = self._express_busy = True
                    assert express is not None
                    return True, express
                untried = [x for x in queued if not x.tried_express]
                if express and express_free and untried and untried[-1] is t:
                    t.running = t.tried_express = self._express_busy = True
                    return True, express
                left = t.deadline - time.monotonic()
                if left <= 0:
                    raise SqlTimeout(
                        f"query not started within its {timeout_s:g} s time limit: "
                        f"{self._n_general} workers busy, {len(queued)} queries waiting; "
                        "the limit counts from submission"
                    )
                self._cv.wait(left)

    def _release(self, is_express: bool, w: _Worker | None, t: _Ticket) -> None:
        with self._cv:
            if w is None:
                return
            t.running = False
            if self._closed:
                self._live.discard(w)
                w.stop()
            elif is_express:
                self._express = w
                self._express_busy = False
            else:
                self._idle.append(w)
            self._cv.notify_all()

    def query(
        self,
        sql: str,
        *,
        timeout_s: float,
        max_rows: int,
        max_bytes: int = 64 << 20,
        check: bool = True,
        limit_s: float | None = None,
    ) -> pa.Table:
        """Run one query; the deadline is ``timeout_s`` [s] from this call.

        ``limit_s`` [s] is the limit named in refusals (the caller's, if it spent some of it).
        """
        check_text(sql)
        t = _Ticket(time.monotonic() + timeout_s)
        with self._cv:
            if len(self._waiting) >= self.max_waiting:
                raise SqlRefused(
                    f"the SQL service is busy ({len(self._waiting)} queries waiting or "
                    "running); try again shortly"
                )
            self._waiting.append(t)
        try:
            while True:
                is_express, t.worker = self._acquire(t, limit_s or timeout_s)
                try:
                    result = self._run_on(
                        is_express, t, sql, limit_s or timeout_s, max_rows, max_bytes, check
                    )
                finally:
                    self._release(is_express, t.worker, t)
                if result is not None:
                    return result
        finally:
            with self._cv:
                self._waiting.remove(t)
                self._cv.notify_all()

    def _run_on(
        self,
        is_express: bool,
        t: _Ticket,
        sql: str,
        timeout_s: float,
        max_rows: int,
        max_bytes: int,
        check: bool,
    ) -> pa.Table | None:
        """The result; None when the express share was used up (wait for a worker again).

        ``t.worker`` is the process to give back afterwards (a replacement if this one died,
        was killed or asked to be recycled).
        """
        assert t.worker is not None
        w = t.worker
        stopped = SqlTimeout(
            f"query stopped at its {timeout_s:g} s time limit (counted from submission); "
            "narrow the time range or use a rollup view"
        )
        try:
            w.wait_ready(t.deadline)
        except _Dead:
            # still starting at the deadline (or it died starting): stop it
            t.worker = self._replace(w)
            raise stopped from None
        share = t.deadline - time.monotonic()
        if is_express:
            share = min(share, self.express_s)
        req = {"sql": sql, "timeout_s": share, "max_rows": max_rows, "max_bytes": max_bytes}
        req["check"] = check
        try:
            w.send(json.dumps(req).encode())
            until = time.monotonic() + max(share, 0.0) + self.grace_s
            head = json.loads(w.recv(until))
            body = w.recv(until) if head.get("ok") else b""
        except _Dead:
            t.worker = self._replace(w)
            if time.monotonic() >= t.deadline:
                raise stopped from None
            raise SqlRefused(
                "the query's worker process died; the query was not completed"
            ) from None
        if head.get("recycle"):
            t.worker = self._replace(w)
        if head.get("ok"):
            return pa.ipc.open_stream(body).read_all()
        if head.get("kind") == "timeout":
            if is_express and time.monotonic() < t.deadline:
                return None
            raise stopped
        raise SqlRefused(str(head.get("error", "query failed")))
