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

log = logging.getLogger("storage.maintenance")


def run_maintenance(
    data_dir: Path,
    tables: Mapping[str, TableDef] | None = None,
    *,
    today: dt.date | None = None,
    retention_overrides: Mapping[str, int] | None = None,
    options: WriterOptions | None = None,
) -> dict[str, int]:
    """Compact small files, bring rollups up to date, apply retention; returns counts."""
    tables = tables or default_tables()
    merged = 0
    for tdef in tables.values():
        merged += len(compact_table(tdef, data_dir, options))
    rolled = len(update_rollups(data_dir))
    day = today or dt.datetime.now(dt.UTC).date()
    every = {**tables, **rollup_tables()}
    removed = len(apply_retention(data_dir, every, day, retention_overrides))
    counts = {"compacted": merged, "rollup_files": rolled, "expired_partitions": removed}
    log.debug("maintenance %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts
