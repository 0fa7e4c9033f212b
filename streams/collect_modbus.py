"""Poll CDUs, meters and UPSes over Modbus TCP into telemetry.thermal / telemetry.power.

``twin collect modbus --map plant.toml`` reads a validated map (streams/modbus_map.py) and
polls each device on its own asyncio task, every ``poll_interval_s``, through pymodbus'
``AsyncModbusTcpClient``. A poll reads the device's registers in as few requests as the map
allows (adjacent registers together), converts every point to the twin's SI unit and
publishes one telemetry.thermal or telemetry.power frame per twin unit, checked by the
worker's own decoder (streams/codec.py) before it is sent.

A device that does not answer within ``timeout_s`` (or refuses the connection, or answers
garbage) never holds up the others: its task alone waits. Its points become stale: each of
its units gets ``stale_bool`` = 1 in a frame of its own (the last good values stay in the
twin, with their older timestamps), the ``twin_modbus_*`` metrics say so, and one warning is
logged when a device stops answering and one when it answers again. It is reconnected with
a backoff that doubles from the poll interval up to ``max_backoff_s``. A point whose read
the device refuses (a Modbus exception) or whose value is not finite or outside the
decoder's range is stale too, while the device's other points go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.codec import DEFAULT_LIMITS, Limits, decode_points_frame, encode_frame, points_batch
from streams.modbus_map import STALE_POINT, Device, MapPoint, PlantMap, ReadBlock, block_values
from streams.modbus_map import read_blocks as plan_reads
from twin.errors import DecodeError, TwinError

log = logging.getLogger(__name__)

#: Poll outcomes: the fixed set of ``twin_modbus_polls_total`` ``result`` labels.
POLL_RESULTS: Final = (
    "ok",  # every block read
    "partial",  # the device answered, but refused some reads or gave invalid values
    "timeout",  # no answer within timeout_s
    "connection",  # refused, reset, closed: no Modbus answer at all
    "error",  # an exception no rule foresaw (its type is logged); treated as no answer
)

#: Longest wait between reconnection attempts to a device that does not answer [s].
DEFAULT_MAX_BACKOFF_S: Final = 60.0

Publish = Callable[[str, str, bytes], Awaitable[None]]
"""publish(topic kind "thermal" | "power", unit id, Arrow IPC bytes)."""


class PollError(Exception):
    """A poll that read nothing; ``cause`` is "timeout" or "connection"."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail


@dataclass
class DeviceStatus:
    """What is known of one device; read by the metrics and the tests."""

    device: Device
    up: bool | None = None  # None until the first poll
    polls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POLL_RESULTS, 0))
    stale: set[str] = field(default_factory=set)  # unit/point keys not read at the last poll
    last_ok_s: float = 0.0  # wall-clock time of the last poll that read a value [s]
    frames: int = 0  # frames published
    last_error: str = ""


class StaleBoard:
    """Stale points of every device, so a unit fed by two devices is stale when either's
    points are."""

    def __init__(self, statuses: list[DeviceStatus]) -> None:
        self.statuses = statuses

    def unit_stale(self, unit: str) -> bool:
        """True when any point of ``unit`` was not read at its device's last poll."""
        prefix = unit + "/"
        return any(k.startswith(prefix) for s in self.statuses for k in s.stale)


