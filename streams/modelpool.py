"""The thermal fits of every rack a worker owns, as one estimator over all their GPUs.

``twin.estimator`` is vectorised over series: one update of 90,000 GPUs costs about what an
update of 72 does in Python overhead. A worker therefore keeps a single estimator; each rack
has a slot (the series index of each of its GPUs), and the frames that arrive together are
fed in one ``update_at`` call, one "wave" per rack at a time so that two frames of a rack
in the same batch are applied in order. Per-rack figures (summary, view, residual rows) are
read from arrays derived once per update, and a rack still checkpoints on its own as a
:class:`streams.rackmodel.RackModel` (same bytes as before).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from streams.codec import GpuFrame
from streams.rackmodel import RackModel, json_list
from streams.schema import RESIDUAL_SCHEMA, TS_TYPE
from twin.estimator import ThermalEstimator

#: A step longer than this many usual steps of its series is a gap, not a transition.
GAP_STEPS = 5.0


@dataclass
class _Derived:
    """Per-series figures computed once after an update, for every rack's reads."""

    r_k_w: np.ndarray
    r_baseline_k_w: np.ndarray
    c_j_k: np.ndarray
    tau_s: np.ndarray
    residual_k: np.ndarray
    n_updates: np.ndarray
    offset_k: np.ndarray


