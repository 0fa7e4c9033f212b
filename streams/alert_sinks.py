"""Notification sinks of the alerts: Prometheus Alertmanager (API v2) and a JSON webhook.

The worker hands every alert change to :meth:`AlertSink.offer`, which never waits: changes
are coalesced by alert id in a bounded map (the queue), and a task of its own posts them
(:meth:`AlertSink.run`) with a timeout, retrying with exponential backoff. A sink that is down
or slow therefore never blocks or slows the pipeline, and what it missed is still queued (the
latest version of each alert) when it comes back. Firing alerts are re-sent every
``resend_interval_s`` as Alertmanager expects of a client (it resolves an alert whose
``endsAt`` passes without news), so a restarted Alertmanager learns them again too.

Which alerts fire at the sink: those whose condition holds and an operator should see (UNACK,
ACKED). Returned to normal, shelved, suppressed by design and out of service are sent as
resolved (``endsAt`` = now): the twin has decided that nobody needs paging for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

#: Alert states that page at a sink; every other state is sent as resolved.
FIRING_STATES = frozenset({"UNACK", "ACKED"})
#: Longest blast-radius list in an annotation [entities]; the count is given beside it.
BLAST_ANNOTATION_MAX = 16


def iso(ts_s: float) -> str:
    """RFC 3339 UTC time with milliseconds (Alertmanager's startsAt/endsAt)."""
    t = dt.datetime.fromtimestamp(ts_s, tz=dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def firing(doc: Mapping[str, Any]) -> bool:
    """Whether an alert document should page."""
    return bool(doc.get("active")) and doc.get("state") in FIRING_STATES


@dataclass
class SinkStats:
    """Counters of one sink for /metrics."""

    sent_total: int = 0  # alerts delivered (an alert re-sent counts again)
    failures_total: int = 0  # posts that failed (unreachable, timeout, 5xx)
    rejected_total: int = 0  # alerts the sink refused with a 4xx (not retried)
    dropped_total: int = 0  # alerts dropped because the queue was full


@dataclass
class AlertSink:
    """One notification target. Subclasses build the request body of a batch."""

    name: str
    url: str
    max_queue: int = 10_000
    max_batch: int = 500
    timeout_s: float = 5.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    resend_interval_s: float = 60.0
    clock: Callable[[], float] = time.time
    stats: SinkStats = field(default_factory=SinkStats)
    #: alert id -> latest document not yet delivered
    queue: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: alert id -> document of every firing alert (re-sent periodically)
    firing: dict[str, dict[str, Any]] = field(default_factory=dict)
    _wake: asyncio.Event | None = field(default=None, repr=False)
    _last_resend: float = 0.0

    @property
    def depth(self) -> int:
        """Alerts waiting for delivery."""
        return len(self.queue)

    def offer(self, docs: list[dict[str, Any]]) -> None:
        """Queue alert documents (models.alerting.Alert.to_dict()); never blocks."""
        for doc in docs:
            aid = str(doc["id"])
            if firing(doc):
                self.firing[aid] = doc
            else:
                self.firing.pop(aid, None)
            if aid not in self.queue and len(self.queue) >= self.max_queue:
                # full: the oldest queued change goes; a firing one comes back with the resend
                self.queue.pop(next(iter(self.queue)))
                self.stats.dropped_total += 1
            self.queue.pop(aid, None)
            self.queue[aid] = doc
        while len(self.firing) > self.max_queue:
            self.firing.pop(next(iter(self.firing)))
        if self._wake is not None and docs:
            self._wake.set()

    def body(self, docs: list[dict[str, Any]], now_s: float) -> bytes:
        """The request body of a batch."""
        raise NotImplementedError

    def _take_batch(self, now_s: float) -> list[dict[str, Any]]:
        batch: dict[str, dict[str, Any]] = {}
        for aid in list(self.queue)[: self.max_batch]:
            batch[aid] = self.queue.pop(aid)
        if now_s - self._last_resend >= self.resend_interval_s:
            self._last_resend = now_s
            for aid, doc in self.firing.items():
                batch.setdefault(aid, doc)
        return list(batch.values())

    def _requeue(self, batch: list[dict[str, Any]]) -> None:
        for doc in batch:
            aid = str(doc["id"])
            if aid not in self.queue and len(self.queue) < self.max_queue:
                self.queue[aid] = doc  # a newer version offered meanwhile wins

    async def post(self, session: aiohttp.ClientSession, body: bytes) -> int:
        """POST the body; the HTTP status (raises on a transport error or timeout)."""
        async with session.post(
            self.url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            await resp.read()
            return resp.status

    async def run(self) -> None:
        """Deliver forever (cancel to stop): batches, resends, retries with backoff."""
        self._wake = asyncio.Event()
        backoff = self.backoff_min_s
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                now = self.clock()
                batch = self._take_batch(now)
                if not batch:
                    self._wake.clear()
                    wait = max(0.05, self._last_resend + self.resend_interval_s - now)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=wait)
                    continue
                try:
                    status = await self.post(session, self.body(batch, now))
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    status, why = 0, type(exc).__name__
                else:
                    why = f"HTTP {status}"
                if 200 <= status < 300:
                    self.stats.sent_total += len(batch)
                    backoff = self.backoff_min_s
                    continue
                if 400 <= status < 500 and status not in (408, 429):
                    # the sink refuses these alerts as they are: retrying would loop forever
                    self.stats.rejected_total += len(batch)
                    log.warning("%s sink refused %d alerts: %s", self.name, len(batch), why)
                    continue
                self.stats.failures_total += 1
                self._requeue(batch)
                log.warning(
                    "%s sink failed (%s), %d alerts queued, retry in %.1f s",
                    self.name,
                    why,
                    self.depth,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)


@dataclass
class AlertmanagerSink(AlertSink):
    """Prometheus Alertmanager, ``POST {url}/api/v2/alerts``.

    ``url`` is the Alertmanager base URL; ``generator_base`` the worker's URL, so that an
    alert's generatorURL is ``{generator_base}/api/alerts/{id}``.
    """

    generator_base: str = ""
    twin: str = "dc-twin"
    #: alert id -> labels last sent: a changed label set (severity rose) is a new alert to
    #: Alertmanager, so the old one is resolved in the same post.
    sent_labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/") + "/api/v2/alerts"

    def labels(self, doc: Mapping[str, Any]) -> dict[str, str]:
        """Identity and routing labels (bounded values: rule names, entity ids, severities)."""
        return {
            "alertname": str(doc["rule"]),
            "entity": str(doc["entity"]),
            "owner": str(doc["owner"]),
            "group": str(doc["group"]),
            "severity": str(doc["severity"]),
            "twin": self.twin,
        }

    def annotations(self, doc: Mapping[str, Any]) -> dict[str, str]:
        """Human text: summary, recommended action, ISA-18.2 state, ack, blast radius."""
        out = {
            "summary": str(doc.get("message", "")),
            "action": str(doc.get("action", "")),
            "state": str(doc.get("state", "")),
            "alert_id": str(doc["id"]),
        }
        if doc.get("ack_by"):
            out["acknowledged_by"] = str(doc["ack_by"])
            out["ack_comment"] = str(doc.get("ack_comment") or "")
        blast = list(doc.get("blast") or ())
        if blast:
            shown = ",".join(blast[:BLAST_ANNOTATION_MAX])
            more = (
                f" (+{len(blast) - BLAST_ANNOTATION_MAX})"
                if len(blast) > BLAST_ANNOTATION_MAX
                else ""
            )
            out["blast_radius"] = f"{len(blast)} racks: {shown}{more}"
        if doc.get("suppressed_by"):
            out["suppressed_by"] = str(doc["suppressed_by"])
        return out

    def body(self, docs: list[dict[str, Any]], now_s: float) -> bytes:
        """The list of postable alerts."""
        out: list[dict[str, Any]] = []
        # firing alerts stay firing for 4 resend intervals without news (as Prometheus does)
        ends_firing = iso(now_s + 4 * self.resend_interval_s)
        for doc in docs:
            labels = self.labels(doc)
            old = self.sent_labels.get(str(doc["id"]))
            starts = iso(float(doc.get("raised_s") or now_s))
            if old is not None and old != labels:
                out.append({"labels": old, "startsAt": starts, "endsAt": iso(now_s)})
            is_firing = firing(doc)
            if is_firing:
                self.sent_labels[str(doc["id"])] = labels
            else:
                self.sent_labels.pop(str(doc["id"]), None)
            out.append(
                {
                    "labels": labels,
                    "annotations": self.annotations(doc),
                    "startsAt": starts,
                    "endsAt": ends_firing if is_firing else iso(now_s),
                    "generatorURL": f"{self.generator_base}/api/alerts/{doc['id']}",
                }
            )
        return json.dumps(out).encode()


@dataclass
class WebhookSink(AlertSink):
    """A generic JSON webhook: ``{"source", "sent_at", "alerts": [alert documents]}``; each
    document is the alert as ``GET /api/alerts`` shows it, with ``firing`` added."""

    source: str = "dc-twin"

    def body(self, docs: list[dict[str, Any]], now_s: float) -> bytes:
        """The webhook document."""
        alerts = [{**d, "firing": firing(d)} for d in docs]
        return json.dumps({"source": self.source, "sent_at": iso(now_s), "alerts": alerts}).encode()


def sinks_from_urls(
    alertmanager_url: str | None,
    webhook_url: str | None,
    *,
    generator_base: str,
    twin: str,
    resend_interval_s: float = 60.0,
) -> list[AlertSink]:
    """The sinks configured by --alertmanager-url and --alert-webhook-url."""
    out: list[AlertSink] = []
    if alertmanager_url:
        out.append(
            AlertmanagerSink(
                "alertmanager",
                alertmanager_url,
                generator_base=generator_base,
                twin=twin,
                resend_interval_s=resend_interval_s,
            )
        )
    if webhook_url:
        out.append(WebhookSink("webhook", webhook_url, resend_interval_s=resend_interval_s))
    return out
