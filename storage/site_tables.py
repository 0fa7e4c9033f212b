"""Small reference tables of the site in the store (rack -> CDU), for SQL joins."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from storage.layout import SITE_RACKS_SCHEMA, TableDef
from storage.writer import write_file
from twin.site import Site

SITE_RACKS = TableDef("site_racks", None, SITE_RACKS_SCHEMA, ("rack",), ("rack", "cdu"))


def site_rack_cdu(site: Site) -> dict[str, str]:
    """Rack id -> id of the CDU that serves it, as the site file lays them out."""
    return {r: site.cdu_ids[int(c)] for r, c in zip(site.rack_ids, site.rack_cdu, strict=True)}


def write_site_tables(data_dir: Path, rack_cdu: Mapping[str, str]) -> Path:
    """Write (replace atomically) ``site_racks``: one row per rack with its CDU id."""
    racks = sorted(rack_cdu)
    table = pa.table({"rack": racks, "cdu": [rack_cdu[r] for r in racks]}, schema=SITE_RACKS_SCHEMA)
    return write_file(SITE_RACKS, table, Path(data_dir) / "site_racks", name="site_racks.parquet")
