"""Fail fast, in one line, when no Kafka broker listens where ``--broker`` points.

aiokafka retries an unreachable bootstrap server for as long as the caller lets it and logs
every attempt ("Unable connect to ..."), so a command pointed at the wrong port printed 30 s
of client errors, or a traceback, before saying anything useful. Every Kafka client of the
twin goes through :func:`streams.kafka_security.check_access` before it connects, and that
calls :func:`require_reachable` first: a plain TCP connection to each bootstrap server,
retried for a few seconds (a broker being restarted), then one :class:`BrokerError` naming
the address, the cause and what to do.

:func:`quiet_client_logs` keeps aiokafka's own log lines from flooding a terminal once the
client runs (a broker lost mid-run logs every reconnect attempt): each distinct message is
shown once a minute, everything at ``--log-level debug``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Final

from twin.errors import BrokerError

#: How long a command waits for a bootstrap server to accept a TCP connection [s]: long
#: enough for a broker that is restarting, short enough to answer a typo at once.
REACH_WAIT_S: Final = 3.0
#: Time limit of one TCP connection attempt [s].
CONNECT_TIMEOUT_S: Final = 2.0

WHAT_TO_DO: Final = (
    "start a broker (twin broker, or twin demo for the whole twin) or point --broker "
    "(env TWIN_BROKER) at a running one"
)


async def _try_connect(host: str, port: int, timeout_s: float) -> str | None:
    """None if ``host:port`` accepts a TCP connection, else the cause in a few words."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except ConnectionRefusedError:
        return "connection refused"
    except socket.gaierror:
        return f"unknown host {host!r}"
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as exc:
        return (exc.strerror or type(exc).__name__).lower()
    writer.close()
    return None


async def require_reachable(
    bootstrap: str, wait_s: float = REACH_WAIT_S, connect_timeout_s: float = CONNECT_TIMEOUT_S
) -> None:
    """Return once a server of ``bootstrap`` (``host:port[,host:port]``) accepts a connection.

    Retries for ``wait_s`` [s]; then raises BrokerError with the last cause of each server.
    """
    servers = [hp.rpartition(":") for hp in bootstrap.split(",")]
    deadline = time.monotonic() + wait_s
    while True:
        causes = []
        for host, _, port in servers:
            cause = await _try_connect(host, int(port), connect_timeout_s)
            if cause is None:
                return
            causes.append(f"{host}:{port} ({cause})")
        if time.monotonic() >= deadline:
            raise BrokerError(f"cannot reach Kafka at {', '.join(causes)}: {WHAT_TO_DO}")
        await asyncio.sleep(0.5)


class _OncePerMinute(logging.Filter):
    """Passes each distinct aiokafka message template at most once per ``every_s`` [s]."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        now = time.monotonic()
        key = str(record.msg)
        if now - self._last.get(key, -self.every_s) < self.every_s:
            return False
        self._last[key] = now
        return True


def quiet_client_logs(level: str) -> None:
    """Rate-limit aiokafka's log lines (each message once a minute) unless ``level`` is debug.

    The filter sits on the root logger's handlers: aiokafka logs under ``aiokafka.*``
    child loggers, whose records a filter on the ``aiokafka`` logger itself never sees.
    Call it after the handlers are set up (``logging.basicConfig``).
    """
    for handler in logging.getLogger().handlers:
        for f in list(handler.filters):
            if isinstance(f, _OncePerMinute):
                handler.removeFilter(f)
        if level.lower() != "debug":
            handler.addFilter(_OncePerMinute())
