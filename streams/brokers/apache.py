"""Apache Kafka 4.x from its Maven Central jars: a single-node KRaft broker on loopback.

No tarball and no Docker: Maven resolves ``org.apache.kafka:kafka_2.13`` and its runtime
dependencies (scripts/kafka/pom.xml) once into
``${TWIN_CACHE_DIR:-~/.cache/dc-twin}/kafka-<version>/lib``; every later start runs
``java -cp 'lib/*' kafka.Kafka`` directly. The node is combined broker+controller with a
dynamic single-voter quorum (ENGINEERING.md section 2). Data lives on disk under the state
directory, so a broker restarted on the same directory keeps its topics and offsets.

``python -m streams.brokers.apache fetch|start|stop|run`` backs ``scripts/kafka.sh``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from streams.brokers.ports import LOOPBACK, free_ports
from streams.brokers.process import (
    ChildProcess,
    ManagedBroker,
    process_exists,
    terminate_group,
)
from twin.errors import BrokerError

#: Kafka release used when neither the caller nor TWIN_KAFKA_VERSION names one; kafka_2.13
#: 4.0.0-4.4.0 resolve on Maven Central (ENGINEERING.md section 2).
DEFAULT_KAFKA_VERSION = "4.1.1"

#: The 4.x broker needs Java 17+ (https://kafka.apache.org/40/getting-started/compatibility).
MIN_JAVA = 17

_POM = Path(__file__).resolve().parents[2] / "scripts" / "kafka" / "pom.xml"
_COMPLETE = ".complete"

_LOG4J2 = """\
# Written by streams/brokers/apache.py: warnings only, plus the startup/shutdown lines.
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
"""


def kafka_version(version: str | None = None) -> str:
    """``version``, else ``$TWIN_KAFKA_VERSION``, else DEFAULT_KAFKA_VERSION."""
    return version or os.environ.get("TWIN_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION


def cache_dir() -> Path:
    """``$TWIN_CACHE_DIR``, else ``~/.cache/dc-twin``."""
    env = os.environ.get("TWIN_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dc-twin"


def lib_dir(version: str | None = None) -> Path:
    """Where the jars of Kafka ``version`` are (or will be) cached."""
    return cache_dir() / f"kafka-{kafka_version(version)}" / "lib"


def java_bin() -> str:
    """Path of a Java 17+ ``java``; BrokerError naming what is missing otherwise."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise BrokerError(f"Apache Kafka needs Java {MIN_JAVA}+; no java found (JAVA_HOME, PATH)")
    probe = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=60, check=False
    )
    match = re.search(r'version "(\d+)(?:\.(\d+))?', probe.stderr + probe.stdout)
    if match is None:
        raise BrokerError(f"cannot read the Java version of {java}: {probe.stderr.strip()!r}")
    # Java 8 and older print "1.8.0"; from 9 on the first number is the feature release.
    major = int(match.group(2) or 0) if match.group(1) == "1" else int(match.group(1))
    if major < MIN_JAVA:
        raise BrokerError(f"Apache Kafka needs Java {MIN_JAVA}+, {java} is Java {major}")
    return java


def prerequisites_missing(version: str | None = None) -> str | None:
    """Why the Apache broker cannot start here (no Java 17, no jars and no Maven), or None."""
    try:
        java_bin()
    except BrokerError as exc:
        return str(exc)
    if not (lib_dir(version) / _COMPLETE).exists() and shutil.which("mvn") is None:
        return "Apache Kafka jars are not cached and Maven (mvn) is not installed"
    return None


