"""`twin` as a user types it: help for every command, one-line errors for wrong input."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["demo", "worker", "sim", "broker", "collect", "sink", "sql", "replay", "whatif"]


def twin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        capture_output=True, text=True, timeout=60, env=clean | (env or {}),
    )  # fmt: skip


def test_top_level_help_lists_every_command() -> None:
    r = twin("--help")
    assert r.returncode == 0
    for cmd in COMMANDS:
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", [*COMMANDS, "collect nvml"])
def test_every_command_has_help(cmd: str) -> None:
    r = twin(*cmd.split(), "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: twin" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "--web-port", "http"], "expected a TCP port"),
        (["demo", "--racks", "0"], "expected a rack count"),
        (["sim", "--dt", "-1"], "expected a positive number"),
        (["worker", "--bogus"], "unrecognized arguments: --bogus"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_wrong_argument_is_one_line(args: list[str], message: str) -> None:
    r = twin(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker"], "no broker"),
        (["worker", "--broker", "localhost:9092"], "kafka://host:port"),
        (["sim", "--broker", "kafka://h:notaport"], "kafka://host:port"),
        (["sql", "SELECT 1", "--format", "parquet"], "--format parquet needs --out"),
    ],
)
def test_bad_configuration_is_a_one_line_usage_error(args: list[str], message: str) -> None:
    r = twin(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert r.stdout == ""


def test_env_fallback_is_used_and_checked() -> None:
    r = twin("worker", env={"TWIN_BROKER": "localhost:1"})
    assert r.returncode == 2 and "environment TWIN_BROKER" in r.stderr
    assert "kafka://host:port" in r.stderr


def test_collect_alone_prints_the_collect_help() -> None:
    r = twin("collect")
    assert r.returncode == 2
    assert "usage: twin collect" in r.stderr and "nvml" in r.stderr and "dcgm" in r.stderr


def test_sink_runtime_failure_exits_1(tmp_path: Path) -> None:
    """A runtime failure (here: its --http-port is taken) is exit 1, not a usage error."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = twin(
            "sink", "--broker", "kafka://127.0.0.1:1", "--data-dir", str(tmp_path),
            "--http-port", str(port), "--racks", "8",
        )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and f"--http-port {port}" in lines[0], r.stderr


def test_collect_nvml_without_gpu_says_so_in_one_line() -> None:
    r = twin("collect", "nvml", "--broker", "kafka://127.0.0.1:9")
    if r.returncode == 0:  # pragma: no cover - only on a machine with an NVIDIA GPU
        pytest.skip("this machine has an NVIDIA GPU")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "NVIDIA" in lines[0] or "NVML" in lines[0]


def test_broker_port_reaches_the_broker() -> None:
    from streams.brokers import make_broker
    from streams.cli import parse_args

    args = parse_args(["broker", "--port", "39555"], {})
    assert args.port == 39555
    assert make_broker(args.kind, args.port)._fixed_port == 39555  # type: ignore[attr-defined]
    assert parse_args(["broker"], {"TWIN_PORT": "39556"}).port == 39556


def test_replay_usage_error_exits_2_and_runtime_failure_exits_1(tmp_path: Path) -> None:
    """(tests/storage/test_storage_cli.py has the unreachable broker: exit 1 as well.)"""
    span = ["--from", "2026-09-21", "--to", "2026-09-22", "--data-dir", str(tmp_path)]
    bad = twin("replay", *span, "--speed", "-1")
    assert bad.returncode == 2 and "--speed must be >= 0" in bad.stderr
    # a store that is not there: a runtime failure
    missing = twin("replay", *span)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 1 and len(lines) == 1, missing.stderr
    assert str(tmp_path) in lines[0]
