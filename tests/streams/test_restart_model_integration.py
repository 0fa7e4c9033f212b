"""A worker SIGKILLed at random moments comes back with every GPU's fitted thermal model.

The simulator (true R = 0.025 K/W, C = 550 J/K, away from the estimator's priors of
0.018 K/W and 400 J/K) streams into a real broker for the whole test; one worker fits it,
is killed with SIGKILL ten times at seeded random moments and restarted each time. After
each restart the rack-model checkpoint the killed worker left in its changelog (read here
straight from the broker) is the floor: every GPU's update count must be at least that
checkpoint's, and R and C must be the fitted values, not the priors. The worker runs with
``--checkpoint-interval 0.3`` (tests/streams/workerproc.py), which bounds the model
checkpoints too. A model started over from the priors by frames applied before the
restore (the bug this guards) failed at the first kill: 71 updates, the checkpoint had 101.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.brokers import Broker
from streams.httpclient import http_get
from streams.rackmodel import RackModel
from streams.schema import DEFAULT_PARTITIONS
from streams.settings import Topics
from streams.sim_source import publish_simulation
from streams.topics_admin import ensure_topics
from tests.streams.apishape import model_columns_of
from tests.streams.workerproc import WorkerProcess
from twin.sim import Simulator
from twin.site import Site, load_site

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRUE_R_K_W = 0.025
TRUE_C_J_K = 550.0
PRIOR_R_K_W = 0.018
PRIOR_C_J_K = 400.0
KILLS = 10
#: Simulated seconds per wall-clock second (updates per GPU per second of test): fast
#: enough to converge in seconds, slow enough that a restarted worker catches up at once.
SPEED = 8.0
SEED = 20261202


def _site() -> Site:
    # training with periodic checkpoints: load steps that excite the die dynamics
    base = load_site(racks=2)
    return replace(
        base,
        gpu=replace(base.gpu, r_die_coolant_k_w=TRUE_R_K_W, c_th_j_k=TRUE_C_J_K),
        workload=replace(
            base.workload,
            training_frac=1.0,
            inference_frac=0.0,
            job_racks_min=1,
            job_racks_max=1,
            checkpoint_period_s=120.0,
            checkpoint_duration_s=40.0,
        ),
    )


class SimFeed:
    """The simulator publishing at SPEED in a thread, from 6 h ago (never in the future)."""

    def __init__(self, bootstrap: str, topics: Topics, site: Site):
        start_ms = time.time_ns() // 1_000_000 - 6 * 3600 * 1000
        self.sim = Simulator(site, seed=3, start_ms=start_ms)
        self.bootstrap = bootstrap
        self.topics = topics
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(
                publish_simulation(
                    self.sim,
                    bootstrap=self.bootstrap,
                    topics=self.topics,
                    dt_s=1.0,
                    speed=SPEED,
                    duration_s=None,
                    stop=self._stop,
                    replay=True,
                )
            )
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert self.error is None, repr(self.error)


@dataclass
class Fit:
    """One rack's fit per GPU: update counts, R (fast and baseline) [K/W], C [J/K]."""

    updates: np.ndarray
    r_k_w: np.ndarray
    r_baseline_k_w: np.ndarray
    c_j_k: np.ndarray

    @classmethod
    def of_model(cls, m: RackModel) -> Fit:
        e = m.estimator
        return cls(e.n_updates, e.r_k_w, e.r_baseline_k_w, e.c_j_k)

    @classmethod
    def of_view(cls, doc: dict[str, Any]) -> Fit:
        return cls(
            np.array(doc["updates"]),
            np.array(doc["r_k_w"], dtype=float),
            np.array(doc["r_baseline_k_w"], dtype=float),
            np.array(doc["c_j_k"], dtype=float),
        )


async def _changelog(bootstrap: str, topic: str) -> dict[str, Fit]:
    """The latest checkpoint of every rack in a rack-model changelog, read to its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(DEFAULT_PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        latest: dict[str, bytes] = {}
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, "changelog not read to its end in 30 s"
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                for r in recs:
                    if r.key is not None and r.value is not None:
                        latest[json.loads(r.key)] = r.value  # Faust writes str keys as JSON
    finally:
        await consumer.stop()
    return {rack: Fit.of_model(RackModel.from_bytes(v)) for rack, v in latest.items()}


def _racks_owned(worker: WorkerProcess) -> int:
    status, doc = worker.get_json("/healthz")
    return int(doc.get("racks_owned", 0)) if status in (200, 503) and doc else 0


def _own_fits(worker: WorkerProcess, racks: list[str], timeout_s: float = 60.0) -> dict[str, Fit]:
    """Each rack's fit once this worker owns the racks (not another worker's publication)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _racks_owned(worker) >= len(racks):
            docs = [worker.get_json(f"/api/racks/{r}?precision=full") for r in racks]
            fits = [model_columns_of(d["gpus"]) if s == 200 else None for s, d in docs]
            if all(fits):
                return {r: Fit.of_view(f) for r, f in zip(racks, fits, strict=True) if f}
        time.sleep(0.1)
    raise AssertionError(f"racks not owned with a model in {timeout_s}s\n{worker.log_tail()}")


