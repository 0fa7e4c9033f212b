"""Alert lifecycle after ISA-18.2 (as Alerta's ``isa_18_2`` model): pure, clock injected.

A rule (models/rules.py) turns a signal of many entities at once into conditions; this module
keeps the lifecycle of each (rule, entity) alert and the alarm budget:

    NORM  --raise--> UNACK --ack--> ACKED --clear--> NORM
                       |  \\                 ^ severity rises: back to UNACK (re-armed)
                       |   clear
                       v                     RTNUN --ack--> NORM;  RTNUN --raise--> UNACK
                     RTNUN
    any of UNACK, ACKED, RTNUN --shelve--> SHLVD --(time up or unshelve)--> what it would be
    a suppressible alert inside an active root cause's blast radius --> DSUPR
    an entity taken out of service --> OOSRV

The shown state is derived from a few facts (condition active, acknowledged, shown to an
operator, shelved until, suppressed by, out of service), so each transition changes one fact.
An acknowledgement holds until the condition clears; a new occurrence or a rise of severity
needs a new one. Deduplication: one alert per stable id (owner, rule, entity). Flapping is
held off by the rule's two thresholds and its for/clear durations. Events (rules of kind
``event``) never enter the alert list: their raise and clear go to a bounded event log.

Alarm budget (EEMUA 191): more than ``flood_count`` alerts raised in ``flood_window_s`` is a
flood (``flood`` flag, ``floods_total`` counter). Suppressed, shelved and out-of-service
raises do not count: the operator does not see them.

Hot path: :meth:`AlertEngine.observe` takes one signal of many entities as arrays; numpy finds
the few entities beyond a threshold or already tracked, and only those are handled one by one.
Times are seconds since the epoch from the injected ``clock`` (or passed as ``now_s``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np

from models.rules import SEVERITY_RANK, Rule, RuleSet


class AlertState(StrEnum):
    """ISA-18.2 alarm states (Alerta's isa_18_2 names)."""

    NORM = "NORM"  # normal: condition clear, nothing to acknowledge
    UNACK = "UNACK"  # condition active, not acknowledged
    ACKED = "ACKED"  # condition active, acknowledged
    RTNUN = "RTNUN"  # returned to normal while unacknowledged
    SHLVD = "SHLVD"  # shelved by an operator for a set time
    DSUPR = "DSUPR"  # suppressed by design (a root-cause alert explains it)
    OOSRV = "OOSRV"  # its entity is out of service


STATES: tuple[str, ...] = tuple(s.value for s in AlertState)
#: States an operator sees in the alert list (NORM alerts are "recent").
ACTIVE_STATES = frozenset({"UNACK", "ACKED", "RTNUN", "SHLVD", "DSUPR", "OOSRV"})
#: Owner keys (rack and unit ids) allowed in an alert id: safe in a URL path.
_OWNER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class AlertError(ValueError):
    """An operator action that does not apply; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def alert_id(owner: str, rule: str, entity: str) -> str:
    """Stable id of the alert of ``rule`` on ``entity``: ``OWNER.RULE.HASH`` (URL-safe).

    The owner (the rack or unit whose partition holds the alert) leads, so any worker can
    route an acknowledgement to the owner's partition from the id alone.
    """
    digest = hashlib.blake2b(entity.encode(), digest_size=5).hexdigest()
    return f"{owner}.{rule}.{digest}"


def owner_of(aid: str) -> str | None:
    """The owner key of an alert id, or None if the id is not one of ours."""
    owner, sep, rest = aid.partition(".")
    if not sep or not _OWNER_RE.fullmatch(owner) or not rest or len(aid) > 200:
        return None
    return owner


def valid_owner(owner: str) -> bool:
    """Whether ``owner`` may lead an alert id."""
    return bool(_OWNER_RE.fullmatch(owner))


@dataclass
class Alert:
    """One (rule, entity) alert. Times [s since epoch]; ``value`` in the rule signal's unit."""

    id: str
    rule: str
    entity: str
    owner: str
    severity: str
    group: str  # the value of the rule's grouping key (the rack, CDU, hall...)
    value: float
    message: str
    action: str
    blast: tuple[str, ...] = ()  # racks this entity feeds (root-cause rules)
    active: bool = False  # the rule's condition holds now
    acked: bool = False  # acknowledged since the current occurrence was raised
    shown: bool = False  # an operator has seen this occurrence (it needs an ack)
    oos: bool = False
    raised_s: float = 0.0
    cleared_s: float | None = None
    changed_s: float = 0.0
    count: int = 0  # occurrences (raises) of this alert
    ack_by: str | None = None
    ack_s: float | None = None
    ack_comment: str | None = None
    shelved_until_s: float | None = None
    shelved_by: str | None = None
    suppressed_by: str | None = None
    state: str = AlertState.NORM.value

    def derive_state(self, now_s: float) -> str:
        """The ISA-18.2 state these facts give at ``now_s``."""
        if self.oos:
            return AlertState.OOSRV.value
        if self.suppressed_by is not None:
            return AlertState.DSUPR.value
        if self.shelved_until_s is not None and now_s < self.shelved_until_s:
            return AlertState.SHLVD.value
        if self.active:
            return AlertState.ACKED.value if self.acked else AlertState.UNACK.value
        if self.shown and not self.acked:
            return AlertState.RTNUN.value
        return AlertState.NORM.value

    def visible(self, now_s: float) -> bool:
        """Whether an operator would see a raise now (not shelved, suppressed or OOS)."""
        return self.derive_state(now_s) in ("UNACK", "ACKED", "RTNUN", "NORM")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        d = asdict(self)
        d["blast"] = list(self.blast)
        d["value"] = self.value if np.isfinite(self.value) else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        """Inverse of :meth:`to_dict` (unknown keys ignored, so old values still load)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["blast"] = tuple(kw.get("blast") or ())
        kw["value"] = float("nan") if kw.get("value") is None else float(kw["value"])
        return cls(**kw)

    def to_bytes(self) -> bytes:
        """Table value: compact JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Alert:
        """Inverse of :meth:`to_bytes`."""
        return cls.from_dict(json.loads(data))

    def signature(self) -> tuple[Any, ...]:
        """What a change must alter to be published (not the value: that would churn)."""
        return (
            self.state,
            self.severity,
            self.active,
            self.acked,
            self.shelved_until_s,
            self.suppressed_by,
            self.count,
        )


@dataclass
class AlertEngine:
    """Every alert of one worker, the pending conditions, the event log and the budget."""

    rules: RuleSet
    clock: Callable[[], float]
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    alerts: dict[str, Alert] = field(default_factory=dict)
    #: (rule, entity-id) -> when its condition started [s], while waiting for for_s
    pending: dict[str, float] = field(default_factory=dict)
    #: alert id -> when its condition cleared [s], while waiting for clear_for_s
    clearing: dict[str, float] = field(default_factory=dict)
    #: active event ids (their raise is logged; their clear will be)
    active_events: dict[str, float] = field(default_factory=dict)
    raises: deque[float] = field(default_factory=deque)  # visible raises in the flood window
    raised_total: int = 0
    events_total: int = 0  # events logged, ever (the log keeps the last 1000)
    floods_total: int = 0
    flood: bool = False
    out_of_service: set[str] = field(default_factory=set)
    #: entity -> {"entity", "by", "reason", "since_s"} of each entity out of service
    service_notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: active root-cause alerts of other workers: id -> racks it feeds
    external_roots: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _tracked: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    #: per rule, bumped whenever one of its tracked sets changes
    _tracked_version: dict[str, int] = field(default_factory=dict)
    #: observe_many's mask of tracked entities: rule -> (version, owners, entities, mask)
    _known_cache: dict[str, tuple[int, tuple[str, ...], np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )
    #: positions of the ids in the entity arrays observe_many saw last (id(array) -> ...)
    _pos_cache: dict[int, tuple[np.ndarray, dict[str, int]]] = field(default_factory=dict)
    _changes: dict[str, Alert] = field(default_factory=dict)
    _removed: set[str] = field(default_factory=set)
    _signatures: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    _owners_seen: set[str] = field(default_factory=set)
    _service_changes: set[str] = field(default_factory=set)

    # --- the hot path ----------------------------------------------------------------------
    def observe(
        self,
        signal: str,
        entities: Sequence[str] | np.ndarray,
        values: Any,
        *,
        owner: str,
        where: Mapping[str, str] | None = None,
        blast: Iterable[str] = (),
        now_s: float | None = None,
    ) -> None:
        """Evaluate every rule on ``signal`` over one owner's entities.

        entities: ``(n,)`` ids; values: ``(n,)`` signal values (NaN = no reading: neither
        raises nor clears); owner: the rack or unit whose partition holds these alerts;
        where: grouping keys of the owner (``{"rack": ..., "cdu": ..., "hall": ...}``); blast:
        racks fed by the owner (kept on root-cause alerts for suppression).
        """
        rules = self.rules.by_signal(signal)
        if not rules:
            return
        if owner not in self._owners_seen:
            if not valid_owner(owner):
                raise ValueError(f"owner {owner!r}: expected letters, digits, _ or -")
            self._owners_seen.add(owner)
        now = self.clock() if now_s is None else float(now_s)
        ents = entities if isinstance(entities, np.ndarray) else np.asarray(entities, dtype=str)
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if ents.shape != v.shape:
            raise ValueError(f"{ents.shape[0]} entities but {v.shape[0]} values")
        blast_t = tuple(blast)
        for rule in rules:
            beyond_raise = rule.beyond(v, rule.raise_at)  # False where NaN
            tracked = self._tracked.get((rule.name, owner))
            cand = beyond_raise
            if tracked:
                # ids of their own width: a fixed-width cast would cut R0001/g10 to R0001/g1
                known = np.isin(ents, np.array(sorted(tracked)))
                cand = cand | (np.isfinite(v) & known)
            idx = np.flatnonzero(cand)
            if idx.size == 0:
                continue
            hold = rule.beyond(v[idx], rule.clear_at)
            for i, keep in zip(idx.tolist(), hold.tolist(), strict=True):
                self._step(
                    rule,
                    str(ents[i]),
                    float(v[i]),
                    bool(beyond_raise[i]),
                    keep,
                    owner,
                    where or {},
                    blast_t,
                    now,
                )

    def observe_many(
        self,
        signal: str,
        entities: np.ndarray,
        values: Any,
        owner_ix: Any,
        owners: Sequence[str],
        *,
        where: Mapping[str, Mapping[str, str]] | None = None,
        blast: Mapping[str, Iterable[str]] | None = None,
        now_s: float | None = None,
    ) -> None:
        """:meth:`observe` over many owners in one call (every GPU of every owned rack).

        entities: ``(n,)`` ids, unique within the call; values: ``(n,)``; owner_ix:
        ``(n,)`` index into ``owners`` of each entity's owner; where / blast: by owner. The
        same transitions as one :meth:`observe` per owner, but the thresholds are compared
        over all ``n`` at once and only entities past ``raise_at`` or already tracked are
        handled one by one: no Python loop over owners or entities on the quiet majority.
        """
        rules = self.rules.by_signal(signal)
        if not rules:
            return
        if not self._owners_seen.issuperset(owners):
            for owner in owners:
                if owner not in self._owners_seen:
                    if not valid_owner(owner):
                        raise ValueError(f"owner {owner!r}: expected letters, digits, _ or -")
                    self._owners_seen.add(owner)
        now = self.clock() if now_s is None else float(now_s)
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        oix = np.asarray(owner_ix, dtype=np.int64).reshape(-1)
        if not (entities.shape == v.shape == oix.shape):
            raise ValueError(
                f"{entities.shape[0]} entities, {v.shape[0]} values, {oix.shape[0]} owners"
            )
        where = where or {}
        blast = blast or {}
        owners_t = tuple(owners)
        for rule in rules:
            beyond_raise = rule.beyond(v, rule.raise_at)  # False where NaN
            known = self._known(rule.name, owners_t, entities)
            cand = beyond_raise
            if known is not None:
                cand = cand | (np.isfinite(v) & known)
            idx = np.flatnonzero(cand)
            if idx.size == 0:
                continue
            hold = rule.beyond(v[idx], rule.clear_at)
            if known is not None and rule.kind == "event" and rule.for_s <= 0:
                # a tracked event without a hold time is an active one: while it holds
                # nothing changes (power capping on a capped job's every GPU, every second)
                quiet = hold & known[idx]
                idx, hold = idx[~quiet], hold[~quiet]
            for i, keep in zip(idx.tolist(), hold.tolist(), strict=True):
                owner = owners[oix[i]]
                self._step(
                    rule,
                    str(entities[i]),
                    float(v[i]),
                    bool(beyond_raise[i]),
                    keep,
                    owner,
                    where.get(owner, {}),
                    tuple(blast.get(owner, ())),
                    now,
                )

    def _known(self, rule: str, owners: tuple[str, ...], entities: np.ndarray) -> np.ndarray | None:
        """Mask of ``entities`` tracked for ``rule`` (pending, active or clearing) under any
        of ``owners``; None if none is. Cached until that rule's tracked sets change: in
        steady operation a tick costs no per-entity work here."""
        version = self._tracked_version.get(rule, 0)
        hit = self._known_cache.get(rule)
        if hit is not None and hit[0] == version and hit[2] is entities and hit[1] == owners:
            return hit[3] if hit[3].any() else None
        owner_set = set(owners)
        ids: set[str] = set()
        for (name, owner), ents in self._tracked.items():
            if name == rule and owner in owner_set:
                ids |= ents
        known = np.zeros(entities.shape, dtype=bool)
        if ids:
            pc = self._pos_cache.get(id(entities))
            if pc is None or pc[0] is not entities:
                if len(self._pos_cache) > 8:
                    self._pos_cache.clear()
                pc = (entities, {str(e): i for i, e in enumerate(entities.tolist())})
                self._pos_cache[id(entities)] = pc
            pos = pc[1]
            known[[pos[e] for e in ids if e in pos]] = True
        self._known_cache[rule] = (version, owners, entities, known)
        return known if known.any() else None

    def _track(self, rule: str, owner: str, entity: str, on: bool) -> None:
        key = (rule, owner)
        if on:
            s = self._tracked.setdefault(key, set())
            if entity not in s:
                s.add(entity)
                self._tracked_version[rule] = self._tracked_version.get(rule, 0) + 1
            return
        held = self._tracked.get(key)
        if held is not None and entity in held:
            held.discard(entity)
            self._tracked_version[rule] = self._tracked_version.get(rule, 0) + 1
            if not held:
                del self._tracked[key]

    def _step(
        self,
        rule: Rule,
        entity: str,
        x: float,
        beyond_raise: bool,
        hold: bool,
        owner: str,
        where: Mapping[str, str],
        blast: tuple[str, ...],
        now: float,
    ) -> None:
        aid = alert_id(owner, rule.name, entity)
        if rule.kind == "event":
            self._step_event(rule, aid, entity, x, beyond_raise, hold, owner, now)
            return
        a = self.alerts.get(aid)
        if a is None or not a.active:
            if not beyond_raise:
                self.pending.pop(aid, None)
                self._track(rule.name, owner, entity, False)
                return
            since = self.pending.setdefault(aid, now)
            self._track(rule.name, owner, entity, True)
            if now - since < rule.for_s:
                return
            del self.pending[aid]
            self._raise(rule, aid, entity, x, owner, where, blast, now)
            return
        a.value = x
        if hold:
            self.clearing.pop(aid, None)
            sev = rule.severity_of(x)
            if SEVERITY_RANK[sev] > SEVERITY_RANK[a.severity]:
                # worse than when acknowledged: the acknowledgement no longer holds
                a.severity = sev
                a.acked = False
                a.message = rule.text(entity, x)
                if a.visible(now):
                    a.shown = True
                self._refresh(a, now)
            return
        since = self.clearing.setdefault(aid, now)
        if now - since < rule.clear_for_s:
            return
        del self.clearing[aid]
        self._clear(a, now)
        self._track(rule.name, owner, entity, False)

    def _step_event(
        self,
        rule: Rule,
        aid: str,
        entity: str,
        x: float,
        beyond_raise: bool,
        hold: bool,
        owner: str,
        now: float,
    ) -> None:
        if aid not in self.active_events:
            if not beyond_raise:
                self.pending.pop(aid, None)
                self._track(rule.name, owner, entity, False)
                return
            since = self.pending.setdefault(aid, now)
            self._track(rule.name, owner, entity, True)
            if now - since < rule.for_s:
                return
            del self.pending[aid]
            self.active_events[aid] = now
            self._log_event(rule, aid, entity, owner, x, "raised", now)
            return
        if hold:
            return
        del self.active_events[aid]
        self._track(rule.name, owner, entity, False)
        self._log_event(rule, aid, entity, owner, x, "cleared", now)

    def _log_event(
        self, rule: Rule, aid: str, entity: str, owner: str, x: float, what: str, now: float
    ) -> None:
        self.events_total += 1
        self.events.append(
            {
                "ts_s": now,
                "id": aid,
                "rule": rule.name,
                "entity": entity,
                "owner": owner,
                "severity": rule.severity,
                "transition": what,
                "value": x,
                "message": rule.text(entity, x),
            }
        )

    def _raise(
        self,
        rule: Rule,
        aid: str,
        entity: str,
        x: float,
        owner: str,
        where: Mapping[str, str],
        blast: tuple[str, ...],
        now: float,
    ) -> None:
        a = self.alerts.get(aid)
        if a is None:
            a = self.alerts[aid] = Alert(
                id=aid,
                rule=rule.name,
                entity=entity,
                owner=owner,
                severity=rule.severity,
                group=where.get(rule.group, entity) if rule.group != "entity" else entity,
                value=x,
                message="",
                action=rule.action,
                blast=blast if rule.root_cause else (),
            )
        a.active, a.acked, a.value = True, False, x
        a.severity = rule.severity_of(x)
        a.message = rule.text(entity, x)
        a.raised_s, a.cleared_s = now, None
        a.ack_by = a.ack_comment = None
        a.ack_s = None
        a.count += 1
        a.oos = self._is_oos(a)
        if rule.root_cause:
            a.blast = blast
        else:
            a.suppressed_by = self._suppressor(a)
        if a.visible(now):
            a.shown = True
            self._count_raise(now)
        if rule.root_cause:
            self._suppress_all(now)
        self._refresh(a, now)

    def _clear(self, a: Alert, now: float) -> None:
        a.active = False
        a.cleared_s = now
        if a.acked or not a.shown:
            a.shown = False  # nothing left to acknowledge
        self._refresh(a, now)
        if self.rules.rules[a.rule].root_cause:
            self._suppress_all(now)

    # --- alarm budget ------------------------------------------------------------------------
    def _count_raise(self, now: float) -> None:
        self.raised_total += 1
        self.raises.append(now)
        self._update_flood(now)

    def _update_flood(self, now: float) -> None:
        window = self.rules.budget.flood_window_s
        while self.raises and self.raises[0] <= now - window:
            self.raises.popleft()
        flood = len(self.raises) > self.rules.budget.flood_count
        if flood and not self.flood:
            self.floods_total += 1
        self.flood = flood

    # --- suppression and service ------------------------------------------------------------
    def _covered(self) -> dict[str, str]:
        """Rack -> id of an active root-cause alert whose blast radius holds it (this
        engine's own, then those other workers hold: :meth:`set_external_roots`)."""
        covered: dict[str, str] = {}
        for root in self.alerts.values():
            if root.active and not root.oos and root.blast:
                for rack in root.blast:
                    covered.setdefault(rack, root.id)
        for rid, blast in self.external_roots.items():
            for rack in blast:
                covered.setdefault(rack, rid)
        return covered

    def _suppressor(self, a: Alert) -> str | None:
        if not self.rules.rules[a.rule].suppressible:
            return None
        return self._covered().get(a.owner)

    def set_external_roots(
        self, roots: Mapping[str, Iterable[str]], now_s: float | None = None
    ) -> None:
        """Active root-cause alerts held elsewhere (id -> racks it feeds): a CDU owned by
        another worker suppresses the GPU alerts of its racks here too."""
        new = {rid: tuple(b) for rid, b in roots.items() if rid not in self.alerts}
        if new == self.external_roots:
            return
        self.external_roots = new
        self._suppress_all(self.clock() if now_s is None else now_s)

    def _suppress_all(self, now: float) -> None:
        covered = self._covered()
        for a in self.alerts.values():
            if not self.rules.rules[a.rule].suppressible:
                continue
            sup = covered.get(a.owner)
            if sup != a.suppressed_by:
                a.suppressed_by = sup
                if sup is None and a.active and a.visible(now):
                    a.shown = True  # the root cause is gone, this one is now the news
                self._refresh(a, now)

    def _is_oos(self, a: Alert) -> bool:
        return a.entity in self.out_of_service or a.owner in self.out_of_service

    def set_out_of_service(
        self,
        entity: str,
        oos: bool,
        now_s: float | None = None,
        *,
        by: str = "operator",
        reason: str = "",
    ) -> None:
        """Take an entity (or a whole owner: a rack, a unit) out of service or back.

        Out of service (ISA-18.2 OOSRV), its alerts are neither shown, counted nor notified;
        ``by`` and ``reason`` are kept with the time [s] (:attr:`service_notes`).
        """
        now = self.clock() if now_s is None else now_s
        if oos:
            self.out_of_service.add(entity)
            self.service_notes[entity] = {
                "entity": entity,
                "by": by,
                "reason": reason,
                "since_s": now,
            }
        else:
            self.out_of_service.discard(entity)
            self.service_notes.pop(entity, None)
        self._service_changes.add(entity)
        self._apply_service(entity, now)

    def _apply_service(self, entity: str, now: float) -> None:
        for a in self.alerts.values():
            if a.entity == entity or a.owner == entity:
                a.oos = self._is_oos(a)
                self._refresh(a, now)
        self._suppress_all(now)

    def take_service_changes(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Entities put out of or back in service since the last call: (entity, note), the
        note None when back in service."""
        out = [(e, self.service_notes.get(e)) for e in sorted(self._service_changes)]
        self._service_changes.clear()
        return out

    def restore_service(
        self, notes: Mapping[str, Mapping[str, Any]], now_s: float | None = None
    ) -> None:
        """Replace the entities out of service by ``notes`` (entity -> note, as kept by
        :meth:`set_out_of_service`), e.g. after a table recovery."""
        now = self.clock() if now_s is None else now_s
        before = set(self.out_of_service)
        self.service_notes = {e: dict(n) for e, n in notes.items()}
        self.out_of_service = set(self.service_notes)
        for entity in sorted(before ^ self.out_of_service):
            self._apply_service(entity, now)

    def service_listing(self) -> list[dict[str, Any]]:
        """The entities out of service, with who took them out, why and since when [s]."""
        return [
            self.service_notes.get(e, {"entity": e, "by": None, "reason": "", "since_s": None})
            for e in sorted(self.out_of_service)
        ]

    # --- operator actions ---------------------------------------------------------------------
    def get(self, aid: str) -> Alert:
        """The alert of an id; AlertError(404) if unknown."""
        a = self.alerts.get(aid)
        if a is None:
            raise AlertError(f"no alert {aid!r}", 404)
        return a

    def ack(self, aid: str, who: str, comment: str, now_s: float | None = None) -> Alert:
        """Acknowledge (who, when, comment): UNACK -> ACKED, RTNUN -> NORM."""
        now = self.clock() if now_s is None else now_s
        a = self.get(aid)
        self._refresh(a, now)
        if a.state not in ("UNACK", "RTNUN"):
            raise AlertError(f"alert {aid} is {a.state}: only UNACK or RTNUN can be acknowledged")
        a.acked = True
        a.ack_by, a.ack_s, a.ack_comment = who, now, comment
        if not a.active:
            a.shown = False
        self._refresh(a, now)
        return a

    def shelve(
        self, aid: str, who: str, duration_s: float, comment: str = "", now_s: float | None = None
    ) -> Alert:
        """Shelve for ``duration_s`` (0: unshelve). UNACK, ACKED, RTNUN and SHLVD only."""
        now = self.clock() if now_s is None else now_s
        a = self.get(aid)
        self._refresh(a, now)
        limit = self.rules.budget.shelve_max_s
        if not 0 <= duration_s <= limit:
            raise AlertError(f"duration_s: expected 0 to {limit:g}, got {duration_s:g}", 400)
        if a.state not in ("UNACK", "ACKED", "RTNUN", "SHLVD"):
            raise AlertError(f"alert {aid} is {a.state}: it cannot be shelved")
        if duration_s == 0:
            a.shelved_until_s, a.shelved_by = None, None
        else:
            a.shelved_until_s, a.shelved_by = now + duration_s, who
            if comment:
                a.ack_comment = comment if a.acked else a.ack_comment
        self._refresh(a, now)
        return a

    # --- housekeeping ------------------------------------------------------------------------
    def tick(self, now_s: float | None = None) -> None:
        """Shelves that ran out, the flood window, recent alerts that are old enough to drop."""
        now = self.clock() if now_s is None else now_s
        self._update_flood(now)
        keep_s = self.rules.budget.recent_s
        for aid, a in list(self.alerts.items()):
            if a.shelved_until_s is not None and now >= a.shelved_until_s:
                a.shelved_until_s, a.shelved_by = None, None
                if a.active and not a.acked:
                    a.shown = True
            self._refresh(a, now)
            if a.state == "NORM" and not a.active and now - a.changed_s > keep_s:
                del self.alerts[aid]
                self._signatures.pop(aid, None)
                self._changes.pop(aid, None)
                self._removed.add(aid)

    def _refresh(self, a: Alert, now: float) -> None:
        a.state = a.derive_state(now)
        sig = a.signature()
        if self._signatures.get(a.id) != sig:
            self._signatures[a.id] = sig
            a.changed_s = now
            self._changes[a.id] = a
            self._removed.discard(a.id)

    def events_since(self, seen_total: int) -> list[dict[str, Any]]:
        """Events logged after the first ``seen_total`` (as many as the log still holds)."""
        n = min(self.events_total - seen_total, len(self.events))
        return list(self.events)[len(self.events) - n :] if n > 0 else []

    def take_changes(self) -> tuple[list[Alert], list[str]]:
        """Alerts changed since the last call (latest version of each) and ids dropped."""
        changed = list(self._changes.values())
        removed = sorted(self._removed)
        self._changes.clear()
        self._removed.clear()
        return changed, removed

    # --- views ------------------------------------------------------------------------------
    def listing(
        self,
        *,
        state: str | None = None,
        severity: str | None = None,
        entity: str | None = None,
    ) -> list[Alert]:
        """Alerts (active and recent), most urgent and newest first, filtered."""
        out = [
            a
            for a in self.alerts.values()
            if (state is None or a.state == state)
            and (severity is None or a.severity == severity)
            and (entity is None or entity in (a.entity, a.owner, a.group))
        ]
        out.sort(key=lambda a: (a.state == "NORM", -SEVERITY_RANK.get(a.severity, 0), -a.changed_s))
        return out

    def counts(self) -> dict[tuple[str, str], int]:
        """(state, severity) -> number of alerts held, for /metrics (bounded labels)."""
        out: dict[tuple[str, str], int] = {}
        for a in self.alerts.values():
            k = (a.state, a.severity)
            out[k] = out.get(k, 0) + 1
        return out

    # --- persistence ------------------------------------------------------------------------
    def restore_alert(self, a: Alert) -> None:
        """Take an alert from a table checkpoint unless a newer version is held."""
        if a.rule not in self.rules.rules:
            return  # its rule is gone from the rules file
        held = self.alerts.get(a.id)
        if held is not None and held.changed_s > a.changed_s:
            return
        self.alerts[a.id] = a
        self._signatures[a.id] = a.signature()
        if a.active:
            self._track(a.rule, a.owner, a.entity, True)

    def drop_owners(self, owned: Callable[[str], bool]) -> None:
        """Forget alerts whose owner this worker no longer holds (after a rebalance)."""
        for aid, a in list(self.alerts.items()):
            if not owned(a.owner):
                del self.alerts[aid]
                self._signatures.pop(aid, None)
                self._changes.pop(aid, None)
                self.clearing.pop(aid, None)
                self._track(a.rule, a.owner, a.entity, False)

    def snapshot(self) -> bytes:
        """All state as JSON bytes (alerts, pending, events, budget counters, out of service)."""
        doc = {
            "alerts": [a.to_dict() for a in self.alerts.values()],
            "pending": self.pending,
            "clearing": self.clearing,
            "active_events": self.active_events,
            "events": list(self.events),
            "raises": list(self.raises),
            "raised_total": self.raised_total,
            "events_total": self.events_total,
            "floods_total": self.floods_total,
            "flood": self.flood,
            "out_of_service": sorted(self.out_of_service),
            "service_notes": self.service_notes,
            "external_roots": {k: list(v) for k, v in sorted(self.external_roots.items())},
            "tracked": [[r, o, sorted(s)] for (r, o), s in self._tracked.items()],
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def restore(self, data: bytes) -> None:
        """Replace all state by a :meth:`snapshot`."""
        doc = json.loads(data)
        self.alerts = {}
        self._signatures = {}
        for d in doc["alerts"]:
            a = Alert.from_dict(d)
            self.alerts[a.id] = a
            self._signatures[a.id] = a.signature()
        self.pending = {str(k): float(v) for k, v in doc["pending"].items()}
        self.clearing = {str(k): float(v) for k, v in doc["clearing"].items()}
        self.active_events = {str(k): float(v) for k, v in doc["active_events"].items()}
        self.events = deque(doc["events"], maxlen=self.events.maxlen)
        self.raises = deque(float(t) for t in doc["raises"])
        self.raised_total = int(doc["raised_total"])
        self.events_total = int(doc["events_total"])
        self.floods_total = int(doc["floods_total"])
        self.flood = bool(doc["flood"])
        self.out_of_service = set(doc["out_of_service"])
        # snapshots written before notes were kept have none
        self.service_notes = {str(k): dict(v) for k, v in doc.get("service_notes", {}).items()}
        self.external_roots = {k: tuple(v) for k, v in doc["external_roots"].items()}
        self._tracked = {(r, o): set(s) for r, o, s in doc["tracked"]}
        self._known_cache.clear()
        self._changes, self._removed = {}, set()
