"""Shared helpers of the storage CLI commands: broker URLs, TWIN_* fallbacks, logging."""

from __future__ import annotations

import logging
import os
from pathlib import Path

DEFAULT_DATA_DIR = "data"
DEFAULT_BROKER = "kafka://127.0.0.1:9092"


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def data_dir_arg(value: str) -> Path:
    return Path(value).expanduser()


def setup_logging(verbose: bool = False) -> None:
    """Quiet key=value logs on stderr: warnings and our own INFO lines, not aiokafka's."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("storage").setLevel(logging.DEBUG if verbose else logging.INFO)
