"""One configuration mechanism for every ``twin`` command: command line > environment >
config file > default.

The parsers declare plain defaults and nothing reads the environment while they are built.
After argparse has parsed the command line, :func:`resolve` fills every option that was not
given there from ``TWIN_<FLAG>`` (``--web-port`` <- ``TWIN_WEB_PORT``), then from the TOML
config file (``--config PATH`` or ``TWIN_CONFIG``), validating each value with the flag's own
``type`` and ``choices``. A bad value or an unknown key is a usage error (exit 2) in one line
that names the key and where it came from.

Config file layout (keys are flag names, with ``-`` or ``_``)::

    broker = "kafka://127.0.0.1:9092"   # top level: every command that has the flag
    [common]                             # the same, as a table
    log_format = "json"
    [worker]                             # one command
    web_port = 6070
    [collect.nvml]                       # a sub-command of a command
    gpu_offset = 4

A more specific table wins over a more general one (``[collect.nvml]`` > ``[collect]`` >
``[common]`` > top level).
"""

from __future__ import annotations

import argparse
import logging
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twin.errors import ConfigError

log = logging.getLogger(__name__)

#: Environment variable that names the config file (as ``--config``).
CONFIG_ENV = "TWIN_CONFIG"
#: Table of settings shared by every command (as the file's top level).
COMMON = "common"
#: Old variable names kept working (docs named them) -> (command path or None, flag).
DEPRECATED_ENV: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "TWIN_SQL_AUTH": (None, "sql-token-required"),
    "TWIN_SINK_HTTP_PORT": (("sink",), "http-port"),
    "TWIN_SQL_TIMEOUT_S": (("sql",), "timeout"),
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
#: Options that configure the configuration itself (never read from a file or TWIN_<FLAG>).
_NOT_CONFIGURABLE = frozenset({"config"})


class UsageError(ConfigError):
    """A wrong argument, environment value or config entry: exit status 2."""


@dataclass(frozen=True)
class Setting:
    """Where one option's effective value came from."""

    flag: str
    value: Any
    source: str


# --- the parser tree -------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def leaf_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser that runs a command, with its command path (``("collect", "nvml")``)."""
    sub = _subparsers(parser)
    if sub is None:
        yield path, parser
        return
    for name, child in sub.choices.items():
        yield from leaf_parsers(child, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The configurable options of a parser (not --help, not positionals, not --config)."""
    return [
        a
        for a in parser._actions
        if a.option_strings
        and not isinstance(a, argparse._HelpAction | argparse._VersionAction)
        and a.dest != argparse.SUPPRESS
        and flag_name(a) not in _NOT_CONFIGURABLE
    ]


def flag_name(action: argparse.Action) -> str:
    """``web-port`` for ``--web-port`` (the longest option string, without dashes)."""
    return max(action.option_strings, key=len).lstrip("-")


def env_name(action: argparse.Action) -> str:
    """``TWIN_WEB_PORT`` for ``--web-port``."""
    return "TWIN_" + flag_name(action).upper().replace("-", "_")


def _key(name: str) -> str:
    return name.replace("_", "-")


def relax_required(parser: argparse.ArgumentParser) -> None:
    """Let required options come from the environment or a file too: argparse no longer
    demands them; :func:`resolve` does, after filling them in."""
    for _, leaf in leaf_parsers(parser):
        for action in options(leaf):
            if action.required:
                action.required = False
                action._twin_required = True  # type: ignore[attr-defined]
        for group in leaf._mutually_exclusive_groups:
            if group.required:
                group.required = False
                group._twin_required = True  # type: ignore[attr-defined]


# --- converting a value from the environment or a file ----------------------------------------


def convert(action: argparse.Action, raw: Any, where: str) -> Any:
    """``raw`` (a string from the environment, or a TOML value) as the flag would parse it."""
    if action.nargs == 0:  # store_true / store_false / store_const
        if isinstance(raw, str):
            text = raw.strip().lower()
            if text not in _TRUE | _FALSE:
                raise UsageError(f"{where}: expected true or false, got {raw!r}")
            raw = text in _TRUE
        if not isinstance(raw, bool):
            raise UsageError(f"{where}: expected true or false, got {raw!r}")
        return action.const if raw else action.default
    if isinstance(action, argparse._AppendAction):
        items = raw.split() if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise UsageError(f"{where}: expected a list, got {raw!r}")
        return [_one(action, item, where) for item in items]
    return _one(action, raw, where)


def _one(action: argparse.Action, raw: Any, where: str) -> Any:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise UsageError(f"{where}: expected a single value, got {raw!r}")
    text = str(raw)
    parse = action.type if callable(action.type) else str
    try:
        value = parse(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{where}: {exc}") from None
    except (TypeError, ValueError):
        raise UsageError(f"{where}: invalid value {text!r}") from None
    if action.choices is not None and value not in action.choices:
        allowed = ", ".join(map(str, action.choices))
        raise UsageError(f"{where}: {text!r} is not one of {allowed}")
    return value


# --- the config file -------------------------------------------------------------------------


def load_file(path: Path) -> dict[str, Any]:
    """The TOML config file as a dict; UsageError naming the file if it cannot be read."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: not valid TOML: {exc}") from None


