"""``twin``: the command line of the datacenter twin.

Every flag has a ``TWIN_<FLAG>`` environment fallback (``--broker`` <- ``TWIN_BROKER``), read
once here; nothing below reads the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from streams.kafka_reach import quiet_client_logs
from streams.settings import env_default
from twin.errors import TwinError

Handler = Callable[[argparse.Namespace], int]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a wrong argument in one line, without the usage block."""

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


def add_broker_flag(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--broker kafka://host:port with the TWIN_BROKER fallback."""
    default = env_default("broker", "" if not required else "kafka://127.0.0.1:9092")
    p.add_argument(
        "--broker",
        default=default or None,
        help="Kafka bootstrap as kafka://host:port[,host:port] (env TWIN_BROKER)",
    )


def add_topic_flags(p: argparse.ArgumentParser) -> None:
    """Flags of everything that creates or uses the twin's topics, and the log level."""
    p.add_argument(
        "--topic-prefix",
        default=env_default("topic_prefix", ""),
        help="prefix of every topic name, to share a broker (env TWIN_TOPIC_PREFIX)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=int(env_default("partitions", "8")),
        help="partitions of the keyed topics (env TWIN_PARTITIONS)",
    )
    p.add_argument(
        "--replication",
        type=int,
        default=int(env_default("replication", "1")),
        help="replication factor of the twin's topics and changelogs "
        "(env TWIN_REPLICATION; 3 on a 3-node cluster)",
    )
    p.add_argument(
        "--log-level",
        default=env_default("log_level", "warning"),
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )


def add_common_worker_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by worker and demo."""
    add_topic_flags(p)
    p.add_argument(
        "--web-port",
        type=_port,
        default=int(env_default("web_port", "6066")),
        help="HTTP port of the API (env TWIN_WEB_PORT, default 6066)",
    )
    p.add_argument(
        "--web-host",
        default=env_default("web_host", "127.0.0.1"),
        help="HTTP bind address (env TWIN_WEB_HOST)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env_default("data_dir", "data")),
        help="Parquet history store, as the sink's (env TWIN_DATA_DIR, default data)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env_default("state_dir", "var/twin")),
        help="worker state directory (env TWIN_STATE_DIR, default var/twin)",
    )
    p.add_argument(
        "--restore",
        type=Path,
        default=None,
        metavar="SNAPSHOT",
        help="start from a snapshot file (GET /api/snapshot of a worker)",
    )
    p.add_argument(
        "--app-id",
        default=env_default("app_id", "dc-twin"),
        help="Faust application id = consumer group (env TWIN_APP_ID)",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=_positive_float,
        default=float(env_default("checkpoint_interval", "10.0")),
        help="seconds between table checkpoints of a changed rack",
    )
    p.add_argument(
        "--batch-max",
        type=_batch_max,
        default=_batch_max(env_default("batch_max", "4096")),
        help="telemetry frames an agent takes at once; the stream buffers 4x that "
        "(env TWIN_BATCH_MAX)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(env_default("max_message_bytes", str(1 << 20))),
        help="larger telemetry messages go to the DLQ (env TWIN_MAX_MESSAGE_BYTES)",
    )
    p.add_argument(
        "--ingest-map",
        type=Path,
        default=env_default("ingest_map", "") or None,
        metavar="TOML",
        help="site mapping of Telegraf/line-protocol metrics to the twin's readings, over "
        "the shipped one (env TWIN_INGEST_MAP; docs/collectors.md)",
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


def add_sim_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by sim and demo."""
    add_site_flags(p)
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulator")
    p.add_argument("--dt", type=_positive_float, default=1.0, help="GPU sample interval [s]")
    p.add_argument(
        "--plant-dt",
        type=_positive_float,
        default=5.0,
        help="seconds between plant readings (CDUs, rack manifolds, power chain; default 5)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND:TARGET@T",
        help="inject a fault, e.g. fouling:R0003/G12@600 (repeatable); a GPU is its NVML "
        "index from 0 (G00..G71), as in telemetry and residual entities",
    )
    p.add_argument(
        "--faults-log",
        type=Path,
        default=None,
        help="append injected faults (ground truth) to this JSONL file",
    )


def _build_parser() -> OneLineParser:
    from streams import cli_commands

    parser = OneLineParser(
        prog="twin",
        description="Digital twin of an AI datacenter: telemetry through Kafka into Faust "
        "agents that keep a physics model of the facility up to date.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    cli_commands.register(sub)
    from streams.cli_detect import add_detect_parser

    add_detect_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``twin``; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    # Our sub-commands set ``handler``; storage's set ``func``: both mean the same.
    handler: Handler | None = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return 2
    level = getattr(args, "log_level", "warning").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    quiet_client_logs(level)  # aiokafka: once a minute
    try:
        return handler(args)
    except TwinError as exc:
        print(f"twin {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
