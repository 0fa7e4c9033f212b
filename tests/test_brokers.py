"""The brokers the twin starts: real Kafka behaviour on both, lifecycle of each."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.brokers import Broker, make_broker
from streams.brokers.apache import ApacheKafkaBroker, new_cluster_id, server_properties
from streams.brokers.ports import free_port, free_ports, is_listening
from streams.brokers.process import process_exists
from streams.brokers.tansu import EmbeddedBroker
from twin.errors import BrokerError, ConfigError

ROOT = Path(__file__).resolve().parents[1]

# tansu holds JoinGroup for about half the rebalance timeout (docs/sources.md E1);
# aiokafka sends max_poll_interval_ms as that timeout, so keep it short.
GROUP_SETTINGS = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 6000,
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
}


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def _consume(
    bootstrap: str, topic: str, group: str, expected: int, commit: bool
) -> list[tuple[bytes, bytes]]:
    """Read ``expected`` records of ``topic`` as ``group``; commit them if asked."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, **GROUP_SETTINGS
    )
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 90
        while len(got) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                got.extend((r.key or b"", r.value or b"") for r in records)
        if commit:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def _committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, **GROUP_SETTINGS)
    await consumer.start()
    try:
        return {
            p: (await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)
        }
    finally:
        await consumer.stop()


def _records(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"rack-{i % 5:02d}".encode(), f"value-{i:04d}".encode()) for i in range(n)]


# -- both brokers -------------------------------------------------------------------------


@pytest.mark.integration
async def test_produce_consume_commit_reread(broker: Broker, topic_prefix: str) -> None:
    topic, partitions, sent = f"{topic_prefix}.data", 3, _records(60)
    await _create_topic(broker.bootstrap, topic, partitions)
    await _produce(broker.bootstrap, topic, sent)

    first = await _consume(broker.bootstrap, topic, f"{topic_prefix}.g1", len(sent), commit=True)
    assert sorted(first) == sorted(sent)
    # Keys decide partitions: within one key the order of production is kept.
    for key in {k for k, _ in sent}:
        assert [v for k, v in first if k == key] == [v for k, v in sent if k == key]

    committed = await _committed(broker.bootstrap, topic, f"{topic_prefix}.g1", partitions)
    assert sum(committed.values()) == len(sent)

    # Another group re-reads everything from the start; the committed group is unaffected.
    again = await _consume(broker.bootstrap, topic, f"{topic_prefix}.g2", len(sent), commit=False)
    assert sorted(again) == sorted(sent)
    assert await _committed(broker.bootstrap, topic, f"{topic_prefix}.g1", partitions) == committed


@pytest.mark.integration
def test_broker_reports_its_memory(broker: Broker) -> None:
    assert broker.running()
    assert broker.rss_bytes() > 1_000_000  # any broker process holds more than 1 MB
    assert broker.url == f"kafka://{broker.bootstrap}"


# -- embedded tansu ------------------------------------------------------------------------


@pytest.mark.integration
def test_tansu_stop_leaves_no_process_and_no_files() -> None:
    embedded = EmbeddedBroker()
    with embedded:
        pid, port, log = embedded.pid, embedded.port, embedded.log_path
        assert "listening on" in log.read_text()
    assert not process_exists(pid)
    assert not is_listening(port)
    assert not log.parent.exists()
    with pytest.raises(BrokerError, match="not started"):
        _ = embedded.bootstrap


@pytest.mark.integration
def test_tansu_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """A parent killed with SIGKILL runs no atexit hook; the kernel must still end tansu."""
    script = (
        "import sys, time\n"
        "from streams.brokers.tansu import EmbeddedBroker\n"
        "b = EmbeddedBroker().start()\n"
        "print(b.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    # The killed parent cannot remove the broker's working directory: keep it in tmp_path.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert process_exists(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while process_exists(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_exists(child_pid)


@pytest.mark.integration
def test_tansu_panic_on_a_taken_port_is_reported() -> None:
    # Bound but not listening: the port looks free to a connect(), and tansu's bind fails.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        embedded = EmbeddedBroker(port=port, start_timeout_s=20)
        with pytest.raises(BrokerError, match="AddrInUse"):
            embedded.start()
    assert not embedded.running()
    assert embedded.workdir is None  # the failed start removed its working directory


@pytest.mark.integration
def test_tansu_on_a_listening_port_is_refused() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(port=port).start()


def test_tansu_missing_binary_is_a_broker_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="not an executable"):
        EmbeddedBroker(binary=str(tmp_path / "no-such-tansu")).start()