@dataclass
class RackModels:
    """Online R/C fits of many racks: ``update`` with frames, read per rack."""

    estimator: ThermalEstimator = field(default_factory=lambda: ThermalEstimator(0))
    #: rack -> series index of GPU i at position i
    slots: dict[str, np.ndarray] = field(default_factory=dict)
    last_ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: each series' usual step [s] (its last fitted one; NaN: not known yet)
    step_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    power_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    temp_gpu_c: np.ndarray = field(default_factory=lambda: np.zeros(0))
    coolant_c: dict[str, float] = field(default_factory=dict)
    used: int = 0  # series handed out (the estimator may hold spare ones beyond)
    _derived: _Derived | None = field(default=None, repr=False)
    _summaries: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _entities: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    # --- membership ------------------------------------------------------------------------
    def __contains__(self, rack: object) -> bool:
        return rack in self.slots

    def __len__(self) -> int:
        return len(self.slots)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.slots))

    # --- updates ---------------------------------------------------------------------------
    def update(self, items: Sequence[tuple[GpuFrame, float]]) -> None:
        """Feed frames [C, W], each with its rack's coolant at the plates [C], in order."""
        waves: list[list[tuple[GpuFrame, float]]] = []
        seen: dict[str, int] = {}
        for frame, coolant in items:
            k = seen.get(frame.rack, 0)
            seen[frame.rack] = k + 1
            if k == len(waves):
                waves.append([])
            waves[k].append((frame, coolant))
        for wave in waves:
            self._update_wave(wave)

    def _update_wave(self, wave: list[tuple[GpuFrame, float]]) -> None:
        idx_parts = []
        for frame, coolant in wave:
            gpu = frame.gpu.astype(np.intp)
            slot = self._slot(frame.rack, int(gpu.max()) + 1)
            idx_parts.append(slot[gpu])
            self.coolant_c[frame.rack] = coolant
            self._summaries.pop(frame.rack, None)
        idx = np.concatenate(idx_parts)
        counts = [f.ts_ms.size for f, _ in wave]
        die = np.concatenate([f.columns["temp_gpu_c"] for f, _ in wave]).astype(np.float64)
        power = np.concatenate([f.columns["power_w"] for f, _ in wave]).astype(np.float64)
        ts = np.concatenate([f.ts_ms for f, _ in wave])
        coolant_c = np.repeat(np.array([c for _, c in wave], dtype=np.float64), counts)
        # the GPUs of a rack share one coolant reference and so its fitted offset
        group = np.repeat(np.arange(len(wave)), counts)
        prev = self.last_ts_ms[idx]
        newer = ts > prev
        if not newer.all():
            # Samples the fit has already taken (a restarted worker re-reads from its
            # committed offsets, older than its model checkpoint): feeding them again would
            # count them twice and make a step of negative length. Skip them, as RackState
            # skips readings older than the ones it holds.
            idx, die, power, ts = idx[newer], die[newer], power[newer], ts[newer]
            coolant_c, prev, group = coolant_c[newer], prev[newer], group[newer]
            if not idx.size:
                return
        dt_s = np.where(prev > 0, (ts - prev) / 1000.0, 0.0)
        step = self.step_s[idx]
        gap = dt_s > GAP_STEPS * step  # False while the step is not known (NaN)
        if gap.any():
            # A gap of many steps (a restart resuming after its model checkpoint, an
            # outage) is no transition: power and coolant were not held over it (fed the
            # simulator, one 200 s step moved fitted R by up to 10 %, 10 steps later; with
            # this, 0.3 %). The sample only seeds the next step;
            # the one after it sets the usual step again (so a source that changes its
            # rate is followed).
            dt_s = np.where(gap, np.nan, dt_s)
        self.step_s[idx] = np.where(gap, np.nan, np.where(dt_s > 0, dt_s, step))
        self.estimator.update_at(idx, die, coolant_c, power, dt_s, group=group)
        self.last_ts_ms[idx] = ts
        self.power_w[idx] = power
        self.temp_gpu_c[idx] = die
        self._derived = None

    def _slot(self, rack: str, n_gpus: int) -> np.ndarray:
        slot = self.slots.get(rack)
        if slot is not None and slot.size >= n_gpus:
            return slot
        have = 0 if slot is None else slot.size
        fresh = self._allocate(n_gpus - have)
        slot = fresh if slot is None else np.concatenate([slot, fresh])
        self.slots[rack] = slot
        self._entities.pop(rack, None)
        return slot

    def _allocate(self, n: int) -> np.ndarray:
        need = self.used + n
        capacity = self.estimator.n_series
        if need > capacity:
            # double, so that racks arriving one by one cost amortised O(1) copies each
            extra = max(need - capacity, capacity, 72)
            self.estimator = self.estimator.grow(extra)
            self.last_ts_ms = np.concatenate([self.last_ts_ms, np.zeros(extra, dtype=np.int64)])
            self.step_s = np.concatenate([self.step_s, np.full(extra, np.nan)])
            self.power_w = np.concatenate([self.power_w, np.full(extra, np.nan)])
            self.temp_gpu_c = np.concatenate([self.temp_gpu_c, np.full(extra, np.nan)])
        out = np.arange(self.used, need, dtype=np.intp)
        self.used = need
        return out

    def put(self, rack: str, model: RackModel) -> None:
        """Take a rack's model (restored from its checkpoint), replacing any held."""
        self.drop(rack)
        slot = self._slot(rack, model.estimator.n_series)
        self.estimator.put(slot, model.estimator)
        self.last_ts_ms[slot] = model.last_ts_ms
        self.step_s[slot] = _step_s(model)
        self.power_w[slot] = model.power_w
        self.temp_gpu_c[slot] = model.temp_gpu_c
        self.coolant_c[rack] = model.coolant_c
        self._derived = None

    def restore(self, rack: str, model: RackModel) -> bool:
        """Take a rack's checkpointed model without losing a longer history already held.

        A worker that applied frames of the rack before its checkpoint was restored holds a
        young fit (a few updates from the priors). Per GPU, the series with more updates
        wins (ties: the one with the newer sample), so a fresh prior never overwrites a
        fitted model and a checkpoint never rolls back a longer fit. Returns whether the
        held model changed.
        """
        if rack not in self.slots:
            self.put(rack, model)
            return True
        held = self.get(rack)
        n_held, n_ckpt = held.estimator.n_series, model.estimator.n_series
        n = max(n_held, n_ckpt)
        held_updates = np.full(n, -1, dtype=np.int64)
        held_updates[:n_held] = held.estimator.n_updates
        held_ts = np.zeros(n, dtype=np.int64)
        held_ts[:n_held] = held.last_ts_ms
        ckpt_updates = model.estimator.n_updates
        ckpt_ts = model.last_ts_ms
        take = (ckpt_updates > held_updates[:n_ckpt]) | (
            (ckpt_updates == held_updates[:n_ckpt]) & (ckpt_ts > held_ts[:n_ckpt])
        )
        if not take.any():
            return False
        series = np.flatnonzero(take)
        slot = self._slot(rack, n)
        self.estimator.put(slot[series], model.estimator.take(series))
        self.last_ts_ms[slot[series]] = model.last_ts_ms[series]
        self.step_s[slot[series]] = _step_s(model)[series]
        self.power_w[slot[series]] = model.power_w[series]
        self.temp_gpu_c[slot[series]] = model.temp_gpu_c[series]
        if np.isnan(self.coolant_c.get(rack, float("nan"))):
            self.coolant_c[rack] = model.coolant_c
        self._summaries.pop(rack, None)
        self._derived = None
        return True

    def drop(self, rack: str) -> None:
        """Forget a rack (its partition moved to another worker)."""
        if self.slots.pop(rack, None) is None:
            return
        self.coolant_c.pop(rack, None)
        self._summaries.pop(rack, None)
        self._entities.pop(rack, None)
        live = sum(s.size for s in self.slots.values())
        if self.used > 1024 and live < self.used // 2:
            self._compact()

    def _compact(self) -> None:
        order = list(self.slots)
        index = np.concatenate([self.slots[r] for r in order]) if order else np.zeros(0, np.intp)
        self.estimator = self.estimator.take(index)
        self.last_ts_ms = self.last_ts_ms[index]
        self.step_s = self.step_s[index]
        self.power_w = self.power_w[index]
        self.temp_gpu_c = self.temp_gpu_c[index]
        start = 0
        for r in order:
            n = self.slots[r].size
            self.slots[r] = np.arange(start, start + n, dtype=np.intp)
            start += n
        self.used = start
        self._derived = None

    # --- reads -----------------------------------------------------------------------------
    def _d(self) -> _Derived:
        if self._derived is None:
            est = self.estimator
            r = est.r_k_w
            tau = est.tau_s
            self._derived = _Derived(
                r_k_w=r,
                r_baseline_k_w=est.r_baseline_k_w,
                c_j_k=tau / r,
                tau_s=tau,
                residual_k=est.residual_k,
                n_updates=est.n_updates,
                offset_k=est.coolant_offset_k,
            )
        return self._derived

    def get(self, rack: str) -> RackModel:
        """One rack's model on its own (its checkpoint is ``get(rack).to_bytes()``)."""
        slot = self.slots[rack]
        return RackModel(
            estimator=self.estimator.take(slot),
            last_ts_ms=self.last_ts_ms[slot].copy(),
            coolant_c=self.coolant_c.get(rack, float("nan")),
            power_w=self.power_w[slot].copy(),
            temp_gpu_c=self.temp_gpu_c[slot].copy(),
        )

    def checkpoints(self, racks: Sequence[str]) -> dict[str, bytes]:
        """``get(rack).to_bytes()`` of many racks, with one gather for all of them."""
        racks = [r for r in racks if r in self.slots]
        if not racks:
            return {}
        slots = [self.slots[r] for r in racks]
        idx = np.concatenate(slots)
        snap = self.estimator.take(idx).snapshot()
        per_series = {k for k, v in snap.items() if v.ndim and v.shape[0] == idx.size}
        out: dict[str, bytes] = {}
        start = 0
        for rack, slot in zip(racks, slots, strict=True):
            end = start + slot.size
            arrays: dict[str, Any] = {
                f"est.{k}": (v[start:end] if k in per_series else v) for k, v in snap.items()
            }
            out[rack] = RackModel.pack(
                arrays,
                last_ts_ms=self.last_ts_ms[slot],
                power_w=self.power_w[slot],
                temp_gpu_c=self.temp_gpu_c[slot],
                coolant_c=self.coolant_c.get(rack, float("nan")),
            )
            start = end
        return out

    def summary(self, rack: str) -> dict[str, Any]:
        """Rack-level figures: largest |residual| [K], mean fitted R [K/W]."""
        cached = self._summaries.get(rack)
        if cached is None:
            d, slot = self._d(), self.slots[rack]
            res = d.residual_k[slot]
            r = d.r_k_w[slot]
            finite = res[np.isfinite(res)]
            cached = self._summaries[rack] = {
                "residual_max_abs_k": float(np.abs(finite).max()) if finite.size else None,
                "r_k_w_mean": float(np.nanmean(r)) if np.isfinite(r).any() else None,
            }
        return dict(cached)

    def view(self, rack: str) -> dict[str, Any]:
        """Fitted parameters, expected steady die temperature and residuals, per GPU."""
        d, slot = self._d(), self.slots[rack]
        coolant = self.coolant_c.get(rack, float("nan"))
        r = d.r_k_w[slot]
        # the plates see the reference less the rack's fitted offset (twin/estimator.py)
        offset = d.offset_k[slot]
        return {
            "coolant_c": None if np.isnan(coolant) else coolant,
            "coolant_offset_k": float(offset[0]) if offset.size else None,
            "r_k_w": json_list(r),
            "r_baseline_k_w": json_list(d.r_baseline_k_w[slot]),
            "c_j_k": json_list(d.c_j_k[slot]),
            "tau_s": json_list(d.tau_s[slot]),
            "residual_k": json_list(d.residual_k[slot]),
            "expected_temp_gpu_c": json_list(coolant - offset + r * self.power_w[slot]),
            "updates": d.n_updates[slot].tolist(),
        }

    def residual_batch(self, racks: Sequence[str]) -> pa.RecordBatch:
        """twin.residuals rows of the racks' last updates: die temperature measured vs the
        one-step prediction [C] per GPU; GPUs without a residual are left out."""
        racks = [r for r in racks if r in self.slots]
        if not racks:
            return _empty()
        d = self._d()
        slots = [self.slots[r] for r in racks]
        idx = np.concatenate(slots)
        res = d.residual_k[idx]
        measured = self.temp_gpu_c[idx]
        ts = np.repeat([int(self.last_ts_ms[s].max()) for s in slots], [s.size for s in slots])
        names = np.concatenate([self._names(r) for r in racks])
        ok = np.flatnonzero(np.isfinite(res) & np.isfinite(measured))
        return pa.RecordBatch.from_arrays(
            [
                pa.array(ts[ok].astype(np.int64)).cast(TS_TYPE),
                pa.array(names[ok], type=pa.string()),
                pa.array(np.full(ok.size, "temp_gpu_c", dtype=object), type=pa.string()),
                pa.array(measured[ok]),
                pa.array(measured[ok] - res[ok]),
                pa.array(res[ok]),
            ],
            schema=RESIDUAL_SCHEMA,
        )

    def _names(self, rack: str) -> np.ndarray:
        names = self._entities.get(rack)
        if names is None:
            n = self.slots[rack].size
            names = self._entities[rack] = np.array(
                [f"{rack}/G{i:02d}" for i in range(n)], dtype=object
            )
        return names


def _step_s(model: RackModel) -> np.ndarray:
    """A checkpointed model's usual step per GPU [s]: the step its fit is discretised at."""
    return np.asarray(model.estimator.snapshot()["dt_ref_s"], dtype=np.float64)


def _empty() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=RESIDUAL_SCHEMA)
