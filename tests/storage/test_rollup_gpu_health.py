"""The GPU rollups carry the health fields of frames v2: the largest ECC, remap and NVLink
counts, every remap flag seen, and the smallest thermal margin of each bucket; NULL in a
bucket whose rows are all from v1 frames."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables, list_parts
from storage.rollup import update_rollups
from storage.writer import write_file

START_MS = 1_790_000_025_000  # 45 s into a minute: 30 samples span two 1-minute buckets


def _rollup(data_dir: Path, table: str) -> list[dict[str, object]]:
    files = [str(f) for f in list_parts(data_dir / table)]
    con = duckdb.connect(":memory:")
    try:
        return (
            con.sql(f"SELECT * FROM read_parquet({files!r}) ORDER BY rack, gpu, ts")
            .to_arrow_table()
            .to_pylist()
        )
    finally:
        con.close()


def test_gpu_rollups_aggregate_the_v2_health_columns(tmp_path: Path) -> None:
    new = synth.gpu_table(1, 2, 30, start_ms=START_MS, seed=3)
    n = new.num_rows
    rng = np.random.default_rng(0)
    cols = {
        "ecc_corrected": np.cumsum(rng.integers(0, 3, n)).astype(np.uint64),
        "ecc_uncorrected": np.zeros(n, np.uint64),
        "remapped_rows": np.zeros(n, np.uint32),
        "row_remap_flags": np.zeros(n, np.uint8),
        "nvlink_errors": np.zeros(n, np.uint64),
        "thermal_margin_k": rng.uniform(5.0, 25.0, n).astype(np.float32),
    }
    cols["remapped_rows"][n // 2 :] = 4
    cols["row_remap_flags"][5] = 0x1  # pending at one sample, failure at another
    cols["row_remap_flags"][7] = 0x2
    cols["ecc_uncorrected"][-1] = 1
    for name, arr in cols.items():
        new = new.set_column(new.schema.get_field_index(name), name, pa.array(arr))
    part = date_dir(tmp_path, "gpu", day_of_ms(START_MS))
    part.mkdir(parents=True)
    write_file(default_tables()["gpu"], new, part)
    # an hour later, rows of a v1 sink only (no v2 columns in the file at all)
    old = synth.gpu_table(1, 2, 5, start_ms=START_MS + 3_600_000, version=1)
    pq.write_table(old, part / "part-old.parquet")
    assert update_rollups(tmp_path, ["gpu"])

    minute = np.array([int(t.timestamp()) // 60 for t in new.column("ts").to_pylist()])
    gpu = new.column("gpu").to_numpy()
    got = [r for r in _rollup(tmp_path, "gpu_1m") if r["ecc_corrected_max"] is not None]
    assert len(got) == 4  # 2 GPUs x 2 minutes
    for r in got:
        m = int(r["ts"].timestamp()) // 60
        sel = (gpu == r["gpu"]) & (minute == m)
        assert r["n"] == sel.sum()
        assert r["ecc_corrected_max"] == cols["ecc_corrected"][sel].max()
        assert r["ecc_uncorrected_max"] == cols["ecc_uncorrected"][sel].max()
        assert r["remapped_rows_max"] == cols["remapped_rows"][sel].max()
        assert r["row_remap_flags_or"] == np.bitwise_or.reduce(cols["row_remap_flags"][sel])
        assert r["thermal_margin_k_min"] == cols["thermal_margin_k"][sel].min()
    assert {r["row_remap_flags_or"] for r in got} >= {0x3}  # both flags kept
    hourly = _rollup(tmp_path, "gpu_1h")
    first = [r for r in hourly if r["ecc_corrected_max"] is not None]
    assert [r["ecc_uncorrected_max"] for r in first] == [0, 1]  # the GPU that failed, last
    assert min(r["thermal_margin_k_min"] for r in first) == float(cols["thermal_margin_k"].min())
    v1 = [r for r in hourly if r["n"] == 5]
    assert len(v1) == 2 and all(r["thermal_margin_k_min"] is None for r in v1)