def _layers(data: Mapping[str, Any], path: tuple[str, ...]) -> list[tuple[str, Mapping[str, Any]]]:
    """(table name, scalar entries) from the most general to the most specific."""
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    out: list[tuple[str, Mapping[str, Any]]] = [("top level", top)]
    common = data.get(COMMON, {})
    out.append((f"[{COMMON}]", common if isinstance(common, dict) else {}))
    table: Any = data
    for i, name in enumerate(path):
        table = table.get(name) if isinstance(table, dict) else None
        table = table if isinstance(table, dict) else {}  # `broker = ...` is no [broker]
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        out.append((f"[{'.'.join(path[: i + 1])}]", scalars))
    return out


def check_file(root: argparse.ArgumentParser, data: Mapping[str, Any], path: Path) -> None:
    """Refuse unknown tables, unknown keys and bad values anywhere in the file."""
    leaves = dict(leaf_parsers(root))
    flags_under: dict[tuple[str, ...], set[str]] = {}
    for cmd, leaf in leaves.items():
        names = {flag_name(a) for a in options(leaf)}
        for i in range(len(cmd) + 1):
            flags_under.setdefault(cmd[:i], set()).update(names)

    def walk(table: Mapping[str, Any], prefix: tuple[str, ...], label: str) -> None:
        known = flags_under.get(prefix)
        for key, value in table.items():
            if isinstance(value, dict):
                sub = (*prefix, key)
                if prefix == () and key == COMMON:
                    walk(value, (), f"[{COMMON}]")
                elif sub in flags_under:
                    walk(value, sub, f"[{'.'.join(sub)}]")
                else:
                    raise UsageError(f"config file {path}: unknown table [{'.'.join(sub)}]")
            elif known is None or _key(key) not in known:
                raise UsageError(f"config file {path}: {label} {key}: no such option")

    walk(data, (), "top level")
    for cmd, leaf in leaves.items():
        _from_file(leaf, cmd, data, path)  # converts, so a bad value anywhere is refused


def _from_file(
    leaf: argparse.ArgumentParser,
    cmd: tuple[str, ...],
    data: Mapping[str, Any],
    path: Path,
) -> dict[str, tuple[Any, str]]:
    """dest -> (value, source) of the file's entries that apply to this command."""
    by_flag = {flag_name(a): a for a in options(leaf)}
    out: dict[str, tuple[Any, str]] = {}
    for label, entries in _layers(data, cmd):
        for key, raw in entries.items():
            action = by_flag.get(_key(key))
            if action is None:
                continue
            where = f"config file {path}: {label} {key}"
            out[action.dest] = (convert(action, raw, where), f"config file {path} {label}")
    return out


# --- resolving a command line ----------------------------------------------------------------


