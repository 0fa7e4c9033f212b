"""One maintenance pass over the store: compaction, rollups, retention."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path

from storage.compact import compact_table
from storage.layout import TableDef, default_tables
from storage.retention import apply_retention
from storage.rollup import update_rollups
from storage.rollup_schema import rollup_tables
from storage.writer import WriterOptions
from twin.errors import TwinError

log = logging.getLogger("storage.maintenance")


class MaintenanceError(TwinError):
    """One or more maintenance steps failed; ``failures`` names each step and its error.

    The other steps still ran (a broken rollup must not stop retention); ``counts`` holds
    what they did.
    """

    def __init__(self, failures: list[tuple[str, BaseException]], counts: dict[str, int]) -> None:
        detail = "; ".join(f"{step}: {type(e).__name__}: {e}" for step, e in failures)
        super().__init__(f"maintenance steps failed: {detail}")
        self.failures = failures
        self.counts = counts


def run_maintenance(
    data_dir: Path,
    tables: Mapping[str, TableDef] | None = None,
    *,
    today: dt.date | None = None,
    retention_overrides: Mapping[str, int] | None = None,
    options: WriterOptions | None = None,
) -> dict[str, int]:
    """Compact small files (seal finished partitions, see storage/compact.py), bring rollups
    up to date, apply retention; returns counts. ``today`` is the UTC day (default: now).

    Each step runs even when an earlier one failed; then :class:`MaintenanceError` carries
    every failure (any exception type) with its cause.
    """
    tables = tables or default_tables()
    day = today or dt.datetime.now(dt.UTC).date()
    every = {**tables, **rollup_tables()}
    counts = {"compacted": 0, "rollup_files": 0, "expired_partitions": 0}
    failures: list[tuple[str, BaseException]] = []
    for tdef in tables.values():
        try:
            counts["compacted"] += len(compact_table(tdef, data_dir, options, today=day))
        except Exception as exc:
            failures.append((f"compaction of {tdef.name}", exc))
    try:
        counts["rollup_files"] = len(update_rollups(data_dir))
    except Exception as exc:
        failures.append(("rollups", exc))
    try:
        counts["expired_partitions"] = len(
            apply_retention(data_dir, every, day, retention_overrides)
        )
    except Exception as exc:
        failures.append(("retention", exc))
    log.debug("maintenance %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    if failures:
        raise MaintenanceError(failures, counts) from failures[0][1]
    return counts
