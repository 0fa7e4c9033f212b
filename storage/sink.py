"""The Parquet sink: Kafka topics -> durable Parquet files, exactly once.

A plain aiokafka consumer, not a Faust agent: Faust's ``take()`` acknowledges a batch even
when its handler raises (ENGINEERING.md section 1), and here a failed write must never move
the committed offset. The rules:

- auto-commit is off; an offset is committed only when every record below it is in a
  durable file (or was undecodable and counted);
- every file names the exact offset ranges it holds, so on (re)assignment the sink seeks to
  the first record the store lacks and skips later records it already holds;
- a full disk or read-only directory pauses consumption, keeps the buffers, retries every
  ``retry_s`` and resumes once a write succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from storage.compact import remove_replaced
from storage.decode import decode_message, table_day
from storage.layout import TableDef, default_tables, list_parts, list_temp_files, tables_by_topic
from storage.maintenance import run_maintenance
from storage.offsets import (
    OffsetMap,
    OffsetMetadataError,
    RangeSet,
    commit_offset,
    file_offsets,
    resume_offset,
)
from storage.writer import BufferedWriter, StorageError, StoreUnavailable, WriterOptions
from streams.kafka_security import KafkaSecurity, check_access, kafka_client_kwargs
from twin.errors import ConfigError, DecodeError, TwinError

log = logging.getLogger("storage.sink")


def remove_temp_files(data_dir: Path) -> int:
    """Delete files left by writes that never reached their rename; returns the count."""
    n = 0
    for p in list_temp_files(data_dir):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


class StoreIndex:
    """Offset ranges durably in the store, per topic partition (footers read once per file)."""

    def __init__(self, data_dir: Path, tables: Iterable[TableDef]) -> None:
        self.data_dir = data_dir
        self.tables = list(tables)
        self._seen: dict[Path, OffsetMap] = {}

    def load(self) -> OffsetMap:
        current = set()
        for t in self.tables:
            for p in list_parts(t.table_dir(self.data_dir)):
                if p not in self._seen:
                    try:
                        self._seen[p] = file_offsets(p)
                    except OffsetMetadataError:
                        if p.exists():
                            raise
                        continue  # removed by retention since the listing
                current.add(p)
        for gone in set(self._seen) - current:
            del self._seen[gone]
        out: OffsetMap = {}
        for m in self._seen.values():
            for tp, rs in m.items():
                out.setdefault(tp, RangeSet()).update(rs)
        return out


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: ParquetSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.sink._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.sink._on_assigned(assigned)


class ParquetSink:
    """Consumes telemetry (and twin output) topics into the Parquet store.

    ``topics`` defaults to every topic of the table registry. ``flush_rows`` is the row-group
    target and ``flush_seconds`` the oldest a buffer may get before it is written.
    """

    def __init__(
        self,
        bootstrap: str,
        data_dir: Path,
        topics: Iterable[str] | None = None,
        group_id: str = "twin-sink",
        flush_rows: int = 500_000,
        flush_seconds: float = 60.0,
        *,
        retry_s: float = 5.0,
        maintenance_s: float | None = None,
        tables: dict[str, TableDef] | None = None,
        consumer_config: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.data_dir = Path(data_dir)
        by_topic = tables_by_topic(tables or default_tables())
        wanted = list(topics) if topics is not None else list(by_topic)
        unknown = [t for t in wanted if t not in by_topic]
        if unknown:
            raise ConfigError(f"no store table for topics {unknown}; known: {sorted(by_topic)}")
        self.by_topic = {t: by_topic[t] for t in wanted}
        self.group_id = group_id
        self.retry_s = retry_s
        self.maintenance_s = maintenance_s
        # Compaction deletes files the index reads: never both at once.
        self._store_lock = asyncio.Lock()
        self._maint_task: asyncio.Task[None] | None = None
        self.consumer_config = consumer_config or {}
        self.writer = BufferedWriter(
            self.data_dir, WriterOptions(row_group_rows=flush_rows, max_age_s=flush_seconds), clock
        )
        self.index = StoreIndex(self.data_dir, self.by_topic.values())
        self._clock = clock
        self._consumer: AIOKafkaConsumer | None = None
        self._durable: OffsetMap = {}
        self._position: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._paused_since: float | None = None
        self._last_retry = 0.0
        self._assigning = False
        self._failed: BaseException | None = None
        self.stats = {
            "rows": 0,
            "messages": 0,
            "skipped_durable": 0,
            "redelivered": 0,
            "bad": 0,
            "files": 0,
        }

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then write what is buffered and commit."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        n = remove_temp_files(self.data_dir)
        for tdef in self.by_topic.values():
            n += remove_replaced(tdef.table_dir(self.data_dir))
        if n:
            log.info("removed orphan temp and replaced files count=%d", n)
        cfg: dict[str, Any] = {
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 1_000,
            "rebalance_timeout_ms": 10_000,
            "max_poll_records": 5_000,
        }
        cfg.update(self.consumer_config)
        # Refused TLS or credentials: one BrokerError now, not aiokafka's retried bootstrap.
        await check_access(self.bootstrap, self.security)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_client_kwargs(self.security),
            **cfg,
        )
        self._consumer = consumer
        consumer.subscribe(list(self.by_topic), listener=_Rebalance(self))
        await consumer.start()
        log.info("sink started topics=%s data_dir=%s", ",".join(self.by_topic), self.data_dir)
        if self.maintenance_s:
            self._maint_task = asyncio.create_task(self._maintain(stop, self.maintenance_s))
        try:
            while not stop.is_set():
                await self._step(consumer)
            await self._final_flush()
        finally:
            if self._maint_task is not None:
                self._maint_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._maint_task
            await consumer.stop()
            self._consumer = None
            log.info("sink stopped %s", " ".join(f"{k}={v}" for k, v in self.stats.items()))

    async def _maintain(self, stop: asyncio.Event, every_s: float) -> None:
        tables = {t.name: t for t in self.by_topic.values()}
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set() or self.paused:
                continue
            try:
                async with self._store_lock:
                    await asyncio.to_thread(run_maintenance, self.data_dir, tables)
            except (OSError, TwinError) as exc:
                log.error("maintenance failed (retried next pass): %s", exc)

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        if self._failed is not None:
            # aiokafka logs and swallows listener errors; a sink that cannot place its
            # partitions must stop (and be restarted) rather than read from unknown offsets.
            raise StorageError(f"partition assignment failed: {self._failed}") from self._failed
        if self._paused_since is not None:
            await self._retry_paused(consumer)
        batches = await consumer.getmany(timeout_ms=200)
        for tp, records in batches.items():
            for rec in records:
                self._handle(tp, rec)
        if self._paused_since is None:
            await self._flush(consumer, self.writer.due())

    async def _final_flush(self) -> None:
        if self._consumer is None:
            return
        try:
            await self._flush(self._consumer, self.writer.buffer_keys(), pause_on_error=False)
        except StoreUnavailable as exc:
            log.error("stopping with unwritten rows (re-read on restart): %s", exc)

    # ---- records -------------------------------------------------------------------------

    def _handle(self, tp: TopicPartition, rec: ConsumerRecord) -> None:
        key = (tp.topic, tp.partition)
        pos = self._position.get(key)
        if pos is not None and rec.offset < pos:
            # Offsets only grow within an assignment: this record is buffered or stored.
            self.stats["redelivered"] += 1
            return
        self._position[key] = rec.offset + 1
        durable = self._durable.get(key)
        if durable is not None and rec.offset in durable:
            self.stats["skipped_durable"] += 1
            return
        tdef = self.by_topic[tp.topic]
        try:
            table = decode_message(tdef, rec.key, rec.value, rec.timestamp)
        except DecodeError as exc:
            self.stats["bad"] += 1
            if self.stats["bad"] <= 10 or self.stats["bad"] % 1000 == 0:
                log.warning(
                    "undecodable record topic=%s partition=%d offset=%d count=%d reason=%s",
                    tp.topic,
                    tp.partition,
                    rec.offset,
                    self.stats["bad"],
                    exc.reason,
                )
            return
        if table.num_rows == 0:
            return
        self.stats["messages"] += 1
        self.stats["rows"] += table.num_rows
        self.writer.add(tdef, table_day(table), table, key, rec.offset)

    # ---- writing and committing ----------------------------------------------------------

    async def _flush(
        self, consumer: AIOKafkaConsumer, keys: list[tuple[str, Any]], pause_on_error: bool = True
    ) -> None:
        if not keys:
            return
        try:
            for k in keys:
                path = await asyncio.to_thread(self.writer.flush, k)
                if path is not None:
                    self.stats["files"] += 1
                    log.debug("wrote file=%s", path)
        except StoreUnavailable as exc:
            if not pause_on_error:
                raise
            self._pause(consumer, exc)
            return
        await self._commit(consumer)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp in consumer.assignment():
            key = (tp.topic, tp.partition)
            pos = self._position.get(key)
            if pos is None:
                continue
            c = commit_offset(pos, self.writer.pending_first(key))
            if c > self._committed.get(key, -1):
                offsets[tp] = c
        if offsets:
            await consumer.commit(offsets)
            for tp, c in offsets.items():
                key = (tp.topic, tp.partition)
                self._committed[key] = c
                rs = self._durable.get(key)
                if rs is not None:
                    rs.discard_below(c)

    def _pause(self, consumer: AIOKafkaConsumer, exc: StoreUnavailable) -> None:
        if self._paused_since is None:
            log.error(
                "store not writable, pausing consumption (buffered rows=%d kept): %s",
                self.writer.buffered_rows,
                exc,
            )
        self._paused_since = self._clock()
        self._last_retry = self._clock()
        consumer.pause(*consumer.assignment())

    async def _retry_paused(self, consumer: AIOKafkaConsumer) -> None:
        if self._clock() - self._last_retry < self.retry_s:
            await asyncio.sleep(min(0.2, self.retry_s))
            return
        self._last_retry = self._clock()
        try:
            for k in self.writer.buffer_keys():
                path = await asyncio.to_thread(self.writer.flush, k)
                if path is not None:
                    self.stats["files"] += 1
        except StoreUnavailable as exc:
            log.debug("store still not writable: %s", exc)
            return
        assert self._paused_since is not None
        log.warning(
            "store writable again after %.0f s, resuming", self._clock() - self._paused_since
        )
        self._paused_since = None
        if not self._assigning:  # else _on_assigned resumes once its seeks are done
            consumer.resume(*consumer.assignment())
        await self._commit(consumer)

    @property
    def paused(self) -> bool:
        return self._paused_since is not None

    # ---- rebalance -----------------------------------------------------------------------

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            await self._flush(consumer, self.writer.buffer_keys(), pause_on_error=False)
        except StoreUnavailable as exc:
            # Not committed, so whoever owns the partitions next reads these rows again.
            log.error("rebalance with unwritable store, dropping buffers: %s", exc)
            self.writer.clear()
        for tp in revoked:
            key = (tp.topic, tp.partition)
            self._position.pop(key, None)
            self._committed.pop(key, None)

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None or not assigned:
            return
        # aiokafka sets the assignment before it awaits this callback, and getmany() hands
        # out records of the new partitions (read from the committed offset) meanwhile: hold
        # them back until the seeks below, or they would be read once more after them.
        consumer.pause(*assigned)
        self._assigning = True
        try:
            await self._place(consumer, assigned)
        except Exception as exc:
            log.error("partition assignment failed, stopping: %s", exc)
            self._failed = exc
            return
        finally:
            self._assigning = False
        if self._paused_since is None:
            consumer.resume(*assigned)

    async def _place(self, consumer: AIOKafkaConsumer, assigned: list[TopicPartition]) -> None:
        """Seek each partition to the first record the store lacks."""
        async with self._store_lock:
            self._durable = await asyncio.to_thread(self.index.load)
        earliest = await consumer.beginning_offsets(assigned)
        for tp in assigned:
            key = (tp.topic, tp.partition)
            committed = await consumer.committed(tp)
            durable = self._durable.get(key)
            pos = resume_offset(committed, earliest[tp], durable)
            consumer.seek(tp, pos)
            self._position[key] = pos
            self._committed[key] = committed if committed is not None else -1
            if durable is not None:
                durable.discard_below(pos)
            log.info(
                "assigned topic=%s partition=%d committed=%s resume=%d",
                tp.topic,
                tp.partition,
                committed,
                pos,
            )
