"""``twin``: the command line of the datacenter twin.

Every flag has a ``TWIN_<FLAG>`` environment fallback (``--broker`` <- ``TWIN_BROKER``) and a
config-file entry, filled in by :mod:`streams.config` after parsing (command line > env >
config file > default); the parsers declare plain defaults and nothing reads the environment.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from streams import config, logfmt
from streams.kafka_reach import quiet_client_logs
from streams.settings import parse_broker_url
from twin.errors import ConfigError, TwinError

Handler = Callable[[argparse.Namespace], int]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default unless its text already names one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = (
            default not in (None, False, True, "", [], argparse.SUPPRESS)
            and action.option_strings
            and "default" not in text
        )
        return f"{text} (default: %(default)s)" if shown else action.help


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a wrong argument in one line, without the usage block, and
    shows the defaults in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _bounded_int(what: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or not lo <= int(text) <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} {lo}..{hi}, got {text!r}")
        return int(text)

    return parse


_batch_max = _bounded_int("a batch size", 1, 65_536)
_racks = _bounded_int("a rack count", 1, 10_000)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1..65535, got {text!r}")
    return int(text)


def broker_url(text: str) -> str:
    """argparse type of --broker: ``kafka://host:port[,host:port]``, checked, unchanged."""
    try:
        parse_broker_url(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--broker ")) from None
    return text


def add_broker_flag(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--broker kafka://host:port; without ``required`` it has no default (the command
    refuses to start without one), with it the default is the local broker."""
    p.add_argument(
        "--broker",
        type=broker_url,
        default="kafka://127.0.0.1:9092" if required else None,
        help="Kafka bootstrap as kafka://host:port[,host:port]"
        + ("" if required else " (required: no default)"),
    )


def add_topic_flags(p: argparse.ArgumentParser) -> None:
    """Flags of everything that creates or uses the twin's topics, and the log level."""
    p.add_argument(
        "--topic-prefix",
        default="",
        help="prefix of every topic name, to share a broker (default: none)",
    )
    p.add_argument(
        "--partitions",
        type=_bounded_int("a partition count", 1, 1024),
        default=None,
        help="partitions of the keyed topics and changelogs, at most this many workers "
        "(default: the site file's [site] kafka_partitions, 24 in the shipped one)",
    )
    p.add_argument(
        "--replication",
        type=int,
        default=1,
        help="replication factor of the twin's topics and changelogs (3 on a 3-node cluster)",
    )
    add_log_level_flag(p)


def add_log_level_flag(p: argparse.ArgumentParser) -> None:
    """--log-level of the root logger."""
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )


def _ingest_map(text: str) -> Path:
    from streams.ingest_map import ingest_map_arg  # pyarrow: only when the flag is given

    return ingest_map_arg(text)


