"""The Grafana dashboard of compose/ queries metrics that exist, and returns series.

Static: every panel names the provisioned Prometheus datasource, and the PromQL reader of
this test finds the metric names in expressions the way Prometheus would. Live (on the
first broker leg; the names do not depend on the broker): a real worker (with an alert sink
to an address where nothing listens), a real sink with ``--http-port``, the simulator, and
one undecodable message (a dead letter); every metric a panel or the variable queries is on
their /metrics; then Debian's Prometheus runs compose/prometheus/prometheus.yml with its
targets moved to loopback, and every panel's query, run through Prometheus's HTTP API,
returns series that carry the labels its legend names.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.brokers import Broker
from streams.brokers.ports import free_port
from streams.httpclient import http_get
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.conftest import broker_legs, in_ci
from tests.streams.test_alerts_sim_integration import stop, wait_for
from tests.streams.test_spine_integration import publish
from tests.streams.workerproc import WorkerProcess

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "dc-twin.json"
DATASOURCES = COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROMETHEUS_YML = COMPOSE / "prometheus" / "prometheus.yml"
PROMETHEUS = "prometheus"
PARTITIONS = 8
#: series Prometheus makes itself for every target (not on any /metrics)
SYNTHETIC = frozenset({"up"})
#: what Grafana puts for its variables when the dashboard shows all racks over an hour
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$rack": ".*"}
#: PromQL keywords that stand where a metric name could (binary operators, modifiers)
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) selects."""
    m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr)
    if m:
        return {m[1]}
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\w+", " ", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", e):
        if m[2] is None and m[1].lower() not in _KEYWORDS:  # a call is a function
            names.add(m[1])
    return names


def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for p in doc["panels"]:
        yield p
        yield from p.get("panels", [])


