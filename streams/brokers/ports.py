"""Free TCP ports on the loopback interface for brokers started by the twin."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on at the moment of the call.

    The kernel picks the port (bind to 0). Another process may take it before the broker
    binds it, so callers retry with a new port when the broker reports "address in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct free ports, held open together so none is handed out twice."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def is_listening(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """True if a TCP connect to ``host:port`` succeeds within ``timeout_s`` [s]."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def can_bind(port: int, host: str = LOOPBACK) -> bool:
    """True if a server could listen on ``host:port`` now (bound as aiohttp binds:
    SO_REUSEADDR, so a closed connection in TIME_WAIT does not count as busy)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