def add_common_worker_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by worker and demo."""
    add_topic_flags(p)
    p.add_argument("--web-port", type=_port, default=6066, help="HTTP port of the API")
    p.add_argument("--web-host", default="127.0.0.1", help="HTTP bind address")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="Parquet history store, as the sink's",
    )
    p.add_argument(
        "--state-dir", type=Path, default=Path("var/twin"), help="worker state directory"
    )
    p.add_argument(
        "--restore",
        type=Path,
        default=None,
        metavar="SNAPSHOT",
        help="start from a snapshot file (GET /api/snapshot of a worker; default: none)",
    )
    p.add_argument("--app-id", default="dc-twin", help="Faust application id = consumer group")
    p.add_argument(
        "--checkpoint-interval",
        type=_positive_float,
        default=10.0,
        help="seconds between table checkpoints of a changed rack",
    )
    p.add_argument(
        "--batch-max",
        type=_batch_max,
        default=4096,
        help="telemetry frames an agent takes at once; the stream buffers 4x that",
    )
    p.add_argument(
        "--delivery",
        choices=["stream", "batch"],
        default="stream",
        help="how GPU frames reach the worker: Faust's stream, one message at a time, or "
        "batch: each fetch handed over whole (fewer CPU-seconds a frame; opt-in while it is "
        "proven on long backlogs, docs/worker.md)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=1 << 20,
        help="larger telemetry messages go to the DLQ",
    )
    p.add_argument(
        "--ingest-map",
        type=_ingest_map,
        default=None,
        metavar="TOML",
        help="site mapping of Telegraf/line-protocol metrics to the twin's readings, over "
        "the shipped one (docs/collectors.md)",
    )


def add_site_flags(p: argparse.ArgumentParser) -> None:
    """--site and --racks: the facility a simulator or a worker models."""
    p.add_argument(
        "--racks",
        type=_racks,
        default=None,
        help="number of racks (default: the site file's; up to 1250 for the campus)",
    )
    p.add_argument("--site", type=Path, default=None, help="site TOML (default: Borlänge hall)")


def _fault_kinds_help() -> str:
    from twin.faults import FAULT_KINDS  # the simulator's own registry

    kinds = ", ".join(f"{k} ({target})" for k, (target, _) in FAULT_KINDS.items())
    return f"kinds (target): {kinds}"


def add_sim_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by sim and demo."""
    add_site_flags(p)
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulator")
    p.add_argument("--dt", type=_positive_float, default=1.0, help="GPU sample interval [s]")
    p.add_argument(
        "--plant-dt",
        type=_positive_float,
        default=5.0,
        help="seconds between plant readings (CDUs, rack manifolds, power chain)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND:TARGET@T",
        help="inject a fault, e.g. fouling:R0003/G12@600 (repeatable; default: none); a GPU "
        "is its NVML index from 0 (G00..G71), as in telemetry and residual entities; "
        + _fault_kinds_help(),
    )
    p.add_argument(
        "--faults-log",
        type=Path,
        default=None,
        help="append injected faults (ground truth) to this JSONL file (default: none)",
    )


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """--config and --log-format on every command (and --log-level where it has none)."""
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"TOML config file (env {config.CONFIG_ENV}; default: none); precedence: "
        "command line > TWIN_<FLAG> environment > config file > default",
    )
    p.add_argument(
        "--log-format",
        choices=logfmt.LOG_FORMATS,
        default="text",
        help="log lines as text or as JSON lines (ts, level, logger, msg, extra fields)",
    )
    if not any("--log-level" in a.option_strings for a in p._actions):
        add_log_level_flag(p)


def _build_parser() -> OneLineParser:
    from streams import cli_commands
    from streams.cli_detect import add_detect_parser

    parser = OneLineParser(
        prog="twin",
        description="Digital twin of an AI datacenter: telemetry through Kafka into Faust "
        "agents that keep a physics model of the facility up to date.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    cli_commands.register(sub)
    add_detect_parser(sub)
    config.add_config_parser(sub)
    for _, leaf in config.leaf_parsers(parser):
        add_common_flags(leaf)
    config.relax_required(parser)
    return parser


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """``twin``'s namespace for ``argv``, with the TWIN_<FLAG> and config-file fallbacks."""
    return config.resolve(_build_parser(), argv, environ)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``twin``; returns the exit status (2 usage error, 1 runtime failure)."""
    parser = _build_parser()
    args, settings = config.resolve(parser, argv)
    # where each value came from: twin demo tells a --web-port asked for from its default
    args.setting_sources = {dest: s.source for dest, s in settings.items()}
    # Our sub-commands set ``handler``; storage's set ``func``: both mean the same.
    handler: Handler | None = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:
        # `twin` or `twin collect` alone: the help of what was typed, as a usage error
        config.command_path(parser, args)[1].print_help(sys.stderr)
        return 2
    logfmt.configure(getattr(args, "log_level", "warning"), getattr(args, "log_format", "text"))
    quiet_client_logs(getattr(args, "log_level", "warning"))  # aiokafka: once a minute
    config.warn_deprecated(settings)
    try:
        return handler(args)
    except config.UsageError as exc:
        print(f"twin {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TwinError as exc:
        print(f"twin {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
