"""Apache Kafka 4.x from its Maven Central jars: a single-node KRaft broker on loopback.

No tarball and no Docker: Maven resolves ``org.apache.kafka:kafka_2.13`` and its runtime
dependencies (scripts/kafka/pom.xml) once into
``${TWIN_CACHE_DIR:-~/.cache/dc-twin}/kafka-<version>/lib``; every later start runs
``java -cp 'lib/*' kafka.Kafka`` directly. The node is combined broker+controller with a
dynamic single-voter quorum (docs/sources.md E2). Data lives on disk under the state
directory, so a broker restarted on the same directory keeps its topics and offsets.

``python -m streams.brokers.apache fetch|start|stop|run`` backs ``scripts/kafka.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.brokers.ports import LOOPBACK, free_ports, is_listening
from streams.brokers.process import (
    ChildProcess,
    ManagedBroker,
    process_exists,
    terminate_group,
)
from twin.errors import BrokerError

#: Kafka release used when neither the caller nor TWIN_KAFKA_VERSION names one; kafka_2.13
#: 4.0.0-4.4.0 resolve on Maven Central (docs/sources.md E2).
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


#: Characters allowed in SCRAM user names and passwords given to ``--add-scram``, whose
#: ``[name=...,password=...]`` syntax has no escape for ``,``, ``]`` or ``=``.
_SCRAM_SAFE = re.compile(r"[A-Za-z0-9_.@+\-]+")


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL listener with SCRAM users, added next to the PLAINTEXT one.

    ``cert_file`` is the server certificate (PEM, chain allowed), ``key_file`` its
    unencrypted PKCS#8 key (``BEGIN PRIVATE KEY``), ``ca_file`` the PEM trust store for
    client certificates (``client_auth`` none, requested or required). Kafka reads them as
    PEM stores (``ssl.keystore.type=PEM``), so no keytool is needed. ``users`` maps SCRAM user
    names to passwords; they are created when the storage is formatted (``kafka-storage
    format --add-scram``), so they exist from the first start.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    users: Mapping[str, str] = field(default_factory=dict)
    mechanism: str = "SCRAM-SHA-512"
    client_auth: str = "none"

    def __post_init__(self) -> None:
        if self.mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise BrokerError(f"SASL_SSL listener: unsupported mechanism {self.mechanism!r}")
        if self.client_auth not in ("none", "requested", "required"):
            raise BrokerError(f"SASL_SSL listener: bad client_auth {self.client_auth!r}")
        for name, password in self.users.items():
            if not _SCRAM_SAFE.fullmatch(name) or not _SCRAM_SAFE.fullmatch(password):
                raise BrokerError(
                    f"SCRAM user {name!r}: names and passwords may use only letters, digits "
                    "and _.@+-"
                )

    def scram_args(self) -> list[str]:
        """``--add-scram`` arguments of ``kafka-storage format`` creating every user."""
        out: list[str] = []
        for name, password in self.users.items():
            out += ["--add-scram", f"{self.mechanism}=[name={name},password={password}]"]
        return out


def sasl_ssl_properties(listener: SaslSslListener, keystore: Path, port: int) -> dict[str, str]:
    """server.properties keys of the SASL_SSL listener on ``port`` (merged by the caller)."""
    pre = "listener.name.sasl_ssl."
    mech = listener.mechanism.lower()
    return {
        "sasl.enabled.mechanisms": listener.mechanism,
        f"{pre}{mech}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"{pre}ssl.keystore.type": "PEM",
        f"{pre}ssl.keystore.location": str(keystore),
        f"{pre}ssl.truststore.type": "PEM",
        f"{pre}ssl.truststore.location": str(listener.ca_file),
        f"{pre}ssl.client.auth": listener.client_auth,
        "_listener": f"SASL_SSL://{LOOPBACK}:{port}",
    }


def server_properties(
    state_dir: Path,
    port: int,
    controller_port: int,
    *,
    sasl_ssl: SaslSslListener | None = None,
    sasl_ssl_port: int | None = None,
) -> str:
    """server.properties of a combined broker+controller on loopback (docs/sources.md E2).

    With ``sasl_ssl`` (and its ``sasl_ssl_port``) a SASL_SSL listener is added; the
    PLAINTEXT listener stays for the broker's own traffic and the readiness probe.
    """
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
    if sasl_ssl is not None:
        if sasl_ssl_port is None:
            raise BrokerError("a SASL_SSL listener needs its port")
        extra = sasl_ssl_properties(sasl_ssl, sasl_ssl_keystore(state_dir), sasl_ssl_port)
        listener = extra.pop("_listener")
        props["listeners"] += f",{listener}"
        props["advertised.listeners"] += f",{listener}"
        props["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
        props |= extra
    return "".join(f"{k}={v}\n" for k, v in props.items())


def sasl_ssl_keystore(state_dir: Path) -> Path:
    """Where the PEM keystore (key, then certificate chain) of the SASL_SSL listener goes."""
    return state_dir / "sasl-ssl-keystore.pem"


def write_sasl_ssl_keystore(state_dir: Path, listener: SaslSslListener) -> Path:
    """Write the listener's key and certificate as one PEM keystore (mode 0600)."""
    try:
        key = listener.key_file.read_text(encoding="ascii")
        cert = listener.cert_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerError(f"SASL_SSL listener: cannot read key or certificate: {exc}") from None
    if "BEGIN PRIVATE KEY" not in key and "BEGIN ENCRYPTED PRIVATE KEY" not in key:
        raise BrokerError(
            f"SASL_SSL listener: {listener.key_file} is not a PKCS#8 PEM key "
            "(convert with openssl pkcs8 -topk8 -nocrypt)"
        )
    path = sasl_ssl_keystore(state_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key.rstrip("\n") + "\n" + cert)
    return path


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
        sasl_ssl: SaslSslListener | None = None,
        sasl_ssl_port: int | None = None,
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
        self.sasl_ssl = sasl_ssl
        self._sasl_ssl_port = sasl_ssl_port
        self._chosen_sasl_ssl_port: int | None = None

    @property
    def sasl_ssl_port(self) -> int:
        """Port of the SASL_SSL listener; BrokerError without one or before start()."""
        if self.sasl_ssl is None or self._chosen_sasl_ssl_port is None or not self.running():
            raise BrokerError("kafka broker has no started SASL_SSL listener")
        return self._chosen_sasl_ssl_port

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """``host:port`` of the SASL_SSL listener, for clients with KafkaSecurity SASL_SSL."""
        return f"{self.host}:{self.sasl_ssl_port}"

    @property
    def sasl_ssl_url(self) -> str:
        """``kafka://host:port`` of the SASL_SSL listener (twin CLI ``--broker``)."""
        return f"kafka://{self.sasl_ssl_bootstrap}"

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
        saved_sasl_port = self._saved_sasl_ssl_port(attempt)
        port, controller_port = self._choose_ports(attempt)
        self._ensure_free(port, controller_port)
        config = self.state_dir / "server.properties"
        if self.sasl_ssl is None:
            config.write_text(server_properties(self.state_dir, port, controller_port))
        else:
            sasl_port = self._choose_sasl_ssl_port(saved_sasl_port, (port, controller_port))
            self._ensure_free(sasl_port)
            write_sasl_ssl_keystore(self.state_dir, self.sasl_ssl)
            config.write_text(
                server_properties(
                    self.state_dir,
                    port,
                    controller_port,
                    sasl_ssl=self.sasl_ssl,
                    sasl_ssl_port=sasl_port,
                )
            )
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

    def _saved_sasl_ssl_port(self, attempt: int) -> int | None:
        # Read before _choose_ports rewrites ports.json with its own two ports.
        saved = self.state_dir / "ports.json"
        if self.sasl_ssl is None or self._sasl_ssl_port is not None:
            return self._sasl_ssl_port
        if attempt == 0 and saved.exists():
            value = json.loads(saved.read_text()).get("sasl_ssl_port")
            return int(value) if value is not None else None
        return None

    def _choose_sasl_ssl_port(self, saved: int | None, taken: tuple[int, int]) -> int:
        port = saved
        while port is None or port in taken:
            port = free_ports(1)[0]
        path = self.state_dir / "ports.json"
        ports = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(ports | {"sasl_ssl_port": port}))
        self._chosen_sasl_ssl_port = port
        return port

    async def _ready(self, child: ChildProcess, port: int) -> None:
        await super()._ready(child, port)
        if self._chosen_sasl_ssl_port is None:
            return
        # The PLAINTEXT probe passed; the SASL_SSL socket is bound in the same startup,
        # but do not hand out its address before it accepts connections.
        deadline = time.monotonic() + 30.0
        while not is_listening(self._chosen_sasl_ssl_port, self.host):
            if not child.alive() or time.monotonic() > deadline:
                raise BrokerError(f"SASL_SSL listener {self._chosen_sasl_ssl_port} never opened")
            await asyncio.sleep(0.1)

    def _format(self, java: str, classpath: str, logging: str, config: Path) -> None:
        argv = [java, logging, "-cp", classpath, "kafka.tools.StorageTool", "format"]
        argv += ["--standalone", "-t", new_cluster_id(), "-c", str(config)]
        if self.sasl_ssl is not None:
            argv += self.sasl_ssl.scram_args()
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
