"""The Parquet sink: Kafka topics -> durable Parquet files, exactly once.

A plain aiokafka consumer, not a Faust agent: Faust's ``take()`` acknowledges a batch even
when its handler raises (docs/sources.md E1), and here a failed write must never move
the committed offset. The rules:

- every record is decoded and validated as the worker does (storage/decode.py), so the
  store holds only what the twin accepts; refusals are counted by reason code and, for
  topics the worker does not consume itself, dead-lettered;
- any exception while handling one record skips that record (counted, reason
  ``internal_error``); a record that crashed the whole process (a segfault) is skipped with
  reason ``crashed`` after the restart (streams/inflight.py);
- a sample (entity, instant, sub-key) already stored is not stored again
  (storage/samples.py), whatever offset it arrives at;
- auto-commit is off; an offset is committed only when every record below it is in a
  durable file (or was refused and counted);
- every file names the exact offset ranges it holds, so on (re)assignment the sink seeks to
  the first record the store lacks and skips later records it already holds; ranges beyond
  a partition's end (a foreign or forged file) are ignored;
- a full disk or read-only directory pauses consumption, keeps the buffers, retries every
  ``retry_s`` and resumes once a write succeeds;
- with maintenance on, the rollups are brought up to date after every flush (only the
  minutes of the new files, storage/rollup.py), so gpu_1m and friends answer as soon as the
  first rows are stored rather than after the first maintenance pass;
- maintenance (compaction, rollups, retention) that fails is logged with its cause, counted
  and retried next pass; with ``twin sink --http-port`` it shows on /healthz as degraded and
  on /metrics (storage/sink_http.py).

Test-only hook: with ``TWIN_SINK_TEST_ABORT_KEY=<key>`` in the environment, the sink calls
``os.abort()`` when it is about to decode a record with that message key (a stand-in for a
native crash, used by tests/storage/test_storage_poison_integration.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from storage.compact import remove_replaced
from storage.decode import (
    CODE_CRASHED,
    CODE_INTERNAL,
    Incoming,
    decode_many,
    is_telemetry_table,
    reason_code,
    refuse,
    split_by_day,
)
from storage.layout import (
    META_TABLE,
    TableDef,
    default_tables,
    list_parts,
    list_temp_files,
    tables_by_topic,
)
from storage.maintenance import run_maintenance
from storage.offsets import (
    OffsetMap,
    OffsetMetadataError,
    RangeSet,
    commit_offset,
    file_offsets,
    resume_offset,
)
from storage.rollup import update_rollups
from storage.samples import SampleIndex, stored_samples
from storage.writer import BufferedWriter, StorageError, StoreUnavailable, WriterOptions
from streams.codec import DEFAULT_LIMITS, Limits
from streams.inflight import InflightGuard
from streams.kafka_security import KafkaSecurity, check_access, kafka_client_kwargs
from streams.schema import TOPIC_DLQ
from twin.errors import BrokerError, ConfigError, DecodeError

log = logging.getLogger("storage.sink")

#: Header that marks a replayed message (storage/replay.py, the simulator's fast mode);
#: the worker lifts its age limit for such messages, and so does the sink.
REPLAY_HEADER_KEY: Final = "twin-replay"
#: Environment variable of the test-only crash hook (see the module docstring).
ABORT_KEY_ENV: Final = "TWIN_SINK_TEST_ABORT_KEY"
#: Most of a refusal's detail kept in the ``dlq.detail`` header [bytes].
DLQ_DETAIL_BYTES: Final = 512
#: Head of a refused payload kept in its dead-letter record [bytes].
DLQ_MAX_VALUE_BYTES: Final = 64 * 1024
#: Seconds without dead-letter copies after a failed send [s].
DLQ_BACKOFF_S: Final = 60.0
#: Seconds between two log lines about refusals of one reason code.
REFUSAL_LOG_EVERY_S: Final = 10.0
#: Records whose broker time differs by less than this share one live-window bound [ms].
_LAG_BUCKET_MS: Final = 60_000


def remove_temp_files(data_dir: Path) -> int:
    """Delete files left by writes that never reached their rename; returns the count."""
    n = 0
    for p in list_temp_files(data_dir):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def wall_clock_ms() -> int:
    """Now [ms since epoch, UTC]."""
    return time.time_ns() // 1_000_000


class StoreIndex:
    """Offset ranges durably in the store, per topic partition (footers read once per file).

    Only files the sink wrote count (their footer names their table); ranges of a file that
    reach beyond a partition's end offset cannot be the sink's (a foreign file, such as one
    written through SQL): the whole file's ranges are ignored and the file is logged once.
    """

    def __init__(self, data_dir: Path, tables: Iterable[TableDef]) -> None:
        self.data_dir = data_dir
        self.tables = list(tables)
        self._seen: dict[Path, OffsetMap] = {}
        self.distrusted: set[Path] = set()

    def _read(self, tdef: TableDef, p: Path) -> OffsetMap:
        import pyarrow.parquet as pq

        try:
            meta = pq.read_metadata(p).metadata or {}
        except (OSError, ValueError) as exc:
            if not p.exists():
                raise FileNotFoundError(p) from exc
            log.error("ignoring the offsets of an unreadable store file=%s: %s", p, exc)
            return {}
        if meta.get(META_TABLE) != tdef.name.encode():
            log.warning("ignoring offsets of a file the sink did not write file=%s", p)
            return {}
        try:
            return file_offsets(p)
        except OffsetMetadataError as exc:
            if not p.exists():
                raise FileNotFoundError(p) from exc
            log.error("ignoring bad offset metadata: %s", exc)
            return {}

    def load(self, ends: dict[tuple[str, int], int] | None = None) -> OffsetMap:
        """Union of the trusted files' ranges; ``ends`` maps a partition to its end offset."""
        current = set()
        for t in self.tables:
            for p in list_parts(t.table_dir(self.data_dir)):
                if p not in self._seen:
                    try:
                        self._seen[p] = self._read(t, p)
                    except FileNotFoundError:
                        continue  # removed by retention or compaction since the listing
                current.add(p)
        for gone in set(self._seen) - current:
            del self._seen[gone]
            self.distrusted.discard(gone)
        out: OffsetMap = {}
        for p, m in self._seen.items():
            if p in self.distrusted:
                continue
            if ends is not None and _beyond(m, ends):
                self.distrusted.add(p)
                log.error(
                    "ignoring the offsets of store file=%s: they reach past the partition's "
                    "end (not written by this sink for this log)",
                    p,
                )
                continue
            for tp, rs in m.items():
                out.setdefault(tp, RangeSet()).update(rs)
        return out


