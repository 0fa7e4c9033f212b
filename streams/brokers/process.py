"""Child-process plumbing shared by the brokers the twin starts (tansu, Apache Kafka).

A broker child runs in its own process group (a Ctrl-C aimed at the parent's terminal must
not kill the broker before the parent's clients have shut down), receives SIGKILL from the
kernel if the thread that started it dies (Linux ``PR_SET_PDEATHSIG``), and is stopped by
an ``atexit`` hook if the interpreter exits without stopping it. So no broker outlives the
process that started it, even after a SIGKILL of that process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from aiokafka.admin import AIOKafkaAdminClient

from streams.brokers.ports import LOOPBACK, is_listening
from twin.errors import BrokerError

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _child_setup(parent_pid: int, *, die_with_parent: bool) -> Callable[[], None]:
    """preexec hook: unblock every signal; with ``die_with_parent``, ask the kernel to
    SIGKILL this child when its parent thread exits.

    The signal mask survives fork and exec: ``twin broker`` blocks SIGINT and SIGTERM to
    sigwait for them, and a broker started under that mask ignored our SIGTERM until the
    SIGKILL 15 s later.
    """

    def hook() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if die_with_parent and sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            # The parent may have died between fork and prctl; then nobody would kill us.
            if os.getppid() != parent_pid:
                os._exit(1)

    return hook


class ChildProcess:
    """One broker process with its log in a file; stop() is idempotent."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        detached: bool = False,
    ) -> None:
        """Spawn ``argv``; ``detached=True`` lets it outlive this process (scripts/kafka.sh)."""
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Logs are appended across restarts; log_tail() reads only this run's part.
            self._log_start = log.seek(0, os.SEEK_END)
            try:
                # The child must die with the thread that starts it; preexec_fn is the only
                # hook that runs between fork and exec.
                self._popen = subprocess.Popen(
                    self.argv,
                    cwd=cwd,
                    env=dict(env) if env is not None else None,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_child_setup(os.getpid(), die_with_parent=not detached),
                )
            except OSError as exc:
                raise BrokerError(f"cannot start {self.argv[0]}: {exc}") from exc
        if not detached:
            atexit.register(self.stop)

    @property
    def pid(self) -> int:
        """Process id of the broker child."""
        return self._popen.pid

    def alive(self) -> bool:
        """True while the child has not exited."""
        return self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once the child has exited, else None."""
        return self._popen.poll()

    def log_tail(self, max_chars: int = 2000) -> str:
        """The last ``max_chars`` characters of the child's log, for error messages."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    def rss_bytes(self) -> int:
        """Resident memory of the child [B], from /proc/<pid>/status (Linux only)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        except OSError as exc:
            raise BrokerError(f"cannot read memory of broker pid {self.pid}: {exc}") from exc
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise BrokerError(f"broker pid {self.pid} has no VmRSS (exited?)")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``timeout_s`` [s]; reap it."""
        atexit.unregister(self.stop)
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait(timeout=timeout_s)
        else:
            # The leader is gone; a straggler in its group would still hold the port.
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)


async def wait_kafka_ready(
    port: int,
    *,
    timeout_s: float,
    alive: Callable[[], bool],
    host: str = LOOPBACK,
) -> None:
    """Return once a Kafka Metadata request to ``host:port`` lists at least one broker.

    Raises BrokerError when ``alive()`` turns False (the broker died) or after
    ``timeout_s`` [s]. The TCP check comes first so that aiokafka does not log a
    connection error for every poll while the broker boots.
    """
    deadline = time.monotonic() + timeout_s
    last_error = "port not listening"
    while time.monotonic() < deadline:
        if not alive():
            raise BrokerError(f"broker on {host}:{port} exited during startup")
        if is_listening(port, host):
            admin = AIOKafkaAdminClient(bootstrap_servers=f"{host}:{port}", request_timeout_ms=5000)
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
                if cluster.get("brokers"):
                    return
                last_error = "metadata lists no broker yet"
            except Exception as exc:  # any client failure means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            finally:
                await admin.close()
        await asyncio.sleep(0.2)
    raise BrokerError(f"broker on {host}:{port} not ready after {timeout_s:.0f} s ({last_error})")


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, even when an event loop is running here.

    Inside a running loop ``asyncio.run`` refuses, so the coroutine gets its own loop on a
    short-lived thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="broker-ready-probe")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class PortInUseError(BrokerError):
    """The port chosen for a broker was taken by another server."""


