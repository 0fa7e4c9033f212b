"""Sub-commands of ``twin``: each adds its parser and a handler taking the parsed args."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from streams import logfmt
from streams.alert_flags import add_alert_flags, alert_settings_from_args
from streams.auth import add_api_auth_flags, api_auth_from_args
from streams.cli import (
    _bounded_int,
    _port,
    _positive_float,
    add_broker_flag,
    add_common_worker_flags,
    add_sim_flags,
    add_site_flags,
    add_topic_flags,
)
from streams.codec import Limits
from streams.config import UsageError
from streams.kafka_security import add_kafka_security_flags, kafka_security_from_args
from streams.settings import Settings, Topics, parse_broker_url


def _need_broker(args: argparse.Namespace) -> None:
    if not args.broker:
        raise UsageError(
            "no broker: give --broker kafka://host:port, set TWIN_BROKER or put broker in "
            "the config file"
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Worker settings from parsed flags (the TWIN_* and config-file fallbacks are filled)."""
    from streams.topics_admin import resolve_partitions

    _need_broker(args)
    return Settings(
        broker=args.broker,
        app_id=args.app_id,
        topic_prefix=args.topic_prefix,
        partitions=resolve_partitions(args.partitions, getattr(args, "site", None)),
        web_host=args.web_host,
        web_port=args.web_port,
        state_dir=args.state_dir,
        history_dir=args.data_dir,
        restore_path=args.restore,
        site_path=getattr(args, "site", None),
        racks=getattr(args, "racks", None),
        checkpoint_interval_s=args.checkpoint_interval,
        batch_max=args.batch_max,
        delivery=args.delivery,
        log_level=args.log_level,
        limits=Limits(max_message_bytes=args.max_message_bytes),
        ingest_map_path=getattr(args, "ingest_map", None),
        replication=args.replication,
        kafka_security=kafka_security_from_args(args),
        **api_auth_from_args(args),
        **alert_settings_from_args(args),
    )


def run_worker(args: argparse.Namespace) -> int:
    """Run one Faust worker with the API until SIGTERM / Ctrl-C."""
    from streams.app import build_worker
    from streams.faust_app import TwinWorkerRunner
    from streams.topics_admin import ensure_topics

    settings = settings_from_args(args)
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    asyncio.run(
        ensure_topics(
            settings.bootstrap,
            settings.topics,
            settings.partitions,
            replication=settings.replication,
            security=settings.kafka_security,
            check_app_id=settings.app_id,  # topics of another count: refuse (one line)
        )
    )
    worker = build_worker(settings)
    runner = TwinWorkerRunner(
        worker.app,
        loglevel=settings.log_level.upper(),
        # Faust sets up logging again: the same --log-format (JSON lines or text)
        logging_config=logfmt.logging_config(settings.log_level, args.log_format),
        quiet=True,
        redirect_stdouts=False,
    )
    runner.spinner = None  # a terminal spinner would mangle logs captured to files
    runner.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline exits


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def run_sim(args: argparse.Namespace) -> int:
    """Run the physics simulator and publish its telemetry."""
    from streams.sim_source import run_simulation
    from streams.topics_admin import ensure_topics

    _need_broker(args)
    bootstrap = parse_broker_url(args.broker)
    topics = Topics(args.topic_prefix)
    security = kafka_security_from_args(args)

    from streams.sim_progress import sim_progress

    async def go(tick: Any) -> Any:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await ensure_topics(
            bootstrap,
            topics,
            args.partitions,
            site_path=args.site,
            replication=args.replication,
            security=security,
        )
        return await run_simulation(
            bootstrap=bootstrap,
            security=security,
            topics=topics,
            racks=args.racks,
            site_path=args.site,
            seed=args.seed,
            dt_s=args.dt,
            speed=args.speed,
            duration_s=args.duration,
            faults=args.fault,
            faults_log=args.faults_log,
            stop=stop,
            on_tick=tick,
            plant_dt_s=args.plant_dt,
        )

    with sim_progress(args.duration, args.dt) as tick:
        stats = asyncio.run(go(tick))
    print(
        f"sim: {stats.ticks} steps, {stats.gpu_frames} GPU frames, "
        f"{stats.point_frames} plant frames, {stats.faults} faults injected"
    )
    return 0


