"""Alert rules: what turns a signal (a detector score or a measured margin) into an alert.

A rules file is TOML (docs/alerts.md); the shipped default is ``models/rules/default.toml``.
Each ``[rules.NAME]`` table names the signal it watches, when it raises and clears (two
thresholds: hysteresis), how long the condition must hold first (``for_s``), its severity,
grouping key, the action an operator should take, and whether it is an alert (needs an
operator) or only an event (logged, not listed). :func:`load_rules` validates the whole file
and raises :class:`ConfigError` with one line naming the bad key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twin.errors import ConfigError

DEFAULT_RULES_FILE = Path(__file__).with_name("rules") / "default.toml"

#: Severities from the most to the least urgent (Alertmanager ``severity`` label values).
SEVERITIES: tuple[str, ...] = ("critical", "major", "minor", "warning")
#: Rank of a severity: higher = more urgent.
SEVERITY_RANK: dict[str, int] = {s: len(SEVERITIES) - i for i, s in enumerate(SEVERITIES)}
KINDS = ("alert", "event")
DIRECTIONS = ("above", "below")
#: Grouping keys: the alert's own entity, or the rack / CDU / hall / site it belongs to.
GROUPS = ("entity", "rack", "cdu", "hall", "site")


@dataclass(frozen=True)
class Rule:
    """One rule. Thresholds are in the unit of ``signal`` (its name carries the suffix)."""

    name: str
    signal: str  # what the worker feeds: "gpu_thermal_margin_k", "ups_on_battery_bool", ...
    kind: str  # "alert" (needs an operator) or "event" (event log only)
    severity: str  # one of SEVERITIES
    direction: str  # "above": raise when value >= raise_at; "below": when value <= raise_at
    raise_at: float
    clear_at: float  # hysteresis: cleared only once past this (on the normal side)
    for_s: float  # the condition must hold this long before the alert is raised [s]
    clear_for_s: float  # and be clear this long before it returns to normal [s]
    critical_at: float | None  # worse than this: severity rises to critical (re-arms an ack)
    group: str  # grouping key, one of GROUPS
    action: str  # recommended operator action
    message: str  # str.format template with {entity}, {value}, {rule}
    root_cause: bool  # its blast radius suppresses the suppressible alerts inside it
    suppressible: bool  # suppressed (DSUPR) while a root-cause alert covers its entity

    def beyond(self, value: Any, threshold: float) -> Any:
        """Where ``value`` is on the abnormal side of ``threshold`` (numpy-friendly)."""
        return value >= threshold if self.direction == "above" else value <= threshold

    def severity_of(self, value: float) -> str:
        """Severity of an active alert at ``value``."""
        if self.critical_at is not None and bool(self.beyond(value, self.critical_at)):
            return "critical"
        return self.severity

    def text(self, entity: str, value: float) -> str:
        """The alert's message."""
        return self.message.format(entity=entity, value=value, rule=self.name)


@dataclass(frozen=True)
class AlarmBudget:
    """EEMUA 191 alarm budget: more than ``flood_count`` raised in ``flood_window_s`` is a
    flood; NORM alerts stay listed (as recent) for ``recent_s``; a shelve lasts at most
    ``shelve_max_s``."""

    flood_count: int = 10
    flood_window_s: float = 600.0
    recent_s: float = 3600.0
    shelve_max_s: float = 86400.0


@dataclass(frozen=True)
class RuleSet:
    """The rules of a file and its alarm budget."""

    rules: dict[str, Rule]
    budget: AlarmBudget
    source: str
    _by_signal: dict[str, list[Rule]] = field(default_factory=dict, compare=False, repr=False)

    def by_signal(self, signal: str) -> list[Rule]:
        """Rules that watch ``signal`` (cached: the hot path asks for every rack)."""
        found = self._by_signal.get(signal)
        if found is None:
            found = self._by_signal[signal] = [r for r in self.rules.values() if r.signal == signal]
        return found


_RULE_KEYS: dict[str, type | tuple[type, ...]] = {
    "signal": str,
    "kind": str,
    "severity": str,
    "direction": str,
    "raise_at": (int, float),
    "clear_at": (int, float),
    "for_s": (int, float),
    "clear_for_s": (int, float),
    "critical_at": (int, float),
    "group": str,
    "action": str,
    "message": str,
    "root_cause": bool,
    "suppressible": bool,
}
_REQUIRED = ("signal", "severity", "direction", "raise_at", "clear_at")
_BUDGET_KEYS: dict[str, type | tuple[type, ...]] = {
    "flood_count": int,
    "flood_window_s": (int, float),
    "recent_s": (int, float),
    "shelve_max_s": (int, float),
}


