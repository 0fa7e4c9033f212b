"""Retention: drop date partitions older than each table's retention [days]."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

from storage.layout import TableDef, date_dir, list_dates

log = logging.getLogger("storage.retention")


def expired_dates(dates: list[dt.date], today: dt.date, days: int) -> list[dt.date]:
    """Dates strictly older than ``days`` full days before ``today`` (today counts as 0)."""
    cutoff = today - dt.timedelta(days=days)
    return [d for d in dates if d < cutoff]


def apply_retention(
    data_dir: Path,
    tables: Mapping[str, TableDef],
    today: dt.date,
    overrides: Mapping[str, int] | None = None,
) -> list[Path]:
    """Delete expired partitions; ``overrides`` maps table -> days. Returns removed dirs."""
    removed = []
    for name, tdef in tables.items():
        days = (overrides or {}).get(name, tdef.retention_days)
        if days is None:
            continue
        for day in expired_dates(list_dates(tdef.table_dir(data_dir)), today, days):
            d = date_dir(data_dir, name, day)
            shutil.rmtree(d)
            removed.append(d)
            log.info("retention removed table=%s date=%s", name, day)
    return removed