def run_broker(args: argparse.Namespace) -> int:
    """Run a broker in the foreground until Ctrl-C."""
    from streams.brokers import start_broker

    # Block the signals first: sigwait then receives them instead of Python dying before
    # the broker is stopped (and its state directory removed).
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    broker = start_broker(args.kind, args.port)
    print(f"{args.kind} broker at {broker.url}  (Ctrl-C stops it)", flush=True)
    try:
        signal.sigwait(signals)
    finally:
        broker.stop()
    return 0


def run_collect_nvml(args: argparse.Namespace) -> int:
    """Read the local GPUs through NVML and publish telemetry.gpu frames."""
    from streams.collect_nvml import NvmlCollector, collect_loop, open_nvml
    from streams.producer import FramePublisher
    from streams.topics_admin import ensure_topics

    _need_broker(args)
    nvml = open_nvml()  # raises NoGpuError with a one-line reason
    collector = NvmlCollector(nvml, rack=args.rack, gpu_offset=args.gpu_offset)
    bootstrap = parse_broker_url(args.broker)
    topics = Topics(args.topic_prefix)
    security = kafka_security_from_args(args)

    async def go() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await ensure_topics(
            bootstrap, topics, args.partitions, replication=args.replication, security=security
        )
        async with FramePublisher(bootstrap, security=security) as pub:

            async def publish(key: str, value: bytes) -> None:
                await pub.send(topics.gpu, key, value)

            if args.duration:
                asyncio.get_running_loop().call_later(args.duration, stop.set)
            await collect_loop(collector, publish, args.interval, stop)

    asyncio.run(go())
    return 0


