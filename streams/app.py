"""The Faust app of a twin worker: topics, tables, agents, timers and web views.

``create_app(settings)`` builds a fresh app every call (no module-level app), so tests and the
CLI each get their own. Agents are thin: decode and validate (streams/codec.py), apply to the
in-process twin (streams/runtime.py), send bad input to the dead-letter topic. Tables hold a
checkpoint of every rack and plant unit, written at most once per checkpoint interval per key,
so changelog traffic stays bounded whatever the sample rate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP, EventT

from models.alerting import Alert, AlertEngine, AlertError, owner_of
from models.rules import load_rules
from streams.alert_sinks import AlertSink, sinks_from_urls
from streams.alert_sources import evaluate_sources, site_map
from streams.alert_views import (
    AlertCollector,
    CommandError,
    apply_command,
    command_owner,
    entity_owner,
    external_roots,
    parse_command,
    register_alert_views,
)
from streams.background import TEST_FAIL_TASK_ENV, guarded, parse_fail_plan, run_restarting
from streams.codec import DecodeError, decode_points_frame, encode_frame
from streams.codec_batch import GpuMessage, decode_gpu_frames
from streams.detect_runtime import DetectCollector, detect_runtime_for_site
from streams.facility import FacilityModel
from streams.faust_app import TwinFaustApp
from streams.inflight import InflightGuard, MessageKey
from streams.ingest_json import convert_json
from streams.ingest_map import IngestMapper, load_map
from streams.lineproto_views import IngestCollector, register_write_views
from streams.runtime import TwinRuntime, merge_by_partition, partition_for
from streams.schema import DLQ_REASONS, TOPIC_GPU, TOPIC_POWER, TOPIC_THERMAL, DlqReason
from streams.settings import Settings
from streams.stateview import follow_state
from streams.web import register_views
from twin.errors import TwinError
from twin.site import Site

log = logging.getLogger(__name__)

REPLAY_HEADER = "twin-replay"
#: Head of an oversized payload kept in its dead-letter record.
DLQ_MAX_VALUE_BYTES = 64 * 1024
#: Longest ``dlq.detail`` header [bytes of UTF-8].
DLQ_MAX_DETAIL_BYTES = 1024
#: Test only: bytes that make the worker abort (or raise) while applying a message holding
#: them. Not TWIN_* settings: nothing but the poison-pill tests sets them.
TEST_CRASH_ENV = "DC_TWIN_TEST_CRASH_ON"
TEST_RAISE_ENV = "DC_TWIN_TEST_RAISE_ON"


def _detail_header(detail: str) -> bytes:
    """The detail as UTF-8, cut to DLQ_MAX_DETAIL_BYTES on a character boundary."""
    raw = detail.encode("utf-8", "backslashreplace")[:DLQ_MAX_DETAIL_BYTES]
    return raw.decode("utf-8", "ignore").encode()


def _message_key(msg: Any) -> MessageKey:
    """(topic, partition, offset) of a Kafka message."""
    return (str(msg.topic), int(msg.partition), int(msg.offset))


@dataclass
class _TolerantGuard(InflightGuard):
    """The poison-pill guard of an agent, whose notes may fail to be written (a full disk):
    that loses crash protection while it lasts, logged once, and never stops the agent."""

    failing: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except OSError as exc:  # unreadable note: start without what it would have said
            log.warning("in-flight note %s unreadable: %r", self.path, exc)

    def begin(self, keys: Iterable[MessageKey], *, solo: bool = False) -> None:
        """Note the messages about to be processed, if the note can be written."""
        self._tolerate(lambda: super(_TolerantGuard, self).begin(keys, solo=solo))

    def done(self) -> None:
        """Forget the noted messages, if the note can be removed."""
        self._tolerate(super().done)

    def _tolerate(self, action: Callable[[], None]) -> None:
        try:
            action()
        except OSError as exc:
            if not self.failing:
                log.warning(
                    "in-flight note %s failed, no crash guard meanwhile: %r", self.path, exc
                )
            self.failing = True
            return
        if self.failing:
            log.warning("in-flight note %s written again", self.path)
            self.failing = False


@dataclass
class TwinWorker:
    """A Faust app together with the in-process twin it feeds."""

    app: faust.App
    runtime: TwinRuntime
    settings: Settings


#: Largest table value written to a changelog [bytes]: Kafka's default max.message.bytes
#: (1,048,588) and the producer's max_request_size (1 MiB), less room for key and headers.
MAX_CHANGELOG_VALUE_BYTES = 1_000_000


class CheckpointTooLarge(TwinError):
    """A table value too large for a Kafka message was not written (the last one stays)."""


def _headers(message: Any) -> dict[str, bytes]:
    raw = message.headers or {}
    items: Iterable[tuple[str, bytes]] = raw.items() if isinstance(raw, dict) else raw
    return {str(k): bytes(v) if v is not None else b"" for k, v in items}


def _faust_app(settings: Settings) -> TwinFaustApp:
    app = TwinFaustApp(
        settings.app_id,
        broker=settings.broker,
        store="memory://",
        autodiscover=False,
        # Every topic and changelog of ours carries bytes (Arrow IPC or JSON we encode).
        key_serializer="raw",
        value_serializer="raw",
        table_key_serializer="raw",
        table_value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        datadir=str(settings.state_dir / "faust" / settings.app_id),
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        # Frames are ~5 KB: fetch big (16 MiB a partition) and buffer deep, or the worker
        # waits on round trips instead of working (bench/bench_pipeline.py).
        stream_buffer_maxsize=settings.batch_max * 4,
        consumer_max_fetch_size=16 << 20,
        broker_max_poll_records=20_000,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        producer_linger=0.005,
        table_standby_replicas=0,
        web_in_thread=False,
        # TLS/SASL of Faust's consumer, producer and admin client (None: PLAINTEXT).
        broker_credentials=settings.kafka_security.faust_credentials(),
        # Faust's /router/ (cluster topology) and /table/ (raw table bytes by key) views
        # are not the twin's API; served only when asked for.
        web_router_enabled=settings.expose_faust_views,
        web_tables_enabled=settings.expose_faust_views,
    )
    # before anything asks the app for its transport (topics, tables and agents do)
    app.delivery = settings.delivery
    app.batch_max = settings.batch_max
    return app


def new_runtime(settings: Settings, site: Site) -> TwinRuntime:
    """A runtime for this site (its rack design flow feeds the GPU fit)."""
    from twin.step import rack_design_flow_kg_s

    return TwinRuntime(
        partitions=settings.partitions, rack_design_flow_kg_s=rack_design_flow_kg_s(site)
    )


def build_worker(settings: Settings, runtime: TwinRuntime | None = None) -> TwinWorker:
    """Build the app, its topics, tables, agents, timers and views around a runtime."""
    from twin.site import load_site

    site = load_site(settings.site_path, racks=settings.racks)
    rt = runtime if runtime is not None else new_runtime(settings, site)
    facility: dict[str, FacilityModel] = {}
    if settings.restore_path is not None:
        from streams.worker_snapshot import restore_runtime
        from twin.snapshot import load_snapshot

        snap = load_snapshot(settings.restore_path)
        restore_runtime(rt, snap)
        if snap.state is not None and snap.state.gpu_temp_c.shape[0] == site.n_racks:
            facility["model"] = FacilityModel.from_snapshot(site, snap)
    app = _faust_app(settings)
    names = settings.topics
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
    raw |= {"key_serializer": "raw", "value_serializer": "raw"}
    gpu_topic = app.topic(names.gpu, partitions=settings.partitions, **raw)
    thermal_topic = app.topic(names.thermal, partitions=settings.partitions, **raw)
    power_topic = app.topic(names.power, partitions=settings.partitions, **raw)
    ingest_topic = app.topic(names.ingest, **raw)
    dlq_topic = app.topic(names.dlq, **raw)
    state_topic = app.topic(names.state, partitions=settings.partitions, **raw)
    tables: dict[str, Any] = {"partitions": settings.partitions, "key_type": str}
    tables["value_type"] = bytes
    rack_table = app.Table("rack-state", **tables)
    unit_table = app.Table("unit-state", **tables)
    model_table = app.Table("rack-model", **tables)
    limits = settings.limits
    # Table recoveries Faust has completed, and the one whose checkpoints were restored.
    sync_state = {"recovered": 0, "synced": 0}
    # Every timer body is guarded and every long task restarted (streams/background.py): an
    # exception escaping either would crash the whole app (mode's Service._execute_task).
    background = rt.counters.background
    # Test only (tests/streams/test_background_integration.py): make named tasks fail.
    background.inject = parse_fail_plan(os.environ.get(TEST_FAIL_TASK_ENV, ""))

    async def dead_letter(ev: EventT, code: str, detail: str) -> None:
        await dead_letter_message(ev.message, code, detail)

    async def dead_letter_message(msg: Any, code: str, detail: str) -> None:
        # code: one of the fixed DLQ reasons (bounded /metrics label); detail: free text.
        code = code if code in DLQ_REASONS else DlqReason.INVALID.value
        rt.counters.dead_letter(code)
        log.warning(
            "dlq topic=%s partition=%s offset=%s reason=%s detail=%.300s",
            msg.topic,
            msg.partition,
            msg.offset,
            code,
            detail,
        )
        value = msg.value or b""
        headers = [
            ("dlq.reason", code.encode()),
            ("dlq.detail", _detail_header(detail)),
            ("dlq.topic", str(msg.topic).encode()),
            ("dlq.partition", str(msg.partition).encode()),
            ("dlq.offset", str(msg.offset).encode()),
            ("dlq.size", str(len(value)).encode()),
        ]
        if len(value) > DLQ_MAX_VALUE_BYTES:
            # A payload too big for the source limits is too big for the DLQ too; keep its
            # head here, the whole of it stays at the source topic/partition/offset above.
            value = value[:DLQ_MAX_VALUE_BYTES]
            headers.append(("dlq.truncated", b"1"))
        try:
            await dlq_topic.send(key=msg.key, value=value, headers=headers)
        except Exception as exc:  # the DLQ must never stop the worker
            log.error("dlq send failed topic=%s offset=%s: %r", msg.topic, msg.offset, exc)

    BatchApply = Callable[[list[Any], int], list[DecodeError | None]]
    # Poison-pill guards (streams/inflight.py): one note file per agent of this worker.
    guard_dir = settings.state_dir / "inflight" / f"{settings.app_id}-{settings.web_port}"
    # Test only (tests/streams/test_poison_integration.py): a message whose value holds
    # these bytes aborts the process while it is applied, as a segfault in a native library
    # would, or raises, as a bug would.
    crash_marker = os.environ.get(TEST_CRASH_ENV, "").encode()
    raise_marker = os.environ.get(TEST_RAISE_ENV, "").encode()

    def crash_if_marked(msgs: list[Any]) -> None:
        if crash_marker and any(crash_marker in (m.value or b"") for m in msgs):
            os.abort()
        if raise_marker and any(raise_marker in (m.value or b"") for m in msgs):
            raise RuntimeError("test-only failure on a marked message")

    def apply_one(
        msg: Any, now: int, apply: BatchApply, guard: InflightGuard, *, solo: bool
    ) -> DecodeError | None:
        guard.begin([_message_key(msg)], solo=solo)
        try:
            crash_if_marked([msg])
            (error,) = apply([msg], now)
        except Exception as exc:  # a bug or an input no check foresaw: only this message
            log.error("applying %s failed", _message_key(msg), exc_info=True)
            error = DecodeError(f"{type(exc).__name__}: {exc}", DlqReason.INTERNAL_ERROR)
        guard.done()
        return error

    def apply_batch(
        msgs: list[Any], now: int, apply: BatchApply, guard: InflightGuard
    ) -> list[DecodeError | None]:
        guard.begin(_message_key(m) for m in msgs)
        try:
            crash_if_marked(msgs)
            refused = apply(msgs, now)
        except Exception:
            # One message must not take the batch (or the agent) with it: apply them one at
            # a time and dead-letter only those that raise. Frames of the batch applied
            # before the exception are applied again; rack state keeps the latest reading.
            log.error("applying a batch of %d failed; one at a time", len(msgs), exc_info=True)
            refused = [apply_one(m, now, apply, guard, solo=False) for m in msgs]
        guard.done()
        return refused

    def apply_guarded(
        msgs: list[Any], now: int, apply: BatchApply, guard: InflightGuard
    ) -> list[DecodeError | None]:
        if not guard.suspects and not guard.poisoned:
            return apply_batch(msgs, now, apply, guard)
        # After a crash: messages of the batch that was in flight go one at a time, and the
        # one that was in flight alone when the process died is not applied again.
        out: list[DecodeError | None] = [None] * len(msgs)
        ordinary: list[int] = []

        def flush() -> None:
            done = apply_batch([msgs[i] for i in ordinary], now, apply, guard)
            for i, error in zip(ordinary, done, strict=True):
                out[i] = error
            ordinary.clear()

        for i, msg in enumerate(msgs):
            key = _message_key(msg)
            if guard.is_poisoned(key):
                if ordinary:
                    flush()
                out[i] = DecodeError(
                    "the worker died while processing this message alone", DlqReason.CRASHED
                )
                guard.forget(key)
            elif guard.is_suspect(key):
                if ordinary:
                    flush()
                out[i] = apply_one(msg, now, apply, guard, solo=True)
            else:
                ordinary.append(i)
        if ordinary:
            flush()
        return out

    async def consume_frames(stream: Any, apply: BatchApply, agent: str) -> None:
        # Whole batches: Faust's per-event cost is paid once, the frame work is numpy.
        guard = _TolerantGuard(guard_dir / f"{agent}.json")
        async for events in stream.take_events(settings.batch_max, within=settings.batch_window_s):
            sync_tables_now()  # restore newly owned checkpoints before any frame is applied
            msgs = [ev.message for ev in events]
            # Synchronous from begin to done: a cancelled agent never leaves a note behind.
            refused = apply_guarded(msgs, rt.clock_ms(), apply, guard)
            for ev, msg, error in zip(events, msgs, refused, strict=True):
                if error is not None:
                    await dead_letter(ev, error.code, error.reason)
                rt.record_position(msg.topic, msg.partition, msg.offset)

    def apply_gpu(msgs: list[Any], now: int) -> list[DecodeError | None]:
        # GPU frames are most of the traffic: decode and check a whole batch as one set of
        # columns (streams/codec_batch.py), then apply them together.
        decoded = decode_gpu_frames(
            [GpuMessage(m.value or b"", m.key, REPLAY_HEADER in _headers(m)) for m in msgs],
            now_ms=now,
            limits=limits,
        )
        rt.apply_gpus([f for f in decoded if not isinstance(f, DecodeError)], names.gpu)
        return [f if isinstance(f, DecodeError) else None for f in decoded]

    def points_applier(contract: str) -> BatchApply:
        def apply(msgs: list[Any], now: int) -> list[DecodeError | None]:
            refused: list[DecodeError | None] = []
            for msg in msgs:
                try:
                    frame = decode_points_frame(
                        msg.value or b"",
                        key=msg.key,
                        now_ms=now,
                        limits=limits,
                        replay=REPLAY_HEADER in _headers(msg),
                        contract=contract,
                    )
                except DecodeError as exc:
                    refused.append(exc)
                    continue
                rt.apply_points(frame, contract)
                refused.append(None)
            return refused

        return apply

    @app.agent(gpu_topic, name="gpu-frames")
    async def gpu_frames(stream: Any) -> None:
        # With batch delivery the consumer hands GPU frames to gpu_batch below and this
        # stream stays empty; the agent is what subscribes the topic and assigns it.
        await consume_frames(stream, apply_gpu, "gpu-frames")

    # the stream path's note file: a crash note survives a switch of --delivery
    gpu_guard = _TolerantGuard(guard_dir / "gpu-frames.json")

    async def gpu_batch(msgs: list[Any]) -> None:
        # Called from the consumer's fetch loop (streams/faust_batch.py): it must not raise.
        try:
            sync_tables_now()
            refused = apply_guarded(msgs, rt.clock_ms(), apply_gpu, gpu_guard)
        except Exception as exc:  # apply_guarded already isolates messages; belt and braces
            log.error("GPU batch of %d failed", len(msgs), exc_info=True)
            detail = f"{type(exc).__name__}: {exc}"
            refused = [DecodeError(detail, DlqReason.INTERNAL_ERROR)] * len(msgs)
        for msg, error in zip(msgs, refused, strict=True):
            if error is not None:
                await dead_letter_message(msg, error.code, error.reason)
            rt.record_position(msg.topic, msg.partition, msg.offset)

    app.batch_handlers = {names.gpu: gpu_batch} if settings.delivery == "batch" else {}

    @app.agent(thermal_topic, name="thermal-frames")
    async def thermal_frames(stream: Any) -> None:
        await consume_frames(stream, points_applier(names.thermal), "thermal-frames")

    @app.agent(power_topic, name="power-frames")
    async def power_frames(stream: Any) -> None:
        await consume_frames(stream, points_applier(names.power), "power-frames")

    # contract name (what convert_json returns) -> this twin's (maybe prefixed) topic
    telemetry = {TOPIC_GPU: gpu_topic, TOPIC_THERMAL: thermal_topic, TOPIC_POWER: power_topic}
    # Telegraf metrics (JSON here, line protocol on POST /api/v2/write) -> readings
    ingest_mapper = IngestMapper(load_map(settings.ingest_map_path))
    write_stats = register_write_views(app, rt, settings, ingest_mapper, telemetry, dlq_topic)

    @app.agent(ingest_topic, name="json-ingest")
    async def json_ingest(stream: Any) -> None:
        guard = _TolerantGuard(guard_dir / "json-ingest.json")
        async for ev in stream.events():
            msg = ev.message
            key = _message_key(msg)
            if guard.is_poisoned(key):
                guard.forget(key)
                await dead_letter(ev, DlqReason.CRASHED, "the worker died converting it")
                continue
            guard.begin([key], solo=guard.is_suspect(key))
            try:
                crash_if_marked([msg])
                frames = convert_json(
                    msg.value or b"",
                    now_ms=rt.clock_ms(),
                    limits=limits,
                    replay=REPLAY_HEADER in _headers(msg),
                    mapper=ingest_mapper,
                )
            except DecodeError as exc:
                guard.done()
                await dead_letter(ev, exc.code, exc.reason)
                continue
            except Exception as exc:  # never the agent: dead-letter this message, go on
                guard.done()
                log.error("converting %s failed", key, exc_info=True)
                await dead_letter(ev, DlqReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
                continue
            guard.done()
            try:
                for f in frames:
                    await telemetry[f.topic].send(key=f.key.encode(), value=f.value)
            except Exception as exc:
                log.error("publishing frames of %s failed", key, exc_info=True)
                await dead_letter(
                    ev, DlqReason.INTERNAL_ERROR, f"publish: {type(exc).__name__}: {exc}"
                )

    def partition_of(key: str) -> int:
        return partition_for(key, settings.partitions)

    def owned(key: str) -> bool:
        tp = TP(names.gpu, partition_for(key, settings.partitions))
        return tp in app.consumer.assignment()

    oversized: dict[str, int] = {}

    def put(table: Any, key: str, value: bytes) -> None:
        # A value over Kafka's default message size (1 MB, also the producer's request
        # limit) would make Faust's producer buffer raise and stop the whole worker: keep
        # the last checkpoint instead, and say so through the timer's health (check_sizes).
        if len(value) > MAX_CHANGELOG_VALUE_BYTES:
            oversized[f"{getattr(table, 'name', 'table')}/{key}"] = len(value)
            return
        # A timer has no current event, so give the partition explicitly: the same one
        # the key's telemetry arrives on (co-partitioned), as Faust would have chosen.
        table.data[key] = value
        table.send_changelog(partition_for(key, settings.partitions), key, value)

    def check_sizes() -> None:
        if oversized:
            what = ", ".join(f"{k} ({n} bytes)" for k, n in sorted(oversized.items())[:5])
            oversized.clear()
            raise CheckpointTooLarge(
                f"checkpoint not written, over {MAX_CHANGELOG_VALUE_BYTES} bytes: {what}"
            )

    @app.timer(interval=settings.checkpoint_interval_s)
    @guarded("checkpoint", background, settings.checkpoint_interval_s)
    async def checkpoint() -> None:
        if app.in_recovery:
            return
        sync_tables_now()  # never write a key's checkpoint before restoring it
        racks, units = rt.take_checkpoints(owned)
        for rack, data in racks.items():
            put(rack_table, rack, data)
        for unit, data in units.items():
            put(unit_table, unit, data)
        check_sizes()

    # --checkpoint-interval bounds the model checkpoints too (both 10 s by default): what a
    # restart loses of a fit is what was learned since its last checkpoint.
    model_checkpoint_s = min(settings.model_checkpoint_interval_s, settings.checkpoint_interval_s)

    @app.timer(interval=model_checkpoint_s)
    @guarded("checkpoint_models", background, model_checkpoint_s)
    async def checkpoint_models() -> None:
        if app.in_recovery:
            return
        sync_tables_now()  # a model is written only once its checkpoint is merged in
        for rack, data in rt.take_model_checkpoints(owned).items():
            put(model_table, rack, data)
        check_sizes()

    residual_topic = app.topic(names.residuals, partitions=settings.partitions, **raw)
    kpi_topic = app.topic(names.kpi, **raw)

    ticks = {"publish": 0}

    @app.timer(interval=settings.publish_interval_s)
    @guarded("publish_state", background, settings.publish_interval_s)
    async def publish_state() -> None:
        ticks["publish"] += 1
        turn = ticks["publish"] % settings.detail_every

        def detail_now(rack: str) -> bool:
            # A different share of the racks each time: the JSON work is spread evenly
            # instead of every rack's detail at once each detail_every-th interval (0.6 s
            # of blocked event loop at the campus).
            return zlib.crc32(rack.encode()) % settings.detail_every == turn

        docs = rt.take_publications(detail=detail_now)
        if owned("facility") and (rt.racks or rt.view):
            summary = rt.facility()["facility"]
            docs["facility"] = {"kind": "facility", "summary": summary, "model": rt.model_view}
            await kpi_topic.send(key=b"site", value=encode_frame(rt.kpi_batch(summary)))
        for rack, batch in rt.take_residuals(partition_of).items():
            await residual_topic.send(key=rack.encode(), value=encode_frame(batch))
        for entity, doc in docs.items():
            await state_topic.send(
                key=entity.encode(), value=json.dumps(doc, separators=(",", ":")).encode()
            )

    def recovered(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Sent by Faust when a rebalance's table recovery has completed, before the stream
        # partitions resume. The assignment alone is no signal: it changes before recovery
        # starts, and a restore done in between would read tables still being recovered.
        sync_state["recovered"] += 1

    # mode's SignalHandlerT matches no function under mypy, async or not
    app.on_rebalance_complete.connect(recovered)  # type: ignore[arg-type]

    def sync_tables_now() -> None:
        """After a table recovery, take over the checkpoints (rack state, unit state, fitted
        models) of the racks and units this worker now owns and forget the ones it gave away.

        The agents call it before every batch, so no frame of a newly owned partition is
        applied before its checkpoints are restored (a model started from the priors by such
        a frame used to hide the fitted one); the timer covers idle workers. Once done it is
        one comparison of two ints per call.
        """
        done = sync_state["recovered"]
        if done == sync_state["synced"] or app.in_recovery:
            return
        sync_state["synced"] = done
        rt.drop_partitions(owned)
        for rack, data in list(rack_table.data.items()):
            if owned(rack):
                rt.restore_rack(rack, data)
        for unit, data in list(unit_table.data.items()):
            if owned(unit):
                rt.restore_unit(data)
        for rack, data in list(model_table.data.items()):
            if owned(rack):
                rt.restore_model(rack, data)
        restore_alerts()
        restore_detectors()

    @app.timer(interval=0.5)
    @guarded("sync_tables", background, 0.5)
    async def sync_tables() -> None:
        sync_tables_now()

    async def follow_state_once() -> None:
        stop = asyncio.Event()
        try:
            await follow_state(
                settings.bootstrap, names.state, rt, stop, security=settings.kafka_security
            )
        except asyncio.CancelledError:
            stop.set()
            raise

    @app.task
    async def state_view() -> None:
        # restarted with backoff when it fails (a broker down at start, a bug)
        await run_restarting("state_view", background, follow_state_once)

    async def consumer_lag() -> dict[tuple[str, int], int]:
        lag: dict[tuple[str, int], int] = {}
        for tp in app.consumer.assignment():
            if tp.topic not in (names.gpu, names.thermal, names.power):
                continue
            try:
                hw = app.consumer.highwater(tp)
            except (KeyError, AttributeError):
                continue
            if hw is None:
                continue
            pos = rt.positions.get((tp.topic, tp.partition), 0)
            lag[(tp.topic, tp.partition)] = max(0, int(hw) - pos)
        return lag

    @app.timer(interval=settings.model_interval_s)
    @guarded("facility_model", background, settings.model_interval_s)
    async def facility_model() -> None:
        # One worker runs the facility model: the owner of the "facility" key.
        if app.in_recovery or not owned("facility"):
            facility.pop("model", None)
            rt.model_view = None
            return
        if not rt.racks and not rt.view:
            return
        now = rt.clock_ms()
        if "model" not in facility:
            facility["model"] = FacilityModel(
                site, site_file=str(settings.site_path or ""), start_ms=now
            )
        fm = facility["model"]
        fm.observe(rt)
        fm.advance(now)
        rt.model_view = fm.view(rt)
        for unit, batch in merge_by_partition(fm.residual_batches(rt), partition_of).items():
            await residual_topic.send(key=unit.encode(), value=encode_frame(batch))

    # --- alerts (models/alerting.py, docs/alerts.md) -------------------------------------
    engine = AlertEngine(
        load_rules(settings.alert_rules_path), clock=lambda: rt.clock_ms() / 1000.0
    )
    smap = site_map(site)
    # detectors over every owned GPU, rack and unit (streams/detect_runtime.py); their state
    # is checkpointed per rack (and the units' under "facility") like the fitted models
    detect = detect_runtime_for_site(site)
    detect_table = app.Table("rack-detect", **tables)

    def restore_detectors() -> None:
        # called by sync_tables_now after a table recovery
        bad = detect.bad_checkpoints
        detect.restore({k: v for k, v in list(detect_table.data.items()) if owned(k)})
        rt.counters.bad_checkpoints += detect.bad_checkpoints - bad

    @app.timer(interval=model_checkpoint_s)
    @guarded("checkpoint_detectors", background, model_checkpoint_s)
    async def checkpoint_detectors() -> None:
        if app.in_recovery:
            return
        sync_tables_now()  # never write a key's checkpoint before restoring it
        racks = [r for r in detect.scored if owned(r)]
        for key, data in detect.checkpoints(racks, facility=owned("facility")).items():
            put(detect_table, key, data)
        check_sizes()

    # keyed by alert id, written to the changelog partition of the alert's owner (its rack or
    # unit), so the worker owning that partition restores it after a restart or rebalance
    alert_table = app.Table("alerts", **tables)
    alerts_topic = app.topic(names.alerts, **raw)
    commands_topic = app.topic(names.alert_commands, partitions=settings.partitions, **raw)
    public_url = settings.public_url or f"http://{settings.web_host}:{settings.web_port}"
    sinks = sinks_from_urls(
        settings.alertmanager_url,
        settings.alert_webhook_url,
        generator_base=public_url,
        twin=settings.app_id,
        resend_interval_s=settings.alert_resend_s,
    )
    events_seen = {"n": 0}

    def restore_alerts() -> None:
        # called by sync_tables_now after a table recovery
        engine.drop_owners(owned)
        restore_service()
        for aid, data in list(alert_table.data.items()):
            owner = owner_of(aid)
            if owner is None or not owned(owner):
                continue
            try:
                engine.restore_alert(Alert.from_bytes(data))
            except Exception as exc:  # a bad checkpoint must not stop the worker: skip it
                rt.counters.bad_checkpoints += 1
                log.warning("skipped a bad alerts checkpoint of %s: %r", aid, exc)

    def restore_service() -> None:
        # entities out of service (ISA-18.2 OOSRV), kept in the alerts table as "oos/ENTITY"
        # on the partition of the entity's owner
        notes: dict[str, dict[str, Any]] = {}
        for key, data in list(alert_table.data.items()):
            entity = key[4:] if isinstance(key, str) and key.startswith("oos/") else None
            owner = entity_owner(entity) if entity else None
            if entity is None or owner is None or not owned(owner) or not data:
                continue
            try:
                note = json.loads(data)
                if not isinstance(note, dict):
                    raise ValueError("not an object")
                notes[entity] = note
            except Exception as exc:  # a bad checkpoint must not stop the worker: skip it
                rt.counters.bad_checkpoints += 1
                log.warning("skipped a bad out-of-service checkpoint of %s: %r", entity, exc)
        engine.restore_service(notes)

    async def publish_service_changes() -> None:
        for entity, note in engine.take_service_changes():
            owner = entity_owner(entity) or ""
            if not owned(owner):
                continue
            key = f"oos/{entity}"
            value = None if note is None else json.dumps(note, separators=(",", ":")).encode()
            # back in service: an empty value (restore_service skips it), not a tombstone
            alert_table.data[key] = value or b""
            alert_table.send_changelog(partition_of(owner), key, value or b"")
            doc = None if note is None else {"kind": "oos", "oos": note}
            await state_topic.send(
                key=key.encode(),
                value=None if doc is None else json.dumps(doc, separators=(",", ":")).encode(),
            )

    def alert_message(doc: dict[str, Any], ts_ms: int, state: str, kind: str) -> bytes:
        row = {**doc, "ts": ts_ms, "alert_id": doc["id"], "kind": kind, "state": state}
        return json.dumps(row, separators=(",", ":")).encode()

    async def publish_alert_changes() -> None:
        await publish_service_changes()
        changed, removed = engine.take_changes()
        now = rt.clock_ms()
        docs = [a.to_dict() for a in changed]
        for a, doc in zip(changed, docs, strict=True):
            if owned(a.owner):
                value = a.to_bytes()
                alert_table.data[a.id] = value
                alert_table.send_changelog(partition_of(a.owner), a.id, value)
                # every worker follows twin.state: GET /api/alerts on any of them lists it
                view_doc = {"kind": "alert", "alert": doc}
                await state_topic.send(
                    key=f"alert/{a.id}".encode(),
                    value=json.dumps(view_doc, separators=(",", ":")).encode(),
                )
            await alerts_topic.send(
                key=a.entity.encode(), value=alert_message(doc, now, a.state, a.rule)
            )
        for aid in removed:
            if owned(owner_of(aid) or ""):
                try:  # a tombstone: other workers drop the alert from their view
                    await state_topic.send(key=f"alert/{aid}".encode(), value=None)
                except Exception as exc:
                    log.warning("alert tombstone of %s not sent: %r", aid, exc)
        for ev in engine.events_since(events_seen["n"]):
            state = "EVENT_RAISED" if ev["transition"] == "raised" else "EVENT_CLEARED"
            await alerts_topic.send(
                key=str(ev["entity"]).encode(),
                value=alert_message(ev, int(ev["ts_s"] * 1000), state, ev["rule"]),
            )
        events_seen["n"] = engine.events_total
        for sink in sinks:
            sink.offer(docs)

    @app.timer(interval=settings.alert_interval_s)
    @guarded("evaluate_alerts", background, settings.alert_interval_s)
    async def evaluate_alerts() -> None:
        if app.in_recovery:
            return
        sync_tables_now()  # an owned alert is restored before it is evaluated again
        now_s = rt.clock_ms() / 1000.0
        # root causes other workers hold suppress this worker's alerts in their blast radius
        engine.set_external_roots(external_roots(other_alerts()), now_s)
        view = rt.model_view if owned("facility") else None
        evaluate_sources(engine, rt, smap, owned, now_s, facility_view=view)
        detect.evaluate(rt, owned, facility_view=view)
        detect.feed(
            engine,
            smap.gpu_names,
            smap.rack_where,
            now_s,
            facility_owner=view is not None,
            unit_where=smap.unit_where,
            blast=smap.blast,
        )
        engine.tick(now_s)
        await publish_alert_changes()

    @app.agent(commands_topic, name="alert-commands")
    async def alert_commands(stream: Any) -> None:
        # acks and shelves forwarded by other workers, for the alerts of owned partitions
        async for ev in stream.events():
            try:
                cmd = parse_command(ev.message.value or b"")
            except CommandError as exc:
                log.warning("alert command refused: %s", exc)
                continue
            owner = command_owner(cmd)
            if not owned(owner):
                log.warning("alert command for %s, not owned here", owner)
                continue
            sync_tables_now()
            try:
                apply_command(engine, cmd)
            except AlertError as exc:
                log.info("alert command %s on %s: %s", cmd["op"], cmd.get("id"), exc)
            await publish_alert_changes()

    async def send_command(owner: str, cmd: dict[str, Any]) -> None:
        # keyed by the owner: Kafka's default partitioner puts it on the owner's partition
        await commands_topic.send(key=owner.encode(), value=json.dumps(cmd).encode())

    def start_sink(sink: AlertSink) -> None:
        async def run_alert_sink() -> None:
            await run_restarting(f"alert_sink_{sink.name}", background, sink.run)

        app.task(run_alert_sink)

    for sink in sinks:
        start_sink(sink)

    def other_alerts() -> dict[str, dict[str, Any]]:
        # alerts of every worker as twin.state shows them (this worker's own come live)
        return {
            e.partition("/")[2]: d["alert"]
            for e, d in rt.view.items()
            if d.get("kind") == "alert" and isinstance(d.get("alert"), dict)
        }

    def other_service() -> dict[str, dict[str, Any]]:
        # entities other workers hold out of service, as twin.state shows them
        return {
            e.partition("/")[2]: d["oos"]
            for e, d in rt.view.items()
            if d.get("kind") == "oos" and isinstance(d.get("oos"), dict)
        }

    register_alert_views(
        app, engine, settings, owned, send_command, other_alerts, others_service=other_service
    )

    def snapshot() -> bytes:
        from streams.worker_snapshot import runtime_snapshot
        from twin.snapshot import snapshot_bytes

        fm = facility.get("model")
        base = fm.snapshot() if fm is not None else None
        return snapshot_bytes(runtime_snapshot(rt, base))

    metrics = [
        AlertCollector(engine, sinks, other_alerts),
        DetectCollector(detect, rt),
        IngestCollector(ingest_mapper, write_stats),
    ]
    register_views(app, rt, settings, consumer_lag, snapshot, extra_metrics=metrics)
    return TwinWorker(app=app, runtime=rt, settings=settings)


def create_app(settings: Settings) -> faust.App:
    """A new Faust app for these settings (see :func:`build_worker` for the runtime too)."""
    return build_worker(settings).app
