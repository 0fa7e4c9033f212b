"""The worker's in-process twin: rack and unit state, counters, what to checkpoint and publish.

No Faust here: the agents in streams/agents.py feed it decoded frames and ask it what changed;
tests drive it directly with a fake clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from aiokafka.partitioner import murmur2

from streams.background import BackgroundHealth
from streams.codec import GpuFrame, PointsFrame
from streams.frame_merge import merge_host_frames
from streams.modelpool import RackModels
from streams.rackmodel import RackModel, coolant_at_plates_c
from streams.schema import DLQ_REASONS, KPI_SCHEMA, TS_TYPE, DlqReason
from streams.state import RackState, UnitState, facility_summary
from twin.coolant_ref import plate_coolant_rise_step

log = logging.getLogger(__name__)

#: Design coolant flow of a Vera Rubin rack [kg/s]: 1.5 L/min/kW x 200 kW of PG25 at
#: 1004 kg/m3 (docs/sources.md S8); workers pass the site's own value.
DEFAULT_RACK_DESIGN_FLOW_KG_S = 5.02
#: Technology-cooling supply setpoint [C] (twin/sites/borlange.toml ``[tcs] supply_temp_c``):
#: the modelled coolant of racks without manifold sensors starts from it.
DEFAULT_COOLANT_SUPPLY_C = 45.0


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a key (murmur2, as the Java client)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def by_partition(keys: Iterable[str], partition_of: Callable[[str], int]) -> list[list[str]]:
    """The keys grouped by partition, each group sorted; its first key is the message key of
    the group's one message (so that the message lands in that partition).

    At the campus a publication of per-rack rows is then 8 messages instead of 1,250; each
    message costs the producer far more than its bytes do.
    """
    groups: dict[int, list[str]] = {}
    for key in sorted(keys):
        groups.setdefault(partition_of(key), []).append(key)
    return list(groups.values())


def merge_by_partition(
    batches: dict[str, pa.RecordBatch], partition_of: Callable[[str], int]
) -> dict[str, pa.RecordBatch]:
    """One batch per partition (:func:`by_partition`): the batches of its keys, concatenated."""
    out: dict[str, pa.RecordBatch] = {}
    for keys in by_partition(batches, partition_of):
        parts = [batches[k] for k in keys]
        out[keys[0]] = (
            parts[0]
            if len(parts) == 1
            else pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
        )
    return out


def wall_clock_ms() -> int:
    """Now [ms since epoch, UTC]."""
    return time.time_ns() // 1_000_000


@dataclass
class Counters:
    """Pipeline counters exposed on /metrics."""

    frames_in: dict[str, int] = field(default_factory=dict)  # per topic
    samples_in: int = 0  # GPU samples (rows of telemetry.gpu frames)
    dlq: dict[str, int] = field(default_factory=dict)  # per reason code (DlqReason)
    checkpoints: int = 0
    #: table checkpoints that could not be restored (corrupt or of another layout)
    bad_checkpoints: int = 0
    #: failures of timers and tasks by task name (streams/background.py)
    background: BackgroundHealth = field(default_factory=BackgroundHealth)

    def frame(self, topic: str, n: int = 1) -> None:
        """Count ``n`` accepted frames."""
        self.frames_in[topic] = self.frames_in.get(topic, 0) + n

    def dead_letter(self, code: str) -> None:
        """Count one message sent to the DLQ by its reason code (a bounded label set)."""
        code = code if code in DLQ_REASONS else DlqReason.INVALID.value
        self.dlq[code] = self.dlq.get(code, 0) + 1


@dataclass
class TwinRuntime:
    """State of the racks and units this worker owns, plus the last view of the others."""

    partitions: int
    clock_ms: Callable[[], int] = wall_clock_ms
    rack_design_flow_kg_s: float = DEFAULT_RACK_DESIGN_FLOW_KG_S
    coolant_supply_c: float = DEFAULT_COOLANT_SUPPLY_C
    #: Largest gap [s] between a GPU sample and the manifold reading it is fitted against.
    coolant_max_skew_s: float = 30.0
    #: rack -> (sample time [ms], modelled outlet-over-inlet rise [K]) for racks without
    #: manifold sensors (twin/coolant_ref.py)
    coolant_rise_k: dict[str, tuple[int, float]] = field(default_factory=dict)
    models: RackModels = field(default_factory=RackModels)
    dirty_models: set[str] = field(default_factory=set)
    dirty_residuals: set[str] = field(default_factory=set)
    detail_published: set[str] = field(default_factory=set)
    #: The facility model's latest view (KPIs, headroom, expected points) when this worker
    #: runs it (streams/facility.py).
    model_view: dict[str, Any] | None = None
    racks: dict[str, RackState] = field(default_factory=dict)
    units: dict[str, UnitState] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    #: entity -> latest twin.state document from any worker (racks this worker does not own).
    view: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirty_checkpoint_racks: set[str] = field(default_factory=set)
    dirty_checkpoint_units: set[str] = field(default_factory=set)
    dirty_publish: set[str] = field(default_factory=set)
    #: (topic, partition) -> next offset to process, for consumer lag.
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    #: receive time - sample time of the last frames [ms], for latency figures.
    last_latency_ms: float = 0.0
    #: When the worker last took a telemetry message [ms since epoch]; -1 = not yet.
    last_progress_ms: int = -1
    started_ms: int = -1

    def __post_init__(self) -> None:
        if self.started_ms < 0:
            self.started_ms = self.clock_ms()

    # --- updates -------------------------------------------------------------------------
    def apply_gpu(self, frame: GpuFrame, topic: str) -> None:
        """Apply a validated GPU frame to its rack."""
        self.apply_gpus([frame], topic)

    def apply_gpus(self, frames: list[GpuFrame], topic: str) -> None:
        """Apply validated GPU frames, in order; the thermal fits take them in one update.

        Per-host frames of one rack and instant are applied as one rack frame
        (streams/frame_merge.py).
        """
        fits: list[tuple[GpuFrame, float]] = []
        newest = 0
        if frames:
            self.counters.frame(topic, len(frames))
        for frame in merge_host_frames(frames):
            state = self.racks.get(frame.rack)
            if state is None:
                state = self.racks[frame.rack] = RackState(frame.rack)
            state.apply(frame)
            ts_ms = int(frame.ts_ms.max())
            coolant = self._coolant_c(frame.rack, ts_ms)
            if coolant is None:
                # no manifold sensors: fit against a model of the plates' coolant; the
                # estimator fits that reference's offset (twin/estimator.py)
                coolant = self._modelled_coolant_c(frame.rack, state, ts_ms)
            if np.isfinite(coolant):
                fits.append((frame, coolant))
            self.dirty_checkpoint_racks.add(frame.rack)
            self.dirty_publish.add(f"rack/{frame.rack}")
            self.counters.samples_in += int(frame.ts_ms.size)
            newest = max(newest, int(frame.ts_ms.max()))
        if fits:
            self.models.update(fits)
            for frame, _ in fits:
                self.dirty_models.add(frame.rack)
                self.dirty_residuals.add(frame.rack)
        if frames:
            self.last_latency_ms = float(self.clock_ms() - newest)

    def _coolant_c(self, rack: str, ts_ms: int) -> float | None:
        """The rack's plate coolant [C] from its manifold at a GPU sample of ``ts_ms``: None
        without manifold sensors, NaN when the inlet reading is more than
        ``coolant_max_skew_s`` from the sample (a backlog replayed after a restart reads the
        two topics apart: a coolant from a minute off is not the coolant of that step, and the
        fast R would take it in)."""
        unit = self.units.get(rack)
        inlet = None if unit is None else unit.points.get("inlet_temp_c")
        if unit is None or inlet is None:
            return None  # no manifold sensors (yet): the modelled reference
        if abs(inlet[0] - ts_ms) > self.coolant_max_skew_s * 1000.0:
            return float("nan")
        return coolant_at_plates_c(unit.values(), self.rack_design_flow_kg_s)

    def _modelled_coolant_c(self, rack: str, state: RackState, ts_ms: int) -> float:
        """The plates' coolant [C] of a rack without manifold sensors, from its GPU power."""
        power = state.values.get("power_w")
        q_w = float(np.nansum(power[state.present])) if power is not None else 0.0
        prev = self.coolant_rise_k.get(rack)
        rise_k, dt_s = (float("nan"), 0.0) if prev is None else (prev[1], (ts_ms - prev[0]) / 1e3)
        if dt_s < 0.0:  # an older frame: the model stays where it is
            return self.coolant_supply_c + 0.5 * rise_k
        rise = float(plate_coolant_rise_step(rise_k, q_w, dt_s, self.rack_design_flow_kg_s))
        self.coolant_rise_k[rack] = (ts_ms, rise)
        return self.coolant_supply_c + 0.5 * rise

    def apply_points(self, frame: PointsFrame, topic: str) -> None:
        """Apply a validated plant-unit frame to its unit."""
        state = self.units.get(frame.unit)
        if state is None:
            state = self.units[frame.unit] = UnitState(frame.unit)
        state.apply(frame)
        self.dirty_checkpoint_units.add(frame.unit)
        self.dirty_publish.add(f"unit/{frame.unit}")
        self.counters.frame(topic)

    def record_position(self, topic: str, partition: int, offset: int) -> None:
        """Remember the next offset to read of a partition (for lag on /metrics)."""
        self.positions[(topic, partition)] = offset + 1
        self.last_progress_ms = self.clock_ms()

    def stalled(self, lag: int, *, after_s: float = 60.0) -> bool:
        """Messages are waiting (``lag`` > 0) but none was taken for ``after_s`` seconds.

        A worker in that state serves a frozen twin while looking alive; /healthz answers
        503 so that a supervisor restarts it (it resumes from its committed offsets).
        """
        if lag <= 0:
            return False
        since = self.last_progress_ms if self.last_progress_ms >= 0 else self.started_ms
        return self.clock_ms() - since > after_s * 1000

    # --- restore and rebalance -----------------------------------------------------------
    def restore_rack(self, rack: str, data: bytes) -> None:
        """Seed a rack from its table checkpoint unless newer data is already held."""
        try:
            restored = RackState.from_bytes(rack, data)
        except Exception as exc:  # a bad checkpoint must not stop the worker: skip it
            self._bad_checkpoint("rack-state", rack, exc)
            return
        held = self.racks.get(rack)
        if held is None or held.last_ts_ms < restored.last_ts_ms:
            self.racks[rack] = restored

    def restore_model(self, rack: str, data: bytes) -> None:
        """Seed a rack's fitted model from its checkpoint, never losing a longer fit.

        Per GPU the series with more updates wins (:meth:`RackModels.restore`): a model
        started from the priors by frames applied before the restore does not replace a
        fitted one, and a stale checkpoint does not roll a running fit back. When both
        contributed, the merged model is checkpointed again.
        """
        held = rack in self.models
        try:
            changed = self.models.restore(rack, RackModel.from_bytes(data))
        except Exception as exc:  # a bad checkpoint must not stop the worker: skip it
            self._bad_checkpoint("rack-model", rack, exc)
            return
        if held and changed:
            self.dirty_models.add(rack)

    def restore_unit(self, data: bytes) -> None:
        """Seed a plant unit from its table checkpoint unless newer data is held."""
        try:
            restored = UnitState.from_bytes(data)
        except Exception as exc:  # a bad checkpoint must not stop the worker: skip it
            self._bad_checkpoint("unit-state", "?", exc)
            return
        held = self.units.get(restored.unit)
        if held is None:
            self.units[restored.unit] = restored
        else:
            for name, (t, v) in restored.points.items():
                if name not in held.points or held.points[name][0] < t:
                    held.points[name] = (t, v)

    def _bad_checkpoint(self, table: str, key: str, exc: Exception) -> None:
        self.counters.bad_checkpoints += 1
        log.warning("skipped a bad %s checkpoint of %s: %r", table, key, exc)

    def drop_partitions(self, owned: Callable[[str], bool]) -> None:
        """Forget racks and units whose partition this worker no longer owns."""
        for rack in [r for r in self.racks if not owned(r)]:
            del self.racks[rack]
            self.dirty_checkpoint_racks.discard(rack)
        for rack in [r for r in self.models if not owned(r)]:
            self.models.drop(rack)
            self.dirty_models.discard(rack)
            self.dirty_residuals.discard(rack)
        for unit in [u for u in self.units if not owned(u)]:
            del self.units[unit]
            self.dirty_checkpoint_units.discard(unit)

    # --- outputs -------------------------------------------------------------------------
    def take_checkpoints(
        self, owned: Callable[[str], bool] = lambda _: True
    ) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """Owned racks and units changed since the last checkpoint, serialised.

        Keys not owned (yet) keep their mark: a worker must not write a changelog partition
        it has not been assigned.
        """
        racks = {
            r: self.racks[r].to_bytes()
            for r in self.dirty_checkpoint_racks
            if r in self.racks and owned(r)
        }
        units = {
            u: self.units[u].to_bytes()
            for u in self.dirty_checkpoint_units
            if u in self.units and owned(u)
        }
        self.dirty_checkpoint_racks.difference_update(racks)
        self.dirty_checkpoint_units.difference_update(units)
        self.counters.checkpoints += len(racks) + len(units)
        return racks, units

    def take_model_checkpoints(
        self, owned: Callable[[str], bool] = lambda _: True
    ) -> dict[str, bytes]:
        """Owned racks whose fitted model changed since its last checkpoint, serialised."""
        out = self.models.checkpoints([r for r in self.dirty_models if owned(r)])
        self.dirty_models.difference_update(out)
        self.counters.checkpoints += len(out)
        return out

    def take_publications(
        self, *, detail: bool | Callable[[str], bool] = True
    ) -> dict[str, dict[str, Any]]:
        """twin.state documents of entities changed since the last publication.

        ``detail`` says, for all racks or per rack, whether to include the per-GPU lists (the
        bulk of the bytes and of the JSON work): a worker publishes them for a share of its
        racks each interval, summaries for all.
        """
        with_detail = detail if callable(detail) else (lambda _rack: detail)
        docs: dict[str, dict[str, Any]] = {}
        for entity in self.dirty_publish:
            kind, _, name = entity.partition("/")
            if kind == "rack" and name in self.racks:
                doc: dict[str, Any] = {"kind": "rack", "summary": self._rack_summary(name)}
                if with_detail(name) or name not in self.detail_published:
                    # a rack's first publication carries its detail, so other workers can
                    # show it at once
                    self.detail_published.add(name)
                    doc["detail"] = self.racks[name].detail()
                    doc["model"] = self.models.view(name) if name in self.models else None
                docs[entity] = doc
            elif kind == "unit" and name in self.units:
                docs[entity] = {"kind": "unit", "summary": self.units[name].summary()}
        self.dirty_publish.clear()
        return docs

    def take_residuals(
        self, group: Callable[[str], int] | None = None
    ) -> dict[str, pa.RecordBatch]:
        """twin.residuals batches of racks whose model was updated since the last call.

        One batch per rack, or with ``group`` (rack -> partition) one per partition
        (:func:`by_partition`).
        """
        racks = [r for r in self.dirty_residuals if r in self.models]
        self.dirty_residuals.clear()
        groups = by_partition(racks, group) if group is not None else [[r] for r in racks]
        out = {members[0]: self.models.residual_batch(members) for members in groups}
        return {k: b for k, b in out.items() if b.num_rows}

    def kpi_batch(self, summary: dict[str, Any] | None = None) -> pa.RecordBatch:
        """twin.kpi rows of the facility now: every numeric facility figure, scope site.

        ``summary`` is ``facility()["facility"]`` when the caller has it already.
        """
        fac = summary if summary is not None else self.facility()["facility"]
        names = [
            k for k, v in fac.items() if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        n = len(names)
        return pa.RecordBatch.from_arrays(
            [
                pa.array(np.full(n, self.clock_ms(), dtype=np.int64)).cast(TS_TYPE),
                pa.array(["site"] * n, type=pa.string()),
                pa.array(names, type=pa.string()),
                pa.array([float(fac[k]) for k in names], type=pa.float64()),
            ],
            schema=KPI_SCHEMA,
        )

    def absorb_view(self, entity: str, doc: dict[str, Any] | None) -> None:
        """Keep the latest twin.state document of an entity (None = tombstone)."""
        if doc is None:
            self.view.pop(entity, None)
            return
        previous = self.view.get(entity)
        if previous is not None and doc.get("kind") == "rack":
            # Summary-only documents keep the last per-GPU detail published for the rack.
            for key in ("detail", "model"):
                if key not in doc and key in previous:
                    doc[key] = previous[key]
        self.view[entity] = doc

    # --- queries -------------------------------------------------------------------------
    def rack_summaries(self) -> dict[str, dict[str, Any]]:
        """Every known rack: own racks live, others from the twin.state view."""
        out = {
            e.partition("/")[2]: d["summary"]
            for e, d in self.view.items()
            if d.get("kind") == "rack" and "summary" in d
        }
        out.update({r: self._rack_summary(r) for r in self.racks})
        return dict(sorted(out.items()))

    def rack_summary(self, rack: str) -> dict[str, Any] | None:
        """One rack's summary (live if owned, else from the view); None if unknown."""
        if rack in self.racks:
            return self._rack_summary(rack)
        doc = self.view.get(f"rack/{rack}")
        return dict(doc["summary"]) if doc is not None and "summary" in doc else None

    def unit_points(self, unit: str) -> dict[str, float] | None:
        """One plant unit's latest points (live if owned, else from the view)."""
        if unit in self.units:
            return self.units[unit].values()
        doc = self.view.get(f"unit/{unit}")
        return dict(doc["summary"]["points"]) if doc is not None and "summary" in doc else None

    def viewed_rack_summaries(self) -> dict[str, dict[str, Any]]:
        """Summaries of the racks other workers own (from twin.state)."""
        return {
            e.partition("/")[2]: d["summary"]
            for e, d in self.view.items()
            if d.get("kind") == "rack" and "summary" in d and e.partition("/")[2] not in self.racks
        }

    def known_racks(self) -> int:
        """How many racks this worker knows, owned or viewed."""
        viewed = {e for e, d in self.view.items() if d.get("kind") == "rack"}
        return len(viewed | {f"rack/{r}" for r in self.racks})

    def _rack_summary(self, rack: str) -> dict[str, Any]:
        summary = self.racks[rack].summary()
        if rack in self.models:
            summary.update(self.models.summary(rack))
        return summary

    def unit_values(self) -> dict[str, dict[str, float]]:
        """Every known plant unit's latest point values."""
        out = {
            e.partition("/")[2]: d["summary"]["points"]
            for e, d in self.view.items()
            if d.get("kind") == "unit" and "summary" in d
        }
        out.update({u: s.values() for u, s in self.units.items()})
        return dict(sorted(out.items()))

    def rack_detail(self, rack: str) -> dict[str, Any] | None:
        """Latest values per GPU of one rack, live if owned, else from the view."""
        if rack in self.racks:
            return self.racks[rack].detail()
        doc = self.view.get(f"rack/{rack}")
        if doc is not None and "detail" in doc:
            return dict(doc["detail"])
        return None

    def rack_model(self, rack: str) -> dict[str, Any] | None:
        """Fitted thermal parameters, expectations and residuals per GPU of one rack."""
        if rack in self.models:
            return self.models.view(rack)
        doc = self.view.get(f"rack/{rack}")
        model = doc.get("model") if doc is not None else None
        return dict(model) if model else None

    def facility(self) -> dict[str, Any]:
        """Facility summary and every rack, as served on /api/state."""
        racks = self.rack_summaries()
        units = self.unit_values()
        out: dict[str, Any] = {
            "ts_ms": self.clock_ms(),
            "facility": facility_summary(list(racks.values()), units),
            "racks": racks,
            "units": units,
        }
        view = self.model_view
        if view is None:
            doc = self.view.get("facility")
            view = doc.get("model") if doc else None
        if view is not None:
            out["facility"]["model"] = view["kpis"]
            out["model"] = view
        return out