class ModbusDevicePoller:
    """Reads one device's points; one TCP connection, reopened after any failure."""

    def __init__(self, device: Device, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.device = device
        self.limits = limits
        self.blocks: list[ReadBlock] = plan_reads(device.points)
        self._client: Any = None

    async def close(self) -> None:
        """Drop the connection (the next poll opens a new one)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _connect(self) -> Any:
        from pymodbus.client import AsyncModbusTcpClient

        if self._client is not None and self._client.connected:
            return self._client
        await self.close()
        d = self.device
        # reconnect_delay=0: no reconnection of pymodbus' own; the poll loop's backoff
        # decides. retries=0: a lost answer is a failed poll, reported, not a silent retry.
        client = AsyncModbusTcpClient(
            d.host, port=d.port, timeout=d.timeout_s, retries=0, reconnect_delay=0
        )
        self._client = client
        if not await client.connect():
            raise PollError("connection", f"cannot connect to {d.host}:{d.port}")
        return client

    async def poll(self) -> tuple[dict[MapPoint, float], dict[MapPoint, str]]:
        """(SI value of each point read, why each other point was not read).

        PollError when the device did not answer at all; the whole poll is bounded by
        ``timeout_s`` per request.
        """
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        d = self.device
        budget_s = d.timeout_s * (len(self.blocks) + 1)
        try:
            return await asyncio.wait_for(self._poll_once(), timeout=budget_s)
        except TimeoutError:
            await self.close()
            raise PollError("timeout", f"no answer within {d.timeout_s:g} s") from None
        except ModbusIOException as exc:
            await self.close()
            text = str(exc).strip() or type(exc).__name__
            # pymodbus says "No response received ..." when a request times out
            if "no response" in text.lower() or "timeout" in text.lower():
                raise PollError("timeout", f"no answer within {d.timeout_s:g} s") from None
            raise PollError("connection", text) from None
        except (ConnectionException, OSError) as exc:
            await self.close()
            raise PollError("connection", str(exc).strip() or type(exc).__name__) from None

    async def _poll_once(self) -> tuple[dict[MapPoint, float], dict[MapPoint, str]]:
        client = await self._connect()
        values: dict[MapPoint, float] = {}
        failed: dict[MapPoint, str] = {}
        for block in self.blocks:
            read = (
                client.read_holding_registers
                if block.kind == "holding"
                else client.read_input_registers
            )
            rr = await read(block.address, count=block.size, device_id=self.device.unit_id)
            if rr.isError():
                # the device answered with a Modbus exception (illegal address...): its
                # other blocks may still be fine
                for p in block.points:
                    failed[p] = f"Modbus exception {getattr(rr, 'exception_code', '?')}"
                continue
            try:
                got = block_values(block, list(rr.registers))
            except ValueError as exc:
                for p in block.points:
                    failed[p] = str(exc)
                continue
            for p, v in got.items():
                if np.isfinite(v):
                    values[p] = v
                else:
                    failed[p] = f"not finite ({v})"
        return values, failed


def checked_frames(
    values: dict[MapPoint, float],
    failed: dict[MapPoint, str],
    ts_ms: int,
    unit_stale: Callable[[str], bool],
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[list[tuple[str, str, bytes]], dict[MapPoint, str]]:
    """(topic kind, unit, frame) per unit of the poll, and the points left out.

    Each frame holds the unit's values read plus ``stale_bool`` and passes
    ``decode_points_frame`` (the worker's checks). A point the decoder refuses (out of
    range) is left out and returned with the reason; a unit with no point read still gets
    a frame holding ``stale_bool`` alone.
    """
    left_out = dict(failed)
    by_unit: dict[str, tuple[str, dict[str, float]]] = {}
    for p in [*values, *failed]:
        by_unit.setdefault(p.unit, (p.topic, {}))
    for p, v in values.items():
        by_unit[p.unit][1][p.point] = v
    frames = []
    for unit, (topic, points) in by_unit.items():
        ok = _decodable(unit, points, ts_ms, limits)
        for name in points.keys() - ok.keys():
            bad = next(p for p in values if p.unit == unit and p.point == name)
            left_out[bad] = _refusal(unit, {name: points[name]}, ts_ms, limits)
        stale = any(p.unit == unit for p in left_out) or unit_stale(unit)
        ok[STALE_POINT] = 1.0 if stale else 0.0
        data = encode_frame(points_batch(ts_ms, unit, ok))
        decode_points_frame(data, key=unit.encode(), now_ms=ts_ms, limits=limits)
        frames.append((topic, unit, data))
    return frames, left_out


def _refusal(unit: str, points: dict[str, float], ts_ms: int, limits: Limits) -> str:
    """Why the worker's decoder refuses a frame of these points; "" when it accepts it."""
    try:
        data = encode_frame(points_batch(ts_ms, unit, points))
        decode_points_frame(data, key=unit.encode(), now_ms=ts_ms, limits=limits)
    except DecodeError as exc:
        return f"{exc.code}: {exc.reason}"
    return ""


def _decodable(unit: str, points: dict[str, float], ts_ms: int, limits: Limits) -> dict[str, float]:
    """The points the decoder accepts: all of them (one decode) in the usual case, else
    each one tried alone."""
    if not points or not _refusal(unit, points, ts_ms, limits):
        return dict(points)
    return {k: v for k, v in points.items() if not _refusal(unit, {k: v}, ts_ms, limits)}


class DeviceLoop:
    """Polls one device every interval until ``stop``; never raises out of a poll."""

    def __init__(
        self,
        device: Device,
        status: DeviceStatus,
        board: StaleBoard,
        publish: Publish,
        *,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device = device
        self.status = status
        self.board = board
        self.publish = publish
        self.max_backoff_s = max(max_backoff_s, device.poll_interval_s)
        self.limits = limits
        self.clock = clock
        self.poller = ModbusDevicePoller(device, limits=limits)
        self._failures = 0  # consecutive polls that read nothing

    def _name(self) -> str:
        d = self.device
        return f"Modbus device {d.name} ({d.host}:{d.port} unit {d.unit_id})"

    async def run(self, stop: asyncio.Event) -> None:
        """Poll at a fixed rate (backing off while the device does not answer)."""
        loop = asyncio.get_running_loop()
        next_s = loop.time()
        try:
            while not stop.is_set():
                await self.poll_once()
                wait_s = self.device.poll_interval_s
                if self._failures:
                    wait_s = min(wait_s * 2 ** (self._failures - 1), self.max_backoff_s)
                next_s = max(next_s + wait_s, loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=next_s - loop.time())
        finally:
            await self.poller.close()

    async def poll_once(self) -> None:
        """One poll: publish what was read, mark the rest stale, log a change of state."""
        st = self.status
        was_up = st.up
        try:
            values, failed = await self.poller.poll()
        except Exception as exc:  # a device's garbage must not end the collector
            if not isinstance(exc, PollError):
                await self.poller.close()
                exc = PollError("error", f"{type(exc).__name__}: {exc}")
            await self._down(exc, was_up)
            return
        self._failures = 0
        if was_up is False:
            log.warning("%s answers again", self._name())
        st.up = True
        st.last_ok_s = self.clock()
        # after the first poll or an outage every point not read is news
        await self._send(values, failed, log_against=st.stale if was_up else set())

    async def _down(self, exc: PollError, was_up: bool | None) -> None:
        st = self.status
        self._failures += 1
        st.polls[exc.cause] += 1
        st.last_error = exc.detail
        if was_up is not False:
            log.warning(
                "%s stopped answering (%s); its %d point(s) are stale, reconnecting "
                "with backoff up to %g s",
                self._name(),
                exc.detail,
                len(self.device.points),
                self.max_backoff_s,
            )
        st.up = False
        await self._send({}, dict.fromkeys(self.device.points, exc.cause), log_against=None)

    async def _send(
        self,
        values: dict[MapPoint, float],
        failed: dict[MapPoint, str],
        *,
        log_against: set[str] | None,
    ) -> None:
        """Publish a poll's frames; with ``log_against`` (the points stale before), log
        each point that became stale or was read again."""
        st = self.status
        ts_ms = round(self.clock() * 1000)
        # set before the frames are built, so that stale_bool counts this poll's failures
        st.stale = {p.key for p in failed}
        frames, left_out = checked_frames(values, failed, ts_ms, self.board.unit_stale, self.limits)
        st.stale = {p.key for p in left_out}
        if st.up:
            st.polls["partial" if left_out else "ok"] += 1
        if log_against is not None:
            for p, why in left_out.items():
                if p.key not in log_against:
                    log.warning("%s: %s not read (%s); stale", self._name(), p.key, why)
            for key in sorted(log_against - st.stale):
                log.warning("%s: %s read again", self._name(), key)
        for topic, unit, data in frames:
            await self.publish(topic, unit, data)
            st.frames += 1


async def collect_modbus(
    plant: PlantMap,
    publish: Publish,
    stop: asyncio.Event,
    *,
    statuses: list[DeviceStatus] | None = None,
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    limits: Limits = DEFAULT_LIMITS,
) -> list[DeviceStatus]:
    """Poll every device of ``plant`` on its own task until ``stop``; the devices' status.

    ``statuses``, when given, is filled in place (one per device, map order) so that the
    caller (the metrics endpoint, a test) sees it while the collector runs.
    """
    out = statuses if statuses is not None else []
    out[:] = [DeviceStatus(d) for d in plant.devices]
    board = StaleBoard(out)
    loops = [
        DeviceLoop(d, s, board, publish, max_backoff_s=max_backoff_s, limits=limits)
        for d, s in zip(plant.devices, out, strict=True)
    ]
    tasks = [asyncio.create_task(lp.run(stop), name=f"modbus-{lp.device.name}") for lp in loops]
    stopped = asyncio.create_task(stop.wait())
    try:
        # a device task ends early only when publishing failed: stop everything then
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in [stopped, *tasks]:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for t, r in zip(tasks, results, strict=True):
        if isinstance(r, Exception):
            raise TwinError(f"{t.get_name()}: publishing failed: {type(r).__name__}: {r}") from r
    return out


class _ModbusMetrics(Collector):
    def __init__(self, statuses: list[DeviceStatus]) -> None:
        self.statuses = statuses

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "twin_modbus_device_up",
            "1 when the device answered its last poll, 0 when it did not (absent before one).",
            labels=["device"],
        )
        polls = CounterMetricFamily(
            "twin_modbus_polls", "Polls of a device by result.", labels=["device", "result"]
        )
        stale = GaugeMetricFamily(
            "twin_modbus_stale_points",
            "Points of the device not read at its last poll (stale in the twin).",
            labels=["device"],
        )
        last = GaugeMetricFamily(
            "twin_modbus_last_ok_timestamp_seconds",
            "When the device last answered a poll [s since epoch]; 0 = never.",
            labels=["device"],
        )
        frames = CounterMetricFamily(
            "twin_modbus_frames", "Frames published from the device's polls.", labels=["device"]
        )
        for s in self.statuses:
            name = s.device.name
            if s.up is not None:
                up.add_metric([name], 1.0 if s.up else 0.0)
            for result, n in s.polls.items():
                polls.add_metric([name, result], n)
            stale.add_metric([name], len(s.stale))
            last.add_metric([name], s.last_ok_s)
            frames.add_metric([name], s.frames)
        yield from (up, polls, stale, last, frames)


def render_metrics(statuses: list[DeviceStatus]) -> bytes:
    """The Prometheus text of the devices' status (``/metrics``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ModbusMetrics(statuses))
    return generate_latest(registry)


async def serve_metrics(statuses: list[DeviceStatus], host: str, port: int) -> Any:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port``; returns the aiohttp runner.

    ``/healthz`` is 200 while at least one device answers (or none was polled yet), 503
    when none does.
    """
    from aiohttp import web

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=render_metrics(statuses),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def healthz(_: web.Request) -> web.Response:
        down = [s.device.name for s in statuses if s.up is False]
        ok = len(down) < len(statuses) or not statuses
        return web.json_response({"ok": ok, "down": down}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
