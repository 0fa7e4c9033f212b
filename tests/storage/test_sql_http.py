"""POST /api/sql on a real worker: bad bodies are 400s, results are strict JSON, no write.

The worker runs as a subprocess (as a user runs it) over a store with one GPU file; the
queries go through its SQL pool of worker processes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.writer import write_file
from streams.brokers import Broker
from streams.httpclient import http_post
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams.workerproc import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]
START_MS = 1_790_000_000_000


def _strict(body: bytes) -> object:
    def refuse(token: str) -> object:
        raise AssertionError(f"{token} is not JSON")

    return json.loads(body, parse_constant=refuse)


@pytest.fixture
def worker(broker: Broker, topic_prefix: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    asyncio.run(ensure_topics(broker.bootstrap, Topics(topic_prefix), 2))
    part = write_file(
        default_tables()["gpu"],
        synth.gpu_table(2, 4, 30, start_ms=START_MS, seed=2),
        date_dir(tmp_path / "history", "gpu", day_of_ms(START_MS)),
    )
    w = WorkerProcess(broker.url, topic_prefix, tmp_path, partitions=2)
    try:
        w.wait_healthy()
        yield w.url, Path(part)
    finally:
        w.stop()


def test_api_sql_edges(worker: tuple[str, Path]) -> None:
    url, part = worker
    api = url + "/api/sql"
    digest = hashlib.sha256(part.read_bytes()).hexdigest()

    status, body = http_post(api, b'{"sql": "SELECT count(*) AS n FROM gpu"}', timeout_s=60)
    assert status == 200 and _strict(body) == {
        "columns": ["n"],
        "rows": [{"n": 240}],
        "row_count": 1,
    }

    q = "SELECT 'nan'::DOUBLE AS v, '-inf'::FLOAT AS w, '\\xAA\\xFF'::BLOB AS b"
    status, body = http_post(api, json.dumps({"sql": q}).encode())
    row = _strict(body)["rows"][0]  # type: ignore[index]
    assert status == 200 and row["v"] is None and row["w"] is None
    assert base64.b64decode(row["b"]) == b"\xaa\xff"

    for bad, says in [
        (b"\xff\xfe SELECT 1", "not valid UTF-8"),
        (b'{"sql": "SELECT \'\\ud800\'"}', "lone surrogate"),
        (b"{not json", "not valid JSON"),
        (b'{"sql": 1}', "must be text"),
        (f"EXPLAIN ANALYZE COPY gpu TO '{part}'".encode(), "EXPLAIN ANALYZE"),
        (f"COPY gpu TO '{part}'".encode(), "COPY statements are refused"),
        (b"SELECT * FROM read_csv('/etc/passwd')", "not available"),
    ]:
        status, body = http_post(api, bad)
        err = _strict(body)["error"]  # type: ignore[index]
        assert status == 400 and says in err and "\n" not in err, (bad, err)
    assert hashlib.sha256(part.read_bytes()).hexdigest() == digest
