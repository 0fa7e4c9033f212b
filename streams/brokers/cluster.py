"""A three-node Apache Kafka KRaft cluster on loopback, for fault tests (kill a node, restart it).

Each node is a combined broker+controller child process with its own state directory,
ports and log, started from the same cached jars as the single-node ApacheKafkaBroker
(streams/brokers/apache.py). The quorum is static (``controller.quorum.voters``, as in
compose/docker-compose.yml), so every node is formatted alike and any node can be killed
and restarted on its own directory and ports without a membership change.

Topics get replication factor 3 and ``min.insync.replicas`` 2 by default, and so do the
internal offsets, transaction and share-state topics: one node may die without losing an
acknowledged (``acks=all``) record or stopping producers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from streams.brokers.apache import (
    _LOG4J2,
    fetch_jars,
    java_bin,
    kafka_version,
    new_cluster_id,
    server_properties,
)
from streams.brokers.ports import LOOPBACK, free_ports, is_listening
from streams.brokers.process import ChildProcess, run_blocking, wait_kafka_ready
from twin.errors import BrokerError


def cluster_properties(
    base: str,
    *,
    node_id: int,
    voters: str,
    replication: int,
    min_isr: int,
) -> str:
    """server.properties of one cluster node: the single node's ``base`` with a static quorum.

    ``voters`` is ``controller.quorum.voters`` (``1@127.0.0.1:P1,2@...``); ``replication``
    and ``min_isr`` apply to new topics and to Kafka's internal topics alike.
    """
    props = dict(line.split("=", 1) for line in base.splitlines() if "=" in line)
    # A static quorum replaces the single node's dynamic one (the two settings exclude
    # each other).
    props.pop("controller.quorum.bootstrap.servers", None)
    rf, isr = str(replication), str(min_isr)
    props.update(
        {
            "node.id": str(node_id),
            "controller.quorum.voters": voters,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            # A restarted node catches up and takes its partitions back as leader soon
            # (default 300 s), so a test sees the cluster whole again within seconds.
            "leader.imbalance.check.interval.seconds": "5",
        }
    )
    return "".join(f"{k}={v}\n" for k, v in props.items())


class KafkaNode:
    """One broker+controller of a KafkaCluster: its id, ports, state directory and process."""

    def __init__(self, node_id: int, port: int, controller_port: int, state_dir: Path) -> None:
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self.state_dir = state_dir
        self.child: ChildProcess | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` of this node's client listener."""
        return f"{LOOPBACK}:{self.port}"

    def running(self) -> bool:
        """True while the node's process is alive."""
        return self.child is not None and self.child.alive()