def _beyond(m: OffsetMap, ends: dict[tuple[str, int], int]) -> bool:
    for tp, rs in m.items():
        end = ends.get(tp)
        if end is not None and rs and rs.ranges[-1][1] >= end:
            return True
    return False


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: ParquetSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.sink._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.sink._on_assigned(assigned)


@dataclasses.dataclass
class _Item:
    """A record past the offset checks, on its way into a buffer."""

    tp: TopicPartition
    rec: ConsumerRecord
    tdef: TableDef


class ParquetSink:
    """Consumes telemetry (and twin output) topics into the Parquet store.

    ``topics`` defaults to every topic of the table registry. ``flush_rows`` is the row-group
    target and ``flush_seconds`` the oldest a buffer may get before it is written.
    ``limits`` are the worker's plausibility limits; its live window is measured from each
    record's broker timestamp, but never from more than ``max_lag_s`` before now, so a sink
    catching up a backlog stores what the worker accepted live. ``dedupe_window_s`` is how
    much recent history the sample-key index keeps in memory (older samples are checked
    against the files). ``dlq_topic`` receives refusals of topics the worker does not
    consume (None: count only).
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
        limits: Limits = DEFAULT_LIMITS,
        max_lag_s: float = 7 * 86_400.0,
        dedupe_window_s: float = 600.0,
        dlq_topic: str | None = TOPIC_DLQ,
        wall_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.data_dir = Path(data_dir)
        by_topic = tables_by_topic(tables or default_tables())
        wanted = list(topics) if topics is not None else list(by_topic)
        unknown = [t for t in wanted if t not in by_topic]
        if unknown:
            raise ConfigError(f"no store table for topics {unknown}; known: {sorted(by_topic)}")
        if max_lag_s < 0 or dedupe_window_s <= 0:
            raise ConfigError("max_lag_s must be >= 0 and dedupe_window_s > 0")
        self.by_topic = {t: by_topic[t] for t in wanted}
        self.group_id = group_id
        self.retry_s = retry_s
        self.maintenance_s = maintenance_s
        self.limits = limits
        self.max_lag_ms = int(max_lag_s * 1000)
        self.dlq_topic = dlq_topic
        self._wall_ms = wall_ms
        # Compaction deletes files the index reads: never both at once.
        self._store_lock = asyncio.Lock()
        self._maint_task: asyncio.Task[None] | None = None
        self._rollup_task: asyncio.Task[None] | None = None
        #: Set when a flush wrote files the rollups have not seen yet.
        self._rollup_due = asyncio.Event()
        self.consumer_config = consumer_config or {}
        self.writer = BufferedWriter(
            self.data_dir, WriterOptions(row_group_rows=flush_rows, max_age_s=flush_seconds), clock
        )
        self.index = StoreIndex(self.data_dir, self.by_topic.values())
        self.samples = {
            t.name: SampleIndex(t, int(dedupe_window_s * 1000)) for t in self.by_topic.values()
        }
        safe_group = re.sub(r"[^A-Za-z0-9_.-]", "_", group_id)[:100]
        self.guard_path = self.data_dir / f".sink-inflight-{safe_group}.json"
        self._guard: InflightGuard | None = None
        abort = os.environ.get(ABORT_KEY_ENV)
        self._abort_key = abort.encode() if abort else None
        self._clock = clock
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: Any = None
        self._dlq_pending: list[asyncio.Future[Any]] = []
        self._dlq_off_until = float("-inf")
        self._durable: OffsetMap = {}
        self._position: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._paused_since: float | None = None
        #: when the consume loop last turned (None: not consuming yet), for /healthz
        self._last_step: float | None = None
        self._last_retry = 0.0
        self._assigning = False
        self._failed: BaseException | None = None
        self._refusal_logged: dict[str, float] = {}
        self.stats = {
            "rows": 0,
            "messages": 0,
            "skipped_durable": 0,
            "redelivered": 0,
            "bad": 0,
            "duplicates": 0,
            "files": 0,
            "dlq": 0,
            "dlq_failures": 0,
            "maintenance_runs": 0,
            "maintenance_failures": 0,
        }
        #: Refused records by reason code.
        self.refused: Counter[str] = Counter()
        #: The last maintenance failure (``"<type>: <message>"``), None once a pass succeeds.
        self.maintenance_error: str | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then write what is buffered and commit."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        n = remove_temp_files(self.data_dir)
        for tdef in self.by_topic.values():
            n += remove_replaced(tdef.table_dir(self.data_dir))
        if n:
            log.info("removed orphan temp and replaced files count=%d", n)
        self._guard = InflightGuard(self.guard_path)
        if self._guard.poisoned or self._guard.suspects:
            log.warning(
                "the sink died while handling records: suspects=%s poisoned=%s",
                sorted(self._guard.suspects),
                sorted(self._guard.poisoned),
            )
        await self._load_samples()
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
        try:
            await consumer.start()
        except KafkaError as exc:
            # reachable over TCP but no Kafka answering there: one line, not a traceback
            await consumer.stop()
            self._consumer = None
            raise BrokerError(
                f"cannot start consuming from Kafka at {self.bootstrap}: {exc}"
            ) from None
        log.info("sink started topics=%s data_dir=%s", ",".join(self.by_topic), self.data_dir)
        if self.maintenance_s:
            self._maint_task = asyncio.create_task(self._maintain(stop, self.maintenance_s))
            self._rollup_task = asyncio.create_task(self._roll_up(stop))
        try:
            while not stop.is_set():
                await self._step(consumer)
            await self._final_flush()
        finally:
            for task in (self._maint_task, self._rollup_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await consumer.stop()
            self._consumer = None
            await self._stop_producer()
            refused = " ".join(f"refused_{k}={v}" for k, v in sorted(self.refused.items()))
            log.info(
                "sink stopped %s %s", " ".join(f"{k}={v}" for k, v in self.stats.items()), refused
            )

    async def _load_samples(self) -> None:
        now = self._wall_ms()
        async with self._store_lock:
            for idx in self.samples.values():
                try:
                    n = await asyncio.to_thread(idx.load, self.data_dir, now)
                except Exception as exc:  # a bad file must not keep the sink from starting
                    log.error("sample index of %s not rebuilt: %r", idx.tdef.name, exc)
                    continue
                if n:
                    log.info(
                        "sample index table=%s samples=%d newest=%s", idx.tdef.name, n, idx.newest
                    )

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
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: log, count, retry next pass
                self.stats["maintenance_failures"] += 1
                self.maintenance_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "maintenance failed (retried next pass) failures=%d: %s",
                    self.stats["maintenance_failures"],
                    self.maintenance_error,
                    exc_info=exc,
                )
            else:
                self.stats["maintenance_runs"] += 1
                self.maintenance_error = None

    async def _roll_up(self, stop: asyncio.Event) -> None:
        """Update the rollups after each flush that wrote files (beside consumption)."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._rollup_due.wait(), 1.0)
            if not self._rollup_due.is_set():
                continue
            if self.paused:  # the store is failing: the retries come first
                await asyncio.sleep(1.0)
                continue
            self._rollup_due.clear()
            try:
                async with self._store_lock:
                    await asyncio.to_thread(update_rollups, self.data_dir)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next flush or maintenance pass retries
                log.error("rollups after flush failed (retried): %s: %s", type(exc).__name__, exc)

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        self._last_step = self._clock()
        if self._failed is not None:
            # aiokafka logs and swallows listener errors; a sink that cannot place its
            # partitions must stop (and be restarted) rather than read from unknown offsets.
            raise StorageError(f"partition assignment failed: {self._failed}") from self._failed
        if self._paused_since is not None:
            await self._retry_paused(consumer)
        batches = await consumer.getmany(timeout_ms=200)
        if batches:
            await self._handle_batches(batches)
        for idx in self.samples.values():
            idx.prune()
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

    def _admit(self, tp: TopicPartition, rec: ConsumerRecord) -> bool:
        """Offset checks: False for a record that is buffered or stored already."""
        key = (tp.topic, tp.partition)
        pos = self._position.get(key)
        if pos is not None and rec.offset < pos:
            # Offsets only grow within an assignment: this record is buffered or stored.
            self.stats["redelivered"] += 1
            return False
        self._position[key] = rec.offset + 1
        durable = self._durable.get(key)
        if durable is not None and rec.offset in durable:
            self.stats["skipped_durable"] += 1
            return False
        return True

    async def _handle_batches(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        items = [
            _Item(tp, rec, self.by_topic[tp.topic])
            for tp, records in batches.items()
            for rec in records
            if self._admit(tp, rec)
        ]
        if not items:
            return
        guard = self._guard
        if guard is None:  # not started through run(): no crash protection needed
            await self._process(items)
            return
        normal: list[_Item] = []
        suspects: list[_Item] = []
        for it in items:
            mk = (it.tp.topic, it.tp.partition, it.rec.offset)
            if guard.is_poisoned(mk):
                await self._refuse(
                    it, refuse(CODE_CRASHED, "the sink died while handling this record alone")
                )
                guard.forget(mk)
            elif guard.is_suspect(mk):
                suspects.append(it)
            else:
                normal.append(it)
        if normal:
            self._note(guard, normal, solo=False)
            await self._process(normal)
            self._note(guard, None)
        # Records in flight when the process last died: one at a time, so a record that
        # kills the process again is known exactly and skipped after the next restart.
        for it in suspects:
            self._note(guard, [it], solo=True)
            await self._process([it])
            self._note(guard, None)

    def _note(self, guard: InflightGuard, items: list[_Item] | None, solo: bool = False) -> None:
        """Note the batch in flight (None: done); a full disk only loses crash protection."""
        try:
            if items is None:
                guard.done()
            else:
                guard.begin(((i.tp.topic, i.tp.partition, i.rec.offset) for i in items), solo=solo)
        except OSError as exc:
            now = self._clock()
            if now - self._refusal_logged.get("_guard", -1e9) >= REFUSAL_LOG_EVERY_S:
                self._refusal_logged["_guard"] = now
                log.warning("cannot note the batch in flight (crash protection off): %s", exc)

    def _bound(self, rec_ts_ms: int, wall: int) -> int:
        """The instant a record is judged at [ms]: its broker time within [wall - lag, wall]."""
        if rec_ts_ms is None or rec_ts_ms <= 0:
            return wall
        return min(wall, max(int(rec_ts_ms), wall - self.max_lag_ms))

    def _decode(self, tdef: TableDef, items: Sequence[_Item]) -> list[pa.Table | DecodeError]:
        """Rows or refusal per item, judged against the worker's live window."""
        wall = self._wall_ms()
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            if self._abort_key is not None and it.rec.key == self._abort_key:
                os.abort()  # test-only hook (module docstring)
            lag = wall - self._bound(it.rec.timestamp, wall)
            # Round the lag up to a bucket: a batch shares few bounds, decoded together.
            groups.setdefault(-(-lag // _LAG_BUCKET_MS) * _LAG_BUCKET_MS, []).append(i)
        out: list[pa.Table | DecodeError] = [refuse(CODE_INTERNAL, "not decoded")] * len(items)
        for lag, idx in groups.items():
            # Same as the worker's check at the record's broker time: the age limit grows by
            # how long ago that was; the future limit stays against the wall clock.
            limits = dataclasses.replace(self.limits, max_age_s=self.limits.max_age_s + lag / 1000)
            recs = [
                Incoming(
                    items[i].rec.key,
                    items[i].rec.value,
                    items[i].rec.timestamp,
                    _is_replay(items[i].rec),
                )
                for i in idx
            ]
            try:
                got = decode_many(tdef, recs, wall, limits)
            except Exception:  # the batch decoder failed: find the record one by one
                got = []
                for r in recs:
                    try:
                        got += decode_many(tdef, [r], wall, limits)
                    except Exception as exc:
                        got.append(refuse(CODE_INTERNAL, f"decode raised {exc!r}"))
            for i, g in zip(idx, got, strict=True):
                out[i] = g
        return out

    async def _process(self, items: list[_Item]) -> None:
        by_table: dict[str, list[_Item]] = {}
        for it in items:
            by_table.setdefault(it.tdef.name, []).append(it)
        late: list[tuple[_Item, pa.Table]] = []
        now = self._wall_ms()
        for group in by_table.values():
            decoded = self._decode(group[0].tdef, group)
            for it, d in zip(group, decoded, strict=True):
                if isinstance(d, DecodeError):
                    await self._refuse(it, d)
                    continue
                try:
                    rest = self._store(it, d, now)
                except Exception as exc:  # one record must never stop the sink
                    await self._refuse(it, refuse(CODE_INTERNAL, f"{type(exc).__name__}: {exc}"))
                    continue
                if rest is not None:
                    late.append((it, rest))
        if late:
            await self._store_late(late)

    def _store(self, it: _Item, table: pa.Table, now_ms: int) -> pa.Table | None:
        """Buffer the new in-window rows of a decoded record; returns its late rows."""
        if table.num_rows == 0:
            return None
        new, late, dups = self.samples[it.tdef.name].admit(
            table, now_ms, frame=is_telemetry_table(it.tdef)
        )
        self.stats["duplicates"] += dups
        self._add(it, new)
        return late

    def _add(self, it: _Item, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.stats["messages"] += 1
        self.stats["rows"] += table.num_rows
        for day, part in split_by_day(table):
            self.writer.add(it.tdef, day, part, (it.tp.topic, it.tp.partition), it.rec.offset)

    async def _store_late(self, late: list[tuple[_Item, pa.Table]]) -> None:
        """Rows older than the in-memory window: checked against the store's files.

        One lookup per table and batch (a replay or backlog is late frame after frame).
        """
        by_table: dict[str, list[tuple[_Item, pa.Table]]] = {}
        for it, rows in late:
            by_table.setdefault(it.tdef.name, []).append((it, rows))
        for name, group in by_table.items():
            idx = self.samples[name]
            try:
                rows = pa.concat_tables([r for _, r in group])
                async with self._store_lock:
                    stored = await asyncio.to_thread(stored_samples, self.data_dir, idx, rows)
            except Exception as exc:
                for it, _ in group:
                    await self._refuse(it, refuse(CODE_INTERNAL, f"{type(exc).__name__}: {exc}"))
                continue
            for it, rows in group:
                try:
                    new, dups = idx.admit_late(rows, stored)
                    self.stats["duplicates"] += dups
                    self._add(it, new)
                except Exception as exc:
                    await self._refuse(it, refuse(CODE_INTERNAL, f"{type(exc).__name__}: {exc}"))

    async def _refuse(self, it: _Item, exc: DecodeError) -> None:
        code = reason_code(exc)
        self.refused[code] += 1
        self.stats["bad"] += 1
        now = self._clock()
        last = self._refusal_logged.get(code)
        if last is None or now - last >= REFUSAL_LOG_EVERY_S:
            self._refusal_logged[code] = now
            log.warning(
                "refused record topic=%s partition=%d offset=%d reason=%s count=%d detail=%s",
                it.tp.topic,
                it.tp.partition,
                it.rec.offset,
                code,
                self.refused[code],
                exc.reason[:200],
            )
        # The worker dead-letters what it refuses on its own topics; the rest is ours.
        if self.dlq_topic and not is_telemetry_table(it.tdef):
            await self._dead_letter(it, code, exc.reason)

    async def _dead_letter(self, it: _Item, code: str, detail: str) -> None:
        from aiokafka import AIOKafkaProducer

        value = it.rec.value or b""
        headers = [
            ("dlq.reason", code.encode()),
            ("dlq.detail", detail.encode("utf-8", "replace")[:DLQ_DETAIL_BYTES]),
            ("dlq.topic", it.tp.topic.encode()),
            ("dlq.partition", str(it.tp.partition).encode()),
            ("dlq.offset", str(it.rec.offset).encode()),
            ("dlq.size", str(len(value)).encode()),
        ]
        if len(value) > DLQ_MAX_VALUE_BYTES:
            value = value[:DLQ_MAX_VALUE_BYTES]
            headers.append(("dlq.truncated", b"1"))
        if self._clock() < self._dlq_off_until:
            self.stats["dlq_failures"] += 1  # backing off after a failed send
            return
        try:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    linger_ms=5,
                    **kafka_client_kwargs(self.security),
                )
                await producer.start()
                self._producer = producer
            fut = await self._producer.send(
                str(self.dlq_topic), value=value, key=it.rec.key, headers=headers
            )
            self._dlq_pending.append(fut)
            self.stats["dlq"] += 1
        except Exception as exc:  # the DLQ must never stop the sink
            self.stats["dlq_failures"] += 1
            # A missing topic or a broker problem: each send would block for the request
            # timeout; count the refusals without a DLQ copy for a while instead.
            self._dlq_off_until = self._clock() + DLQ_BACKOFF_S
            log.error(
                "dlq send failed topic=%s offset=%d (no dead-letter copies for %.0f s): %r",
                it.tp.topic,
                it.rec.offset,
                DLQ_BACKOFF_S,
                exc,
            )

    async def _settle_dlq(self) -> None:
        """Wait for dead-letter deliveries before committing past their records."""
        if not self._dlq_pending:
            return
        pending, self._dlq_pending = self._dlq_pending, []
        for r in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(r, BaseException):
                self.stats["dlq_failures"] += 1
                log.error("dlq delivery failed: %r", r)

    async def _stop_producer(self) -> None:
        if self._producer is None:
            return
        with contextlib.suppress(Exception):
            await self._settle_dlq()
            await self._producer.stop()
        self._producer = None

    # ---- writing and committing ----------------------------------------------------------

    async def _flush(
        self, consumer: AIOKafkaConsumer, keys: list[tuple[str, Any]], pause_on_error: bool = True
    ) -> None:
        if not keys:
            return
        try:
            for k in keys:
                await self._write(k)
        except StoreUnavailable as exc:
            if not pause_on_error:
                raise
            self._pause(consumer, exc)
            return
        await self._commit(consumer)

    async def _write(self, key: tuple[str, Any]) -> None:
        """Write one buffer; a batch that cannot be written is dropped and counted."""
        try:
            path = await asyncio.to_thread(self.writer.flush, key)
            paths = [path] if path is not None else []
        except StoreUnavailable:
            raise
        except Exception as exc:
            # Not the store: something in the rows (validation should have caught it).
            # Writing the same rows again would fail again, after every restart.
            log.error("cannot write buffer %s (%r): isolating the records that cause it", key, exc)
            paths, dropped = await asyncio.to_thread(self.writer.flush_isolating, key)
            for tp, offset, err in dropped:
                self.refused[CODE_INTERNAL] += 1
                self.stats["bad"] += 1
                log.error(
                    "dropped a record that cannot be written topic=%s offset=%s: %r",
                    tp,
                    offset,
                    err,
                )
        self._written(key)
        self.stats["files"] += len(paths)
        if paths:
            self._rollup_due.set()

    def _written(self, key: tuple[str, Any]) -> None:
        idx = self.samples.get(key[0])
        if idx is not None:
            idx.written(key[1])

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        await self._settle_dlq()
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
            self._paused_since = self._clock()  # the first failure: how long it has lasted
        self._last_retry = self._clock()
        consumer.pause(*consumer.assignment())

    async def _retry_paused(self, consumer: AIOKafkaConsumer) -> None:
        if self._clock() - self._last_retry < self.retry_s:
            await asyncio.sleep(min(0.2, self.retry_s))
            return
        self._last_retry = self._clock()
        try:
            for k in self.writer.buffer_keys():
                await self._write(k)
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

    def paused_for_s(self) -> float | None:
        """How long consumption has been paused on an unwritable store [s]; None: not."""
        return None if self._paused_since is None else self._clock() - self._paused_since

    def since_last_step_s(self) -> float | None:
        """Seconds since the consume loop last turned; None before it first does."""
        return None if self._last_step is None else self._clock() - self._last_step

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
            # The dropped rows' keys were noted as seen: rebuild from what is on disk.
            await self._load_samples()
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
        earliest = await consumer.beginning_offsets(assigned)
        end = await consumer.end_offsets(assigned)
        ends = {(tp.topic, tp.partition): end[tp] for tp in assigned}
        async with self._store_lock:
            self._durable = await asyncio.to_thread(self.index.load, ends)
        for tp in assigned:
            key = (tp.topic, tp.partition)
            committed = await consumer.committed(tp)
            if committed is not None and committed > end[tp]:
                # Nothing this group read can lie past the log's end: a forged commit (or a
                # recreated topic). Resume from what the store holds instead.
                log.error(
                    "ignoring committed offset past the log end topic=%s partition=%d "
                    "committed=%d end=%d",
                    tp.topic,
                    tp.partition,
                    committed,
                    end[tp],
                )
                committed = None
            durable = self._durable.get(key)
            pos = resume_offset(committed, earliest[tp], durable)
            consumer.seek(tp, pos)
            self._position[key] = pos
            self._committed[key] = committed if committed is not None else -1
            if durable is not None:
                durable.discard_below(pos)
            log.info(
                "assigned topic=%s partition=%d committed=%s resume=%d end=%d",
                tp.topic,
                tp.partition,
                committed,
                pos,
                end[tp],
            )


def _is_replay(rec: ConsumerRecord) -> bool:
    return any(k == REPLAY_HEADER_KEY for k, _ in (rec.headers or ()))
