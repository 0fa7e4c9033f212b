"""One configuration: command line > TWIN_<FLAG> > config file > default, for every flag of
every command; `twin config show`; help texts; JSON logs; what `twin demo` forwards."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams import config, logfmt
from streams.cli import _build_parser, parse_args
from streams.cli_commands import settings_from_args
from streams.config import (
    convert,
    defaults_of,
    env_name,
    fill,
    flag_name,
    leaf_parsers,
    options,
)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "twin.toml"
    path.write_text(text)
    return path


def usage_error(argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, env)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- precedence --------------------------------------------------------------------------------


def test_command_line_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    cfg = toml(tmp_path, "[worker]\nweb_port = 7001\nweb-host = '0.0.0.0'\nbatch_max = 64\n")
    assert parse_args(["worker"], {}).web_port == 6066
    args = parse_args(["worker", "--config", str(cfg)], {})
    assert (args.web_port, args.web_host, args.batch_max) == (7001, "0.0.0.0", 64)
    env = {"TWIN_CONFIG": str(cfg), "TWIN_WEB_PORT": "7002"}
    args = parse_args(["worker"], env)
    assert (args.web_port, args.web_host) == (7002, "0.0.0.0")
    args = parse_args(["worker", "--web-port", "7003"], env)
    assert (args.web_port, args.batch_max) == (7003, 64)
    # --config beats TWIN_CONFIG
    other = tmp_path / "other.toml"
    other.write_text("[worker]\nweb_port = 7004\n")
    assert parse_args(["worker", "--config", str(other)], {"TWIN_CONFIG": str(cfg)}).web_port == (
        7004
    )


def test_common_flags_also_come_before_the_command(tmp_path: Path) -> None:
    cfg = toml(tmp_path, "[worker]\nweb_port = 7011\n")
    assert parse_args(["--config", str(cfg), "worker"], {}).web_port == 7011
    args = parse_args([f"--config={cfg}", "--log-format", "json", "worker", "--web-port", "7"], {})
    assert (args.web_port, args.log_format) == (7, "json")
    assert config.hoist_common_flags(["--log-level", "info", "config", "show", "worker", "--",
                                      "--web-port", "1"]) == [
        "config", "show", "worker", "--log-level", "info", "--", "--web-port", "1"]  # fmt: skip
    assert config.hoist_common_flags(["worker", "--config", "x"]) == ["worker", "--config", "x"]
    assert config.hoist_common_flags(["--config"]) == ["--config"]


def test_tables_from_general_to_specific(tmp_path: Path) -> None:
    cfg = toml(
        tmp_path,
        'broker = "kafka://top:1"\npartitions = 4\n'
        '[common]\nbroker = "kafka://common:1"\n'
        '[collect]\nbroker = "kafka://collect:1"\n'
        '[collect.nvml]\ngpu_offset = 8\nrack = "R0007"\n'
        "[sink]\nflush_seconds = 5\n",
    )
    env = {"TWIN_CONFIG": str(cfg)}
    nvml = parse_args(["collect", "nvml"], env)
    assert (nvml.broker, nvml.gpu_offset, nvml.rack, nvml.partitions) == (
        "kafka://collect:1",
        8,
        "R0007",
        4,
    )
    assert parse_args(["collect", "dcgm"], env).gpu_offset == 0
    assert parse_args(["worker"], env).broker == "kafka://common:1"
    sink = parse_args(["sink"], env)
    assert (sink.flush_seconds, sink.broker) == (5.0, "kafka://common:1")


def test_lists_flags_and_required_options_from_env_and_file(tmp_path: Path) -> None:
    env = {"TWIN_FAULT": "fouling:R0001/G01@5 pump_trip:CDU01@9", "TWIN_SQL_TOKEN_REQUIRED": "yes"}
    assert parse_args(["sim"], env).fault == ["fouling:R0001/G01@5", "pump_trip:CDU01@9"]
    assert parse_args(["worker"], env).sql_token_required is True
    cfg = toml(
        tmp_path,
        '[sim]\nfault = ["fan_fail:DC01@60"]\n[worker]\nexpose_faust_views = true\n'
        '[replay]\nfrom = "2026-09-21"\nto = "2026-09-22"\n[detect]\ninput = "x.csv"\n',
    )
    env = {"TWIN_CONFIG": str(cfg)}
    assert parse_args(["sim"], env).fault == ["fan_fail:DC01@60"]
    assert parse_args(["worker"], env).expose_faust_views is True
    replay = parse_args(["replay"], env)  # required --from/--to from the file
    assert (replay.t_from, replay.t_to) == ("2026-09-21", "2026-09-22")
    # a mutually exclusive group is one setting: the command line's member wins
    detect = parse_args(["detect", "--from-sql", "SELECT 1"], env)
    assert (detect.input, detect.from_sql) == (None, "SELECT 1")
    assert parse_args(["detect"], env).input == Path("x.csv")


def test_deprecated_variable_names_still_work() -> None:
    args = parse_args(["sink"], {"TWIN_SINK_HTTP_PORT": "9101"})
    assert args.http_port == 9101
    assert parse_args(["sql", "SELECT 1"], {"TWIN_SQL_TIMEOUT_S": "5"}).timeout == 5.0
    assert parse_args(["worker"], {"TWIN_SQL_AUTH": "1"}).sql_token_required is True
    # the new name wins over the old one
    both = {"TWIN_SINK_HTTP_PORT": "9101", "TWIN_HTTP_PORT": "9102"}
    assert parse_args(["sink"], both).http_port == 9102


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[worker]\nweb_port = 'http'\n", "[worker] web_port: expected a TCP port"),
        ("[worker]\nweb_prt = 1\n", "[worker] web_prt: no such option"),
        ("[wrker]\nweb_port = 1\n", "unknown table [wrker]"),
        ("[collect.nvm]\nrack = 'x'\n", "unknown table [collect.nvm]"),
        ("no_such_flag = 1\n", "top level no_such_flag: no such option"),
        ("[common]\nlog_level = 'loud'\n", "[common] log_level: 'loud' is not one of"),
        ("[sink]\nverbose = 'yes please'\n", "[sink] verbose: expected true or false"),
        ("[sim]\nfault = 3\n", "[sim] fault: expected a list"),
        ("[worker]\nconfig = 'x.toml'\n", "[worker] config: no such option"),
        ("[worker\n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_key_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    cfg = toml(tmp_path, text)
    # any command refuses it: a typo in [worker] also stops `twin sql`
    for argv in (["worker"], ["sql", "SELECT 1"]):
        line = usage_error([*argv, "--config", str(cfg)], {}, capsys)
        assert says in line and str(cfg) in line, line


def test_a_missing_config_file_and_bad_env_values_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = usage_error(["worker"], {"TWIN_CONFIG": str(tmp_path / "nope.toml")}, capsys)
    assert "nope.toml" in line
    line = usage_error(["worker"], {"TWIN_WEB_PORT": "80000"}, capsys)
    assert "environment TWIN_WEB_PORT: expected a TCP port" in line
    line = usage_error(["worker"], {"TWIN_EXPOSE_FAUST_VIEWS": "maybe"}, capsys)
    assert "TWIN_EXPOSE_FAUST_VIEWS: expected true or false" in line
    line = usage_error(["replay", "--to", "2026-01-02"], {}, capsys)
    assert "required: --from" in line


# --- every flag of every command -------------------------------------------------------------


def _valid_text(action: argparse.Action) -> str:
    """A string the flag accepts, to set through its environment variable. A flag whose
    type reads a file of its own kind accepts none of the probes: its type is set aside
    (this test is about where values come from; the types have tests of their own)."""
    if action.nargs == 0:
        return "true"
    candidates = [str(action.default)] if action.default not in (None, [], "") else []
    candidates += [str(c) for c in action.choices or []]
    candidates += ["1", "kafka://h:1", "http://h:1/", "fouling:R0001/G01@1", "a"]
    for text in candidates:
        try:
            convert(action, text, "probe")
        except config.UsageError:
            continue
        return text
    assert action.choices is None, f"--{flag_name(action)}: no probe value accepted"
    action.type = None
    return "a"


def test_every_flag_of_every_command_has_its_twin_variable() -> None:
    root = _build_parser()
    seen = 0
    for path, leaf in leaf_parsers(root):
        for action in options(leaf):
            name = env_name(action)
            assert name == "TWIN_" + flag_name(action).upper().replace("-", "_")
            environ = {name: _valid_text(action)}
            args = defaults_of(root, path)
            got = fill(root, args, set(), environ, require=False)
            assert got[action.dest].source == f"env {name}", (path, name)
            seen += 1
    assert seen > 150  # every command's flags were walked


def _help_shows_default(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    text = parser._get_formatter()._expand_help(action)
    default = action.default
    if default in (None, False, True, [], "", argparse.SUPPRESS) or action.nargs == 0:
        return True
    shown = {str(default)}
    if isinstance(default, float) and default.is_integer():
        shown.add(str(int(default)))
    return any(s in text for s in shown)


def help_problems(root: argparse.ArgumentParser) -> list[str]:
    """Options of every command without help, or whose help does not show the default."""
    problems = []
    for path, leaf in leaf_parsers(root):
        for action in options(leaf):
            where = f"twin {' '.join(path)} --{flag_name(action)}"
            if not (action.help or "").strip():
                problems.append(f"{where}: no help")
            elif not _help_shows_default(leaf, action):
                problems.append(f"{where}: help does not show default {action.default!r}")
    return problems


def test_every_option_has_help_that_shows_its_default() -> None:
    problems = help_problems(_build_parser())
    assert not problems, "\n".join(problems)


def test_the_help_check_fails_on_a_flag_without_help() -> None:
    root = _build_parser()
    worker = dict(leaf_parsers(root))[("worker",)]
    worker.add_argument("--bare", type=int, default=3)
    worker.add_argument("--wrong", type=int, default=3, help="say (default 4)")
    assert help_problems(root) == [
        "twin worker --bare: no help",
        "twin worker --wrong: help does not show default 3",
    ]


def test_sim_fault_help_lists_the_simulators_fault_kinds() -> None:
    from twin.faults import FAULT_KINDS

    sim = dict(leaf_parsers(_build_parser()))[("sim",)]
    (fault,) = (a for a in sim._actions if "--fault" in a.option_strings)
    assert fault.help is not None
    assert all(kind in fault.help for kind in FAULT_KINDS)


# --- twin config show ------------------------------------------------------------------------


def test_config_show_names_the_source_of_each_setting(tmp_path: Path) -> None:
    cfg = toml(tmp_path, "[worker]\nweb_port = 7001\n")
    env = {"TWIN_BATCH_MAX": "32"}
    text = config.show(_build_parser(), ["worker", "--", "--app-id", "x"], env, cfg)
    rows = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert str(cfg) in text.splitlines()[0]
    assert rows["--web-port"].split()[1] == "7001" and f"config file {cfg}" in rows["--web-port"]
    assert rows["--batch-max"].split()[1:] == ["32", "env", "TWIN_BATCH_MAX"]
    assert rows["--app-id"].split()[1:] == ["x", "command", "line"]
    assert rows["--state-dir"].split()[1:] == ["var/twin", "default"]
    # a command with required arguments is shown without them
    assert "--from" in config.show(_build_parser(), ["replay"], {})
    with pytest.raises(config.UsageError, match="name a command of collect"):
        config.show(_build_parser(), ["collect"], {})
    # without a command: what differs from the defaults, per command
    changed = config.show(_build_parser(), [], env, cfg).splitlines()
    assert changed[0] == f"config file: {cfg}"
    assert "twin worker" in changed and "twin sim" not in changed
    assert sum(line.split()[0] == "--batch-max" for line in changed) == 2  # worker, demo
    assert "defaults" in config.show(_build_parser(), [], {})


def test_config_show_from_the_command_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    r = subprocess.run(
        [sys.executable, "-m", "streams", "config", "show", "collect", "dcgm"],
        capture_output=True, text=True, timeout=60, env=env | {"TWIN_RACK": "R0042"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "twin collect dcgm" in r.stdout
    assert any(line.split()[:2] == ["--rack", "R0042"] for line in r.stdout.splitlines())


# --- logs ------------------------------------------------------------------------------------


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("twin.x", logging.WARNING, __file__, 1, "hot %s", ("R0001",), None)
    record.rack = "R0001"
    record.temp_c = 71.5
    got = json.loads(logfmt.JsonFormatter().format(record))
    assert got["level"] == "warning" and got["logger"] == "twin.x" and got["msg"] == "hot R0001"
    assert got["rack"] == "R0001" and got["temp_c"] == 71.5
    assert got["ts"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(logfmt.JsonFormatter().format(record))["exc"]


def test_log_format_json_on_a_command(tmp_path: Path) -> None:
    """`--log-format json`: the deprecation warning of an old variable comes as a JSON line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    r = subprocess.run(
        [sys.executable, "-m", "streams", "sql", "SELECT 1", "--format", "csv",
         "--data-dir", str(tmp_path), "--log-format", "json"],
        capture_output=True, text=True, timeout=60, env=env | {"TWIN_SQL_TIMEOUT_S": "5"},
    )  # fmt: skip
    logs = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert logs, r.stderr
    first: dict[str, Any] = logs[0]
    assert {"ts", "level", "logger", "msg"} <= set(first)
    assert first["logger"] == "streams.config" and first["level"] == "warning"
    assert "TWIN_SQL_TIMEOUT_S is deprecated" in first["msg"]
    assert first["deprecated"] == "TWIN_SQL_TIMEOUT_S" and first["use"] == "TWIN_TIMEOUT"


