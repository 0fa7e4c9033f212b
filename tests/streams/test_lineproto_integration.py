"""Line protocol into a real worker on a real broker: Telegraf's nvidia_smi, ipmi_sensor and
modbus lines posted to POST /api/v2/write (as outputs.influxdb_v2 sends them: gzip, a Token)
come back from /api/state, /api/racks, /api/units and, once the sink stored them, from SQL;
the refused line is in the DLQ; Telegraf's JSON on telemetry.ingest lands too."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from storage.layout import default_tables
from storage.sink import ParquetSink
from streams.brokers import Broker
from streams.httpclient import http_get, http_post
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams.test_spine_integration import _read_dlq, publish
from tests.streams.workerproc import WorkerProcess

pytestmark = [pytest.mark.integration]

TOKEN = "lineproto-test-token-0123456789"


def telegraf_body(t_s: int) -> str:
    """What Telegraf 1.3x writes for one host of rack R0042 (precision s): nvidia_smi (its
    field names, schema v12), ipmi_sensor (metric_version 2) and a modbus CDU."""
    lines = [
        f"nvidia_smi,arch=Hopper,compute_mode=Default,gpu_offset=4,host=tray1,index={g},"
        f"name=NVIDIA\\ H100\\ 80GB\\ HBM3,pstate=P0,rack=R0042,"
        f"uuid=GPU-9ba66fc-a7f5-94c5-da19-019ef2f9c66{g} "
        f"clocks_current_graphics=1980i,clocks_current_memory=2619i,"
        f"clocks_current_sm={1900 + g}i,clocks_current_video=1755i,"
        f'cuda_version="12.4",driver_version="550.54.15",fan_speed=0i,memory_free=79000i,'
        f"memory_total=81559i,memory_used=2559i,power_draw={600.5 + g},pcie_link_gen_current=5i,"
        f"temperature_gpu={55 + g}i,utilization_gpu={90 + g}i,utilization_memory=40i {t_s}"
        for g in range(4)
    ]
    lines += [
        f"ipmi_sensor,entity_id=55.1,host=tray1,name=inlet_temp,status_code=ok,status_desc=ok,"
        f"twin_unit=R0042,unit=degrees_c value=27.5 {t_s}",
        f"ipmi_sensor,entity_id=55.2,host=tray1,name=outlet_temp,status_code=ok,"
        f"status_desc=ok,twin_unit=R0042,unit=degrees_c value=39 {t_s}",
        f"ipmi_sensor,entity_id=7.1,host=tray1,name=uid_light,status_code=ok,status_desc=ok,"
        f"twin_unit=R0042 value=0 {t_s}",
        f"modbus,host=gw1,name=CDU07,slave_id=1,type=holding_register "
        f"supply_temp_c=32.5,return_temp_c=41.25,flow_kg_s=38.5,pump_power_w=2200 {t_s}",
        f"cpu,cpu=cpu-total,host=tray1 usage_idle=97.5,usage_user=2.1 {t_s}",
    ]
    return "\n".join(lines) + "\n"


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _value(v: Any) -> float:
    return float(v["value"]) if isinstance(v, dict) else float(v)


def _unit_points(worker: WorkerProcess, unit: str) -> dict[str, float]:
    status, doc = worker.get_json(f"/api/units/{unit}")
    if status != 200:
        return {}
    return {k: _value(v) for k, v in doc["points"].items()}


def _until(what: str, fn: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def _store(bootstrap: str, topics: Topics, data_dir: Path, rows: int) -> None:
    tables = default_tables()
    tables["gpu"] = dataclasses.replace(tables["gpu"], topic=topics.gpu)
    tables["plant"] = dataclasses.replace(tables["plant"], topic=topics.thermal)
    sink = ParquetSink(
        bootstrap, data_dir, [topics.gpu, topics.thermal], f"{topics.prefix}sink", 1000, 0.2,
        tables={"gpu": tables["gpu"], "plant": tables["plant"]}, dlq_topic=None,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        deadline = time.monotonic() + 60
        while not (sink.stats["rows"] >= rows and not sink.writer.buffered_rows):
            assert time.monotonic() < deadline, f"sink stored {sink.stats}"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def _sql(worker: WorkerProcess, sql: str) -> list[dict[str, Any]]:
    status, body = http_post(worker.url + "/api/sql", json.dumps({"sql": sql}).encode())
    assert status == 200, body
    return list(json.loads(body)["rows"])


def test_telegraf_writes_reach_state_and_sql(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, 8))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    worker = WorkerProcess(
        broker.url, topics.prefix, tmp_path, extra=("--api-token-file", str(token_file))
    )
    try:
        worker.wait_healthy()
        t_s = time.time_ns() // 10**9 - 2
        write = worker.url + "/api/v2/write?org=site&bucket=twin&precision=s"
        body = gzip.compress(telegraf_body(t_s).encode())
        gz = {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"}

        status, answer = post(write, body, gz)
        assert status == 401 and json.loads(answer)["code"] == "unauthorized"
        status, _ = post(write, body, gz | {"Authorization": "Token wrong-token-0123456789"})
        assert status == 403
        status, answer = post(write, body, gz | {"Authorization": f"Token {TOKEN}"})
        assert (status, answer) == (204, b"")

        # A bad line among good ones: 400 naming it (as InfluxDB), the good one written.
        partial = f"modbus,name=CDU08 supply_temp_c=30.5 {t_s}\nmodbus,name=CDU08 broken\n"
        auth = {"Authorization": f"Token {TOKEN}"}
        status, answer = post(write, partial.encode(), auth)
        doc = json.loads(answer)
        assert status == 400 and doc["code"] == "invalid"
        assert doc["message"].startswith("partial write: line 2:"), doc
        status, answer = post(write.replace("bucket=twin&", ""), b"m f=1", auth)
        assert status == 400 and "bucket" in json.loads(answer)["message"]
        status, _ = post(write, b"x" * (9 << 20), auth)
        assert status == 413
        status, answer = post(write, b"not gzip", auth | {"Content-Encoding": "gzip"})
        assert status == 400 and "gzip" in json.loads(answer)["message"]
        status, _ = post(write, b"m f=1", auth | {"Content-Encoding": "snappy"})
        assert status == 415

        # Telegraf's JSON serializer on telemetry.ingest (json_timestamp_units = 1s).
        metric = {
            "name": "modbus",
            "tags": {"name": "CDU09", "slave_id": "1", "type": "holding_register"},
            "fields": {"supply_temp_c": 33.25, "flow_kg_s": 40.0},
            "timestamp": t_s,
        }
        publish(broker, [(topics.ingest, "gw1", json.dumps({"metrics": [metric]}).encode())])

        state = worker.wait_for(lambda d: "R0042" in d["racks"], what="rack R0042")
        assert state["racks"]["R0042"]["gpus"] == 4
        status, rack = worker.get_json("/api/racks/R0042?precision=full")
        assert status == 200
        gpus = sorted(rack["gpus"], key=lambda g: g["gpu"])
        assert [g["gpu"] for g in gpus] == [4, 5, 6, 7]  # index + gpu_offset
        assert [g["temp_gpu_c"] for g in gpus] == [55, 56, 57, 58]
        assert [g["power_w"] for g in gpus] == [600.5, 601.5, 602.5, 603.5]
        assert [g["sm_clock_mhz"] for g in gpus] == [1900, 1901, 1902, 1903]
        assert [g["util_pct"] for g in gpus] == [90, 91, 92, 93]

        cdu = _until("CDU07", lambda: _unit_points(worker, "CDU07"))
        assert cdu == {
            "supply_temp_c": 32.5, "return_temp_c": 41.25, "flow_kg_s": 38.5, "pump_power_w": 2200
        }  # fmt: skip
        assert _until("CDU08", lambda: _unit_points(worker, "CDU08")) == {"supply_temp_c": 30.5}
        assert _until("CDU09", lambda: _unit_points(worker, "CDU09")) == {
            "supply_temp_c": 33.25,
            "flow_kg_s": 40.0,
        }
        rack_points = _until("R0042 points", lambda: _unit_points(worker, "R0042"))
        assert rack_points == {"inlet_temp_c": 27.5, "outlet_temp_c": 39.0}

        status, unmapped = worker.get_json("/api/ingest/unmapped")
        assert status == 200 and unmapped["unmapped_measurements"] == {"cpu": 1}
        status, text = http_get(worker.url + "/metrics")
        metrics = text.decode()
        assert 'twin_ingest_writes_total{status="204"} 1.0' in metrics
        assert 'twin_ingest_writes_total{status="401"} 1.0' in metrics
        assert 'twin_ingest_metrics_total{outcome="unmapped"} 1.0' in metrics
        assert 'twin_frames_dlq_total{reason="bad_line"} 1.0' in metrics

        [dead] = asyncio.run(_read_dlq(broker.bootstrap, topics.dlq, 1))
        assert dead["value"] == b"modbus,name=CDU08 broken"
        assert dead["headers"]["dlq.reason"] == "bad_line"
        assert dead["headers"]["dlq.line"] == "2"

        # 4 GPU rows + CDU07 (4) + CDU08 (1) + CDU09 (2) + R0042 (2) plant rows
        asyncio.run(_store(broker.bootstrap, topics, tmp_path / "history", 4 + 4 + 1 + 2 + 2))
        rows = _sql(
            worker,
            "SELECT gpu, temp_gpu_c, power_w, epoch_ms(ts) AS ts_ms FROM gpu "
            "WHERE rack = 'R0042' ORDER BY gpu",
        )
        assert [(r["gpu"], r["temp_gpu_c"], r["power_w"]) for r in rows] == [
            (4 + g, 55.0 + g, 600.5 + g) for g in range(4)
        ]
        assert {r["ts_ms"] for r in rows} == {t_s * 1000}
        plant = _sql(worker, "SELECT unit, point, value FROM plant ORDER BY unit, point")
        stored = [(r["unit"], r["point"], r["value"]) for r in plant]
        assert ("CDU07", "pump_power_w", 2200.0) in stored
        assert ("R0042", "inlet_temp_c", 27.5) in stored
    finally:
        worker.stop()
