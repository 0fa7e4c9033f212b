"""twin collect modbus against pymodbus' own server on loopback: two devices, one stopped
mid-run and restarted, read back from a real broker; a device that hangs; refused reads."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from streams.brokers import Broker
from streams.codec import decode_points_frame
from streams.collect_modbus import DeviceStatus, collect_modbus, render_metrics
from streams.modbus_map import STALE_POINT, PlantMap, parse_map
from streams.producer import FramePublisher
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams.test_collect_dcgm import _read_frames

INTERVAL_S = 0.2
TIMEOUT_S = 0.3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ModbusDevice:
    """A pymodbus TCP server on loopback holding fixed registers; stop() and start() again
    on the same port."""

    def __init__(self, holding: dict[int, list[int]], inputs: dict[int, list[int]]) -> None:
        self.port = _free_port()
        self.holding = holding
        self.inputs = inputs
        self.server: ModbusTcpServer | None = None

    def _device(self) -> SimDevice:
        def blocks(regs: dict[int, list[int]]) -> list[SimData]:
            # pymodbus wants every table non-empty: a register far from the mapped ones
            regs = regs or {60_000: [0]}
            return [SimData(a, values=v, datatype=DataType.REGISTERS) for a, v in regs.items()]

        bits = [SimData(60_000, values=False, datatype=DataType.BITS)]
        simdata = (bits, bits, blocks(self.holding), blocks(self.inputs))
        return SimDevice(id=1, simdata=simdata)

    async def start(self) -> None:
        self.server = ModbusTcpServer(self._device(), address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


# CDU: supply 45.2 C (int16 tenths), flow 600 L/min (float32, word-swapped), pump 75.5 %
# (input, uint16 tenths of a percent). float32 600.0 = 0x44160000.
CDU_HOLDING = {100: [452, 0x0000, 0x4416]}
CDU_INPUT = {10: [755]}
# UPS: input 123.4 kW (uint32, 0.1 kW), battery 87 % (input), on battery: 0
UPS_INPUT = {200: [0, 1234], 210: [87, 0]}


def _plant(cdu: ModbusDevice, ups: ModbusDevice) -> PlantMap:
    device = {"host": "127.0.0.1", "poll_interval_s": INTERVAL_S, "timeout_s": TIMEOUT_S}
    return parse_map(
        {
            "device": [
                device | {"name": "cdu01", "port": cdu.port, "point": [
                    {"feeds": "CDU01/supply_temp_c", "address": 100, "type": "int16",
                     "scale": 0.1, "unit": "degC"},
                    {"feeds": "CDU01/flow_kg_s", "address": 101, "type": "float32",
                     "word_order": "little", "unit": "L/min"},
                    {"feeds": "CDU01/pump_speed_frac", "address": 10, "kind": "input",
                     "type": "uint16", "scale": 0.1, "unit": "%"},
                ]},
                device | {"name": "ups01", "port": ups.port, "point": [
                    {"feeds": "UPS01/input_power_w", "address": 200, "kind": "input",
                     "type": "uint32", "scale": 0.1, "unit": "kW"},
                    {"feeds": "UPS01/battery_soc_frac", "address": 210, "kind": "input",
                     "type": "uint16", "unit": "%"},
                    {"feeds": "UPS01/on_battery_bool", "address": 211, "kind": "input",
                     "type": "uint16", "unit": "0/1"},
                ]},
            ]
        }
    )  # fmt: skip


@pytest.fixture
async def devices() -> AsyncIterator[tuple[ModbusDevice, ModbusDevice]]:
    cdu = ModbusDevice(CDU_HOLDING, CDU_INPUT)
    ups = ModbusDevice({}, UPS_INPUT)
    await cdu.start()
    await ups.start()
    try:
        yield cdu, ups
    finally:
        await cdu.stop()
        await ups.stop()


async def _until(cond: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _warnings(caplog: pytest.LogCaptureFixture, device: str, text: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.levelno == logging.WARNING and f"device {device} " in r.message and text in r.message
    )


@pytest.mark.integration
async def test_a_stopped_device_goes_stale_the_other_keeps_publishing_and_it_comes_back(
    broker: Broker,
    topic_prefix: str,
    devices: tuple[ModbusDevice, ModbusDevice],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="streams.collect_modbus")
    cdu, ups = devices
    topics = Topics(topic_prefix)
    await ensure_topics(broker.bootstrap, topics, 8)
    statuses: list[DeviceStatus] = []
    stop = asyncio.Event()
    async with FramePublisher(broker.bootstrap) as pub:

        async def publish(kind: str, unit: str, data: bytes) -> None:
            await pub.send(topics.thermal if kind == "thermal" else topics.power, unit, data)

        task = asyncio.create_task(
            collect_modbus(_plant(cdu, ups), publish, stop, statuses=statuses, max_backoff_s=0.4)
        )
        await _until(lambda: len(statuses) == 2 and all(s.polls["ok"] >= 3 for s in statuses))
        c, u = statuses
        await ups.stop()
        stopped_ms = time.time_ns() // 1_000_000
        cdu_ok_at_stop = c.polls["ok"]
        await _until(lambda: u.up is False and c.polls["ok"] >= cdu_ok_at_stop + 5)
        assert 'twin_modbus_device_up{device="ups01"} 0.0' in render_metrics(statuses).decode()
        assert 'twin_modbus_stale_points{device="ups01"} 3.0' in render_metrics(statuses).decode()
        await ups.start()
        await _until(lambda: u.up is True)
        restarted_ms = time.time_ns() // 1_000_000
        await _until(lambda: u.polls["ok"] >= 2 and not u.stale)
        stop.set()
        await asyncio.wait_for(task, 10)
        await pub.flush()

    assert c.polls["timeout"] + c.polls["connection"] == 0 and not c.stale
    assert u.polls["connection"] + u.polls["timeout"] >= 1
    assert _warnings(caplog, "ups01", "stopped answering") == 1
    assert _warnings(caplog, "ups01", "answers again") == 1
    assert _warnings(caplog, "cdu01", "") == 0

    records = await _read_frames(broker.bootstrap, topics.thermal, c.frames)
    records += await _read_frames(broker.bootstrap, topics.power, u.frames)
    frames: dict[str, list[tuple[int, dict[str, float]]]] = {"CDU01": [], "UPS01": []}
    now_ms = time.time_ns() // 1_000_000
    for rec in records:
        f = decode_points_frame(rec.value, key=rec.key, now_ms=now_ms)  # the worker's checks
        assert rec.topic == (topics.thermal if f.unit == "CDU01" else topics.power)
        values = dict(zip(f.points, f.values.tolist(), strict=True))
        frames[f.unit].append((int(f.ts_ms[0]), values))
    assert len(frames["CDU01"]) == c.frames and len(frames["UPS01"]) == u.frames

    # the CDU went on at its own rate while the UPS did not answer, never stale
    cdu_ts = sorted(ts for ts, _ in frames["CDU01"])
    during = [ts for ts in cdu_ts if stopped_ms <= ts <= restarted_ms]
    assert len(during) >= 5
    assert max(b - a for a, b in itertools.pairwise(cdu_ts)) < 1000
    for _, v in frames["CDU01"]:
        assert v == pytest.approx(
            {
                "supply_temp_c": 45.2,
                "flow_kg_s": 600.0 * 1e-3 / 60.0 * 992.3,  # water at 40 C (twin/fluids.py)
                "pump_speed_frac": 0.755,
                STALE_POINT: 0.0,
            }
        )

    # the UPS: values, then stale_bool alone while it was down, then values again
    good = {"input_power_w": 123_400.0, "battery_soc_frac": 0.87, "on_battery_bool": 0.0}
    ups_frames = sorted(frames["UPS01"], key=lambda f: f[0])
    kinds = []
    for _, v in ups_frames:
        if v == {STALE_POINT: 1.0}:
            kinds.append("stale")
        else:
            assert v == pytest.approx(good | {STALE_POINT: 0.0})
            kinds.append("ok")
    runs = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert runs == ["ok", "stale", "ok"]
    first_stale = next(ts for (ts, _), k in zip(ups_frames, kinds, strict=True) if k == "stale")
    assert first_stale >= stopped_ms


async def test_a_device_that_hangs_times_out_without_holding_up_the_other(
    devices: tuple[ModbusDevice, ModbusDevice],
) -> None:
    cdu, _ = devices
    hung: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        hung.append(w)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dead = ModbusDevice({}, {})
    dead.port = port
    plant = _plant(cdu, dead)
    published: list[tuple[float, str, bytes]] = []

    async def publish(kind: str, unit: str, data: bytes) -> None:
        published.append((time.monotonic(), unit, data))

    stop = asyncio.Event()
    statuses: list[DeviceStatus] = []
    task = asyncio.create_task(
        collect_modbus(plant, publish, stop, statuses=statuses, max_backoff_s=0.4)
    )
    try:
        await _until(
            lambda: (
                len(statuses) == 2
                and statuses[1].polls["timeout"] >= 2
                and statuses[0].polls["ok"] >= 5
            )
        )
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        server.close()
        for w in hung:
            w.close()
    c, u = statuses
    assert u.up is False and u.polls["ok"] == 0 and "no answer within 0.3 s" in u.last_error
    assert c.polls["ok"] >= 5 and c.up is True
    cdu_times = [t for t, unit, _ in published if unit == "CDU01"]
    # the CDU kept its 0.2 s rate while every read of the other waited 0.3 s for nothing
    assert max(b - a for a, b in itertools.pairwise(cdu_times)) < 0.6
    ups_frames = [d for _, unit, d in published if unit == "UPS01"]
    assert ups_frames and all(
        decode_points_frame(d, key=b"UPS01", now_ms=None).points == [STALE_POINT]
        for d in ups_frames
    )


async def test_a_refused_read_makes_its_points_stale_and_the_rest_goes_on(
    devices: tuple[ModbusDevice, ModbusDevice], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="streams.collect_modbus")
    _, ups = devices
    # address 300 does not exist on the UPS: it answers with a Modbus exception
    doc_points = [
        {"feeds": "UPS01/input_power_w", "address": 200, "kind": "input", "type": "uint32",
         "scale": 0.1, "unit": "kW"},
        {"feeds": "UPS01/output_power_w", "address": 300, "kind": "input", "type": "uint32"},
    ]  # fmt: skip
    plant = parse_map(
        {"device": [{"name": "ups01", "host": "127.0.0.1", "port": ups.port,
                     "poll_interval_s": INTERVAL_S, "timeout_s": TIMEOUT_S,
                     "point": doc_points}]}
    )  # fmt: skip
    got: list[dict[str, float]] = []

    async def publish(kind: str, unit: str, data: bytes) -> None:
        f = decode_points_frame(data, key=unit.encode(), now_ms=None)
        got.append(dict(zip(f.points, f.values.tolist(), strict=True)))

    stop = asyncio.Event()
    statuses: list[DeviceStatus] = []
    task = asyncio.create_task(collect_modbus(plant, publish, stop, statuses=statuses))
    await _until(lambda: len(got) >= 3)
    stop.set()
    await asyncio.wait_for(task, 5)
    (u,) = statuses
    assert u.up is True and u.polls["partial"] >= 3 and u.stale == {"UPS01/output_power_w"}
    assert all(g == {"input_power_w": 123_400.0, STALE_POINT: 1.0} for g in got)
    assert _warnings(caplog, "ups01", "UPS01/output_power_w not read") == 1
    assert _warnings(caplog, "ups01", "stopped answering") == 0


ROOT = Path(__file__).resolve().parents[2]


def test_cli_check_prints_the_map_and_a_bad_map_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    example = ROOT / "compose" / "modbus-plant.example.toml"
    assert main(["collect", "modbus", "--map", str(example), "--check"]) == 0
    out = capsys.readouterr().out
    assert "cdu01: 10.20.0.11:502 unit 1, every 5 s, timeout 1 s" in out
    assert "CDU01/flow_kg_s (thermal) <- holding 110 float32" in out
    bad = tmp_path / "plant.toml"
    bad.write_text(example.read_text().replace('type = "float32"', 'type = "float"', 1))
    rc = main(["collect", "modbus", "--map", str(bad), "--broker", "kafka://127.0.0.1:1"])
    assert rc == 2  # the map is an argument: a usage error
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "device[0].point[3].type: 'float' is not one of int16" in lines[0]


async def test_an_unforeseen_poll_error_is_counted_and_publishing_errors_end_the_collector(
    devices: tuple[ModbusDevice, ModbusDevice], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.collect_modbus import ModbusDevicePoller
    from twin.errors import TwinError

    cdu, ups = devices
    real = ModbusDevicePoller._poll_once
    calls = {"n": 0}

    async def flaky(self: ModbusDevicePoller) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return await real(self)

    monkeypatch.setattr(ModbusDevicePoller, "_poll_once", flaky)
    stop = asyncio.Event()
    statuses: list[DeviceStatus] = []
    sent: list[str] = []

    async def publish(kind: str, unit: str, data: bytes) -> None:
        sent.append(unit)
        if len(sent) >= 6:
            raise RuntimeError("broker gone")

    started = time.monotonic()
    with pytest.raises(
        TwinError, match=r"modbus-\w+: publishing failed: RuntimeError: broker gone"
    ):
        await asyncio.wait_for(
            collect_modbus(_plant(cdu, ups), publish, stop, statuses=statuses), 10
        )
    assert time.monotonic() - started < 5 and not stop.is_set()
    assert sum(s.polls["error"] for s in statuses) == 1
    assert sum(s.polls["ok"] for s in statuses) >= 2


@pytest.mark.integration
async def test_the_command_publishes_serves_metrics_and_reports_a_dead_device(
    broker: Broker, topic_prefix: str, devices: tuple[ModbusDevice, ModbusDevice], tmp_path: Path
) -> None:
    if broker.kind != "tansu":
        pytest.skip("the command's wiring is broker-neutral: one leg is enough")
    cdu, _ = devices
    dead = _free_port()  # nothing listens there
    plant = tmp_path / "plant.toml"
    plant.write_text(
        "[defaults]\npoll_interval_s = 0.2\n"
        + f'[[device]]\nname = "cdu01"\nhost = "127.0.0.1"\nport = {cdu.port}\n'
        + '[[device.point]]\nfeeds = "CDU01/supply_temp_c"\naddress = 100\ntype = "int16"\n'
        + "scale = 0.1\n"
        + f'[[device]]\nname = "ups01"\nhost = "127.0.0.1"\nport = {dead}\n'
        + '[[device.point]]\nfeeds = "UPS01/battery_soc_frac"\naddress = 210\n'
        + 'kind = "input"\ntype = "uint16"\nunit = "%"\n'
    )
    metrics_port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams", "collect", "modbus", "--map", str(plant),
        "--broker", broker.url, "--topic-prefix", topic_prefix, "--duration", "60",
        "--metrics-port", str(metrics_port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    metrics = ""
    deadline = time.monotonic() + 30
    ups_down = 'twin_modbus_device_up{device="ups01"} 0.0'
    cdu_ok = re.compile(r'twin_modbus_polls_total\{device="cdu01",result="ok"\} ([0-9.]+)')

    def cdu_polls() -> float:
        m = cdu_ok.search(metrics)
        return float(m.group(1)) if m else 0.0

    while not (cdu_polls() >= 3 and ups_down in metrics):
        assert time.monotonic() < deadline, f"/metrics never showed both devices: {metrics}"
        await asyncio.sleep(0.3)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
        except OSError:
            continue
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        metrics = (await reader.read()).decode()
        writer.close()
    proc.terminate()  # SIGTERM: a clean stop, producer flushed
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    warnings = [line for line in err.decode().splitlines() if "stopped answering" in line]
    assert len(warnings) == 1 and "ups01" in warnings[0]
    topics = Topics(topic_prefix)
    thermal = await _read_frames(broker.bootstrap, topics.thermal, 3)
    power = await _read_frames(broker.bootstrap, topics.power, 1)
    now_ms = time.time_ns() // 1_000_000
    cdu_frame = decode_points_frame(thermal[0].value, key=b"CDU01", now_ms=now_ms)
    assert dict(zip(cdu_frame.points, cdu_frame.values.tolist(), strict=True)) == {
        "supply_temp_c": pytest.approx(45.2),
        STALE_POINT: 0.0,
    }
    ups_frame = decode_points_frame(power[0].value, key=b"UPS01", now_ms=now_ms)
    assert ups_frame.points == [STALE_POINT] and ups_frame.values.tolist() == [1.0]