# --- twin demo forwards what it accepts ------------------------------------------------------


def test_demo_forwards_every_worker_flag_it_accepts(tmp_path: Path) -> None:
    from streams.demo import Demo, forwarded_flags

    snapshot = tmp_path / "snap.npz"
    demo = parse_args(
        ["demo", "--batch-max", "128", "--checkpoint-interval", "3",
         "--max-message-bytes", "2048", "--replication", "3", "--restore", str(snapshot),
         "--racks", "8", "--web-port", "7011", "--app-id", "demo-x", "--partitions", "4",
         "--log-format", "json", "--log-level", "info", "--data-dir", str(tmp_path / "d")],
        {},
    )  # fmt: skip
    argv = Demo(demo).worker_argv("127.0.0.1:9", "g1.", demo.restore)
    worker = parse_args(argv, {})
    settings = settings_from_args(worker)
    assert settings.batch_max == 128
    assert settings.checkpoint_interval_s == 3.0
    assert settings.limits.max_message_bytes == 2048
    assert settings.replication == 3
    assert settings.restore_path == snapshot
    assert (settings.topic_prefix, settings.broker) == ("g1.", "kafka://127.0.0.1:9")
    # generically: every worker option the demo has arrives with the demo's value
    leaves = dict(leaf_parsers(_build_parser()))
    worker_opts = {a.dest for a in options(leaves[("worker",)])}
    shared = worker_opts & {a.dest for a in options(leaves[("demo",)])}
    shared -= {"broker", "topic_prefix", "state_dir", "config"}
    assert {"batch_max", "checkpoint_interval", "max_message_bytes", "replication"} <= shared
    for dest in shared:
        assert getattr(worker, dest) == getattr(demo, dest), dest
    sink = parse_args(Demo(demo).sink_argv("127.0.0.1:9", "g1."), {})
    assert (sink.max_message_bytes, sink.racks, sink.log_format) == (2048, 8, "json")
    assert forwarded_flags(parse_args(["demo"], {}), "worker") == []


def test_the_shipped_example_file_is_valid_for_every_command() -> None:
    example = Path(__file__).resolve().parents[2] / "compose" / "twin.example.toml"
    root = _build_parser()
    config.check_file(root, config.load_file(example), example)  # every table, key, value
    args = parse_args(["sink", "--config", str(example)], {})
    assert (args.http_port, args.group) == (9101, "twin-sink")