def fetch_jars(version: str | None = None) -> Path:
    """Resolve the broker jars with Maven into the cache once; return the lib directory."""
    version = kafka_version(version)
    lib = lib_dir(version)
    if (lib / _COMPLETE).exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("fetching Apache Kafka jars needs Maven (mvn) on PATH")
    if not _POM.is_file():
        raise BrokerError(f"{_POM} is missing: fetch the jars from a source checkout")
    lib.parent.mkdir(parents=True, exist_ok=True)
    # Resolve into a private directory and rename it into place, so that a concurrent or
    # interrupted fetch never leaves a half-filled lib/ that looks complete.
    staging = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))
    argv = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(_POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = (done.stdout + done.stderr)[-3000:]
        raise BrokerError(f"Maven could not fetch Apache Kafka {version}:\n{tail}")
    (staging / _COMPLETE).write_text(" ".join(sorted(p.name for p in staging.glob("*.jar"))))
    try:
        staging.rename(lib)
    except OSError:
        # Someone else finished first; theirs is as good as ours.
        shutil.rmtree(staging, ignore_errors=True)
        if not (lib / _COMPLETE).exists():
            raise
    return lib


def server_properties(state_dir: Path, port: int, controller_port: int) -> str:
    """server.properties of a combined broker+controller on loopback (ENGINEERING.md 2)."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # Dynamic quorum (KIP-853): bootstrap servers, and no controller.quorum.voters.
        "controller.quorum.bootstrap.servers": f"{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(state_dir / "kraft-logs"),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Tests and the demo start consumers at once; the 3 s default only delays them.
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        # Same as streams.schema.DEFAULT_PARTITIONS, for auto-created topics.
        "num.partitions": "8",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in unpadded URL-safe base64 (Kafka's Uuid form)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")


class ApacheKafkaBroker(ManagedBroker):
    """Single-node Apache Kafka (KRaft) on loopback; same interface as EmbeddedBroker.

    ``state_dir=None`` runs on a temporary directory removed by stop(). With a
    ``state_dir``, data and the chosen ports persist there, so a restart on the same
    directory serves the same topics, offsets and committed group offsets.
    """

    kind = "kafka"

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        version: str | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        start_timeout_s: float = 180.0,
        port_attempts: int = 3,
        detached: bool = False,
    ) -> None:
        fixed = port is not None
        super().__init__(
            start_timeout_s=start_timeout_s,
            port_attempts=1 if fixed else port_attempts,
            stop_timeout_s=30.0,
        )
        self.version = kafka_version(version)
        self.heap = heap
        self.detached = detached
        self._ephemeral = state_dir is None
        self._state_dir = state_dir
        self._ports = (port, controller_port)

    @property
    def state_dir(self) -> Path:
        """Directory of the data, config, log and ports (a temporary one is made by start())."""
        if self._state_dir is None:
            raise BrokerError("kafka broker has no state directory before start()")
        return self._state_dir

    def _launch(self, attempt: int) -> tuple[ChildProcess, int]:
        java = java_bin()
        lib = fetch_jars(self.version)
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="twin-kafka-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port, controller_port = self._choose_ports(attempt)
        self._ensure_free(port, controller_port)
        config = self.state_dir / "server.properties"
        config.write_text(server_properties(self.state_dir, port, controller_port))
        log4j = self.state_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        classpath = f"{lib}/*"
        logging = f"-Dlog4j2.configurationFile={log4j}"
        if not (self.state_dir / "kraft-logs" / "meta.properties").exists():
            self._format(java, classpath, logging, config)
        argv = [java, f"-Xms{self.heap}", f"-Xmx{self.heap}", "-Djava.awt.headless=true"]
        argv += [logging, "-cp", classpath, "kafka.Kafka", str(config)]
        log_path = self.state_dir / "kafka.log"
        child = ChildProcess(argv, cwd=self.state_dir, log_path=log_path, detached=self.detached)
        return child, port

    def _choose_ports(self, attempt: int) -> tuple[int, int]:
        saved = self.state_dir / "ports.json"
        port, controller_port = self._ports
        if port is None and attempt == 0 and saved.exists():
            # Restarting on kept data: the controller endpoint is part of the formatted
            # quorum state, so keep the ports of the first start.
            ports = json.loads(saved.read_text())
            port, controller_port = int(ports["port"]), int(ports["controller_port"])
        if port is None:
            port, controller_port = free_ports(2)
        elif controller_port is None:
            controller_port = free_ports(1)[0]
        saved.write_text(json.dumps({"port": port, "controller_port": controller_port}))
        return port, controller_port

    def _format(self, java: str, classpath: str, logging: str, config: Path) -> None:
        argv = [java, logging, "-cp", classpath, "kafka.tools.StorageTool", "format"]
        argv += ["--standalone", "-t", new_cluster_id(), "-c", str(config)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise BrokerError(f"kafka storage format failed: {(done.stdout + done.stderr)[-2000:]}")

    def _port_taken(self, child: ChildProcess) -> bool:
        return "Address already in use" in child.log_tail(50_000)

    def stop(self) -> None:
        """Stop the broker; remove its state directory if it was a temporary one."""
        super().stop()
        if self._ephemeral and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None


def main(argv: list[str] | None = None) -> int:
    """Entry point of scripts/kafka.sh: fetch, start, stop or run Apache Kafka."""
    parser = argparse.ArgumentParser(
        prog="scripts/kafka.sh", description="Apache Kafka from Maven Central jars (KRaft)."
    )
    parser.add_argument("command", choices=["fetch", "start", "stop", "run"])
    parser.add_argument("--version", default=None, help="Kafka release (TWIN_KAFKA_VERSION)")
    parser.add_argument("--state-dir", type=Path, default=Path("var/kafka"))
    parser.add_argument("--port", type=int, default=9092, help="PLAINTEXT listener port")
    parser.add_argument("--controller-port", type=int, default=9093)
    args = parser.parse_args(argv)
    pid_file = args.state_dir / "kafka.pid"
    try:
        if args.command == "fetch":
            print(fetch_jars(args.version))
            return 0
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        if args.command == "stop":
            stopped = pid is not None and terminate_group(pid)
            pid_file.unlink(missing_ok=True)
            print("stopped" if stopped else "not running")
            return 0
        if pid is not None and process_exists(pid):
            print(f"error: already running (pid {pid}); scripts/kafka.sh stop first")
            return 1
        broker = ApacheKafkaBroker(
            state_dir=args.state_dir.resolve(),
            version=args.version,
            port=args.port,
            controller_port=args.controller_port,
            detached=args.command == "start",
        )
        broker.start()
        pid_file.write_text(str(broker.pid))
        print(f"Apache Kafka {broker.version} ready at {broker.bootstrap} (pid {broker.pid})")
        if args.command == "run":
            try:
                while broker.running():
                    time.sleep(1.0)
            except KeyboardInterrupt:
                pass
            finally:
                broker.stop()
        return 0
    except BrokerError as exc:
        print(f"error: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