def targets(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every query of the dashboard."""
    return [(p["title"], t) for p in panels(doc) for t in p.get("targets", [])]


def variable_queries(doc: dict[str, Any]) -> list[str]:
    out = []
    for v in doc.get("templating", {}).get("list", []):
        q = v.get("query")
        out.append(q["query"] if isinstance(q, dict) else str(q))
    return out


def substitute(expr: str) -> str:
    """The query Grafana sends for ``expr`` (all racks, one hour)."""
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def referenced_metrics(doc: dict[str, Any]) -> dict[str, set[str]]:
    """Metric name -> the panels (or variables) that query it."""
    out: dict[str, set[str]] = {}
    for title, t in targets(doc):
        for name in metric_names(t["expr"]):
            out.setdefault(name, set()).add(title)
    for q in variable_queries(doc):
        for name in metric_names(q):
            out.setdefault(name, set()).add(f"variable {q}")
    return out


# --- static ---------------------------------------------------------------------------------


def test_metric_names_reads_promql_as_prometheus_would() -> None:
    expr = (
        'sum by (rack) (rate(twin_frames_in_total{topic=~"a|b", x="sum(y)"}[$__rate_interval]))'
        " / on(rack) group_left max without (gpu) (twin_rack_power_watts offset 5m) > bool 0"
        ' or vector(0) and topk(3, abs(twin_unit_residual{unit="SITE"}))'
    )
    assert metric_names(expr) == {
        "twin_frames_in_total",
        "twin_rack_power_watts",
        "twin_unit_residual",
    }
    assert metric_names("label_values(twin_rack_power_watts, rack)") == {"twin_rack_power_watts"}
    assert metric_names("max(twin_alert_flood) * 600") == {"twin_alert_flood"}


def test_every_panel_queries_the_provisioned_datasource() -> None:
    doc = dashboard()
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert doc["uid"] and doc["title"]
    found = targets(doc)
    assert len(found) >= 20
    for title, t in found:
        assert t["datasource"] == {"type": "prometheus", "uid": ds["uid"]}, title
        assert t["expr"].strip(), title
        substitute(t["expr"])  # no variable the test (and so the dashboard) lacks
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_the_dashboard_covers_facility_racks_detectors_alerts_and_pipeline() -> None:
    refs = referenced_metrics(dashboard())
    for name in (
        "twin_pue",
        "twin_it_power_watts",
        "twin_plant_point",  # heat to district heating, coolant temperatures
        "twin_rack_power_watts",
        "twin_rack_gpu_temp_max_celsius",
        "twin_rack_residual_max_abs_k",
        "twin_detector_rack_score",
        "twin_unit_score",
        "twin_alerts",
        "twin_consumer_lag_messages",
        "twin_frames_dlq_total",
        "twin_background_failures_total",
        "twin_sink_refused_total",
    ):
        assert name in refs, name
    exprs = " ".join(t["expr"] for _, t in targets(dashboard()))
    assert 'point="heat_to_dh_w"' in exprs and "supply_temp_c" in exprs


# --- live -----------------------------------------------------------------------------------


def require_prometheus() -> str:
    path = shutil.which(PROMETHEUS)
    if path is None:
        msg = f"{PROMETHEUS} missing: run scripts/prometheus.sh (apt prometheus)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


def scrape(url: str) -> set[str]:
    """Names of the series on a /metrics page (samples only: a family without any is absent)."""
    status, body = http_get(url, timeout_s=5)
    if status != 200:
        return set()
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0]
        for line in body.decode().splitlines()
        if line and not line.startswith("#")
    }


class Prometheus:
    """Debian's prometheus on a free loopback port with the compose config, targets moved."""

    def __init__(self, binary: str, tmp: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        targets = {**targets, "prometheus": f"127.0.0.1:{self.port}"}
        config["global"].update(scrape_interval="1s", scrape_timeout="1s")
        jobs = {j["job_name"]: j for j in config["scrape_configs"]}
        assert set(jobs) == set(targets), sorted(jobs)
        for name, job in jobs.items():
            for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
                del job[key]
            job["static_configs"] = [{"targets": [targets[name]]}]
        path = tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_for(
                lambda: self.proc.poll() is None and http_get(self.url + "/-/ready")[0] == 200,
                "prometheus to start",
                30,
                self.log_tail,
            )
        except BaseException:
            self.stop()
            raise

    def query(self, expr: str) -> list[dict[str, Any]]:
        status, body = http_get(
            f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout_s=10
        )
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", (expr, status, doc)
        return list(doc["data"]["result"])

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        stop(self.proc)
        self._log.close()


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}  # flags only
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams", *argv],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


@pytest.mark.integration
@pytest.mark.slow
def test_every_dashboard_query_returns_series_from_a_live_worker_and_sink(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    if broker.kind != broker_legs()[0]:
        pytest.skip("metric names do not depend on the broker: checked on the first leg")
    prometheus_bin = require_prometheus()
    doc = dashboard()
    refs = referenced_metrics(doc)
    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, PARTITIONS))
    extra = (
        *("--racks", "4"),
        # an alert sink, so that the delivery panel has series (nothing listens there)
        *("--alertmanager-url", f"http://127.0.0.1:{free_port()}"),
    )
    worker = WorkerProcess(broker.url, topic_prefix, tmp_path / "w", extra=extra)
    sink_port = free_port()
    sink_log, sim_log = tmp_path / "sink.log", tmp_path / "sim.log"
    sink = start(
        [
            *("sink", "--broker", broker.url, "--topic-prefix", topic_prefix),
            *("--group", f"{topic_prefix}-sink", "--data-dir", str(tmp_path / "history")),
            *("--http-port", str(sink_port), "--http-host", "127.0.0.1"),
        ],
        sink_log,
    )
    sim: subprocess.Popen[bytes] | None = None
    prom: Prometheus | None = None
    sink_url = f"http://127.0.0.1:{sink_port}/metrics"

    def why() -> str:
        missing = sorted(set(refs) - SYNTHETIC - scrape(worker.url + "/metrics") - scrape(sink_url))
        return (
            f"missing on /metrics: {missing}\n"
            f"prometheus: {prom.log_tail() if prom else None}\n"
            f"sink log: {sink_log.read_text(errors='replace')[-1500:]}\n"
            f"sim log: {sim_log.read_text(errors='replace')[-1500:] if sim_log.exists() else ''}\n"
            f"worker log: {worker.log_tail(3000)}"
        )

    try:
        worker.wait_healthy()
        sim = start(
            [
                *("sim", "--broker", broker.url, "--topic-prefix", topic_prefix),
                *("--partitions", str(PARTITIONS), "--racks", "4", "--plant-dt", "1"),
                *("--duration", "600", "--log-level", "warning"),
            ],
            sim_log,
        )
        publish(broker, [(topics.gpu, "R0001", b"not a frame")])  # one dead letter
        prom = Prometheus(
            prometheus_bin,
            tmp_path,
            {"twin-worker": f"127.0.0.1:{worker.port}", "twin-sink": f"127.0.0.1:{sink_port}"},
        )

        # every metric a panel names is served, with at least one series
        def all_served() -> bool:
            served = scrape(worker.url + "/metrics") | scrape(sink_url)
            return not set(refs) - SYNTHETIC - served

        wait_for(all_served, "every dashboard metric on /metrics", 120, why)

        # every panel's query, as Grafana sends it, returns series with its legend's labels
        def empty() -> list[str]:
            return [
                f"{title}: {t['expr']}"
                for title, t in targets(doc)
                if not prom or not prom.query(substitute(t["expr"]))
            ]

        wait_for(lambda: not empty(), "every dashboard query to return series", 60, why)
        for title, t in targets(doc):
            labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
            for series in prom.query(substitute(t["expr"])):
                assert labels <= set(series["metric"]), (title, t["expr"], series["metric"])
        up = prom.query('up{job=~"twin-.*"}')
        assert {s["metric"]["job"]: s["value"][1] for s in up} == {
            "twin-worker": "1",
            "twin-sink": "1",
        }
        dlq = prom.query("sum by (reason) (twin_frames_dlq_total)")
        assert dlq and all(float(s["value"][1]) >= 1 for s in dlq), dlq
    finally:
        if prom is not None:
            prom.stop()
        if sim is not None:
            stop(sim)
        stop(sink)
        worker.stop()
