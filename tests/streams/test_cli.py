"""`twin` as a user types it: help for every command, one-line errors for wrong input."""

from __future__ import annotations

import os
import subprocess
import sys

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
    ],
)
def test_bad_configuration_is_one_line(args: list[str], message: str) -> None:
    r = twin(*args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_env_fallback_is_used() -> None:
    r = twin("worker", env={"TWIN_BROKER": "localhost:1"})
    assert r.returncode == 1 and "kafka://host:port" in r.stderr


def test_collect_nvml_without_gpu_says_so_in_one_line() -> None:
    r = twin("collect", "nvml", "--broker", "kafka://127.0.0.1:9")
    if r.returncode == 0:  # pragma: no cover - only on a machine with an NVIDIA GPU
        pytest.skip("this machine has an NVIDIA GPU")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "NVIDIA" in lines[0] or "NVML" in lines[0]
