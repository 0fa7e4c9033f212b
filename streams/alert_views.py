"""HTTP API and /metrics of the alerts.

- GET /api/alerts: active and recent alerts of every worker (this worker's own live, the
  others' from twin.state), filterable by ``state``, ``severity``, ``entity``; ``events=N``
  adds this worker's last N events;
- GET /api/alerts/{id};
- POST /api/alerts/{id}/ack ``{"comment": ..., "by": ...}``;
- POST /api/alerts/{id}/shelve ``{"duration_s": ..., "comment": ..., "by": ...}``;
- POST /api/entities/{entity}/out-of-service ``{"reason": ..., "by": ...}`` and
  POST /api/entities/{entity}/in-service: ISA-18.2 OOSRV of a GPU (``R0001/g3``), a rack or
  a unit; the entities out of service are listed in GET /api/alerts (``out_of_service``).

The POSTs need the worker's bearer token (streams/auth.py). An action on an alert (or entity)
this worker does not own is forwarded on ``twin.alert-commands``, keyed by the owner that the
alert id (the entity) names, and applied by the worker that owns that partition (202).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.alerting import STATES, AlertEngine, AlertError, owner_of
from models.rules import SEVERITIES, SEVERITY_RANK
from streams.alert_sinks import AlertSink
from streams.auth import token_required
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Longest comment and operator name accepted [characters].
MAX_COMMENT = 1000
MAX_BY = 100
MAX_BODY_BYTES = 16 * 1024

SendCommand = Callable[[str, dict[str, Any]], Awaitable[None]]

#: An entity that can be taken out of service: a rack or unit (the owner), or a GPU of a rack.
_ENTITY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64})?")


def entity_owner(entity: str) -> str | None:
    """The owner (rack or unit) whose partition holds an entity's alerts; None if malformed."""
    if not isinstance(entity, str) or not _ENTITY_RE.fullmatch(entity):
        return None
    return entity.partition("/")[0]


class CommandError(ValueError):
    """A malformed operator action (HTTP body or twin.alert-commands message)."""


