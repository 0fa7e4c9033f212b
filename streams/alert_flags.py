"""Worker flags of the alerts: rules file and notification sinks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twin.errors import ConfigError


def add_alert_flags(p: argparse.ArgumentParser) -> None:
    """--alert-rules, --alertmanager-url, --alert-webhook-url, --public-url."""
    g = p.add_argument_group("alerts")
    g.add_argument(
        "--alert-rules",
        type=Path,
        default=None,
        help="alert rules TOML (default: the shipped models/rules/default.toml)",
    )
    g.add_argument(
        "--alertmanager-url",
        default=None,
        help="Prometheus Alertmanager base URL, e.g. http://127.0.0.1:9093 (default: none)",
    )
    g.add_argument(
        "--alert-webhook-url",
        default=None,
        help="URL that gets every alert change as JSON (default: none)",
    )
    g.add_argument(
        "--public-url",
        default=None,
        help="this worker's URL as operators reach it, for alert links "
        "(default http://WEB_HOST:WEB_PORT)",
    )


def _url(flag: str, value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{flag}: expected an http(s):// URL, got {value!r}")
    return value.rstrip("/")


def alert_settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Settings fields of the parsed alert flags; the rules file is validated here, so a bad
    one stops the worker at start with one line naming the key."""
    from models.rules import load_rules

    rules = getattr(args, "alert_rules", None)
    load_rules(rules)
    return {
        "alert_rules_path": rules,
        "alertmanager_url": _url("--alertmanager-url", getattr(args, "alertmanager_url", None)),
        "alert_webhook_url": _url("--alert-webhook-url", getattr(args, "alert_webhook_url", None)),
        "public_url": _url("--public-url", getattr(args, "public_url", None)),
    }