def _learning(
    worker: WorkerProcess, racks: list[str], since: dict[str, Fit], timeout_s: float = 60.0
) -> dict[str, Fit]:
    """The fits once every GPU has taken 10 updates more than any had in ``since``."""
    deadline = time.monotonic() + timeout_s
    while True:
        fits = _own_fits(worker, racks)
        if all(fits[r].updates.min() > since[r].updates.max() + 10 for r in racks):
            return fits
        assert time.monotonic() < deadline, (
            f"the fit stopped at {[fits[r].updates.min() for r in racks]} updates "
            f"(since: {[since[r].updates.max() for r in racks]}); "
            f"{worker.get_json('/healthz')}\n{worker.log_tail()}"
        )
        time.sleep(0.2)


def _healthy(worker: WorkerProcess, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{worker.log_tail()}")
        if http_get(worker.url + "/healthz", timeout_s=2)[0] == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"worker not healthy in {timeout_s}s\n{worker.log_tail()}")


def _assert_fitted(fit: Fit, what: str) -> None:
    # The truth per GPU is R at the rack's measured flow, near 0.025 K/W, and 550 J/K; the
    # fits settle within a few per cent of it. A fit restarted from the priors sits 28 % (R)
    # and 27 % (C) lower for its first samples.
    r, c = np.median(fit.r_k_w), np.median(fit.c_j_k)
    assert r > 1.2 * PRIOR_R_K_W and abs(r / TRUE_R_K_W - 1) < 0.08, f"{what}: median R {r:.5f}"
    # C: within 15 % (the estimator's C of a rack whose power steps little converges
    # slowest, docs/estimator.md; 13 % seen after a kill on Apache Kafka)
    assert c > 1.2 * PRIOR_C_J_K and abs(c / TRUE_C_J_K - 1) < 0.15, f"{what}: median C {c:.1f}"


@pytest.fixture
def spine(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[tuple[Broker, Topics]]:
    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, DEFAULT_PARTITIONS))
    yield broker, topics


@pytest.mark.timeout(600)
def test_fitted_models_survive_ten_random_sigkills(
    spine: tuple[Broker, Topics], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker, topics = spine
    site = _site()
    racks = list(site.rack_ids)
    changelog = f"{topics.prefix}-twin-rack-model-changelog"
    rng = random.Random(SEED)
    feed = SimFeed(broker.bootstrap, topics, site)
    worker = WorkerProcess(broker.url, topics.prefix, tmp_path)
    rows: list[str] = []
    t_start = time.monotonic()
    try:
        _healthy(worker)
        # warm up until the changelog holds a converged checkpoint of every rack
        deadline = time.monotonic() + 90
        while True:
            ckpt = asyncio.run(_changelog(broker.bootstrap, changelog))
            if set(ckpt) >= set(racks) and min(ckpt[r].updates.min() for r in racks) >= 100:
                break
            assert time.monotonic() < deadline, f"no checkpoints\n{worker.log_tail()}"
            time.sleep(1.0)
        after = _own_fits(worker, racks)
        for kill in range(1, KILLS + 1):
            # each worker learns something before it is killed, so that the counts must go
            # on across the kills, not merely not drop
            _learning(worker, racks, after)
            time.sleep(rng.uniform(0.0, 3.0))
            before = _own_fits(worker, racks)
            worker.kill()
            t_kill = time.monotonic()
            ckpt = asyncio.run(_changelog(broker.bootstrap, changelog))
            worker = WorkerProcess(broker.url, topics.prefix, tmp_path)
            _healthy(worker)
            t_healthy = time.monotonic() - t_kill
            after = _own_fits(worker, racks)
            t_restored = time.monotonic() - t_kill
            for rack in racks:
                floor, got = ckpt[rack], after[rack]
                assert got.updates.shape == floor.updates.shape, rack
                dropped = np.flatnonzero(got.updates < floor.updates)
                assert not dropped.size, (
                    f"kill {kill} {rack}: GPUs {dropped.tolist()} restarted their fit: "
                    f"{got.updates[dropped].tolist()} updates < checkpoint's "
                    f"{floor.updates[dropped].tolist()}\n{worker.log_tail()}"
                )
                _assert_fitted(got, f"kill {kill} {rack} after restart")
                # what was checkpointed is what came back (plus what was applied since): the
                # baseline R (memory ~2,000 samples, still converging over this test's 100-800
                # updates: one GPU moved 10.8 % in 27 updates at 117) within 15 %; the fast R
                # follows the last ~100 samples (twin/estimator.py) and the worker applied up
                # to ~60 since
                assert np.all(np.abs(got.r_baseline_k_w / floor.r_baseline_k_w - 1) < 0.15), rack
                assert np.all(np.abs(got.r_k_w / floor.r_k_w - 1) < 0.2), rack
                assert np.all(np.abs(got.c_j_k / floor.c_j_k - 1) < 0.15), rack
            rows.append(
                f"{broker.kind} kill {kill:2d}: healthy {t_healthy:5.1f} s, "
                f"restored {t_restored:5.1f} s; "
                f"updates min/max before kill {min(before[r].updates.min() for r in racks)}"
                f"/{max(before[r].updates.max() for r in racks)}, "
                f"checkpoint {min(ckpt[r].updates.min() for r in racks)}"
                f"/{max(ckpt[r].updates.max() for r in racks)}, "
                f"after restart {min(after[r].updates.min() for r in racks)}"
                f"/{max(after[r].updates.max() for r in racks)}"
            )
            with capsys.disabled():
                print(rows[-1], flush=True)
        last = _learning(worker, racks, after)
        for rack in racks:
            _assert_fitted(last[rack], f"{rack} at the end")
        with capsys.disabled():
            print(f"{broker.kind}: {KILLS} kills in {time.monotonic() - t_start:.0f} s", flush=True)
    finally:
        worker.stop()
        feed.stop()