def parse_command(raw: bytes, op: str | None = None, aid: str | None = None) -> dict[str, Any]:
    """Validate an action: ``{"op": "ack"|"shelve", "id", "by", "comment", "duration_s"}``.

    ``op`` and ``aid`` come from the URL for an HTTP body; a forwarded message carries them.
    """
    if len(raw) > MAX_BODY_BYTES:
        raise CommandError(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CommandError("body is not JSON") from None
    if not isinstance(doc, dict):
        raise CommandError("body must be a JSON object")
    op = op or doc.get("op")
    if op == "service":
        return _parse_service(doc, aid)
    aid = aid or doc.get("id")
    if op not in ("ack", "shelve"):
        raise CommandError("op: expected ack, shelve or service")
    if not isinstance(aid, str) or owner_of(aid) is None:
        raise CommandError("id: not an alert id")
    by, comment = _by_comment(doc, "comment")
    out: dict[str, Any] = {"op": op, "id": aid, "by": by, "comment": comment}
    if op == "shelve":
        d = doc.get("duration_s")
        if isinstance(d, bool) or not isinstance(d, int | float) or not d >= 0:
            raise CommandError("duration_s: expected seconds >= 0 (0 unshelves)")
        out["duration_s"] = float(d)
    return out


def _by_comment(doc: dict[str, Any], text_key: str) -> tuple[str, str]:
    by, comment = doc.get("by", "operator"), doc.get(text_key, "")
    if not isinstance(by, str) or not 0 < len(by) <= MAX_BY:
        raise CommandError(f"by: expected a name of 1 to {MAX_BY} characters")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise CommandError(f"{text_key}: expected text of at most {MAX_COMMENT} characters")
    return by, comment


def _parse_service(doc: dict[str, Any], entity: str | None) -> dict[str, Any]:
    """``{"op": "service", "entity", "oos": bool, "by", "reason"}`` (entity from the URL)."""
    entity = entity or doc.get("entity")
    if not isinstance(entity, str) or entity_owner(entity) is None:
        raise CommandError("entity: expected a rack, a unit or RACK/gN")
    oos = doc.get("oos")
    if not isinstance(oos, bool):
        raise CommandError("oos: expected true (out of service) or false (in service)")
    by, reason = _by_comment(doc, "reason")
    return {"op": "service", "entity": entity, "oos": oos, "by": by, "reason": reason}


def command_owner(cmd: dict[str, Any]) -> str:
    """The owner whose partition a parsed command goes to (its worker applies it)."""
    if cmd["op"] == "service":
        return entity_owner(cmd["entity"]) or ""
    return owner_of(cmd["id"]) or ""


#: Most racks a root-cause alert from twin.state may name (the campus has 1,250).
MAX_BLAST = 100_000


def external_roots(docs: dict[str, dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Active root-cause alerts among other workers' alert documents (twin.state, so checked
    like any input): id -> the racks it feeds."""
    out: dict[str, tuple[str, ...]] = {}
    for aid, d in docs.items():
        blast = d.get("blast")
        if not d.get("active") or d.get("oos") or not isinstance(blast, list) or not blast:
            continue
        if len(blast) <= MAX_BLAST and all(isinstance(r, str) for r in blast):
            out[aid] = tuple(blast)
    return out


def apply_command(engine: AlertEngine, cmd: dict[str, Any]) -> dict[str, Any]:
    """Apply an action to an owned alert (or entity); the alert (the entity's service
    record) as JSON (AlertError if it does not apply)."""
    if cmd["op"] == "service":
        entity = cmd["entity"]
        engine.set_out_of_service(entity, cmd["oos"], by=cmd["by"], reason=cmd["reason"])
        note = engine.service_notes.get(entity)
        return {"entity": entity, "out_of_service": cmd["oos"], "note": note}
    if cmd["op"] == "ack":
        a = engine.ack(cmd["id"], cmd["by"], cmd["comment"])
    else:
        a = engine.shelve(cmd["id"], cmd["by"], cmd["duration_s"], cmd["comment"])
    return a.to_dict()


def site_raised_in_window(
    engine: AlertEngine, others: dict[str, dict[str, Any]], now_s: float
) -> int:
    """Alerts raised (visible to an operator) in the flood window across the site: this
    worker's own raises plus the alerts other workers hold (twin.state documents) whose
    latest raise falls in the window and was shown (not suppressed, shelved or out of
    service when raised).

    Each worker's engine counts only the alerts its partitions own, so one worker's count
    is not what an operator sees: a flood of 4 alerts on each of 3 workers is 12 alerts
    on the page. A document holds only an alert's latest raise, so an alert raised twice in
    the window on another worker counts once (a lower bound; this worker's are exact).
    """
    start = now_s - engine.rules.budget.flood_window_s
    n = len(engine.raises)
    for aid, d in others.items():
        if aid in engine.alerts or not d.get("shown"):
            continue
        t = d.get("raised_s")
        if isinstance(t, int | float) and not isinstance(t, bool) and start < t <= now_s:
            n += 1
    return n


def site_flood(
    engine: AlertEngine, others: dict[str, dict[str, Any]], now_s: float
) -> tuple[bool, int]:
    """(flood, raised in the window) of the whole site (EEMUA 191 budget of the rules)."""
    n = site_raised_in_window(engine, others, now_s)
    return n > engine.rules.budget.flood_count, n


class AlertCollector(Collector):
    """/metrics: alerts by state and severity, flood (this worker's and the site's),
    raises, events, sink queues. ``others``: the alert documents other workers hold."""

    def __init__(
        self,
        engine: AlertEngine,
        sinks: list[AlertSink],
        others: Callable[[], dict[str, dict[str, Any]]] = dict,
    ) -> None:
        self.engine = engine
        self.sinks = sinks
        self.others = others

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        g = GaugeMetricFamily(
            "twin_alerts",
            "Alerts held by ISA-18.2 state and severity.",
            labels=["state", "severity"],
        )
        counts = e.counts()
        for state in STATES:
            for sev in SEVERITIES:
                g.add_metric([state, sev], counts.get((state, sev), 0))
        yield g
        yield GaugeMetricFamily(
            "twin_alert_flood",
            "1 while more alerts were raised in the flood window than the budget (EEMUA 191).",
            value=1.0 if e.flood else 0.0,
        )
        yield GaugeMetricFamily(
            "twin_alerts_raised_window",
            "Alerts raised (visible to an operator) in the flood window.",
            value=len(e.raises),
        )
        yield CounterMetricFamily(
            "twin_alerts_raised", "Alerts raised (visible to an operator).", value=e.raised_total
        )
        yield CounterMetricFamily("twin_alert_floods", "Alert floods begun.", value=e.floods_total)
        flood, n_site = site_flood(e, self.others(), e.clock())
        yield GaugeMetricFamily(
            "twin_alert_site_flood",
            "1 while the site (alerts of every worker) raised more alerts in the flood window "
            "than the budget (EEMUA 191).",
            value=1.0 if flood else 0.0,
        )
        yield GaugeMetricFamily(
            "twin_alerts_site_raised_window",
            "Alerts raised (visible) in the flood window across the site (every worker).",
            value=n_site,
        )
        depth = GaugeMetricFamily(
            "twin_alert_sink_queue", "Alert changes waiting for a sink.", labels=["sink"]
        )
        sent = CounterMetricFamily("twin_alert_sink_sent", "Alerts delivered.", labels=["sink"])
        failed = CounterMetricFamily(
            "twin_alert_sink_failures", "Failed deliveries (retried).", labels=["sink"]
        )
        dropped = CounterMetricFamily(
            "twin_alert_sink_dropped", "Alerts dropped or refused by a sink.", labels=["sink"]
        )
        for s in self.sinks:
            depth.add_metric([s.name], s.depth)
            sent.add_metric([s.name], s.stats.sent_total)
            failed.add_metric([s.name], s.stats.failures_total)
            dropped.add_metric([s.name], s.stats.dropped_total + s.stats.rejected_total)
        yield from (depth, sent, failed, dropped)


def _matches(
    doc: dict[str, Any], state: str | None, severity: str | None, entity: str | None
) -> bool:
    return (
        (state is None or doc.get("state") == state)
        and (severity is None or doc.get("severity") == severity)
        and (entity is None or entity in (doc.get("entity"), doc.get("owner"), doc.get("group")))
    )


def _urgency(doc: dict[str, Any]) -> tuple[bool, int, float]:
    return (
        doc.get("state") == "NORM",
        -SEVERITY_RANK.get(str(doc.get("severity")), 0),
        -float(doc.get("changed_s") or 0.0),
    )


def register_alert_views(
    app: faust.App,
    engine: AlertEngine,
    settings: Settings,
    owned: Callable[[str], bool],
    send_command: SendCommand,
    others: Callable[[], dict[str, dict[str, Any]]] = dict,
    others_service: Callable[[], dict[str, dict[str, Any]]] = dict,
) -> None:
    """Attach the alert API to an app.

    ``others``: alert id -> alert document of the alerts other workers hold, as published on
    twin.state; listed beside this worker's own with ``held_here: false``.
    ``others_service``: entity -> service note of the entities other workers hold out of
    service (twin.state).
    """

    @app.page("/api/alerts")
    class Alerts(View):
        async def get(self, request: Request) -> Response:
            q = request.query
            state, severity = q.get("state"), q.get("severity")
            if state is not None and state not in STATES:
                return self.json({"error": f"state: expected one of {list(STATES)}"}, status=400)
            if severity is not None and severity not in SEVERITIES:
                return self.json(
                    {"error": f"severity: expected one of {list(SEVERITIES)}"}, status=400
                )
            try:
                n_events = min(1000, max(0, int(q.get("events", "0"))))
            except ValueError:
                return self.json({"error": "events: expected an integer"}, status=400)
            entity = q.get("entity")
            own = [
                a.to_dict() | {"held_here": True}
                for a in engine.listing(state=state, severity=severity, entity=entity)
            ]
            remote = [
                d | {"held_here": False}
                for aid, d in others().items()
                if aid not in engine.alerts and _matches(d, state, severity, entity)
            ]
            # the page shows the site's flood (every worker's alerts), not one worker's
            flood, n_site = site_flood(engine, others(), engine.clock())
            body: dict[str, Any] = {
                "alerts": sorted(own + remote, key=_urgency),
                "flood": flood,
                "raised_in_window": n_site,
                "worker": {
                    "flood": engine.flood,
                    "raised_in_window": len(engine.raises),
                    "raised_total": engine.raised_total,
                    "floods_total": engine.floods_total,
                },
                "raised_total": engine.raised_total,
                "floods_total": engine.floods_total,
                "out_of_service": service_list(),
            }
            if n_events:
                body["events"] = list(engine.events)[-n_events:]
            return self.json(body)

    def service_list() -> list[dict[str, Any]]:
        own = {n["entity"]: n | {"held_here": True} for n in engine.service_listing()}
        for e, n in others_service().items():
            if e not in own and isinstance(n, dict) and entity_owner(e) is not None:
                own[e] = {
                    "entity": e,
                    "by": n.get("by"),
                    "reason": n.get("reason"),
                    "since_s": n.get("since_s"),
                    "held_here": False,
                }
        return [own[e] for e in sorted(own)]

    @app.page("/api/alerts/{alert_id}")
    class OneAlert(View):
        async def get(self, request: Request, alert_id: str) -> Response:
            a = engine.alerts.get(alert_id)
            if a is not None:
                return self.json(a.to_dict() | {"held_here": True})
            doc = others().get(alert_id)
            if doc is None:
                return self.json({"error": f"no alert {alert_id!r}"}, status=404)
            return self.json(doc | {"held_here": False})

    async def act(view: View, request: Request, op: str, alert_id: str) -> Response:
        try:
            cmd = parse_command(await request.read(), op, alert_id)
        except CommandError as exc:
            return view.json({"error": str(exc)}, status=400)
        return await dispatch(view, cmd, alert_id)

    async def dispatch(view: View, cmd: dict[str, Any], target: str) -> Response:
        owner = command_owner(cmd)
        if owned(owner):
            try:
                return view.json(apply_command(engine, cmd))
            except AlertError as exc:
                return view.json({"error": str(exc)}, status=exc.status)
        await send_command(owner, cmd)
        key = "entity" if cmd["op"] == "service" else "id"
        return view.json({"forwarded": True, "owner": owner, key: target}, status=202)

    async def service(view: View, request: Request, entity: str, oos: bool) -> Response:
        raw = await request.read()
        try:
            doc = json.loads(raw or b"{}") if len(raw) <= MAX_BODY_BYTES else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            return view.json({"error": "body must be a JSON object"}, status=400)
        try:
            cmd = _parse_service(doc | {"oos": oos}, entity)
        except CommandError as exc:
            return view.json({"error": str(exc)}, status=400)
        return await dispatch(view, cmd, entity)

    # a GPU entity has a slash (R0001/g3): the path segment pattern takes one
    entity_path = "/api/entities/{entity:[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)?}"

    @app.page(entity_path + "/out-of-service")
    class OutOfService(View):
        @token_required(settings)
        async def post(self, request: Request, entity: str) -> Response:
            return await service(self, request, entity, True)

    @app.page(entity_path + "/in-service")
    class InService(View):
        @token_required(settings)
        async def post(self, request: Request, entity: str) -> Response:
            return await service(self, request, entity, False)

    @app.page("/api/alerts/{alert_id}/ack")
    class Ack(View):
        @token_required(settings)
        async def post(self, request: Request, alert_id: str) -> Response:
            return await act(self, request, "ack", alert_id)

    @app.page("/api/alerts/{alert_id}/shelve")
    class Shelve(View):
        @token_required(settings)
        async def post(self, request: Request, alert_id: str) -> Response:
            return await act(self, request, "shelve", alert_id)
