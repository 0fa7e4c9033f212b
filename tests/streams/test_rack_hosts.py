"""One rack, many hosts: each host's collector publishes its own GPUs under the rack key with
its --gpu-offset, and the twin merges them into one rack state (an NVL144 rack: 18 compute
trays of 4 GPUs)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from streams.brokers import Broker
from streams.cli import main as twin_main
from streams.codec import decode_gpu_frame, encode_frame
from streams.collect_nvml import GpuReading, frame_from_readings
from streams.producer import FramePublisher
from streams.settings import Topics
from streams.state import RackState
from streams.topics_admin import ensure_topics
from tests.streams.apishape import gpu_columns_of
from tests.streams.test_collect_dcgm import Exporter
from tests.streams.workerproc import WorkerProcess

HOSTS, PER_HOST = 18, 4
GPUS = HOSTS * PER_HOST


def _host_readings(host: int, bump: float = 0.0) -> list[GpuReading]:
    """Readings of one tray whose values name the GPU (rack index g = 4 x host + i)."""
    out = []
    for i in range(PER_HOST):
        g = host * PER_HOST + i
        out.append(
            GpuReading(
                power_mw=int((300_000 + 1000 * g) + bump * 1000),
                energy_mj=10_000_000 + g,
                temp_gpu_c=30.0 + g / 4,
                temp_mem_c=40.0 + g / 4,
                sm_clock_mhz=1000 + g,
                util_pct=float(g % 100),
                clock_event_reasons=4 if g % 7 == 0 else 0,
                xid=79 if g == 33 else 0,
                power_limit_mw=1_800_000,
                ecc_corrected=g,
            )
        )
    return out


def _host_frame(host: int, ts_ms: int, bump: float = 0.0) -> bytes:
    batch = frame_from_readings("R0001", ts_ms, _host_readings(host, bump), host * PER_HOST)
    return encode_frame(batch)


def _check_rack(state: RackState) -> None:
    detail = state.detail()
    g = np.arange(GPUS)
    assert detail["gpu"] == g.tolist()
    np.testing.assert_allclose(detail["power_w"], 300.0 + g, rtol=1e-6)
    assert detail["sm_clock_mhz"] == (1000 + g).tolist()
    assert detail["ecc_corrected"] == g.tolist()
    assert detail["energy_mj"] == (10_000_000 + g).tolist()
    assert state.summary()["gpus"] == GPUS
    assert state.summary()["xid_gpus"] == 1


def test_rack_state_merges_18_hosts_of_4_gpus_without_overwriting() -> None:
    t = 1_780_000_000_000
    rng = np.random.default_rng(7)
    state = RackState("R0001")
    # hosts report in any order, each a little apart in time
    for host in rng.permutation(HOSTS):
        frame = decode_gpu_frame(_host_frame(int(host), t + int(host)), key=b"R0001", now_ms=None)
        assert_array_equal(frame.gpu, np.arange(PER_HOST) + PER_HOST * host)
        assert state.apply(frame) == PER_HOST
        assert state.whole_frame is None or state.present.sum() == PER_HOST
    _check_rack(state)
    # the checkpoint of a rack built from partial frames holds all 72 GPUs
    restored = RackState.from_bytes("R0001", state.to_bytes())
    _check_rack(restored)
    assert_array_equal(restored.ts_ms, state.ts_ms)


def test_a_late_frame_of_one_host_changes_only_its_own_gpus() -> None:
    t = 1_780_000_000_000
    state = RackState("R0001")
    for host in range(HOSTS):
        state.apply(decode_gpu_frame(_host_frame(host, t), key=b"R0001", now_ms=None))
    # host 5 sends a newer frame; host 6 an older one (delayed in flight): only the newer counts
    state.apply(decode_gpu_frame(_host_frame(5, t + 1000, bump=50.0), key=b"R0001", now_ms=None))
    assert (
        state.apply(
            decode_gpu_frame(_host_frame(6, t - 1000, bump=99.0), key=b"R0001", now_ms=None)
        )
        == 0
    )
    power = np.array(state.detail()["power_w"])
    expected = 300.0 + np.arange(GPUS)
    expected[20:24] += 50.0
    np.testing.assert_allclose(power, expected, rtol=1e-6)
    assert state.ts_ms[20:24].tolist() == [t + 1000] * 4
    assert (np.delete(state.ts_ms, np.s_[20:24]) == t).all()


def test_gpu_offset_flags_and_their_environment_fallback() -> None:
    from streams.cli import parse_args

    args = parse_args(["collect", "nvml", "--gpu-offset", "68"], {})
    assert args.gpu_offset == 68
    args = parse_args(["collect", "dcgm", "--rack", "R0002"], {})
    assert args.gpu_offset == 0 and args.url == "http://127.0.0.1:9400/metrics"
    env = {"TWIN_GPU_OFFSET": "12"}
    assert parse_args(["collect", "nvml"], env).gpu_offset == 12
    assert parse_args(["collect", "dcgm"], env).gpu_offset == 12
    with pytest.raises(SystemExit) as exc:
        parse_args(["collect", "dcgm", "--gpu-offset", "-4"], {})
    assert exc.value.code == 2


def test_collect_dcgm_refuses_a_url_that_is_not_http(capsys: pytest.CaptureFixture[str]) -> None:
    rc = twin_main(
        ["collect", "dcgm", "--broker", "kafka://127.0.0.1:1", "--url", "node:9400/metrics"]
    )
    assert rc == 2  # a wrong argument: a usage error
    assert "--url must be http(s)://" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.slow
async def test_worker_shows_72_gpus_from_17_nvml_hosts_and_a_dcgm_host(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    """17 trays publish like `twin collect nvml --gpu-offset 4n`; the 18th is `twin collect
    dcgm --gpu-offset 68` (a real subprocess) scraping a dcgm-exporter page on loopback."""
    topics = Topics(topic_prefix)
    await ensure_topics(broker.bootstrap, topics, 8)
    worker = WorkerProcess(broker.url, topic_prefix, tmp_path)
    exporter = Exporter()
    await exporter.start()
    collector: asyncio.subprocess.Process | None = None
    try:
        await asyncio.to_thread(worker.wait_healthy)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
        collector = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams", "collect", "dcgm", "--broker", broker.url,
            "--url", exporter.url, "--rack", "R0001", "--gpu-offset", "68",
            "--interval", "0.5", "--topic-prefix", topic_prefix, "--duration", "60",
            env=env, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        now = time.time_ns() // 1_000_000
        async with FramePublisher(broker.bootstrap) as pub:
            for host in range(HOSTS - 1):
                await pub.send(topics.gpu, "R0001", _host_frame(host, now))
            await pub.flush()

        def rack_complete() -> dict[str, Any] | None:
            status, got = worker.get_json("/api/racks/R0001?precision=full")
            return got if status == 200 and len(got["gpus"]) == GPUS else None

        await asyncio.to_thread(
            worker.wait_for, lambda _doc: rack_complete(), 60.0, "72 GPUs in R0001"
        )
        got = rack_complete()
        assert got is not None
        gpus = gpu_columns_of(got["gpus"])
        assert gpus["gpu"] == list(range(GPUS))
        g = np.arange(68)
        np.testing.assert_allclose(gpus["power_w"][:68], 300.0 + g, rtol=1e-6)
        assert gpus["ecc_corrected"][:68] == g.tolist()
        # the dcgm host's four GPUs, from the exporter page (tests/streams/data)
        np.testing.assert_allclose(
            gpus["power_w"][68:], [612.405, 698.12, 402.977, 455.5], rtol=1e-6
        )
        assert gpus["xid"][68:] == [0, 0, 0, 48]
        assert gpus["ecc_corrected"][68:] == [0, 0, 17, 4]
    finally:
        if collector is not None and collector.returncode is None:
            collector.terminate()
            _, err = await asyncio.wait_for(collector.communicate(), 30)
            assert collector.returncode == 0, err.decode()
        await exporter.stop()
        worker.stop()
