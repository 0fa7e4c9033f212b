"""Optional HTTP endpoints of ``twin sink --http-port P``: GET /healthz and GET /metrics.

The sink is a plain aiokafka process with no web server of its own; this small aiohttp
server (no Faust) lets a supervisor and Prometheus see what it does:

- ``/healthz``: ``ok``, ``degraded`` (the last maintenance pass failed, or the store is not
  writable and consumption is paused) with HTTP 200, since the sink still runs and retries;
  ``starting`` (not consuming yet) and ``stalled`` (its loop has not turned for
  ``stall_s``) with HTTP 503;
- ``/metrics``: Prometheus text of the sink's counters (rows, messages, refusals by reason
  code from the fixed DLQ reason set, duplicates skipped, maintenance runs and failures,
  paused state).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from storage.sink import ParquetSink
from streams.schema import DLQ_REASONS, DlqReason

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: A sink whose consume loop has not turned for this long is stalled [s].
DEFAULT_STALL_S = 60.0

#: stats key -> (metric name without _total, help) of the counters on /metrics
_COUNTERS = {
    "rows": ("twin_sink_rows", "Rows accepted into the store's buffers."),
    "messages": ("twin_sink_messages", "Records accepted (one record may hold many rows)."),
    "duplicates": ("twin_sink_duplicates", "Samples skipped because already stored."),
    "skipped_durable": (
        "twin_sink_skipped_durable",
        "Records skipped because their offsets are already in a stored file.",
    ),
    "redelivered": ("twin_sink_redelivered", "Records read again while still buffered."),
    "files": ("twin_sink_files", "Parquet files written."),
    "dlq": ("twin_sink_dlq", "Refused records sent to the dead-letter topic."),
    "dlq_failures": ("twin_sink_dlq_failures", "Dead-letter sends that failed or were skipped."),
    "maintenance_runs": ("twin_sink_maintenance_runs", "Maintenance passes that succeeded."),
    "maintenance_failures": (
        "twin_sink_maintenance_failures",
        "Maintenance passes (compaction, rollups, retention) that failed (logged, retried).",
    ),
}


def sink_health(sink: ParquetSink, stall_s: float = DEFAULT_STALL_S) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /healthz for this sink."""
    paused_s = sink.paused_for_s()
    since = sink.since_last_step_s()
    if since is None:
        status = "starting"
    elif since > stall_s:
        status = "stalled"
    elif sink.maintenance_error is not None or paused_s is not None:
        status = "degraded"
    else:
        status = "ok"
    body: dict[str, Any] = {
        "status": status,
        "maintenance_error": sink.maintenance_error,
        "maintenance_failures": sink.stats["maintenance_failures"],
        "paused": paused_s is not None,
        "paused_s": paused_s,
        "buffered_rows": sink.writer.buffered_rows,
        "rows": sink.stats["rows"],
        "refused": sum(sink.refused.values()),
    }
    return (200 if status in ("ok", "degraded") else 503), body


class _SinkCollector(Collector):
    def __init__(self, sink: ParquetSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        sink = self.sink
        for key, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=sink.stats.get(key, 0))
        refused = CounterMetricFamily(
            "twin_sink_refused",
            "Records refused, by reason code (streams/schema.py DlqReason).",
            labels=["reason"],
        )
        by_reason = dict.fromkeys(sorted(DLQ_REASONS), 0)
        for code, n in sink.refused.items():
            # a bounded label set whatever a raiser put in its code
            label = code if code in DLQ_REASONS else DlqReason.INVALID.value
            by_reason[label] += n
        for code, n in by_reason.items():
            refused.add_metric([code], n)
        yield refused
        paused_s = sink.paused_for_s()
        yield GaugeMetricFamily(
            "twin_sink_paused",
            "1 while the store is not writable and consumption is paused.",
            value=0.0 if paused_s is None else 1.0,
        )
        yield GaugeMetricFamily(
            "twin_sink_paused_seconds",
            "How long consumption has been paused [s].",
            value=paused_s or 0.0,
        )
        yield GaugeMetricFamily(
            "twin_sink_maintenance_degraded",
            "1 while the last maintenance pass failed.",
            value=0.0 if sink.maintenance_error is None else 1.0,
        )
        yield GaugeMetricFamily(
            "twin_sink_buffered_rows",
            "Rows buffered, not yet in a file.",
            value=sink.writer.buffered_rows,
        )


def render_sink_metrics(sink: ParquetSink) -> bytes:
    """Prometheus text format (version 0.0.4) of the sink's counters."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SinkCollector(sink))
    return generate_latest(registry)


class SinkHttp:
    """The /healthz and /metrics server of one sink; ``start()`` binds, ``stop()`` closes."""

    def __init__(
        self, sink: ParquetSink, host: str, port: int, stall_s: float = DEFAULT_STALL_S
    ) -> None:
        self.sink = sink
        self.host = host
        self.port = port
        self.stall_s = stall_s
        self._runner: web.AppRunner | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        status, body = sink_health(self.sink, self.stall_s)
        return web.json_response(body, status=status)

    async def _metrics(self, request: web.Request) -> web.Response:
        # aiohttp refuses a charset inside content_type, so set the header itself
        return web.Response(
            body=render_sink_metrics(self.sink), headers={"Content-Type": CONTENT_TYPE}
        )

    async def start(self) -> None:
        """Serve until :meth:`stop`."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        log.info("sink http on %s:%d (/healthz, /metrics)", self.host, self.port)

    async def stop(self) -> None:
        """Close the server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
