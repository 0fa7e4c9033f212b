"""compose/ without Docker: structure, Kafka quorum, twin command lines, healthchecks, the
image's data directories, and the Prometheus and Grafana wiring."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from streams.brokers.apache import DEFAULT_KAFKA_VERSION
from tests.conftest import in_ci

yaml = pytest.importorskip("yaml")

COMPOSE = Path(__file__).resolve().parents[1] / "compose" / "docker-compose.yml"
DOCKERFILE = COMPOSE.parent / "Dockerfile"
PROMETHEUS_YML = COMPOSE.parent / "prometheus" / "prometheus.yml"
GRAFANA = COMPOSE.parent / "grafana"
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


def test_services_are_three_kafka_nodes_the_twin_and_monitoring(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*NODES, *TWIN_SERVICES, "prometheus", "grafana"}
    assert set(compose["volumes"]) == {*NODES, "history", "prometheus", "grafana"}
    # the top-level name: key needs Compose v2, which the README must say
    assert compose["name"] == "dc-twin"
    assert "Compose v2" in (COMPOSE.parent / "README.md").read_text()


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


# --- healthchecks ------------------------------------------------------------------------


def _http_port(command: list[str]) -> int | None:
    """The port a twin command serves /healthz on (worker: --web-port, sink: --http-port)."""
    for flag in ("--web-port", "--http-port"):
        if flag in command:
            return int(command[command.index(flag) + 1])
    return None


@pytest.mark.parametrize("name", TWIN_SERVICES)
def test_every_twin_service_with_http_has_a_healthz_healthcheck(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    command = [str(a) for a in service["command"]]
    port = _http_port(command)
    if port is None:
        # only the simulator serves no HTTP; it must not pretend to have a healthcheck
        assert name == "sim" and "healthcheck" not in service
        return
    check = service["healthcheck"]
    test = check["test"]
    assert test[0] == "CMD" and test[1] == "python", test  # the slim image has no curl
    assert f"http://127.0.0.1:{port}/healthz" in test[-1]
    assert "curl" not in DOCKERFILE.read_text()
    # a worker takes a while to join its group: no restart loop before it could be healthy
    assert _seconds(check["start_period"]) >= 30


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    assert m, text
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]


class _Healthz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def healthz_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("name", ["worker", "sink"])
def test_the_healthcheck_command_passes_on_200_only(
    compose: dict[str, Any], name: str, healthz_server: ThreadingHTTPServer
) -> None:
    """The compose healthcheck's own command, run against a server on another port."""
    service = compose["services"][name]
    port = _http_port([str(a) for a in service["command"]])
    code = service["healthcheck"]["test"][-1].replace(
        f"127.0.0.1:{port}/", f"127.0.0.1:{healthz_server.server_address[1]}/"
    )

    def run() -> int:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=30
        ).returncode

    _Healthz.status = 200
    assert run() == 0
    _Healthz.status = 503  # starting or stalled
    assert run() != 0
    healthz_server.shutdown()
    healthz_server.server_close()
    assert run() != 0  # nothing listening


# --- the image's data directories ----------------------------------------------------------


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_layout(
    text: str,
) -> tuple[str, set[PurePosixPath], dict[PurePosixPath, tuple[str, bool]]]:
    """(runtime user, directories made by mkdir, chown target -> (owner, recursive)) of the
    RUN steps before the last USER of a Dockerfile."""
    steps = _dockerfile_instructions(text)
    users = [i for i, (word, _) in enumerate(steps) if word == "USER"]
    assert users, "the image must not run as root: no USER instruction"
    last = users[-1]
    user = steps[last][1].split(":")[0]
    made: set[PurePosixPath] = set()
    owned: dict[PurePosixPath, tuple[str, bool]] = {}
    for word, rest in steps[:last]:
        if word != "RUN":
            continue
        for part in re.split(r"&&|;", rest):
            argv = shlex.split(part)
            if not argv:
                continue
            flags = [a for a in argv[1:] if a.startswith("-")]
            args = [a for a in argv[1:] if not a.startswith("-")]
            if argv[0] == "mkdir":
                for a in args:
                    path = PurePosixPath(a)
                    made.add(path)
                    if "-p" in flags:
                        made.update(path.parents)
            elif argv[0] == "chown" and args:
                owner = args[0].split(":")[0]
                for a in args[1:]:
                    owned[PurePosixPath(a)] = (owner, "-R" in flags)
    return user, made, owned