def run_collect_dcgm(args: argparse.Namespace) -> int:
    """Scrape a dcgm-exporter endpoint and publish telemetry.gpu frames."""
    from streams.collect_dcgm import DcgmScraper, collect_dcgm
    from streams.producer import FramePublisher
    from streams.topics_admin import ensure_topics

    _need_broker(args)
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must be http(s)://host:port/metrics, got {args.url!r}")
    bootstrap = parse_broker_url(args.broker)
    topics = Topics(args.topic_prefix)
    security = kafka_security_from_args(args)

    async def go() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await ensure_topics(
            bootstrap, topics, args.partitions, replication=args.replication, security=security
        )
        async with (
            FramePublisher(bootstrap, security=security) as pub,
            DcgmScraper(
                args.url, args.rack, gpu_offset=args.gpu_offset, timeout_s=args.timeout
            ) as scraper,
        ):

            async def publish(key: str, value: bytes) -> None:
                await pub.send(topics.gpu, key, value)

            if args.duration:
                asyncio.get_running_loop().call_later(args.duration, stop.set)
            await collect_dcgm(scraper, publish, args.interval, stop)

    asyncio.run(go())
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Run broker, worker, simulator and API together."""
    from streams.demo import run_demo as demo

    return demo(args)


def register(sub: Any) -> None:
    """Add every sub-command to the ``twin`` parser."""
    p = sub.add_parser(
        "demo",
        help="run the whole twin on one machine (embedded broker)",
        description="Start an embedded Kafka broker (or use --broker), one "
        "worker with the web API, and the physics simulator; print the URLs "
        "and run until Ctrl-C or --duration.",
    )
    add_broker_flag(p)
    add_common_worker_flags(p)
    add_sim_flags(p)
    p.add_argument(
        "--duration", type=float, default=None, help="stop after S seconds (default: never)"
    )
    p.add_argument(
        "--broker-kind",
        choices=["tansu", "kafka"],
        default=None,
        help="embedded broker to start when --broker is not given "
        "(default tansu; kafka = Apache Kafka from Maven, needs Java 17)",
    )
    p.add_argument(
        "--recycle-mb",
        type=float,
        default=1024.0,
        help="restart the embedded tansu broker when its memory passes this many "
        "MB (state is snapshotted and restored)",
    )
    p.add_argument(
        "--api-token-file",
        type=Path,
        default=None,
        help="the worker's bearer token for state-changing endpoints (alert ack/shelve "
        "from the control room; default: none, and those endpoints refuse every request)",
    )
    p.set_defaults(handler=run_demo, speed=1.0)

    p = sub.add_parser(
        "worker",
        help="run one Faust worker with the HTTP API",
        description="Consume telemetry, keep the twin's state in Faust tables, "
        "serve the control room at /, the API (/api/state, /api/racks, /api/units, /api/alerts, "
        "/api/sql; docs/api.md), /healthz and /metrics.",
    )
    add_broker_flag(p)
    add_common_worker_flags(p)
    add_site_flags(p)
    add_kafka_security_flags(p)
    add_api_auth_flags(p)
    add_alert_flags(p)
    p.set_defaults(handler=run_worker)

    p = sub.add_parser(
        "sim",
        help="run the physics simulator and publish its telemetry",
        description="Step the facility model in real time (or faster with "
        "--speed), add sensor noise, inject faults, publish telemetry.",
    )
    add_broker_flag(p)
    add_sim_flags(p)
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per wall second (default 1: real time; 0: as fast as possible)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="simulated seconds to run (default: until Ctrl-C)",
    )
    add_topic_flags(p)
    add_kafka_security_flags(p)
    p.set_defaults(handler=run_sim)

    p = sub.add_parser(
        "broker",
        help="run a Kafka broker on loopback in the foreground",
        description="tansu: embedded, memory-only (dev); kafka: Apache Kafka "
        "4.x KRaft single node from Maven Central jars (needs Java 17).",
    )
    p.add_argument(
        "--kind",
        choices=["tansu", "kafka"],
        default="tansu",
        help="tansu (embedded, memory-only) or kafka (Apache Kafka, needs Java 17)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=None,
        help="TCP port to listen on (default: a free one; the URL is printed)",
    )
    p.set_defaults(handler=run_broker)

    p = sub.add_parser("collect", help="collect telemetry from real devices")
    csub = p.add_subparsers(dest="source", metavar="SOURCE")
    n = csub.add_parser(
        "nvml",
        help="read local NVIDIA GPUs through NVML",
        description="Publish telemetry.gpu frames read through NVML every "
        "interval; exits with a one-line error without a GPU or driver.",
    )
    add_broker_flag(n)
    _add_rack_flag(n)
    _add_gpu_offset_flag(n)
    n.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between samples")
    _add_duration_flag(n)
    add_topic_flags(n)
    add_kafka_security_flags(n)
    n.set_defaults(handler=run_collect_nvml)

    d = csub.add_parser(
        "dcgm",
        help="scrape an NVIDIA dcgm-exporter endpoint",
        description="Scrape dcgm-exporter's Prometheus page every interval and publish "
        "its DCGM_FI_* fields as telemetry.gpu frames (docs/collectors.md has the "
        "mapping); failed scrapes are counted and logged, never fatal.",
    )
    add_broker_flag(d)
    d.add_argument(
        "--url",
        default="http://127.0.0.1:9400/metrics",
        help="dcgm-exporter metrics URL",
    )
    _add_rack_flag(d)
    _add_gpu_offset_flag(d)
    d.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between scrapes")
    d.add_argument(
        "--timeout",
        type=_positive_float,
        default=2.0,
        help="seconds a scrape may take before it counts as failed",
    )
    _add_duration_flag(d)
    add_topic_flags(d)
    add_kafka_security_flags(d)
    d.set_defaults(handler=run_collect_dcgm)

    from streams.collect_modbus_cli import add_modbus_parser

    add_modbus_parser(csub)

    _register_others(sub)


_gpu_offset = _bounded_int("a GPU index", 0, 1023)


def _add_gpu_offset_flag(p: argparse.ArgumentParser) -> None:
    """--gpu-offset: rack index of this host's first GPU (hosts sharing a rack key)."""
    p.add_argument(
        "--gpu-offset",
        type=_gpu_offset,
        default=0,
        help="rack index of this host's GPU 0, so hosts of one rack do not overwrite each "
        "other (an NVL144 tray n of 4 GPUs: 4n)",
    )


def _add_rack_flag(p: argparse.ArgumentParser) -> None:
    """--rack: the key of the published frames (default: this host's name)."""
    p.add_argument("--rack", default=_hostname(), help="rack id, the frames' key (host name)")


def _add_duration_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        help="stop after S seconds (default: until Ctrl-C)",
    )


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _register_others(sub: Any) -> None:
    # Commands whose code lives in storage/ and twin/; imported here, when the parser is
    # built, so that `twin --help` does not load DuckDB or matplotlib before it is needed.
    from storage.cli_sink import add_sink_parser
    from storage.cli_sql import add_sql_parser
    from storage.replay import add_replay_parser
    from twin.whatif_cli import add_whatif_parser

    add_sink_parser(sub)
    add_sql_parser(sub)
    add_replay_parser(sub)
    add_whatif_parser(sub)
