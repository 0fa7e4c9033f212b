"""`twin replay` against a real broker: the stored range comes back as the original frames."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from numpy.testing import assert_allclose

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.replay import REPLAY_HEADER, publish, replay_messages
from storage.writer import write_file
from streams.brokers import Broker
from streams.codec import decode_gpu_frame, decode_points_frame
from streams.schema import TOPIC_GPU, TOPIC_POWER, TOPIC_THERMAL
from twin.errors import DecodeError

from .storage_kafka_util import create_topic, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
START_MS = 1_789_999_200_000  # 2026-09-21T14:00Z: older than the worker's 1-day age limit
N_STEPS = 20
T0 = dt.datetime.fromtimestamp(START_MS / 1000, dt.UTC) + dt.timedelta(seconds=5)
T1 = T0 + dt.timedelta(seconds=10)  # 10 of the 20 stored instants
PLANT = {"CDU-A": {"supply_temp_c": 45.0, "flow_kg_s": 2.0}, "CDU-B": {"supply_temp_c": 44.0}}
POWER = {"PDU-1": {"power_w": 400_000.0}}
KEYS = {"gpu": ("rack", "gpu"), "plant": ("unit", "point"), "power": ("unit", "point")}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pa.Table]]:
    """A store with gpu (two files), plant and power rows of the same 20 instants."""
    d = tmp_path_factory.mktemp("store")
    tables = default_tables()
    day = day_of_ms(START_MS)
    src = {
        "gpu": synth.gpu_table(3, 4, N_STEPS, start_ms=START_MS, seed=5),
        "plant": synth.points_table(PLANT, N_STEPS, start_ms=START_MS, seed=6),
        "power": synth.points_table(POWER, N_STEPS, start_ms=START_MS, seed=7),
    }
    half = src["gpu"].num_rows // 2
    write_file(tables["gpu"], src["gpu"].slice(0, half), date_dir(d, "gpu", day))
    write_file(tables["gpu"], src["gpu"].slice(half), date_dir(d, "gpu", day))
    for name in ("plant", "power"):
        write_file(tables[name], src[name], date_dir(d, name, day))
    return d, src


def _in_range(t: pa.Table) -> pa.Table:
    ts = t["ts"].cast(pa.int64())
    lo, hi = int(T0.timestamp() * 1000), int(T1.timestamp() * 1000)
    return t.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))


def _batch(value: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(pa.py_buffer(value)).read_next_batch()


def _ts(value: bytes) -> int:
    """The instant of a one-instant frame [ms]."""
    return int(_batch(value)["ts"].cast(pa.int64())[0].as_py())


async def _topics(bootstrap: str, prefix: str) -> dict[str, str]:
    names = {
        "gpu": prefix + TOPIC_GPU,
        "plant": prefix + TOPIC_THERMAL,
        "power": prefix + TOPIC_POWER,
    }
    await create_topic(bootstrap, names["gpu"], 2)
    await create_topic(bootstrap, names["plant"], 1)
    await create_topic(bootstrap, names["power"], 1)
    return names


async def _consume(bootstrap: str, topics: list[str], n: int) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[ConsumerRecord] = []
    try:
        for _ in range(300):
            batches = await consumer.getmany(timeout_ms=200)
            out.extend(r for recs in batches.values() for r in recs)
            if len(out) >= n:
                break
        # Anything beyond n would be a duplicate or a row from outside the range.
        batches = await consumer.getmany(timeout_ms=500)
        out.extend(r for recs in batches.values() for r in recs)
    finally:
        await consumer.stop()
    return out


def _check_replayed(
    records: list[ConsumerRecord], topics: dict[str, str], src: dict[str, pa.Table]
) -> None:
    for name, topic in topics.items():
        recs = [r for r in records if r.topic == topic]
        want = synth.frames(_in_range(src[name]), KEYS[name][0])
        assert len(recs) == len(want), name
        original = {(k, _ts(v)): _batch(v) for k, v in want}
        got = {}
        for r in recs:
            b = _batch(r.value)
            ts = b["ts"].cast(pa.int64())
            assert pc.all(pc.equal(ts, ts[0])).as_py(), "one instant per message"
            assert set(b[KEYS[name][0]].to_pylist()) == {r.key.decode()}, "key = rack/unit"
            assert (REPLAY_HEADER[0], REPLAY_HEADER[1]) in list(r.headers)
            got[(r.key, int(ts[0].as_py()))] = b
        assert set(got) == set(original), f"{name}: replayed frames differ from the range"
        for k, b in got.items():
            if name == "gpu":  # GPUs come back in the order a rack sends them
                assert b.equals(original[k]), k
            else:  # a store sorts points by name; a frame's point order carries nothing
                assert (
                    pa.Table.from_batches([b])
                    .sort_by("point")
                    .equals(pa.Table.from_batches([original[k]]).sort_by("point"))
                ), k
    # Per partition, time never goes back (per key, the order a consumer relies on).
    for tp in {(r.topic, r.partition) for r in records}:
        ts = [
            int(_batch(r.value)["ts"].cast(pa.int64())[0].as_py())
            for r in records
            if (r.topic, r.partition) == tp
        ]
        assert ts == sorted(ts), tp
    # Across topics the sends were in stored-time order: a later instant never has an earlier
    # record create time (stamped by the producer at send) than any record of an earlier one.
    stamped = sorted((_ts(r.value), r.timestamp) for r in records)
    create = [c for _, c in stamped]
    assert create == sorted(create)


def test_replayed_frames_pass_the_worker_only_as_replays(
    stored: tuple[Path, dict[str, pa.Table]],
) -> None:
    d, _ = stored
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    msgs = list(replay_messages(d, T0, T1))
    assert len(msgs) == 10 * (3 + 2 + 1)
    for _, topic, key, value in msgs:
        decode = decode_gpu_frame if topic == TOPIC_GPU else decode_points_frame
        decode(value, key=key, now_ms=now_ms, replay=True)
        with pytest.raises(DecodeError, match="twin-replay header"):
            decode(value, key=key, now_ms=now_ms, replay=False)


async def test_cli_replays_range_into_prefixed_topics(
    broker: Broker, stored: tuple[Path, dict[str, pa.Table]]
) -> None:
    d, src = stored
    prefix = unique("replay") + "."
    topics = await _topics(broker.bootstrap, prefix)
    cmd = [
        sys.executable, "-m", "streams", "replay",
        "--from", T0.isoformat(), "--to", T1.isoformat(),
        "--speed", "20",  # 10 s of history in about 0.5 s
        "--broker", broker.url, "--data-dir", str(d), "--topic-prefix", prefix,
    ]  # fmt: skip
    r = await asyncio.to_thread(
        subprocess.run, cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr
    # stderr is a pipe here: no progress bar drawing, just the closing line.
    assert r.stdout == ""
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr
    assert r.stderr.splitlines()[-1] == "replayed 60 messages"
    records = await _consume(broker.bootstrap, list(topics.values()), 60)
    _check_replayed(records, topics, src)


class FakeClock:
    """A clock that only moves when the replay sleeps; records each wake-up time [s]."""

    def __init__(self) -> None:
        self.t = 0.0
        self.wakeups: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.t += s
        self.wakeups.append(self.t)


@pytest.mark.parametrize("speed", [0.0, 4.0])
async def test_speed_paces_sends_by_stored_time(
    broker: Broker, stored: tuple[Path, dict[str, pa.Table]], speed: float
) -> None:
    d, src = stored
    prefix = unique("pace") + "."
    topics = await _topics(broker.bootstrap, prefix)
    msgs = list(replay_messages(d, T0, T1))
    clock = FakeClock()
    sent = await publish(
        broker.bootstrap,
        msgs,
        speed,
        False,
        topic_prefix=prefix,
        clock=clock.now,
        sleep=clock.sleep,
    )
    assert sent == len(msgs) == 60
    if speed == 0:
        assert clock.wakeups == []
    else:
        # One wait per new stored instant, until (ts - ts_first) / speed: 0.25 s, 0.5 s, ...
        assert_allclose(clock.wakeups, [k / speed for k in range(1, 10)])
    records = await _consume(broker.bootstrap, list(topics.values()), 60)
    _check_replayed(records, topics, src)
