"""``twin sink``: run the Parquet sink until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from typing import Any

from storage.cliutil import add_data_dir_flag, setup_logging
from storage.layout import TableDef, default_tables
from storage.sink import ParquetSink
from storage.site_tables import site_rack_cdu, write_site_tables
from streams.codec import DEFAULT_LIMITS, Limits
from streams.kafka_security import add_kafka_security_flags, kafka_security_from_args
from streams.schema import TOPIC_DLQ
from streams.settings import parse_broker_url
from twin.errors import ConfigError, TwinError
from twin.site import load_site


def _fill_parser(p: argparse.ArgumentParser) -> None:
    from streams.cli import add_broker_flag, add_site_flags  # streams.cli registers this parser

    add_broker_flag(p, required=True)
    # the site whose rack -> CDU table (site_racks) the store gets, for SQL joins
    add_site_flags(p)
    add_data_dir_flag(p, "written to (as the worker's --data-dir)")
    p.add_argument(
        "--topics",
        default="",
        help="comma-separated topics to consume (default: every table's topic)",
    )
    p.add_argument(
        "--topic-prefix",
        default="",
        help="prefix of every source topic, as given to the worker (default: none)",
    )
    p.add_argument(
        "--group", default="twin-sink", help="Kafka consumer group of the sink (one per store)"
    )
    p.add_argument(
        "--flush-rows",
        type=int,
        default=500_000,
        help="write a table's buffered rows to Parquet once it holds this many",
    )
    p.add_argument(
        "--flush-seconds",
        type=float,
        default=60.0,
        help="write buffered rows to Parquet at least this often [s]",
    )
    p.add_argument(
        "--retry-seconds",
        type=float,
        default=5.0,
        help="wait before retrying after a broker or disk error [s]",
    )
    p.add_argument(
        "--table-topics",
        default="",
        help="override source topics: table=topic[,table=topic] (default: none)",
    )
    p.add_argument(
        "--max-poll-records",
        type=int,
        default=5000,
        help="records one poll of the consumer returns at most",
    )
    p.add_argument(
        "--maintenance-seconds",
        type=float,
        default=300.0,
        help="compaction, rollups and retention every N s (0: off)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=1 << 20,
        help="largest message accepted, as the worker's --max-message-bytes",
    )
    p.add_argument(
        "--max-age-seconds",
        type=float,
        default=86400.0,
        help="live window: samples older than this at their broker time are refused unless "
        "marked as replay (the worker's limit)",
    )
    p.add_argument(
        "--max-lag-seconds",
        type=float,
        default=7 * 86400.0,
        help="how far behind its records the sink may read and still judge them at their "
        "broker time (beyond: against now)",
    )
    p.add_argument(
        "--dedupe-window-seconds",
        type=float,
        default=600.0,
        help="recent history whose sample keys stay in memory (older: checked on disk)",
    )
    p.add_argument(
        "--dlq-topic",
        default="",
        help="dead-letter topic for refused twin.* records (default: <prefix>telemetry.dlq)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=0,
        help="serve GET /healthz and /metrics on this port (default 0: no HTTP server)",
    )
    p.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address the --http-port server binds",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs of the sink")
    add_kafka_security_flags(p)


def add_sink_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sink`` on an argparse subparsers object; ``run_sink`` runs it."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sink", help="write telemetry topics to the Parquet store, exactly once"
    )
    _fill_parser(p)
    p.set_defaults(handler=run_sink)
    return p


def with_prefix(tables: dict[str, TableDef], prefix: str) -> dict[str, TableDef]:
    """Prefix every table's source topic (twins sharing a broker use topic prefixes)."""
    if not prefix:
        return tables
    return {
        name: dataclasses.replace(t, topic=prefix + t.topic) if t.topic else t
        for name, t in tables.items()
    }


def with_topics(tables: dict[str, TableDef], spec: str) -> dict[str, TableDef]:
    """Apply a ``table=topic,...`` override to the registry."""
    out = dict(tables)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, eq, topic = item.partition("=")
        if not eq or name not in out or not topic:
            raise ConfigError(f"--table-topics: {item!r} is not table=topic with a known table")
        out[name] = dataclasses.replace(out[name], topic=topic)
    return out


async def _main(sink: ParquetSink, http_host: str = "127.0.0.1", http_port: int = 0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = None
    if http_port:
        from storage.sink_http import SinkHttp

        server = SinkHttp(sink, http_host, http_port)
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError(f"--http-port {http_port}: {exc}") from exc
    try:
        await sink.run(stop)
    finally:
        if server is not None:
            await server.stop()


def _limits(args: argparse.Namespace) -> Limits:
    if args.max_age_seconds <= 0 or args.max_lag_seconds < 0 or args.max_message_bytes <= 0:
        raise ConfigError("--max-age-seconds and --max-message-bytes must be > 0, lag >= 0")
    if args.dedupe_window_seconds <= 0:
        raise ConfigError("--dedupe-window-seconds must be > 0")
    return dataclasses.replace(
        DEFAULT_LIMITS, max_age_s=args.max_age_seconds, max_message_bytes=args.max_message_bytes
    )


def run_sink(args: argparse.Namespace) -> int:
    """Run the sink; 2 on a bad argument (or a file it names), 1 on a runtime failure."""
    setup_logging(args.verbose)
    try:
        if not 0 <= args.http_port <= 65535:
            raise ConfigError("--http-port must be 0 (off) .. 65535")
        tables = with_topics(with_prefix(default_tables(), args.topic_prefix), args.table_topics)
        topics = [t for t in args.topics.split(",") if t] or None
        site_racks = site_rack_cdu(load_site(args.site, racks=args.racks))
        limits = _limits(args)
        security = kafka_security_from_args(args)
    except TwinError as exc:
        print(f"twin sink: error: {exc}", file=sys.stderr)
        return 2
    try:
        write_site_tables(args.data_dir, site_racks)
        sink = ParquetSink(
            parse_broker_url(args.broker),
            args.data_dir,
            topics,
            args.group,
            args.flush_rows,
            args.flush_seconds,
            retry_s=args.retry_seconds,
            maintenance_s=args.maintenance_seconds or None,
            tables=tables,
            consumer_config={"max_poll_records": args.max_poll_records},
            security=security,
            limits=limits,
            max_lag_s=args.max_lag_seconds,
            dedupe_window_s=args.dedupe_window_seconds,
            dlq_topic=args.dlq_topic or args.topic_prefix + TOPIC_DLQ,
        )
        asyncio.run(_main(sink, args.http_host, args.http_port))
    except TwinError as exc:
        print(f"twin sink: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from streams.cli import add_common_flags
    from streams.config import parse

    p = argparse.ArgumentParser(prog="twin sink")
    _fill_parser(p)
    add_common_flags(p)
    return run_sink(parse(p, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
