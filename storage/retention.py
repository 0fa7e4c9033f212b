"""Retention: drop date partitions older than each table's retention [days]."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from storage.layout import TableDef, date_dir, list_dates

log = logging.getLogger("storage.retention")

#: A partition being removed is first renamed to this prefix + its name, out of every glob.
EXPIRED_PREFIX = ".expired-"


def expired_dates(dates: list[dt.date], today: dt.date, days: int) -> list[dt.date]:
    """Dates strictly older than ``days`` full days before ``today`` (today counts as 0)."""
    cutoff = today - dt.timedelta(days=days)
    return [d for d in dates if d < cutoff]


def remove_expired_leftovers(table_dir: Path) -> int:
    """Finish removals a crash interrupted; returns how many partitions that took."""
    if not table_dir.is_dir():
        return 0
    left = [p for p in table_dir.iterdir() if p.name.startswith(EXPIRED_PREFIX) and p.is_dir()]
    for p in left:
        shutil.rmtree(p)
    return len(left)


def apply_retention(
    data_dir: Path,
    tables: Mapping[str, TableDef],
    today: dt.date,
    overrides: Mapping[str, int] | None = None,
) -> list[Path]:
    """Delete expired partitions; ``overrides`` maps table -> days. Returns removed dirs.

    A partition goes in one rename, so queries and a crash mid-removal never see part of a
    day: the renamed directory is outside every ``date=*`` glob, and deleted afterwards (or
    by the next pass if the process dies first).
    """
    removed = []
    for name, tdef in tables.items():
        remove_expired_leftovers(tdef.table_dir(data_dir))
        days = (overrides or {}).get(name, tdef.retention_days)
        if days is None:
            continue
        for day in expired_dates(list_dates(tdef.table_dir(data_dir)), today, days):
            d = date_dir(data_dir, name, day)
            doomed = d.with_name(EXPIRED_PREFIX + d.name)
            os.replace(d, doomed)
            shutil.rmtree(doomed)
            removed.append(d)
            log.info("retention removed table=%s date=%s", name, day)
    return removed
