"""HTTP API served by every worker (Faust's aiohttp web server).

GET / (the control room, streams/ui_views.py), GET /healthz, GET /api/state,
GET /api/racks, GET /api/racks/{rack}, GET /api/units, GET /api/units/{unit}
(streams/api_views.py), GET /api/snapshot, POST /api/sql, GET /metrics; docs/api.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust
from aiohttp import web
from faust.web import Request, Response, View
from prometheus_client.registry import Collector

from streams.api_views import register_api_views
from streams.auth import sql_auth
from streams.metrics import CONTENT_TYPE, render_metrics
from streams.runtime import TwinRuntime
from streams.settings import Settings
from streams.ui_views import register_ui_views

LagFn = Callable[[], Awaitable[dict[tuple[str, int], int]]]
SnapshotFn = Callable[[], bytes]


def register_views(
    app: faust.App,
    rt: TwinRuntime,
    settings: Settings,
    consumer_lag: LagFn,
    snapshot: SnapshotFn,
    extra_metrics: Sequence[Collector] = (),
) -> None:
    """Attach the API views to an app (``extra_metrics``: more collectors for /metrics)."""
    sql_state: dict[str, Any] = {}
    # the control room at / (page, static files, SSE stream, what-if): streams/ui_views.py
    register_ui_views(app, rt, settings, snapshot)

    def sql_service() -> Any:
        # Opened on first use: DuckDB views over the store of this worker's --data-dir.
        if "svc" not in sql_state:
            from storage.sql import POOL_WORKERS, SqlService

            # worker processes: deadlines from submission, an express lane, no file writes
            svc = SqlService(settings.history_dir, workers=POOL_WORKERS)
            sql_state["svc"] = svc
            # Threads of its own, as many as queries it lets wait or run: waiting SQL never
            # holds the loop's default executor (snapshots) or a later SELECT 1.
            sql_state["threads"] = ThreadPoolExecutor(
                max_workers=svc.max_waiting, thread_name_prefix="sql"
            )
        return sql_state["svc"]

    @app.page("/api/snapshot")
    class Snapshot(View):
        async def get(self, request: Request) -> Response:
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(None, snapshot)
            return self.bytes(data, content_type="application/octet-stream")

    @app.page("/api/sql")
    class Sql(View):
        async def post(self, request: Request) -> Response:
            refused = sql_auth(request, settings)  # --sql-token-required: bearer token
            if refused is not None:
                return refused
            from storage.sql import SqlRefused, result_json, sql_from_body

            body = await request.read()
            loop = asyncio.get_running_loop()
            try:
                sql = sql_from_body(body)  # 400 for bad UTF-8, JSON, surrogates, NUL
                svc = sql_service()
                table = await loop.run_in_executor(sql_state["threads"], svc.query, sql)
                data = result_json(table)  # strict JSON: NaN -> null, BLOB -> base64
            except SqlRefused as exc:
                return self.json({"error": " ".join(str(exc).split())}, status=400)
            return self.bytes(data, content_type="application/json")

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            ready = not app.in_recovery and bool(app.consumer.assignment())
            lags = await consumer_lag() if ready else {}
            lag = sum(lags.values())
            # only partitions this worker has read from: elsewhere the lag is an estimate
            # from offset 0 (a restarted worker with nothing new to read is not stalled)
            stalled = ready and rt.stalled(sum(v for k, v in lags.items() if k in rt.positions))
            # Failing background tasks (streams/background.py): "degraded" with HTTP 200,
            # since the worker still applies telemetry and a restart would not mend a
            # failing checkpoint write; stalled and starting stay 503.
            failing = rt.counters.background.degraded()
            ok = "degraded" if failing else "ok"
            body: dict[str, Any] = {
                "status": "stalled" if stalled else ok if ready else "starting",
                "degraded_tasks": failing,
                "consumer_lag": lag,
                "assigned_partitions": len(app.consumer.assignment()),
                "racks_owned": len(rt.racks),
                "racks_known": rt.known_racks(),
                "gpu_samples_in": rt.counters.samples_in,
                "frames_in": sum(rt.counters.frames_in.values()),
                "frames_dlq": sum(rt.counters.dlq.values()),
            }
            return self.json(body, status=200 if ready and not stalled else 503)

    # /api/state, /api/racks[/{rack}], /api/units[/{unit}]: streams/api_views.py
    register_api_views(app, rt)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            lag = await consumer_lag()
            # aiohttp refuses a charset inside content_type, so set the header itself.
            resp = web.Response(
                body=render_metrics(rt, lag, extra_metrics),
                headers={"Content-Type": CONTENT_TYPE},
            )
            return cast(Response, resp)