def _typed(where: str, value: Any, tp: type | tuple[type, ...]) -> Any:
    ok = isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool)
    if not ok:
        names = tp.__name__ if isinstance(tp, type) else " or ".join(t.__name__ for t in tp)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return value


def _choice(where: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"{where}: expected one of {list(options)}, got {value!r}")
    return value


def _rule(src: str, name: str, doc: Any) -> Rule:
    at = f"{src}: [rules.{name}]"
    if not isinstance(doc, dict):
        raise ConfigError(f"{at}: expected a table")
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ConfigError(f"{at}: a rule name may hold only letters, digits and _")
    for key in doc:
        if key not in _RULE_KEYS:
            raise ConfigError(f"{at} {key}: unknown key; expected one of {sorted(_RULE_KEYS)}")
    for key in _REQUIRED:
        if key not in doc:
            raise ConfigError(f"{at} {key}: missing")
    v = {k: _typed(f"{at} {k}", val, _RULE_KEYS[k]) for k, val in doc.items()}
    kind = _choice(f"{at} kind", v.get("kind", "alert"), KINDS)
    severity = _choice(f"{at} severity", v["severity"], SEVERITIES)
    direction = _choice(f"{at} direction", v["direction"], DIRECTIONS)
    group = _choice(f"{at} group", v.get("group", "entity"), GROUPS)
    raise_at, clear_at = float(v["raise_at"]), float(v["clear_at"])
    # hysteresis: the clear threshold lies on the normal side of the raise threshold
    if (direction == "above" and clear_at > raise_at) or (
        direction == "below" and clear_at < raise_at
    ):
        side = "<=" if direction == "above" else ">="
        raise ConfigError(f"{at} clear_at: expected {side} raise_at = {raise_at}, got {clear_at}")
    critical = v.get("critical_at")
    if critical is not None:
        critical = float(critical)
        if (direction == "above" and critical < raise_at) or (
            direction == "below" and critical > raise_at
        ):
            raise ConfigError(f"{at} critical_at: expected beyond raise_at = {raise_at}")
    for key in ("for_s", "clear_for_s"):
        if float(v.get(key, 0.0)) < 0:
            raise ConfigError(f"{at} {key}: expected >= 0, got {v[key]}")
    action = str(v.get("action", "")).strip()
    if kind == "alert" and not action:
        # EEMUA 191 / ISA-18.2: an alarm without an operator action is an event
        raise ConfigError(f'{at} action: an alert needs an operator action (or kind = "event")')
    message = v.get("message", "{rule} on {entity}: {value:.3g}")
    try:
        message.format(entity="R0001", value=1.0, rule=name)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{at} message: bad template ({exc!r})") from None
    return Rule(
        name=name,
        signal=v["signal"],
        kind=kind,
        severity=severity,
        direction=direction,
        raise_at=raise_at,
        clear_at=clear_at,
        for_s=float(v.get("for_s", 0.0)),
        clear_for_s=float(v.get("clear_for_s", 0.0)),
        critical_at=critical,
        group=group,
        action=action,
        message=message,
        root_cause=bool(v.get("root_cause", False)),
        suppressible=bool(v.get("suppressible", False)),
    )


def parse_rules(doc: dict[str, Any], source: str = "<rules>") -> RuleSet:
    """Validate a parsed rules document; ConfigError (one line, naming the key) if bad."""
    for key in doc:
        if key not in ("budget", "rules"):
            raise ConfigError(f"{source}: [{key}]: unknown section; expected budget or rules")
    bdoc = doc.get("budget", {})
    if not isinstance(bdoc, dict):
        raise ConfigError(f"{source}: [budget]: expected a table")
    for key in bdoc:
        if key not in _BUDGET_KEYS:
            raise ConfigError(f"{source}: [budget] {key}: unknown key")
    b = {k: _typed(f"{source}: [budget] {k}", val, _BUDGET_KEYS[k]) for k, val in bdoc.items()}
    for k, val in b.items():
        if val <= 0:
            raise ConfigError(f"{source}: [budget] {k}: expected > 0, got {val}")
    budget = AlarmBudget(**b)
    rdoc = doc.get("rules", {})
    if not isinstance(rdoc, dict) or not rdoc:
        raise ConfigError(f"{source}: [rules]: expected at least one [rules.NAME] table")
    rules = {name: _rule(source, name, r) for name, r in rdoc.items()}
    return RuleSet(rules=rules, budget=budget, source=source)


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Read and validate a rules file (None: the shipped default)."""
    p = Path(path) if path is not None else DEFAULT_RULES_FILE
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"rules file {p}: cannot read ({exc.__class__.__name__})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"rules file {p}: {exc}") from None
    return parse_rules(doc, str(p))
