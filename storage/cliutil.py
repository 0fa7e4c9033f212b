"""Shared helpers of the storage CLI commands: defaults, paths, logging.

Their TWIN_<FLAG> and config-file fallbacks are filled by streams/config.py, as every
command's."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

DEFAULT_DATA_DIR = "data"
DEFAULT_BROKER = "kafka://127.0.0.1:9092"


def data_dir_arg(value: str) -> Path:
    """argparse type of --data-dir: the path, ``~`` expanded."""
    return Path(value).expanduser()


def add_data_dir_flag(p: argparse.ArgumentParser, what: str) -> None:
    """--data-dir: the Parquet store, ``what`` it is used for."""
    p.add_argument(
        "--data-dir",
        type=data_dir_arg,
        default=Path(DEFAULT_DATA_DIR),
        help=f"Parquet history store {what}",
    )


def setup_logging(verbose: bool = False) -> None:
    """Quiet key=value logs on stderr: warnings and our own INFO lines, not aiokafka's."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("storage").setLevel(logging.DEBUG if verbose else logging.INFO)