class ManagedBroker:
    """Lifecycle shared by brokers run as a child process: start, readiness, stop.

    Subclasses implement ``_launch`` (spawn the child on fresh ports) and
    ``_port_taken`` (did the child fail because its port was taken in the meantime).
    Usable as ``with``, ``async with``, or through ``start()``/``stop()``.
    """

    kind: str = "broker"

    def __init__(
        self, *, start_timeout_s: float, port_attempts: int, stop_timeout_s: float = 15.0
    ) -> None:
        if port_attempts < 1:
            raise ValueError(f"port_attempts must be >= 1, got {port_attempts}")
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.port_attempts = port_attempts
        self._child: ChildProcess | None = None
        self._port: int | None = None

    # -- subclass hooks -------------------------------------------------------------------
    def _launch(self, attempt: int) -> tuple[ChildProcess, int]:
        raise NotImplementedError

    def _port_taken(self, child: ChildProcess) -> bool:
        raise NotImplementedError

    # -- public interface -----------------------------------------------------------------
    @property
    def host(self) -> str:
        """Host clients connect to (loopback)."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """Kafka port; raises BrokerError before start()."""
        if self._port is None or self._child is None:
            raise BrokerError(f"{self.kind} broker is not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients (aiokafka ``bootstrap_servers``)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` for Faust's ``broker`` setting and the twin CLI."""
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int:
        """Process id of the broker child."""
        return self._require_child().pid

    @property
    def log_path(self) -> Path:
        """File holding the broker's stdout and stderr."""
        return self._require_child().log_path

    def running(self) -> bool:
        """True while the broker child is alive."""
        return self._child is not None and self._child.alive()

    def rss_bytes(self) -> int:
        """Resident memory of the broker child [B]."""
        return self._require_child().rss_bytes()

    def start(self) -> Self:
        """Start the broker and block until it answers Kafka Metadata requests."""
        if self.running():
            return self
        try:
            for attempt in range(self.port_attempts):
                launched = self._try_launch(attempt)
                if launched is None:
                    continue
                child, port = launched
                try:
                    run_blocking(self._ready(child, port))
                except BrokerError as exc:
                    self._give_up_or_retry(child, attempt, exc)
                    continue
                self._child, self._port = child, port
                return self
        except BaseException:
            self.stop()  # subclasses also remove what they created for the failed start
            raise
        raise AssertionError("unreachable: the last attempt raises")

    async def astart(self) -> Self:
        """Start the broker; the loop is free while it boots (not while Java formats storage)."""
        if self.running():
            return self
        try:
            for attempt in range(self.port_attempts):
                # Spawn on this thread: PR_SET_PDEATHSIG ties the child to the spawning thread.
                launched = self._try_launch(attempt)
                if launched is None:
                    continue
                child, port = launched
                try:
                    await self._ready(child, port)
                except BrokerError as exc:
                    self._give_up_or_retry(child, attempt, exc)
                    continue
                self._child, self._port = child, port
                return self
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
        raise AssertionError("unreachable: the last attempt raises")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); a no-op when not started."""
        child, self._child = self._child, None
        if child is not None:
            child.stop(self.stop_timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- internals ------------------------------------------------------------------------
    def _ensure_free(self, *ports: int) -> None:
        """Raise if a port already listens: the readiness probe would talk to that server."""
        busy = [p for p in ports if is_listening(p, self.host)]
        if busy:
            raise PortInUseError(f"{self.kind} broker: {self.host}:{busy[0]} is already in use")

    async def _ready(self, child: ChildProcess, port: int) -> None:
        await wait_kafka_ready(port, timeout_s=self.start_timeout_s, alive=child.alive)

    def _try_launch(self, attempt: int) -> tuple[ChildProcess, int] | None:
        """Spawn the child; None when the chosen port was taken and another try remains."""
        try:
            return self._launch(attempt)
        except PortInUseError:
            if attempt + 1 < self.port_attempts:
                return None
            raise

    def _give_up_or_retry(self, child: ChildProcess, attempt: int, exc: BrokerError) -> None:
        child.stop()
        if self._port_taken(child) and attempt + 1 < self.port_attempts:
            return
        raise BrokerError(
            f"{self.kind} broker failed to start: {exc}; log {child.log_path}:\n{child.log_tail()}"
        ) from exc

    def _require_child(self) -> ChildProcess:
        if self._child is None:
            raise BrokerError(f"{self.kind} broker is not started")
        return self._child


def terminate_group(pid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM the process group led by ``pid`` (not our child), SIGKILL it after ``timeout_s``.

    Returns False if no such process existed. Used by ``scripts/kafka.sh stop``, where the
    broker was started by an earlier command.
    """
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process_exists(pid):
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def process_exists(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it no longer holds the port or memory.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
