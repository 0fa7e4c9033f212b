"""``POST /api/v2/write``: InfluxDB v2 compatible line-protocol writes into the twin.

Telegraf's ``outputs.influxdb_v2`` and BMS gateways that speak InfluxDB write here unchanged
(docs/collectors.md). A write: ``?bucket=...&org=...&precision=ns|us|ms|s`` (bucket required
as InfluxDB requires it, its value and org not used; precision default ns), a line-protocol
body, ``Content-Encoding: gzip`` accepted (Telegraf's default), ``Authorization: Token <t>``
(InfluxDB's scheme) or ``Bearer <t>`` checked against the worker's API token as every other
write endpoint (streams/auth.py: none configured refuses all).

Lines are parsed (streams/lineproto.py), mapped (streams/ingest_map.py) and converted by the
same code as telemetry.ingest JSON (streams/ingest_json.py), so each frame passes the same
checks before it goes to telemetry.gpu / .thermal / .power. Answers as InfluxDB's:

- 204: every line written (metrics of unmapped measurements are counted, not errors);
- 400 ``{"code": "invalid", "message": "partial write: line 3: ..."}``: some lines refused
  (the first named); the good ones are written, each refused line goes to telemetry.dlq with
  its reason code, as Telegraf drops a batch on 400 rather than retrying it forever;
- 401/403 as streams/auth.py decides; 413 body (or decompressed body) over
  :data:`MAX_BODY_BYTES`: Telegraf halves its batch and retries; 415 another encoding.

``GET /api/ingest/unmapped``: what came in unmapped (measurement and field names, counts).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Final, cast

import faust
from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.auth import check_token
from streams.ingest_json import ConvertedFrame, convert_readings
from streams.ingest_map import IngestMapper
from streams.lineproto import (
    PRECISIONS,
    BadBody,
    BadLine,
    BodyTooLarge,
    gunzip,
    parse_line_protocol,
)
from streams.runtime import TwinRuntime
from streams.settings import Settings
from twin.errors import DecodeError

log = logging.getLogger(__name__)

#: Largest write body, after decompression [bytes]. Telegraf's default batch (1,000 metrics)
#: of nvidia_smi lines is about 0.4 MB; a bigger batch gets 413 and is split by Telegraf.
MAX_BODY_BYTES: Final = 8 << 20
#: Refused lines of one write sent to the DLQ one record each; beyond, counted only.
MAX_DLQ_LINES: Final = 1000
#: Answers counted on /metrics: a fixed label set.
STATUSES: Final = ("204", "400", "401", "403", "413", "415", "500")
DLQ_MAX_DETAIL_BYTES: Final = 1024


@dataclass
class WriteStats:
    """Counts of /api/v2/write: answers by status, lines by what became of them."""

    answers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    lines_written: int = 0
    lines_refused: int = 0
    frames_sent: int = 0

    def answer(self, status: int) -> None:
        """Count an answer (an unexpected status counts as 500)."""
        key = str(status) if str(status) in self.answers else "500"
        self.answers[key] += 1


class IngestCollector(Collector):
    """/metrics: line-protocol writes and what the mapping made of Telegraf metrics."""

    def __init__(self, mapper: IngestMapper, writes: WriteStats) -> None:
        self.mapper = mapper
        self.writes = writes

    def collect(self) -> Iterator[Metric]:
        w, s = self.writes, self.mapper.stats
        answers = CounterMetricFamily(
            "twin_ingest_writes", "POST /api/v2/write answers by HTTP status.", labels=["status"]
        )
        for status, n in w.answers.items():
            answers.add_metric([status], n)
        yield answers
        lines = CounterMetricFamily(
            "twin_ingest_lines",
            "Line-protocol lines by outcome (written, refused: sent to the DLQ).",
            labels=["outcome"],
        )
        lines.add_metric(["written"], w.lines_written)
        lines.add_metric(["refused"], w.lines_refused)
        yield lines
        metrics = CounterMetricFamily(
            "twin_ingest_metrics",
            "Telegraf/line-protocol metrics by mapping outcome (GET /api/ingest/unmapped "
            "names the unmapped ones).",
            labels=["outcome"],
        )
        metrics.add_metric(["mapped"], s.metrics_mapped)
        metrics.add_metric(["unmapped"], s.metrics_unmapped)
        yield metrics
        yield CounterMetricFamily(
            "twin_ingest_fields_unmapped",
            "Fields of mapped measurements that map nowhere and are not ignored.",
            value=s.fields_unmapped,
        )


def _influx_error(status: int, code: str, message: str) -> Response:
    return cast(Response, web.json_response({"code": code, "message": message}, status=status))


_AUTH_CODES: Final = {401: "unauthorized", 403: "forbidden"}


def influx_auth(request: Any, settings: Settings) -> Response | None:
    """None when the request carries the API token (``Token`` or ``Bearer``), else the
    InfluxDB-style 401/403 (streams/auth.py decides which)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() == "token":
        header = f"Bearer {token.strip()}"
    refused = check_token(SimpleNamespace(headers={"Authorization": header}), settings.api_token)
    if refused is None:
        return None
    status = int(refused.status)
    message = "no token configured on this worker (--api-token-file)"
    if status == 401:
        message = "authentication required: Authorization: Token <token>"
    elif settings.api_token:
        message = "invalid token"
    resp = _influx_error(status, _AUTH_CODES.get(status, "forbidden"), message)
    if "WWW-Authenticate" in refused.headers:
        resp.headers["WWW-Authenticate"] = refused.headers["WWW-Authenticate"]
    return resp