def owned_by(path: PurePosixPath, owned: dict[PurePosixPath, tuple[str, bool]]) -> str | None:
    """Who a chown in the image left owning ``path`` (itself, or a recursive one above it)."""
    if path in owned:
        return owned[path][0]
    for parent in path.parents:
        if parent in owned and owned[parent][1]:
            return owned[parent][0]
    return None


def _twin_volume_targets(compose: dict[str, Any]) -> dict[str, PurePosixPath]:
    """Named volume -> mount target of every volume a twin service mounts."""
    out = {}
    for name in TWIN_SERVICES:
        for spec in compose["services"][name].get("volumes", []):
            source, target = str(spec).split(":")[:2]
            if not source.startswith((".", "/")):
                out[f"{name}:{source}"] = PurePosixPath(target)
    return out


def test_every_twin_volume_target_exists_in_the_image_owned_by_its_user(
    compose: dict[str, Any],
) -> None:
    """Docker copies an image directory's ownership into a new named volume; a directory the
    image lacks is created root-owned, where the non-root sink cannot write."""
    user, made, owned = image_layout(DOCKERFILE.read_text())
    assert user not in ("root", "0")
    targets = _twin_volume_targets(compose)
    assert targets, "the sink's history must live on a volume"
    for volume, target in targets.items():
        assert target in made, f"{volume}: {target} is not created in the image"
        assert owned_by(target, owned) == user, f"{volume}: {target} is not owned by {user}"


def test_every_directory_a_twin_command_writes_is_owned_by_the_image_user(
    compose: dict[str, Any],
) -> None:
    user, _, owned = image_layout(DOCKERFILE.read_text())
    for name in TWIN_SERVICES:
        command = [str(a) for a in compose["services"][name]["command"]]
        for flag in ("--state-dir", "--data-dir"):
            if flag in command:
                path = PurePosixPath(command[command.index(flag) + 1])
                assert owned_by(path, owned) == user, f"{name} {flag} {path}"


def test_the_layout_check_catches_the_root_owned_history_volume() -> None:
    """The Dockerfile before the fix made /data only: its history volume would be root's."""
    before = (
        "FROM python:3.11-slim\nRUN useradd twin && mkdir -p /data && chown twin /data\nUSER twin\n"
    )
    user, made, owned = image_layout(before)
    history = PurePosixPath("/data/history")
    assert user == "twin"
    assert history not in made and owned_by(history, owned) is None
    after = (
        "RUN useradd twin \\\n    && mkdir -p /data/history \\\n"
        "    && chown -R twin:twin /data\nUSER twin:twin\n"
    )
    user, made, owned = image_layout(after)
    assert history in made and owned_by(history, owned) == "twin"


def test_the_image_installs_the_locked_versions() -> None:
    text = DOCKERFILE.read_text()
    installs = [
        rest
        for word, rest in _dockerfile_instructions(text)
        if word == "RUN" and "pip install" in rest
    ]
    assert installs and all("-c requirements.lock" in r for r in installs), installs
    copies = [rest for word, rest in _dockerfile_instructions(text) if word == "COPY"]
    assert any("requirements.lock" in c.split() for c in copies)


# --- Prometheus and Grafana ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    data = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert isinstance(data, dict)
    return data


def _job(config: dict[str, Any], name: str) -> dict[str, Any]:
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == name]
    return job


def test_prometheus_scrapes_every_worker_replica_and_the_sink(
    compose: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    services = compose["services"]
    worker_port = _http_port([str(a) for a in services["worker"]["command"]])
    (sd,) = _job(prometheus_config, "twin-worker")["dns_sd_configs"]
    # the service name resolves to every replica's address in the compose network
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == worker_port
    sink_cmd = [str(a) for a in services["sink"]["command"]]
    sink_port = _http_port(sink_cmd)
    assert sink_cmd[sink_cmd.index("--http-host") + 1] == "0.0.0.0"  # reachable in-network
    (static,) = _job(prometheus_config, "twin-sink")["static_configs"]
    assert static["targets"] == [f"sink:{sink_port}"]
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    for source in mounts.values():
        if source.startswith("./"):
            assert (COMPOSE.parent / source).is_dir(), source
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    (ds,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    prom_port = compose["services"]["prometheus"]["ports"][0].split(":")[1]
    assert ds["type"] == "prometheus" and ds["url"] == f"http://prometheus:{prom_port}"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/dc-twin.yml").read_text())[
        "providers"
    ]
    dash_dir = provider["options"]["path"]
    assert mounts[dash_dir] == "./grafana/dashboards"
    assert (GRAFANA / "dashboards" / "dc-twin.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dash_dir}/dc-twin.json"


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        msg = "promtool missing: run scripts/prometheus.sh (apt prometheus)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    out = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS_YML)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
