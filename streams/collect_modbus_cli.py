"""``twin collect modbus``: its flags and its handler (streams/collect_modbus.py polls)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from streams.cli import _bounded_int, _positive_float, add_broker_flag, add_topic_flags
from streams.config import UsageError
from streams.kafka_security import add_kafka_security_flags, kafka_security_from_args
from streams.settings import Topics, parse_broker_url
from twin.errors import ConfigError
from twin.extras import import_extra

_port_or_off = _bounded_int("a TCP port (0 = off)", 0, 65535)


def add_modbus_parser(csub: Any) -> None:
    """Add ``modbus`` to the sub-commands of ``twin collect``."""
    m = csub.add_parser(
        "modbus",
        help="poll CDUs, meters and UPSes over Modbus TCP",
        description="Poll the Modbus TCP devices of a map file (registers, types, scales and "
        "units per point: compose/modbus-plant.example.toml) and publish their readings "
        "on telemetry.thermal / telemetry.power in the twin's SI units. A device that "
        "stops answering is reported (stale_bool, /metrics, one log line) and never "
        "holds up the others (docs/collectors.md).",
    )
    add_broker_flag(m)
    m.add_argument(
        "--map",
        type=Path,
        default=None,
        help="the Modbus map file (TOML; required)",
    )
    m.add_argument(
        "--check",
        action="store_true",
        help="validate the map, print its devices and points, and exit (no broker needed)",
    )
    m.add_argument(
        "--max-backoff",
        type=_positive_float,
        default=60.0,
        help="longest wait in seconds between reconnection attempts to a device that does "
        "not answer (the wait doubles from its poll interval; default 60)",
    )
    m.add_argument(
        "--metrics-port",
        type=_port_or_off,
        default=0,
        help="serve /metrics (twin_modbus_*) and /healthz on this port (default 0: off)",
    )
    m.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the /metrics listener (default 127.0.0.1; 0.0.0.0 for Prometheus "
        "on another host)",
    )
    m.add_argument(
        "--duration", type=float, default=None, help="stop after S seconds (default: never)"
    )
    add_topic_flags(m)
    add_kafka_security_flags(m)
    m.set_defaults(handler=run_collect_modbus)


def describe_map(plant: Any) -> str:
    """The devices and points of a validated map, one line each (``--check``)."""
    lines = []
    for d in plant.devices:
        lines.append(
            f"{d.name}: {d.host}:{d.port} unit {d.unit_id}, every {d.poll_interval_s:g} s, "
            f"timeout {d.timeout_s:g} s"
        )
        for p in d.points:
            lines.append(
                f"  {p.key} ({p.topic}) <- {p.kind} {p.address} {p.data_type} "
                f"x {p.scale:g} + {p.offset:g} [{p.source_unit}]"
            )
    return "\n".join(lines)


def run_collect_modbus(args: argparse.Namespace) -> int:
    """Poll the map's devices and publish their readings until Ctrl-C or --duration."""
    from streams.modbus_map import load_map

    if args.map is None:
        raise UsageError("no map: give --map plant.toml (compose/modbus-plant.example.toml)")
    try:
        plant = load_map(args.map)
    except ConfigError as exc:  # the map is part of the command's arguments: exit 2
        raise UsageError(str(exc)) from None
    if args.check:
        print(describe_map(plant))
        return 0
    if not args.broker:
        raise UsageError(
            "no broker: give --broker kafka://host:port, set TWIN_BROKER or put broker in "
            "the config file"
        )
    import_extra("pymodbus", "modbus", "twin collect modbus")
    # pymodbus logs every failed connection attempt; the collector logs once per change
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    bootstrap = parse_broker_url(args.broker)
    topics = Topics(args.topic_prefix)
    security = kafka_security_from_args(args)
    asyncio.run(_collect(args, plant, bootstrap, topics, security))
    return 0


async def _collect(
    args: argparse.Namespace, plant: Any, bootstrap: str, topics: Topics, security: Any
) -> None:
    from streams.cli_commands import _stop_on_signals
    from streams.collect_modbus import DeviceStatus, collect_modbus, serve_metrics
    from streams.producer import FramePublisher
    from streams.topics_admin import ensure_topics

    stop = asyncio.Event()
    _stop_on_signals(stop)
    await ensure_topics(
        bootstrap, topics, args.partitions, replication=args.replication, security=security
    )
    statuses: list[DeviceStatus] = []
    runner = None
    if args.metrics_port:
        try:
            runner = await serve_metrics(statuses, args.metrics_host, args.metrics_port)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port {args.metrics_port}: cannot listen on "
                f"{args.metrics_host}: {exc.strerror or exc}"
            ) from None
    topic_of = {"thermal": topics.thermal, "power": topics.power}
    try:
        async with FramePublisher(bootstrap, security=security) as pub:

            async def publish(kind: str, unit: str, data: bytes) -> None:
                await pub.send(topic_of[kind], unit, data)

            if args.duration:
                asyncio.get_running_loop().call_later(args.duration, stop.set)
            await collect_modbus(
                plant, publish, stop, statuses=statuses, max_backoff_s=args.max_backoff
            )
    finally:
        if runner is not None:
            await runner.cleanup()
