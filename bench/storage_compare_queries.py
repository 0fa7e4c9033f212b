"""The benchmark's queries, each in DuckDB SQL over our store, PromQL and PostgreSQL SQL.

The per-minute maximum, the hottest GPUs and the single series ask about the last hour of
data (or all of it when shorter); energy, PUE, the residual trend and the ASOF join cover
the whole (at most one-day) run. The five queries of docs/sql-examples.md are taken from
that file, with two substitutions for the simulator's ids (see :func:`queries`); their
raw-table counterparts are what PostgreSQL (which has no rollups) and a plain DuckDB scan
run.
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
    rack: str  # the rack of the single-series and ASOF queries
    hour_ms: int = 3_600_000
    residual_entity: str = "R0001"  # the rack of the residual-trend doc query
    pg_first_ms: int = 0  # first sample of PostgreSQL's slice (0: no slice)

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
    whole_run: bool = False  # a range query over the whole run (else over the last hour)
    gpu_only: bool = True  # reads GPU series only (Prometheus is given no others)
    duck_slice: str | None = None  # our SQL over PostgreSQL's slice only, to compare with it
    note: str = ""


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
        "FROM gpu WHERE {span} GROUP BY ALL"
    )
    hot_raw = (
        "SELECT rack, gpu, max(temp_gpu_c) AS temp_max_c, avg(temp_gpu_c) AS temp_mean_c "
        "FROM gpu WHERE {span} GROUP BY rack, gpu "
        "ORDER BY temp_max_c DESC, rack, gpu LIMIT 10"
    )
    energy_raw = (
        "WITH per_gpu AS (SELECT {day} AS day, rack, gpu, max(energy_mj) - min(energy_mj) AS e "
        "FROM gpu{where} GROUP BY 1, 2, 3) SELECT day, rack, sum(e) / 3.6e9 AS energy_kwh "
        "FROM per_gpu GROUP BY day, rack ORDER BY day, rack"
    )
    series_raw = (
        f"SELECT ts, temp_gpu_c FROM gpu WHERE rack = '{w.rack}' AND gpu = 0 AND {{span}} "
        "ORDER BY ts"
    )
    run_s = max(1, round((w.last_ms - w.first_ms) / 1000) + 1)
    # PostgreSQL's slice in our SQL: the same rows, so its answers must equal PostgreSQL's
    s0 = _lit(max(w.pg_first_ms, w.first_ms))
    sspan = f"ts >= {_lit(max(t0, w.pg_first_ms))} AND ts <= {_lit(t1)} AND {days}"
    # docs/sql-examples.md uses the simulator's ids (power unit 'SITE', rack R0001)
    pue_doc = docs["PUE by day"]
    res_doc = docs["Residual trend of one rack"]
    asof_doc = _sub(
        docs["GPU temperature beside its CDU's supply temperature (ASOF join)"],
        "'R0001'",
        f"'{w.rack}'",
    )
    return [
        Query(
            "rack_minute_max",
            "per-rack per-minute max GPU temperature, 1 h",
            {
                "raw scan (gpu)": minute_raw.format(span=f"{span} AND {days}"),
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
            duck_slice=minute_raw.format(span=sspan),
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
            duck_slice=hot_raw.format(span=sspan),
        ),
        Query(
            "energy_rack_day",
            "energy per rack per day (whole run)",
            {
                "raw scan (gpu)": energy_raw.format(day="date", where=""),
                "doc query (gpu_1h)": docs["Energy per rack per day"],
            },
            f"sum by (rack) (max_over_time(gpu_energy_mj[{run_s}s]) "
            f"- min_over_time(gpu_energy_mj[{run_s}s])) / 3.6e9",
            True,
            0,
            energy_raw.format(day="ts::date", where=""),
            "energy_kwh",
            whole_run=True,
            duck_slice=energy_raw.format(day="date", where=f" WHERE ts >= {s0}"),
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
            duck_slice=series_raw.format(span=sspan),
        ),
        Query(
            "pue_day",
            "PUE by day (whole run)",
            {"doc query (power)": pue_doc},
            f'avg_over_time(power_facility_power_w{{unit="SITE"}}[{run_s}s]) '
            f'/ avg_over_time(power_it_power_w{{unit="SITE"}}[{run_s}s])',
            True,
            0,
            "SELECT ts::date AS date, avg(value) FILTER (WHERE point = 'facility_power_w') "
            "/ avg(value) FILTER (WHERE point = 'it_power_w') AS pue FROM power "
            "WHERE unit = 'SITE' AND point IN ('facility_power_w', 'it_power_w') "
            "GROUP BY 1 ORDER BY 1",
            "pue",
            whole_run=True,
            gpu_only=False,
            duck_slice=_sub(pue_doc, "WHERE ", f"WHERE ts >= {s0} AND "),
        ),
        Query(
            "residual_trend",
            f"residual trend of one rack, 5-min buckets (whole run, {w.residual_entity})",
            {"doc query (residual)": res_doc},
            f'avg_over_time(residual_outlet_temp_c{{entity="{w.residual_entity}"}}[5m])',
            False,
            300,
            "SELECT date_bin('5 minutes', ts, timestamptz '2000-01-01 00:00:00+00') AS bucket, "
            "avg(residual) AS residual_mean_k, stddev_samp(residual) AS residual_std_k, "
            f"count(*) AS n FROM residual WHERE entity = '{w.residual_entity}' "
            "AND quantity = 'outlet_temp_c' GROUP BY 1 ORDER BY 1",
            "residual_mean_k",
            whole_run=True,
            gpu_only=False,
            duck_slice=_sub(res_doc, "WHERE ", f"WHERE ts >= {s0} AND "),
            note="PromQL computes the mean only (one query); DuckDB and PostgreSQL also the "
            "sample standard deviation and the count.",
        ),
        Query(
            "asof_cdu",
            f"GPU temperature beside its CDU's supply temperature, ASOF join "
            f"(whole run, {w.rack} GPU 0)",
            {"doc query (gpu ASOF plant)": asof_doc},
            f'gpu_temp_gpu_c{{rack="{w.rack}",gpu="0"}} - on(cdu) group_left() '
            'label_replace(last_over_time(plant_supply_temp_c[5s]), "cdu", "$1", "unit", "(.+)")',
            False,
            1,
            "SELECT g.ts, g.rack, g.gpu, g.temp_gpu_c, p.value AS cdu_supply_temp_c, "
            "g.temp_gpu_c - p.value AS rise_k FROM gpu g JOIN site_racks s ON s.rack = g.rack "
            "CROSS JOIN LATERAL (SELECT value, ts FROM plant WHERE point = 'supply_temp_c' "
            "AND unit = s.cdu AND ts <= g.ts ORDER BY ts DESC LIMIT 1) p "
            f"WHERE g.rack = '{w.rack}' AND g.gpu = 0 ORDER BY g.ts",
            "rise_k",
            whole_run=True,
            gpu_only=False,
            duck_slice=_sub(asof_doc, "WHERE g.", f"WHERE g.ts >= {s0} AND g."),
            note="PromQL has no ASOF join: the GPU series carry their CDU as a `cdu` label "
            "(set at import, as a relabelling rule would), and `last_over_time(...[5s])` "
            "takes the CDU's latest 5-s sample at or before each 1-s step; PostgreSQL uses "
            "a LATERAL subquery (latest plant row at or before each GPU row).",
        ),
    ]


def _sub(sql: str, old: str, new: str) -> str:
    if old not in sql:
        raise ValueError(f"docs/sql-examples.md changed: {old!r} not in {sql!r}")
    return sql.replace(old, new)


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC).date().isoformat()