async def read_body(request: Any, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, decompressed; BodyTooLarge beyond ``limit`` bytes (checked on
    Content-Length first, then as it streams, inflated), BadBody for corrupt gzip."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"body of {length} bytes is larger than {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(1 << 16):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body is larger than {limit} bytes")
            chunks.append(chunk)
    except web.RequestPayloadError as exc:  # corrupt gzip, inflated by aiohttp as it streams
        raise BadBody(f"unreadable body: {' '.join(str(exc).split())}") from None
    data = b"".join(chunks)
    # aiohttp's server inflates a gzip body as it streams (the limit above counted the
    # inflated bytes); a server that does not leaves the gzip magic here
    gzipped = request.headers.get("Content-Encoding", "").strip().lower() == "gzip"
    if gzipped and data[:2] == b"\x1f\x8b":
        return gunzip(data, limit)
    return data


@dataclass
class WriteResult:
    """Frames to send and refused lines of one write."""

    frames: list[ConvertedFrame]
    refused: list[BadLine]
    written_lines: int


def convert_write(
    body: bytes,
    precision: str,
    mapper: IngestMapper,
    *,
    now_ms: int,
    settings: Settings,
) -> WriteResult:
    """Parse, map and convert one write body: the frames to send and the refused lines.

    Readings of one rack (or unit) at one instant make one frame; a frame the checks refuse
    refuses every line that fed it, with the check's reason code.
    """
    metrics, refused = parse_line_protocol(body, precision)
    texts = {n: m for n, m in metrics}
    groups: dict[tuple[str, str, int], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for number, metric in metrics:
        try:
            readings = mapper.readings(metric, now_ms)
        except DecodeError as exc:
            refused.append(BadLine(number, metric.name, exc.code, exc.reason))
            continue
        for r in readings:
            key = (str(r["kind"]), str(r.get("rack") or r.get("unit")), int(r["ts"]))
            groups[key].append((number, r))
    frames: list[ConvertedFrame] = []
    written: set[int] = set()
    for rows in groups.values():
        try:
            frames.extend(
                convert_readings(
                    [r for _, r in rows], now_ms=now_ms, limits=settings.limits, replay=False
                )
            )
        except DecodeError as exc:
            for number in sorted({n for n, _ in rows}):
                refused.append(BadLine(number, texts[number].name, exc.code, exc.reason))
            continue
        written.update(n for n, _ in rows)
    refused.sort(key=lambda b: b.number)
    bad_numbers = {b.number for b in refused}
    return WriteResult(frames, refused, len(written - bad_numbers))


def register_write_views(
    app: faust.App,
    rt: TwinRuntime,
    settings: Settings,
    mapper: IngestMapper,
    topics: dict[str, Any],
    dlq_topic: Any,
) -> WriteStats:
    """Attach POST /api/v2/write and GET /api/ingest/unmapped; ``topics``: contract name
    (telemetry.gpu, ...) -> this twin's topic. Returns the counters for /metrics."""
    stats = WriteStats()
    # one thread: writes are converted in the order they came, one at a time
    converter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lineproto")

    async def dead_letter(bad: BadLine, body_lines: list[bytes]) -> None:
        rt.counters.dead_letter(bad.code)
        raw = body_lines[bad.number - 1] if bad.number <= len(body_lines) else b""
        detail = f"line {bad.number}: {bad.reason}".encode("utf-8", "backslashreplace")
        headers = [
            ("dlq.reason", bad.code.encode()),
            ("dlq.detail", detail[:DLQ_MAX_DETAIL_BYTES]),
            ("dlq.topic", b"http:/api/v2/write"),
            ("dlq.line", str(bad.number).encode()),
            ("dlq.size", str(len(raw)).encode()),
        ]
        try:
            key = bad.text.split(",", 1)[0][:200].encode()  # the measurement
            await dlq_topic.send(key=key, value=raw[:65536], headers=headers)
        except Exception as exc:  # the DLQ must never fail the write
            log.error("dlq send failed for a line-protocol line: %r", exc)

    async def write(request: Any) -> Response:
        refused_auth = influx_auth(request, settings)
        if refused_auth is not None:
            return refused_auth
        query = request.query
        if not query.get("bucket"):
            return _influx_error(400, "invalid", "bucket not specified (?bucket=...)")
        precision = query.get("precision", "ns")
        if precision not in PRECISIONS:
            return _influx_error(
                400, "invalid", f"precision must be one of ns, us, ms, s, got {precision[:20]!r}"
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", ""):
            return _influx_error(
                415, "unsupported media type", f"Content-Encoding {encoding[:30]!r}: gzip only"
            )
        try:
            body = await read_body(request)
        except BodyTooLarge as exc:
            return _influx_error(413, "request too large", str(exc))
        except BadBody as exc:
            return _influx_error(400, "invalid", str(exc))
        # CPU-bound (0.14 s for 1,000 nvidia_smi lines, measured on a loaded 2-core machine):
        # off the event loop, so that a big batch holds up no agent, heartbeat or request
        result = await asyncio.get_running_loop().run_in_executor(
            converter,
            functools.partial(
                convert_write, body, precision, mapper, now_ms=rt.clock_ms(), settings=settings
            ),
        )
        for f in result.frames:
            await topics[f.topic].send(key=f.key.encode(), value=f.value)
        stats.frames_sent += len(result.frames)
        stats.lines_written += result.written_lines
        stats.lines_refused += len(result.refused)
        if not result.refused:
            return cast(Response, web.Response(status=204))
        body_lines = [raw.rstrip(b"\r") for raw in body.split(b"\n")]
        for bad in result.refused[:MAX_DLQ_LINES]:
            await dead_letter(bad, body_lines)
        first = result.refused[0]
        message = (
            f"partial write: line {first.number}: {first.reason} ({first.code}); "
            f"{len(result.refused)} line(s) refused, {result.written_lines} written"
        )
        return _influx_error(400, "invalid", message)

    @app.page("/api/v2/write")
    class Write(View):
        async def post(self, request: Request) -> Response:
            started = time.monotonic()
            try:
                resp = await write(request)
            except Exception:
                log.error("POST /api/v2/write failed", exc_info=True)
                resp = _influx_error(500, "internal error", "the write failed; see the worker log")
            stats.answer(int(resp.status))
            log.debug("write %s in %.3f s", resp.status, time.monotonic() - started)
            return resp

    @app.page("/api/ingest/unmapped")
    class Unmapped(View):
        async def get(self, request: Request) -> Response:
            return self.json(mapper.stats.report())

    return stats