def command_path(
    root: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[tuple[str, ...], argparse.ArgumentParser]:
    """The chosen command's path and parser; stops at a parser whose sub-command is missing."""
    path: tuple[str, ...] = ()
    parser = root
    while (sub := _subparsers(parser)) is not None:
        name = getattr(args, sub.dest, None)
        if name is None:
            break
        path, parser = (*path, name), sub.choices[name]
    return path, parser


def given_on_command_line(root: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """dests the command line set: parse again with every default suppressed."""
    saved: list[tuple[argparse.Action, Any]] = []
    for _, leaf in leaf_parsers(root):
        for action in options(leaf):
            saved.append((action, action.default))
            action.default = argparse.SUPPRESS
    try:
        bare = root.parse_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(bare))


def _env_value(
    action: argparse.Action, cmd: tuple[str, ...], environ: Mapping[str, str]
) -> tuple[str, str] | None:
    name = env_name(action)
    if environ.get(name, ""):
        return name, environ[name]
    for old, (where, flag) in DEPRECATED_ENV.items():
        if flag == flag_name(action) and (where is None or where == cmd) and environ.get(old):
            return old, environ[old]
    return None


def config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path | None:
    """The config file: --config, else TWIN_CONFIG, else none."""
    given = getattr(args, "config", None)
    if given is not None:
        return Path(given)
    return Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None


def fill(
    root: argparse.ArgumentParser,
    args: argparse.Namespace,
    given: set[str],
    environ: Mapping[str, str],
    *,
    require: bool = True,
) -> dict[str, Setting]:
    """Fill every option of the chosen command that the command line left out (env, then
    the config file, then the default); returns dest -> Setting. UsageError on a bad value."""
    cmd, leaf = command_path(root, args)
    path = config_path(args, environ)
    data: dict[str, Any] = {}
    if path is not None:
        data = load_file(path)
        check_file(root, data, path)
    from_file = _from_file(leaf, cmd, data, path) if path is not None else {}
    # Members of a mutually exclusive group are one setting: the highest layer that sets any
    # of them sets the group, so a file's --input does not clash with a command line's
    # --from-sql.
    group_of: dict[str, list[str]] = {}
    for group in leaf._mutually_exclusive_groups:
        dests = [a.dest for a in group._group_actions]
        for d in dests:
            group_of[d] = dests
    settings: dict[str, Setting] = {}
    for action in options(leaf):
        dest, flag = action.dest, flag_name(action)
        peers = group_of.get(dest, [dest])
        if dest in given:
            settings[dest] = Setting(flag, getattr(args, dest), "command line")
            continue
        env = _env_value(action, cmd, environ)
        if env is not None and not any(p in given for p in peers):
            value = convert(action, env[1], f"environment {env[0]}")
            setattr(args, dest, value)
            old = env[0] != env_name(action)
            note = f" (deprecated: use {env_name(action)})" if old else ""
            settings[dest] = Setting(flag, value, f"env {env[0]}{note}")
            continue
        taken_above = any(
            p in given or _env_value(a, cmd, environ) is not None
            for a in options(leaf)
            for p in peers
            if a.dest == p and p != dest
        )
        if dest in from_file and not taken_above:
            value, source = from_file[dest]
            setattr(args, dest, value)
            settings[dest] = Setting(flag, value, source)
            continue
        settings[dest] = Setting(flag, getattr(args, dest, action.default), "default")
    if require:
        _check_required(leaf, settings)
    return settings


def _check_required(leaf: argparse.ArgumentParser, settings: Mapping[str, Setting]) -> None:
    missing = [
        max(a.option_strings, key=len)
        for a in options(leaf)
        if getattr(a, "_twin_required", False) and settings[a.dest].value is None
    ]
    if missing:
        leaf.error("the following arguments are required: " + ", ".join(missing))
    for group in leaf._mutually_exclusive_groups:
        members = group._group_actions
        if getattr(group, "_twin_required", False) and all(
            settings[a.dest].value is None for a in members if a.dest in settings
        ):
            names = " ".join(max(a.option_strings, key=len) for a in members)
            leaf.error(f"one of the arguments {names} is required")


def warn_deprecated(settings: Mapping[str, Setting]) -> None:
    """Log a warning for each setting read from an old environment variable name."""
    for s in settings.values():
        if "(deprecated" in s.source:
            old = s.source.split()[1]
            new = "TWIN_" + s.flag.upper().replace("-", "_")
            log.warning("%s is deprecated; use %s", old, new, extra={"deprecated": old, "use": new})


def resolve(
    root: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[argparse.Namespace, dict[str, Setting]]:
    """Parse ``argv`` and fill what it left out: the one entry point of every command line.

    ``root`` must have gone through :func:`relax_required`. A bad environment value or
    config entry exits 2 with one line, as a bad flag does.
    """
    import sys

    argv = hoist_common_flags(sys.argv[1:] if argv is None else list(argv))
    if argv and argv[0].split("=", 1)[0] in COMMON_FLAGS:
        root.error(
            f"{argv[0].split('=', 1)[0]} needs a command after it: twin {argv[0]} ... COMMAND"
        )
    environ = os.environ if environ is None else environ
    args = root.parse_args(argv)
    _, leaf = command_path(root, args)
    try:
        settings = fill(root, args, given_on_command_line(root, argv), environ)
    except UsageError as exc:
        leaf.error(str(exc))
    return args, settings


#: Flags every command has, which may also come before the command's name
#: (``twin --config site.toml worker``), as with git or kubectl.
COMMON_FLAGS = ("--config", "--log-format", "--log-level")


def hoist_common_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` with the common flags given before the command moved after its words (and
    before a ``--``), where the command's own parser takes them; anything else as given.
    A common flag with no value stays where it is, for argparse to report."""
    head: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if name not in COMMON_FLAGS:
            break
        if "=" in a:
            head.append(a)
            i += 1
        elif i + 1 < len(argv):
            head += argv[i : i + 2]
            i += 2
        else:
            break
    if not head:
        return list(argv)
    rest = list(argv[i:])
    cut = rest.index("--") if "--" in rest else len(rest)
    return [*rest[:cut], *head, *rest[cut:]]


def parse(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """A stand-alone parser's namespace with the environment and config-file fallbacks."""
    relax_required(parser)
    return resolve(parser, argv, environ)[0]


# --- twin config show ------------------------------------------------------------------------


def add_config_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``config show``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "config",
        help="show the effective settings of a command and where each came from",
        description="Settings come from the command line, then TWIN_<FLAG> environment "
        "variables, then the TOML config file (--config or TWIN_CONFIG), then the defaults.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    show = sub.add_parser(
        "show",
        help="print every setting of COMMAND, its value and its source",
        description="Print every setting of COMMAND, its effective value and where it came "
        "from (default, env TWIN_X, config file, command line). Flags after -- are taken "
        "as that command's command line: twin config show worker -- --web-port 7000",
    )
    show.add_argument(
        "words",
        nargs="*",
        metavar="COMMAND",
        help="command, sub-command, then -- and its flags (default: every command's "
        "settings that are not defaults)",
    )
    show.set_defaults(handler=run_show)
    return p


def defaults_of(root: argparse.ArgumentParser, path: Sequence[str]) -> argparse.Namespace:
    """The namespace of command ``path`` with every default, as if nothing were given."""
    args = argparse.Namespace()
    parser = root
    for name in path:
        chooser = _subparsers(parser)
        if chooser is None or name not in chooser.choices:
            raise UsageError(f"no command {' '.join(path)}")
        setattr(args, chooser.dest, name)
        parser = chooser.choices[name]
    for action in parser._actions:
        if action.dest != argparse.SUPPRESS:
            setattr(args, action.dest, action.default)
    return args


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if value == "":
        return '""'
    if isinstance(value, list):
        return " ".join(map(str, value)) or "-"
    return str(value)  # a Secret prints ***


def show(
    root: argparse.ArgumentParser,
    words: Sequence[str],
    environ: Mapping[str, str],
    config: Path | None = None,
) -> str:
    """The effective settings of the command ``words`` names, one per line with its source."""
    parser: argparse.ArgumentParser = root
    path: tuple[str, ...] = ()
    rest = list(words)
    while (sub := _subparsers(parser)) is not None and rest and rest[0] in sub.choices:
        parser = sub.choices[rest[0]]
        path = (*path, rest.pop(0))
    sub = _subparsers(parser)
    if sub is not None and not path and not rest:
        return show_changed(root, environ, config)
    if sub is not None:
        names = ", ".join(sub.choices)
        where = " ".join(path) or "twin"
        raise UsageError(f"name a command of {where} to show: {names}")
    if rest and rest[0] == "--":
        rest.pop(0)
    argv = [*path, *(["--config", str(config)] if config is not None else []), *rest]
    if rest:
        args = root.parse_args(argv)
        given = given_on_command_line(root, argv)
    else:  # no command line: its positionals need not be given
        args = defaults_of(root, path)
        args.config = config
        given = set()
    settings = fill(root, args, given, environ, require=False)
    file = config_path(args, environ)
    lines = [f"twin {' '.join(path)}  (config file: {file if file is not None else 'none'})"]
    width = max((len(s.flag) for s in settings.values()), default=0) + 2
    for setting in settings.values():
        lines.append(f"  --{setting.flag:<{width}} {_text(setting.value):<24} {setting.source}")
    return "\n".join(lines)


def show_changed(
    root: argparse.ArgumentParser, environ: Mapping[str, str], config: Path | None = None
) -> str:
    """Every command's settings that do not come from their defaults (``twin config show``
    without a command)."""
    file = config if config is not None else config_path(argparse.Namespace(), environ)
    lines = [f"config file: {file if file is not None else 'none'}"]
    for path, _ in leaf_parsers(root):
        if path[0] == "config":
            continue
        args = defaults_of(root, path)
        args.config = config
        changed = [
            s
            for s in fill(root, args, set(), environ, require=False).values()
            if s.source != "default"
        ]
        if changed:
            lines.append(f"twin {' '.join(path)}")
            lines += [f"  --{s.flag:<26} {_text(s.value):<24} {s.source}" for s in changed]
    if len(lines) == 1:
        lines.append("every command runs with its defaults (twin config show COMMAND: all)")
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    """Handler of ``twin config show``."""
    from streams.cli import _build_parser

    print(show(_build_parser(), args.words, os.environ, getattr(args, "config", None)))
    return 0