# -- Apache Kafka --------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
async def test_apache_restart_keeps_topics_and_offsets(
    apache_kafka_required: None, tmp_path: Path, topic_prefix: str
) -> None:
    topic, group, sent = f"{topic_prefix}.durable", f"{topic_prefix}.g", _records(20)
    state = tmp_path / "kafka"
    with ApacheKafkaBroker(state_dir=state) as first:
        bootstrap, pid = first.bootstrap, first.pid
        await _create_topic(bootstrap, topic, 2)
        await _produce(bootstrap, topic, sent)
        half = await _consume(bootstrap, topic, group, len(sent), commit=True)
        assert sorted(half) == sorted(sent)
    assert not process_exists(pid)
    assert (state / "kraft-logs" / "meta.properties").exists()

    with ApacheKafkaBroker(state_dir=state) as second:
        assert second.bootstrap == bootstrap  # ports are kept with the data
        reread = await _consume(second.bootstrap, topic, f"{group}.new", len(sent), commit=False)
        assert sorted(reread) == sorted(sent)
        committed = await _committed(second.bootstrap, topic, group, 2)
        assert sum(committed.values()) == len(sent)


def test_server_properties_are_a_loopback_kraft_node(tmp_path: Path) -> None:
    text = server_properties(tmp_path, 19092, 19093)
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert "controller.quorum.voters" not in props  # incompatible with --standalone
    assert props["log.dirs"] == str(tmp_path / "kraft-logs")
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_cluster_id_has_kafkas_uuid_form() -> None:
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert len(cid) == 22
        assert set(cid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_apache_without_java_is_a_broker_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    broker = ApacheKafkaBroker(state_dir=tmp_path / "state")
    with pytest.raises(BrokerError, match="Java"):
        broker.start()


# -- factory and ports ---------------------------------------------------------------------


def test_make_broker_knows_both_kinds_and_refuses_others() -> None:
    assert isinstance(make_broker("tansu"), EmbeddedBroker)
    assert isinstance(make_broker("kafka"), ApacheKafkaBroker)
    with pytest.raises(ConfigError, match="tansu, kafka"):
        make_broker("redpanda")  # type: ignore[arg-type]


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in [*ports, free_port()]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_kafka_script_stop_without_a_broker_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.brokers.apache import main

    assert main(["stop", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "not running"


def test_kafka_script_refuses_a_second_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.brokers.apache import main

    (tmp_path / "kafka.pid").write_text(str(os.getpid()))  # a live process
    assert main(["start", "--state-dir", str(tmp_path)]) == 1
    assert "already running" in capsys.readouterr().out


@pytest.mark.slow
def test_fetch_jars_fills_the_cache_once(
    apache_kafka_required: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.brokers.apache import fetch_jars, lib_dir

    monkeypatch.setenv("TWIN_CACHE_DIR", str(tmp_path))
    lib = fetch_jars("4.1.1")
    assert lib == lib_dir("4.1.1") == tmp_path / "kafka-4.1.1" / "lib"
    names = {p.name for p in lib.glob("*.jar")}
    assert "kafka_2.13-4.1.1.jar" in names
    assert any(n.startswith("log4j-slf4j-impl-") for n in names)  # the pom's own addition
    assert (lib / ".complete").read_text().split() == sorted(names)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no mvn: must come from the cache
    assert fetch_jars("4.1.1") == lib
    assert [p.name for p in tmp_path.iterdir()] == ["kafka-4.1.1"]  # no staging left over
