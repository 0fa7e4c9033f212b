"""Shared helpers of the storage CLI commands: broker URLs, TWIN_* fallbacks, logging."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from twin.errors import ConfigError

DEFAULT_DATA_DIR = "data"
DEFAULT_BROKER = "kafka://127.0.0.1:9092"


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_broker_url(url: str) -> str:
    """``kafka://host:port[,host:port]`` -> aiokafka's ``host:port,host:port``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "kafka":
        raise ConfigError(f"--broker: expected kafka://host:port[,host:port], got {url!r}")
    hosts = [h.strip() for h in rest.strip("/").split(",") if h.strip()]
    if not hosts:
        raise ConfigError(f"--broker: no host in {url!r}")
    for h in hosts:
        host, colon, port = h.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--broker: {h!r} in {url!r} is not host:port")
    return ",".join(hosts)


def data_dir_arg(value: str) -> Path:
    return Path(value).expanduser()


def setup_logging(verbose: bool = False) -> None:
    """Quiet key=value logs on stderr: warnings and our own INFO lines, not aiokafka's."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("storage").setLevel(logging.DEBUG if verbose else logging.INFO)