class KafkaCluster:
    """``nodes`` combined KRaft nodes on loopback; kill() and restart() single nodes.

    ``state_dir=None`` uses a temporary directory removed by stop(). ``heap`` is each
    node's Java heap (three nodes share the machine with the clients under test).
    """

    kind = "kafka-cluster"

    def __init__(
        self,
        *,
        nodes: int = 3,
        state_dir: Path | None = None,
        version: str | None = None,
        heap: str = "384m",
        replication: int | None = None,
        min_isr: int | None = None,
        start_timeout_s: float = 180.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got {nodes}")
        self.version = kafka_version(version)
        self.heap = heap
        self.replication = replication if replication is not None else min(3, nodes)
        self.min_isr = min_isr if min_isr is not None else max(1, self.replication - 1)
        if not 1 <= self.min_isr <= self.replication <= nodes:
            raise ValueError(
                f"need 1 <= min_isr ({self.min_isr}) <= replication ({self.replication}) "
                f"<= nodes ({nodes})"
            )
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._n = nodes
        self._ephemeral = state_dir is None
        self._state_dir = state_dir
        self.nodes: list[KafkaNode] = []

    # -- addresses ------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """Every node's ``host:port``, comma-separated (aiokafka ``bootstrap_servers``)."""
        if not self.nodes:
            raise BrokerError("kafka cluster is not started")
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def url(self) -> str:
        """``kafka://host:port,host:port,...`` for Faust and the twin CLI."""
        return f"kafka://{self.bootstrap}"

    def node(self, node_id: int) -> KafkaNode:
        """The node with Kafka id ``node_id`` (1-based)."""
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id} in the cluster")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> Self:
        """Start every node and block until each answers Metadata listing all nodes."""
        if self.nodes and all(n.running() for n in self.nodes):
            return self
        try:
            java = java_bin()
            lib = fetch_jars(self.version)
            if self._state_dir is None:
                self._state_dir = Path(tempfile.mkdtemp(prefix="twin-kafka-cluster-"))
            ports = free_ports(2 * self._n)
            self.nodes = [
                KafkaNode(i + 1, ports[2 * i], ports[2 * i + 1], self._state_dir / f"node{i + 1}")
                for i in range(self._n)
            ]
            voters = ",".join(f"{n.node_id}@{LOOPBACK}:{n.controller_port}" for n in self.nodes)
            cluster_id = new_cluster_id()
            for n in self.nodes:
                self._configure(n, voters)
            self._format_all(java, lib, cluster_id)
            for n in self.nodes:
                self._spawn(n, java, lib)
            run_blocking(self._all_ready())
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, node_id: int, *, graceful: bool = False) -> None:
        """Stop one node and wait for it: SIGKILL (a crash, no controlled shutdown), or
        with ``graceful`` SIGTERM (controlled shutdown: leadership handed over first)."""
        node = self.node(node_id)
        child = node.child
        if child is None:
            return
        if not graceful:
            # The node leads its own process group (ChildProcess); stop() then only reaps.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        child.stop(self.stop_timeout_s)
        node.child = None

    def restart(self, node_id: int) -> None:
        """Start a stopped node again on its own directory and ports; wait until it answers."""
        node = self.node(node_id)
        if node.running():
            return
        if is_listening(node.port) or is_listening(node.controller_port):
            raise BrokerError(f"node {node_id}: its port is taken by another process")
        self._spawn(node, java_bin(), fetch_jars(self.version))
        run_blocking(self._ready(node))

    def stop(self) -> None:
        """Stop every node; remove the state directory if it was a temporary one."""
        # SIGTERM all first: one after the other, the last nodes' controlled shutdowns
        # wait for a quorum that is already gone (tens of seconds each).
        for n in self.nodes:
            if n.child is not None and n.child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(n.child.pid, signal.SIGTERM)
        for n in self.nodes:
            if n.child is not None:
                n.child.stop(self.stop_timeout_s)
                n.child = None
        if self._ephemeral and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
            self.nodes = []

    def pids(self) -> dict[int, int]:
        """Process id of each running node, by node id."""
        return {n.node_id: n.child.pid for n in self.nodes if n.child is not None}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------
    def _configure(self, node: KafkaNode, voters: str) -> None:
        node.state_dir.mkdir(parents=True, exist_ok=True)
        base = server_properties(node.state_dir, node.port, node.controller_port)
        config = cluster_properties(
            base,
            node_id=node.node_id,
            voters=voters,
            replication=self.replication,
            min_isr=self.min_isr,
        )
        (node.state_dir / "server.properties").write_text(config)
        (node.state_dir / "log4j2.properties").write_text(_LOG4J2)

    def _logging(self, node: KafkaNode) -> str:
        return f"-Dlog4j2.configurationFile={node.state_dir / 'log4j2.properties'}"

    def _format_all(self, java: str, lib: Path, cluster_id: str) -> None:
        """Format every node's log dir with one cluster id (static quorum: no voter flags).

        The formats run side by side: each is a JVM start of a few seconds.
        """
        classpath = f"{lib}/*"
        running: list[tuple[KafkaNode, subprocess.Popen[str]]] = []
        for n in self.nodes:
            argv = [java, self._logging(n), "-cp", classpath, "kafka.tools.StorageTool"]
            argv += ["format", "-t", cluster_id, "-c", str(n.state_dir / "server.properties")]
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            running.append((n, proc))
        failed = []
        for n, proc in running:
            out, _ = proc.communicate(timeout=300)
            if proc.returncode != 0:
                failed.append(f"node {n.node_id}: {out[-1500:]}")
        if failed:
            raise BrokerError("kafka storage format failed: " + "; ".join(failed))

    def _spawn(self, node: KafkaNode, java: str, lib: Path) -> None:
        argv = [java, f"-Xms{self.heap}", f"-Xmx{self.heap}", "-Djava.awt.headless=true"]
        argv += [self._logging(node), "-cp", f"{lib}/*", "kafka.Kafka"]
        argv.append(str(node.state_dir / "server.properties"))
        node.child = ChildProcess(argv, cwd=node.state_dir, log_path=node.state_dir / "kafka.log")

    async def _ready(self, node: KafkaNode) -> None:
        child = node.child
        if child is None:
            raise BrokerError(f"node {node.node_id} is not started")
        try:
            await wait_kafka_ready(node.port, timeout_s=self.start_timeout_s, alive=child.alive)
        except BrokerError as exc:
            raise BrokerError(
                f"kafka cluster node {node.node_id}: {exc}; log {child.log_path}:\n"
                f"{child.log_tail()}"
            ) from exc

    async def _all_ready(self) -> None:
        await asyncio.gather(*(self._ready(n) for n in self.nodes))
        await wait_brokers_registered(self.bootstrap, self._n, timeout_s=self.start_timeout_s)


async def wait_brokers_registered(bootstrap: str, count: int, *, timeout_s: float) -> None:
    """Return once Metadata from ``bootstrap`` lists ``count`` brokers (all nodes joined)."""
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            seen = len((await admin.describe_cluster()).get("brokers", []))
            if seen >= count:
                return
        except Exception:  # any client failure means "not yet"
            seen = 0
        finally:
            await admin.close()
        await asyncio.sleep(0.3)
    raise BrokerError(f"kafka cluster: {seen} of {count} brokers registered after {timeout_s} s")
