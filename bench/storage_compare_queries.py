"""The benchmark's queries, each in DuckDB SQL over our store, PromQL and PostgreSQL SQL.

All ask about the last hour of data (or all of it when shorter), except the energy query
which covers the whole (at most one-day) run. The documented queries of docs/sql-examples.md
that read GPU data are taken verbatim from that file; their raw-table counterparts are
what PostgreSQL (which has no rollups) and a plain DuckDB scan run.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql-examples.md"


@dataclass(frozen=True)
class Window:
    first_ms: int  # first sample of the run
    last_ms: int  # last sample of the run
    rack: str  # the rack of the single-series query
    hour_ms: int = 3_600_000

    @property
    def t0_ms(self) -> int:
        """Start of the queried hour (inclusive) [ms]."""
        return max(self.first_ms, self.last_ms - self.hour_ms + 1000)


@dataclass(frozen=True)
class Query:
    """One question asked of every system; None where a system has no form of it."""

    key: str
    title: str
    duck: dict[str, str]  # variant label -> SQL over our views
    promql: str
    instant: bool  # PromQL instant query at the last sample (else a range query)
    step_s: int
    pg: str | None
    check: str  # result column whose sum cross-checks the systems' answers


def _lit(ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC)
    return "TIMESTAMPTZ '" + t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "+00'"


def _pg_lit(ms: int) -> str:
    return _lit(ms).replace("TIMESTAMPTZ", "timestamptz")


def doc_queries() -> dict[str, str]:
    """The SQL blocks of docs/sql-examples.md by their heading."""
    out: dict[str, str] = {}
    for m in re.finditer(r"^## (.+?)\n(.*?)```sql\n(.*?)```", DOC.read_text(), flags=re.S | re.M):
        out[m.group(1).strip()] = m.group(3).strip()
    return out


def queries(w: Window) -> list[Query]:
    t0, t1 = w.t0_ms, w.last_ms
    span = f"ts >= {_lit(t0)} AND ts <= {_lit(t1)}"
    pspan = f"ts >= {_pg_lit(t0)} AND ts <= {_pg_lit(t1)}"
    days = f"date BETWEEN DATE '{_day(t0)}' AND DATE '{_day(t1)}'"
    docs = doc_queries()
    m0 = _lit(t0 - t0 % 60_000)
    minute_raw = (
        "SELECT rack, time_bucket(INTERVAL 1 MINUTE, ts) AS minute, max(temp_gpu_c) AS t "
        f"FROM gpu WHERE {span} AND {days} GROUP BY ALL"
    )
    hot_raw = (
        "SELECT rack, gpu, max(temp_gpu_c) AS temp_max_c, avg(temp_gpu_c) AS temp_mean_c "
        "FROM gpu WHERE {span} GROUP BY rack, gpu "
        "ORDER BY temp_max_c DESC, rack, gpu LIMIT 10"
    )
    energy_raw = (
        "WITH per_gpu AS (SELECT {day} AS day, rack, gpu, max(energy_mj) - min(energy_mj) AS e "
        "FROM gpu GROUP BY 1, 2, 3) SELECT day, rack, sum(e) / 3.6e9 AS energy_kwh "
        "FROM per_gpu GROUP BY day, rack ORDER BY day, rack"
    )
    series_raw = (
        f"SELECT ts, temp_gpu_c FROM gpu WHERE rack = '{w.rack}' AND gpu = 0 AND {{span}} "
        "ORDER BY ts"
    )
    run_s = max(1, round((w.last_ms - w.first_ms) / 1000) + 1)
    return [
        Query(
            "rack_minute_max",
            "per-rack per-minute max GPU temperature, 1 h",
            {
                "raw scan (gpu)": minute_raw,
                "rollup gpu_1m": "SELECT rack, ts AS minute, max(temp_gpu_c_max) AS t FROM gpu_1m "
                f"WHERE ts >= {m0} AND ts <= {_lit(t1)} AND {days} GROUP BY ALL",
                "rollup rack_1m": "SELECT rack, ts AS minute, temp_gpu_max_c_max AS t FROM rack_1m "
                f"WHERE ts >= {m0} AND ts <= {_lit(t1)} AND {days}",
            },
            "max by (rack) (max_over_time(gpu_temp_gpu_c[1m]))",
            False,
            60,
            "SELECT rack, date_trunc('minute', ts) AS minute, max(temp_gpu_c) AS t "
            f"FROM gpu WHERE {pspan} GROUP BY 1, 2",
            "t",
        ),
        Query(
            "hottest_gpus",
            "hottest 10 GPUs in the last hour",
            {
                "raw scan (gpu)": hot_raw.format(span=f"{span} AND {days}"),
                "doc query (gpu_1m)": docs["Hottest GPUs in the last hour"],
            },
            "topk(10, max_over_time(gpu_temp_gpu_c[1h]))",
            True,
            0,
            hot_raw.format(span=pspan),
            "temp_max_c",
        ),
        Query(
            "energy_rack_day",
            "energy per rack per day (whole run)",
            {
                "raw scan (gpu)": energy_raw.format(day="date"),
                "doc query (gpu_1h)": docs["Energy per rack per day"],
            },
            f"sum by (rack) (max_over_time(gpu_energy_mj[{run_s}s]) "
            f"- min_over_time(gpu_energy_mj[{run_s}s])) / 3.6e9",
            True,
            0,
            energy_raw.format(day="ts::date"),
            "energy_kwh",
        ),
        Query(
            "one_series",
            "one GPU's temperature at 1 s over 1 h (a Grafana panel)",
            {"raw scan (gpu)": series_raw.format(span=f"{span} AND {days}")},
            f'gpu_temp_gpu_c{{rack="{w.rack}",gpu="0"}}',
            False,
            1,
            series_raw.format(span=pspan),
            "temp_gpu_c",
        ),
    ]


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC).date().isoformat()
