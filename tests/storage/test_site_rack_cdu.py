"""The store's rack -> CDU table comes from the site the twin models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from storage.site_tables import site_rack_cdu
from storage.sql import SqlService
from twin.site import load_site


def test_every_rack_gets_the_cdu_of_the_site_layout() -> None:
    site = load_site(None, racks=20)
    got = site_rack_cdu(site)
    assert list(got) == list(site.rack_ids) and len(got) == 20
    assert got["R0001"] == site.cdu_ids[0]
    assert set(got.values()) <= set(site.cdu_ids)
    # racks_per_cdu (docs/sources.md S8) racks share a CDU
    assert got["R0001"] == got["R0008"] != got["R0009"]


def test_sink_rejects_a_bad_site_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streams", "sink", "--data-dir", str(tmp_path),
         "--site", str(tmp_path / "missing.toml"), "--broker", "kafka://127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "missing.toml" in proc.stderr


def test_site_racks_is_queryable(tmp_path: Path) -> None:
    from storage.site_tables import write_site_tables

    write_site_tables(tmp_path, site_rack_cdu(load_site(None, racks=16)))
    sql = "SELECT count(*) AS n, count(DISTINCT cdu) AS c FROM site_racks"
    got = SqlService(tmp_path).query(sql)
    assert got.to_pylist() == [{"n": 16, "c": 2}]
