"""compose/docker-compose.yml without Docker: structure, Kafka quorum, and twin command lines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from streams.brokers.apache import DEFAULT_KAFKA_VERSION

yaml = pytest.importorskip("yaml")

COMPOSE = Path(__file__).resolve().parents[1] / "compose" / "docker-compose.yml"
NODES = ("kafka-1", "kafka-2", "kafka-3")
HOST_PORTS = {"kafka-1": 29092, "kafka-2": 39092, "kafka-3": 49092}
TWIN_SERVICES = ("worker", "sim", "sink")
BOOTSTRAP = "kafka://kafka-1:19092,kafka-2:19092,kafka-3:19092"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_services_are_three_kafka_nodes_and_the_twin(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*NODES, *TWIN_SERVICES}
    assert set(compose["volumes"]) == {*NODES, "history"}


def test_kafka_nodes_form_one_durable_quorum(compose: dict[str, Any]) -> None:
    envs = {n: _env(compose["services"][n]) for n in NODES}
    shared = [
        "CLUSTER_ID",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_LISTENERS",
        "KAFKA_PROCESS_ROLES",
        "KAFKA_MIN_INSYNC_REPLICAS",
    ]
    for key in shared:
        assert len({envs[n][key] for n in NODES}) == 1, key
    env = envs["kafka-1"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == ("1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        "KAFKA_DEFAULT_REPLICATION_FACTOR",
    ):
        assert env[key] == "3", key
    for key in (
        "KAFKA_MIN_INSYNC_REPLICAS",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    ):
        assert env[key] == "2", key


@pytest.mark.parametrize("node", NODES)
def test_each_node_has_its_own_identity(compose: dict[str, Any], node: str) -> None:
    service = compose["services"][node]
    env = _env(service)
    index = node.rsplit("-", 1)[1]
    assert service["image"] == f"apache/kafka:{DEFAULT_KAFKA_VERSION}"  # as in tests and CI
    assert service["hostname"] == node
    assert env["KAFKA_NODE_ID"] == index
    assert env["KAFKA_ADVERTISED_LISTENERS"] == (
        f"PLAINTEXT://{node}:19092,PLAINTEXT_HOST://localhost:{HOST_PORTS[node]}"
    )
    assert service["ports"] == [f"{HOST_PORTS[node]}:9092"]
    assert service["volumes"] == [f"{node}:/var/lib/kafka/data"]
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


@pytest.mark.parametrize("name", TWIN_SERVICES)
def test_twin_services_use_the_cluster(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["build"] == {"context": "..", "dockerfile": "compose/Dockerfile"}
    assert (COMPOSE.parent / "Dockerfile").is_file()
    command = service["command"]
    assert command[command.index("--broker") + 1] == BOOTSTRAP
    assert _env(service)["TWIN_BROKER"] == BOOTSTRAP
    assert set(service["depends_on"]) == set(NODES)


def test_workers_expose_the_api(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    command = worker["command"]
    assert command[command.index("--web-host") + 1] == "0.0.0.0"
    port = command[command.index("--web-port") + 1]
    replicas = worker["deploy"]["replicas"]
    low, high = worker["ports"][0].split(":")[0].split("-")
    assert worker["ports"][0].endswith(f":{port}")
    # Up to one replica per partition, each with a host port of its own.
    assert int(high) - int(low) + 1 == 8
    assert 1 <= replicas <= 8


@pytest.mark.parametrize("name", ["worker", "sim", "sink"])
def test_twin_command_lines_parse_and_dispatch(compose: dict[str, Any], name: str) -> None:
    cli = pytest.importorskip("streams.cli")
    command = [str(arg) for arg in compose["services"][name]["command"]]
    args = cli._build_parser().parse_args(command)
    assert args.command == command[0]
    assert args.broker == BOOTSTRAP
    # streams.cli.main runs args.handler; a command without one only prints the help.
    assert callable(getattr(args, "handler", None)), f"twin {command[0]} has no handler"
