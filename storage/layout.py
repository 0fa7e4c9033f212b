"""Tables of the history store: name, source topic, Arrow schema, sort keys and file layout.

Every table lives under ``<data_dir>/<table>/date=YYYY-MM-DD/`` (Hive partitioning, which
DuckDB prunes on ``date`` filters). A new table is one entry in :func:`default_tables`.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import pyarrow as pa

from streams.schema import (
    ALERT_SCHEMA,
    GPU_SCHEMA,
    KPI_SCHEMA,
    POINTS_SCHEMA,
    RESIDUAL_SCHEMA,
    TOPIC_ALERTS,
    TOPIC_GPU,
    TOPIC_KPI,
    TOPIC_POWER,
    TOPIC_RESIDUALS,
    TOPIC_STATE,
    TS_TYPE,
)
from streams.schema import TOPIC_THERMAL as TOPIC_THERMAL_
from twin.errors import ConfigError

#: Topics of the twin's outputs. The streams package owns the producers; the names here are
#: the defaults the sink subscribes to and can be overridden per table.

#: Footer key-value metadata keys written into every file.
META_OFFSETS: Final = b"twin.offsets"  # JSON {topic: {partition: [[first, last], ...]}}
META_TABLE: Final = b"twin.table"
META_REPLACES: Final = b"twin.replaces"  # JSON [file names] merged into this one (compaction)
#: Set on a sealed partition's file: all rows of the partition then, in one sort order, with
#: row groups cut at series boundaries (storage/compact.py, seal_partition).
META_SEALED: Final = b"twin.sealed"

TEMP_PREFIX: Final = ".tmp-"
PART_SUFFIX: Final = ".parquet"
DATE_DIR_RE: Final = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")

Codec = Literal["arrow", "json"]


@dataclass(frozen=True)
class TableDef:
    """One table of the store.

    ``codec`` says how a message of ``topic`` decodes: ``arrow`` is one Arrow IPC stream
    holding one RecordBatch in ``schema``; ``json`` is a JSON object (or a list of objects)
    whose keys are column names; a missing ``ts`` takes the record's timestamp and a missing
    ``entity`` the message key.
    """

    name: str
    topic: str | None
    schema: pa.Schema
    sort_keys: tuple[str, ...]
    tag_columns: tuple[str, ...]
    codec: Codec = "arrow"
    retention_days: int | None = None
    doc: str = ""

    def column_encodings(self) -> dict[str, str]:
        """Parquet encoding per non-tag column, chosen by type (bench/bench_storage.py).

        Measured on NVML-resolution data sorted by (rack, gpu, ts): DELTA_BINARY_PACKED
        beats BYTE_STREAM_SPLIT for timestamps (0.009 vs 0.05 B/row) and the monotone
        energy counter (2.3 vs 3.1 B/row); BYTE_STREAM_SPLIT beats dictionary and plain for
        every float column (power 2.9 vs 3.3/4.1 B/row, integer temperatures 0.26 vs 0.34).
        """
        enc: dict[str, str] = {}
        for field in self.schema:
            if field.name in self.tag_columns:
                continue
            t = field.type
            if pa.types.is_timestamp(t) or pa.types.is_integer(t):
                enc[field.name] = "DELTA_BINARY_PACKED"
            elif pa.types.is_floating(t):
                enc[field.name] = "BYTE_STREAM_SPLIT"
            elif pa.types.is_string(t) or pa.types.is_large_string(t):
                enc[field.name] = "DELTA_LENGTH_BYTE_ARRAY"
        return enc

    def table_dir(self, data_dir: Path) -> Path:
        return data_dir / self.name


STATE_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("entity", pa.string(), nullable=False),  # message key of twin.state
        pa.field("payload", pa.string(), nullable=False),  # the JSON object as sent
    ]
)

SITE_RACKS_SCHEMA: Final = pa.schema(
    [
        pa.field("rack", pa.string(), nullable=False),
        pa.field("cdu", pa.string(), nullable=False),
    ]
)


def default_tables() -> dict[str, TableDef]:
    """The table registry: table name -> definition."""
    defs = [
        TableDef(
            "gpu",
            TOPIC_GPU,
            GPU_SCHEMA,
            sort_keys=("rack", "gpu", "ts"),
            tag_columns=("rack",),
            retention_days=400,
            doc="one row per GPU per sample (telemetry.gpu)",
        ),
        TableDef(
            "plant",
            TOPIC_THERMAL_,
            POINTS_SCHEMA,
            sort_keys=("unit", "point", "ts"),
            tag_columns=("unit", "point"),
            retention_days=400,
            doc="cooling plant points, long format (telemetry.thermal)",
        ),
        TableDef(
            "power",
            TOPIC_POWER,
            POINTS_SCHEMA,
            sort_keys=("unit", "point", "ts"),
            tag_columns=("unit", "point"),
            retention_days=400,
            doc="power chain points, long format (telemetry.power)",
        ),
        TableDef(
            "state",
            TOPIC_STATE,
            STATE_SCHEMA,
            sort_keys=("entity", "ts"),
            tag_columns=("entity",),
            codec="json",
            retention_days=90,
            doc="twin state snapshots as JSON (twin.state)",
        ),
        TableDef(
            "kpi",
            TOPIC_KPI,
            KPI_SCHEMA,
            sort_keys=("scope", "name", "ts"),
            tag_columns=("scope", "name"),
            codec="json",
            doc="facility KPIs such as PUE (twin.kpi)",
        ),
        TableDef(
            "residual",
            TOPIC_RESIDUALS,
            RESIDUAL_SCHEMA,
            sort_keys=("entity", "quantity", "ts"),
            tag_columns=("entity", "quantity"),
            codec="json",
            doc="measured minus model estimate (twin.residuals)",
        ),
        TableDef(
            "alerts",
            TOPIC_ALERTS,
            ALERT_SCHEMA,
            sort_keys=("entity", "ts"),
            tag_columns=("entity", "kind", "severity", "state"),
            codec="json",
            doc="alert lifecycle events (twin.alerts)",
        ),
    ]
    return {d.name: d for d in defs}


def tables_by_topic(tables: Mapping[str, TableDef]) -> dict[str, TableDef]:
    """Topic -> table; a topic feeds at most one table."""
    out: dict[str, TableDef] = {}
    for t in tables.values():
        if t.topic is None:
            continue
        if t.topic in out:
            raise ConfigError(f"topic {t.topic!r} feeds both {out[t.topic].name} and {t.name}")
        out[t.topic] = t
    return out


def date_dir(data_dir: Path, table: str, day: dt.date) -> Path:
    return data_dir / table / f"date={day.isoformat()}"


def new_part_name(prefix: str = "part") -> str:
    """A unique file name; the uuid keeps concurrent writers and compaction apart."""
    return f"{prefix}-{uuid.uuid4().hex}{PART_SUFFIX}"


def list_parts(table_dir: Path) -> list[Path]:
    """Durable data files of a table (temp files excluded), sorted by path."""
    if not table_dir.is_dir():
        return []
    return sorted(
        p
        for p in table_dir.glob(f"date=*/*{PART_SUFFIX}")
        if not p.name.startswith(TEMP_PREFIX) and DATE_DIR_RE.match(p.parent.name)
    )


def list_dates(table_dir: Path) -> list[dt.date]:
    if not table_dir.is_dir():
        return []
    out = []
    for p in table_dir.iterdir():
        m = DATE_DIR_RE.match(p.name)
        if m and p.is_dir():
            out.append(dt.date.fromisoformat(m.group(1)))
    return sorted(out)


def list_temp_files(data_dir: Path) -> list[Path]:
    """Leftovers of writes interrupted before their rename (safe to delete)."""
    if not data_dir.is_dir():
        return []
    return sorted(data_dir.glob(f"*/date=*/{TEMP_PREFIX}*")) + sorted(
        data_dir.glob(f"*/{TEMP_PREFIX}*")
    )


def day_of_ms(ts_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts_ms / 1000.0, tz=dt.UTC).date()
