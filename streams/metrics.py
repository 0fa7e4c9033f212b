"""Prometheus exposition of the twin: per-rack power and temperatures, pipeline counters.

Built at scrape time from the runtime with prometheus_client's collector API, in a registry
of our own (no process-global registry), so two workers in one test process do not collide.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.background import BackgroundHealth
from streams.runtime import TwinRuntime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _TwinCollector(Collector):
    def __init__(self, runtime: TwinRuntime, lag: Mapping[tuple[str, int], int]) -> None:
        self.rt = runtime
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        racks = rt.rack_summaries()
        gauges = {
            "power_w": ("twin_rack_power_watts", "Sum of GPU board power of the rack [W]."),
            "temp_gpu_max_c": ("twin_rack_gpu_temp_max_celsius", "Hottest GPU die [C]."),
            "temp_gpu_mean_c": ("twin_rack_gpu_temp_mean_celsius", "Mean GPU die temp [C]."),
            "temp_mem_max_c": ("twin_rack_mem_temp_max_celsius", "Hottest HBM [C]."),
            "throttled_gpus": (
                "twin_rack_throttled_gpus",
                "GPUs in thermal or hardware slowdown (clock-event bits 0x8|0x20|0x40|0x80); "
                "power capping is twin_rack_power_capped_gpus.",
            ),
            "power_capped_gpus": (
                "twin_rack_power_capped_gpus",
                "GPUs held at their power limit (SwPowerCap 0x4): normal under a cap.",
            ),
            "thermal_slowdown_gpus": (
                "twin_rack_thermal_slowdown_gpus",
                "GPUs in thermal slowdown (SW 0x20 or HW 0x40).",
            ),
            "hw_slowdown_gpus": (
                "twin_rack_hw_slowdown_gpus",
                "GPUs in hardware slowdown or power brake (0x8 or 0x80).",
            ),
            "xid_gpus": ("twin_rack_xid_gpus", "GPUs whose last XID is not 0."),
            "ecc_uncorrected_gpus": (
                "twin_rack_ecc_uncorrected_gpus",
                "GPUs with uncorrected (volatile) ECC errors.",
            ),
            "thermal_margin_min_k": (
                "twin_rack_thermal_margin_min_kelvin",
                "Smallest margin of a GPU die to its slowdown temperature [K].",
            ),
        }
        for key, (name, doc) in gauges.items():
            g = GaugeMetricFamily(name, doc, labels=["rack"])
            for rack, s in racks.items():
                if key in s:
                    g.add_metric([rack], float(s[key]))
            yield g
        fac = rt.facility()["facility"]
        for key, name, doc in (
            ("it_power_w", "twin_it_power_watts", "IT power of the facility [W]."),
            ("facility_power_w", "twin_facility_power_watts", "Metered facility power [W]."),
            ("pue", "twin_pue", "Power usage effectiveness (facility / IT power)."),
        ):
            if fac.get(key) is not None:
                yield GaugeMetricFamily(name, doc, value=float(fac[key]))
        units = GaugeMetricFamily(
            "twin_plant_point",
            "Latest plant point reading, in the unit of its name suffix.",
            labels=["unit", "point"],
        )
        for unit, points in rt.unit_values().items():
            for point, value in points.items():
                units.add_metric([unit, point], value)
        yield units
        frames = CounterMetricFamily(
            "twin_frames_in", "Telemetry frames accepted.", labels=["topic"]
        )
        for topic, n in rt.counters.frames_in.items():
            frames.add_metric([topic], n)
        yield frames
        yield CounterMetricFamily(
            "twin_gpu_samples_in",
            "GPU samples accepted (rows of GPU frames).",
            value=rt.counters.samples_in,
        )
        dlq = CounterMetricFamily(
            "twin_frames_dlq",
            "Messages sent to the dead-letter topic, by reason code (streams/schema.py DlqReason).",
            labels=["reason"],
        )
        for reason, n in rt.counters.dlq.items():
            dlq.add_metric([reason], n)
        yield dlq
        yield CounterMetricFamily(
            "twin_checkpoints",
            "Rack and unit checkpoints written to Faust tables.",
            value=rt.counters.checkpoints,
        )
        lag = GaugeMetricFamily(
            "twin_consumer_lag_messages",
            "Messages behind the partition's end.",
            labels=["topic", "partition"],
        )
        for (topic, part), n in sorted(self.lag.items()):
            lag.add_metric([topic, str(part)], n)
        yield lag
        yield GaugeMetricFamily(
            "twin_latency_seconds",
            "Receive time minus sample time of the last GPU frame [s].",
            value=rt.last_latency_ms / 1000.0,
        )
        yield from background_metrics(rt.counters.background)


def background_metrics(health: BackgroundHealth) -> Iterator[Metric]:
    """Failures and degraded state of each background task (labels: the task names, fixed
    by the worker's code, so a bounded set)."""
    failures = CounterMetricFamily(
        "twin_background_failures",
        "Failed runs of a background timer or task (caught, logged, retried).",
        labels=["task"],
    )
    degraded = GaugeMetricFamily(
        "twin_background_degraded",
        "1 while the task's last run failed or it failed within its last few intervals.",
        labels=["task"],
    )
    now_degraded = health.degraded()
    for name, t in sorted(health.tasks.items()):
        failures.add_metric([name], t.failures)
        degraded.add_metric([name], 1.0 if name in now_degraded else 0.0)
    yield failures
    yield degraded


def render_metrics(
    runtime: TwinRuntime, lag: Mapping[tuple[str, int], int], extra: Iterable[Collector] = ()
) -> bytes:
    """Prometheus text format (version 0.0.4) of the runtime's state (and of ``extra``
    collectors: the alerts')."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_TwinCollector(runtime, lag))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)
