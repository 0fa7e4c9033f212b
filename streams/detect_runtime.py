"""The worker's detectors (models/): run each alert tick over every owned GPU, rack and unit.

One :class:`DetectRuntime` per worker holds one detector per kind over *all* GPU series of
the site (series ``rack_no * width + gpu``), so a tick is one vectorised call per detector
over the owned GPUs (``index=``), never a Python loop over GPUs:

- ``residual``: :class:`~models.physics.GpuResidual` on the estimator's die-temperature
  residual [K], grouped by rack: ``own`` (this GPU alone: its thermal interface or die
  sensor) apart from ``common`` (the whole rack: coolant or a biased rack sensor);
- ``r_trend``: :class:`~models.physics.ResistanceTrend` on the fitted R [K/W], grouped by
  rack (own = fouling of this cold plate; common = rack flow / coolant);
- ``stuck``: die temperature [C] that stops moving while board power moves;
- ``rate_power`` / ``rate_temp``: rate of change of power [W/s] and die temperature [K/s];
- ``drift``: CUSUM on the residual [K] (slow changes the z-score forgets);
- per rack ``balance``: coolant heat ``m_dot * cp * (T_out - T_in)`` [W] of the rack
  manifold against the sum of its GPUs' power [W];
- per rack ``coolant_ref``: :class:`~models.physics.CoolantReferenceDrift` on the estimator's
  fitted coolant offset less the rack's median steady residual [K] (a drifting or biased rack
  sensor, which the fit absorbs into the offset); its score joins the rack's ``drift_common``;
- per plant-unit point with a facility-model expectation: ``unit_z`` (robust z-score) and
  ``unit_drift`` (CUSUM) of the residual measured - expected, taken against the range
  the expectation swept over the last 30 s (the plant lags the model: models/lag.py);
- per owned UPS module: :class:`~models.physics.UpsEfficiency`, measured input against
  output power and the site's loss curve (twin/power.py).
- per GPU from the frame's own fields: XID class, abnormal clock events (not power
  capping), the HBM decay chain (corrected-ECC rate, remapped rows, uncorrectable errors)
  and a fail-slow straggler (``power_own``: power against its history less the rack's
  common move); per owned CDU its leak rope and reservoir level, passed on.

Scores are held between samples (a series without a new sample keeps its last score), fed
to the alert engine as score signals (``*_score``, rules in models/rules/default.toml) and
exported on /metrics with bounded labels (:class:`DetectCollector`). Detector state is
checkpointed per rack (and for the units under the key ``facility``) as array packs
(streams/arraypack.py) and restored before the first frame, as the fitted models are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from models.alerting import AlertEngine
from models.base import Detector, GroupLayout, squash
from models.lag import load_step, push_history, transient_residual
from models.physics import (
    Balance,
    CoolantReferenceDrift,
    GpuResidual,
    ResistanceTrend,
    UpsEfficiency,
)
from models.robust import Drift, RobustZScore
from models.sensor import RateOfChange, Stuck
from streams.arraypack import pack_arrays, unpack_arrays
from streams.runtime import TwinRuntime

log = logging.getLogger(__name__)

#: Per-GPU detectors, in checkpoint order.
GPU_DETECTORS: tuple[str, ...] = (
    "residual",
    "r_trend",
    "stuck",
    "rate_power",
    "rate_temp",
    "drift",
    "power_own",
)
#: Per-rack and per-unit-point detectors.
RACK_DETECTORS: tuple[str, ...] = ("balance", "coolant_ref")
UNIT_DETECTORS: tuple[str, ...] = ("unit_z", "unit_drift")
#: Facility-model views kept per unit point: 30 s of 10 s views and the current one.
LAG_VIEWS = 4
#: Site KPIs (ratios of other points) that are exported but not scored.
KPI_POINTS = frozenset({"pue", "ere", "cue_kg_kwh", "cooling_cop", "cop", "free_cooling_share"})
#: Seconds after a unit point's expectation moved before its drift test sums again: the
#: plant loops (CDU, facility water, dry coolers) take minutes to settle after a job's
#: load step, and the steady facility model does not follow that settling.
UNIT_SETTLE_S = 600.0
#: Seconds after a rack's load stepped before the drift tests on its GPUs' residuals and
#: its coolant reference sum again: the die and coolant lags the steady model leaves out
#: swing the residuals together for a minute or two after a checkpoint dip.
RACK_SETTLE_S = 240.0
#: A rack's fitted coolant offset moving more than this in one tick [K] is a re-solve of
#: the fit (a sensor's drift reaches the slow offset over minutes): the rack settles.
OFFSET_JUMP_K = 0.3
#: The fitted offset enters the coolant-reference test once its standard error is below
#: this [K] (a third of a whole-degree reading's step; training racks pin it to ~0.05 K).
OFFSET_SD_MAX_K = 0.3
#: Held scores per GPU kept in a checkpoint (besides each detector's state).
GPU_SCORES: tuple[str, ...] = (
    *GPU_DETECTORS,
    "residual_common",
    "r_trend_common",
    "drift_common",
    "xid_critical",
    "xid_warning",
    "hw_slowdown",
    "hbm",
)
#: Per-GPU state besides the scores: of the HBM decay check the last corrected-ECC count,
#: its exponentially weighted rate [1/s] and the sample time [s] of that count; 1 once the
#: estimator has identified the GPU's R (the R trend watches it from then on).
GPU_STATE: tuple[str, ...] = ("ecc_last", "ecc_rate", "ecc_t", "r_ident")
#: XIDs that take a GPU out (issue 9; NVIDIA XID catalogue) and those to trend.
XID_CRITICAL = (48, 64, 74, 79, 94, 95)
XID_WARNING = (63, 92)
#: Clock-event reasons that are not normal operation: HW slowdown, power brake, SW and HW
#: thermal slowdown (power capping, 0x4, is normal under a power limit).
ABNORMAL_CLOCK_EVENTS = 0x8 | 0x80 | 0x20 | 0x40
#: Corrected-ECC rate [1/s] scored 0.5 (a healthy HBM stack corrects ~none per hour) and the
#: half-life of its weighted rate [s].
ECC_RATE_THRESHOLD_PER_S = 0.002
ECC_RATE_HALF_LIFE_S = 60.0
#: Checkpoint key of the unit detectors (owned by the worker running the facility model).
FACILITY_KEY = "facility"
#: A rack or unit is fed to the engine while its largest score was >= HOT_SCORE within
#: HOT_HOLD_S [s] (long enough for any rule's clear_for_s): the engine sees every value that
#: can raise or clear an alert, and the ~all-quiet racks cost nothing.
HOT_SCORE = 0.3
HOT_HOLD_S = 900.0
#: Checkpoint format: 2 = compact (a field at its default everywhere is left out, one whose
#: series all hold the same value is stored once as ``NAME@1``; unit keys as UTF-8 text).
#: At the campus the unit detectors' checkpoint was 4.5 MB in format 1 (the z-score's unused
#: 24-hour profile alone 2.8 MB, keys 0.8 MB as fixed-width UTF-32): over Kafka's 1 MB.
CHECKPOINT_FORMAT = 2


#: Fields added after format 1: absent from a format-1 pack, they start at their default.
_ADDED_SINCE_V1 = frozenset(
    {"score.r_ident", "score.coolant_ref"}
    | {f"rack.coolant_ref.{k}" for k in CoolantReferenceDrift()._all_fields()}
)


def _put_compact(out: dict[str, np.ndarray], name: str, v: np.ndarray, default: float) -> None:
    """Store ``v`` under ``name`` unless it is derivable: left out when every value is
    ``default``, one row ``name@1`` when every series holds the same row (times and counts
    of series updated together)."""
    if v.shape[0] == 0:
        out[name] = v
    elif np.array_equal(v, np.full_like(v, default), equal_nan=True):
        return
    elif np.array_equal(v, np.broadcast_to(v[:1], v.shape), equal_nan=True):
        out[f"{name}@1"] = v[:1]
    else:
        out[name] = v


def _get_compact(
    arrays: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...], default: float
) -> np.ndarray:
    """Inverse of :func:`_put_compact` for a field of ``shape``; a pack of format 1 holds
    every field in full."""
    if name in arrays:
        return np.asarray(arrays[name], dtype=np.float64)
    one = arrays.get(f"{name}@1")
    if one is not None:
        one = np.asarray(one, dtype=np.float64)
        if one.shape != (1, *shape[1:]):
            raise ValueError(f"{name}@1: shape {one.shape}, expected {(1, *shape[1:])}")
        return np.broadcast_to(one, shape).copy()
    if int(np.asarray(arrays.get("format", [1]))[0]) < 2 and name not in _ADDED_SINCE_V1:
        raise KeyError(name)
    return np.full(shape, default)


def _starts(sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    """Offsets of consecutive segments of ``sizes`` in their concatenation (for reduceat)."""
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _default_of(det: Detector, field_name: str) -> float:
    spec = det._all_fields()[field_name]
    return float(spec[0] if isinstance(spec, tuple) else spec)


def _gpu_detectors() -> dict[str, Detector]:
    # Parameters: the residual's noise floor 0.3 K is NVML's whole-degree rounding; the
    # R trend learns over a day (fouling takes hours to weeks); stuck needs a power change
    # of 5 % that leaves the die reading unmoved; rates learn their spread over 10 min.
    return {
        "residual": GpuResidual(threshold=6.0, floor=0.3, half_life=3600.0),
        # R trend at 3 spreads (0.5 at 6 %, 0.9 at 11 % with the 2 % floor): fouling raises
        # only the cold plate's share of R, so the fitted R moves slower than the plate does
        "r_trend": ResistanceTrend(threshold=3.0),
        # stuck: a sample counts where the power moved > 0.2 % (its own noise is 0.5 %: a
        # GPU at steady work moves that much every second; 5 % happened only at job changes,
        # so the detector never learnt). Surprise ln(1e12), not 1e6: the learnt share of
        # changed readings lags the true one by its half-life when the die temperature moves
        # from between two integers (~50 % changes) to the middle of one (~18 % at 0.3 K of
        # noise), and at 1e6 that lag gave ~1.5 false alerts per 1,000 GPU-hours (12 h
        # fault-free run, 4 racks); at 1e12 a run must be ~3 orders less likely. Cost: a
        # stuck reading is flagged after ~80 s instead of ~40 s.
        "stuck": Stuck(aux_rel_tol=0.002, surprise=float(np.log(1e12))),
        "rate_power": RateOfChange(threshold=8.0),
        "rate_temp": RateOfChange(threshold=8.0),
        "drift": Drift(h=10.0),
        # a straggler: this GPU's power against its own history, less its rack's common
        # move (jobs start and stop whole racks); 3 % noise floor (util jitter). Threshold 3
        # noise units per sample: the rule asks for 30 s above 0.9 (5.5 units) in a row,
        # which independent noise does not hold
        "power_own": ResistanceTrend(half_life=3600.0, floor=0.03, min_samples=120, threshold=3.0),
    }


def _unit_detectors() -> dict[str, Detector]:
    # unit_drift: allowance k = 1 noise unit, not 0.5: a derived plant point (an inference
    # rack's heat to liquid from its GPUs' jittering power) has a residual that wanders for
    # minutes, and at 0.5 the CUSUM summed that wander into an alarm (bench_detection_eval,
    # seed 100 at 1.3 h); k = 1 finds the sensor drifts 5-10 s later
    return {
        "unit_z": RobustZScore(threshold=6.0, min_scale=0.05),
        "unit_drift": Drift(k=1.0, h=10.0),
    }


@dataclass
class DetectRuntime:
    """Detectors over every GPU, rack and plant-unit point of a site (see module doc).

    ``rack_ids``: the site's racks (slots in this order; racks seen later get new slots);
    ``width``: GPUs per rack slot (the site's ``n_gpus``; GPUs beyond it are not scored);
    ``cp_j_kgk``: specific heat of the rack loop's coolant [J/(kg K)].
    """

    rack_ids: Sequence[str]
    width: int
    cp_j_kgk: float = 3_900.0
    gpu: dict[str, Detector] = field(default_factory=_gpu_detectors)
    rack: dict[str, Detector] = field(
        default_factory=lambda: {
            "balance": Balance(min_aux=1_000.0, threshold=6.0),
            "coolant_ref": CoolantReferenceDrift(),
        }
    )
    unit: dict[str, Detector] = field(default_factory=_unit_detectors)
    #: measured UPS efficiency against the curve (series = ``ups_ids``, in this order)
    ups_ids: Sequence[str] = ()
    ups: Detector = field(default_factory=UpsEfficiency)
    ups_score: dict[str, float] = field(default_factory=dict)
    rack_no: dict[str, int] = field(default_factory=dict)
    unit_no: dict[str, int] = field(default_factory=dict)
    #: held scores: per GPU series (GPU_SCORES), per rack series, per unit-point series
    gpu_score: dict[str, np.ndarray] = field(default_factory=dict)
    rack_score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: held score of each rack slot's coolant-reference drift (joins its ``drift_common``)
    coolant_ref_score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    unit_score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: last facility-model expectation and residual of each unit point (for /metrics)
    unit_expected: np.ndarray = field(default_factory=lambda: np.zeros(0))
    unit_residual: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: rack -> (rack slot, GPUs) of the racks scored in the last tick
    scored: dict[str, int] = field(default_factory=dict)
    #: per rack slot: until when [s] the rack is fed to the engine (see HOT_SCORE)
    hot_until_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bad_checkpoints: int = 0
    #: owned CDU -> (leak detected [0/1], reservoir level [fraction of the tank])
    cdu_leak: dict[str, tuple[float, float]] = field(default_factory=dict)
    _index_key: tuple[Any, ...] = ()
    _index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _layout: GroupLayout | None = None
    _nos_key: tuple[str, ...] = ()
    _nos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: rack slot of each scored GPU (``_index // width``); whether ``_index`` is 0..n-1
    _group: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _whole: bool = False
    #: rack -> its state object once it held a reading (see :meth:`evaluate`)
    _nonempty: dict[str, Any] = field(default_factory=dict)
    #: :meth:`_fit_map`'s key, the slot arrays it holds, its result and series order
    _fit_key: tuple[Any, ...] = ()
    _fit_refs: list[Any] = field(default_factory=list)
    _fit_map_cache: tuple[np.ndarray, np.ndarray, bool] = field(
        default_factory=lambda: (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.intp), False)
    )
    _fit_in_order: bool = False
    #: whether the last :meth:`_columns` cut a rack to its count (it held more than width)
    _cut: bool = False
    #: :meth:`_unit_max`'s (points, their scores, units, largest score of each)
    _unit_max_held: tuple[int, np.ndarray, list[str], list[float]] | None = None
    #: per unit point: its last LAG_VIEWS expectations and their times [s] (models/lag.py)
    _unit_hist: np.ndarray = field(default_factory=lambda: np.zeros((0, LAG_VIEWS)))
    _unit_hist_ts: np.ndarray = field(default_factory=lambda: np.zeros((0, LAG_VIEWS)))
    _unit_jitter: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: per unit point: when [s] its expectation last moved (drift waits UNIT_SETTLE_S)
    _unit_moved_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: per unit point: the previous view's reading, expectation and time [s] (scored now)
    _unit_prev_m: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _unit_prev_e: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _unit_prev_ts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: per rack slot: recent load level [W], its time [s], when its load last stepped [s]
    _rack_level_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _rack_level_t_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _rack_stepped_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _rack_settle_flag: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: per rack slot: the estimator's fitted coolant offset at the last tick [K]
    _rack_off_k: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        for r in self.rack_ids:
            self.rack_no.setdefault(r, len(self.rack_no))
        self._grow_racks()

    # --- slots -------------------------------------------------------------------------
    def _grow_racks(self) -> None:
        n_racks = len(self.rack_no)
        n = n_racks * self.width
        for d in self.gpu.values():
            if d.n_series < n:
                d.resize(n)
        for d in self.rack.values():
            if d.n_series < n_racks:
                d.resize(n_racks)
        for k in (*GPU_SCORES, *GPU_STATE):
            old = self.gpu_score.get(k, np.zeros(0))
            if old.size < n:
                self.gpu_score[k] = np.concatenate([old, np.zeros(n - old.size)])
        if self.rack_score.size < n_racks:
            self.rack_score = np.concatenate(
                [self.rack_score, np.zeros(n_racks - self.rack_score.size)]
            )
        if self.coolant_ref_score.size < n_racks:
            pad = np.zeros(n_racks - self.coolant_ref_score.size)
            self.coolant_ref_score = np.concatenate([self.coolant_ref_score, pad])
        if self.hot_until_s.size < n_racks:
            pad = np.full(n_racks - self.hot_until_s.size, -np.inf)
            self.hot_until_s = np.concatenate([self.hot_until_s, pad])
            self._rack_level_w = np.concatenate([self._rack_level_w, pad + np.nan])
            self._rack_level_t_s = np.concatenate([self._rack_level_t_s, pad + np.nan])
            self._rack_stepped_s = np.concatenate([self._rack_stepped_s, pad])
            self._rack_off_k = np.concatenate([self._rack_off_k, pad + np.nan])

    def _slot(self, rack: str) -> int:
        no = self.rack_no.get(rack)
        if no is None:
            no = self.rack_no[rack] = len(self.rack_no)
            self._grow_racks()
        return no

    def _unit_slots(self, keys: Sequence[str]) -> None:
        """Slots for unit-point keys not seen before, grown once for all of them (a
        restore at the campus brings ~7,000)."""
        new = [k for k in dict.fromkeys(keys) if k not in self.unit_no]
        if not new:
            return
        for k in new:
            self.unit_no[k] = len(self.unit_no)
        n = len(self.unit_no)
        for d in self.unit.values():
            d.resize(n)
        pad = np.zeros(n - self.unit_score.size)
        self.unit_score = np.concatenate([self.unit_score, pad])
        self.unit_expected = np.concatenate([self.unit_expected, pad + np.nan])
        self.unit_residual = np.concatenate([self.unit_residual, pad + np.nan])
        rows = np.full((n - self._unit_hist.shape[0], LAG_VIEWS), np.nan)
        self._unit_hist = np.concatenate([self._unit_hist, rows])
        self._unit_hist_ts = np.concatenate([self._unit_hist_ts, rows.copy()])
        self._unit_jitter = np.concatenate([self._unit_jitter, pad + np.nan])
        self._unit_moved_s = np.concatenate([self._unit_moved_s, pad - np.inf])
        self._unit_prev_m = np.concatenate([self._unit_prev_m, pad + np.nan])
        self._unit_prev_e = np.concatenate([self._unit_prev_e, pad + np.nan])
        self._unit_prev_ts = np.concatenate([self._unit_prev_ts, pad + np.nan])

    # --- one tick ----------------------------------------------------------------------
    def evaluate(
        self,
        rt: TwinRuntime,
        owned: Callable[[str], bool],
        *,
        facility_view: Mapping[str, Any] | None = None,
    ) -> None:
        """Score every owned rack's GPUs, every owned rack's heat balance and (with the
        facility model's view) every unit point with an expectation."""
        racks: list[str] = []
        states: list[Any] = []
        seen = self._nonempty
        if len(seen) > len(rt.racks):  # racks dropped (partitions moved): forget them
            seen = self._nonempty = {r: s for r, s in seen.items() if rt.racks.get(r) is s}
        for r, s in rt.racks.items():
            if not owned(r):
                continue
            # a rack state's present flags are only ever set (or grown), so one seen with a
            # reading needs no new look at its flags (1,250 ``any`` calls a tick)
            if seen.get(r) is not s:
                if not s.present.any():
                    continue
                seen[r] = s
            racks.append(r)
            states.append(s)
        counts = [min(s.present.size, self.width) for s in states]
        no = self.rack_no
        slots = [no[r] if r in no else self._slot(r) for r in racks]
        self.scored = dict(zip(racks, counts, strict=True))
        # CDU leak points (leak-detection rope, reservoir level): passed on as they are read
        self.cdu_leak = {}
        for u, us in rt.units.items():
            if "leak_detected_bool" in us.points and owned(u):
                vals = us.values()
                self.cdu_leak[u] = (
                    vals.get("leak_detected_bool", np.nan),
                    vals.get("reservoir_level_frac", np.nan),
                )
        if racks:
            cols = self._columns(states, counts)
            self._score_gpus(rt, racks, counts, slots, cols)
            self._score_racks(rt, racks, slots, states, cols)
        self._score_ups(rt, owned)
        if facility_view is not None:
            self._score_units(facility_view)

    def _gpu_index(self, slots: list[int], counts: list[int]) -> np.ndarray:
        key = (tuple(slots), tuple(counts))
        if key != self._index_key:
            self._index = np.concatenate(
                [
                    s * self.width + np.arange(c, dtype=np.int64)
                    for s, c in zip(slots, counts, strict=True)
                ]
            )
            self._index_key = key
            idx = self._index
            self._group = idx // self.width
            self._layout = None  # the racks' layout changed with the index
            # strictly increasing from 0 to size - 1: idx is 0..n-1
            self._whole = bool(
                idx.size and idx[0] == 0 and idx[-1] == idx.size - 1 and np.all(idx[1:] > idx[:-1])
            )
        return self._index

    def _fit_map(
        self, pool: Any, racks: list[str], counts: list[int]
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Where the scored GPUs' fits are: (their positions among the scored GPUs, their
        series in the pool's estimator, whether the positions are every scored GPU in order);
        sets ``_fit_in_order`` (the series are 0..m-1). Cached while the scored racks and the
        pool's slot arrays (replaced, never edited, when a rack's slots change) are the same."""
        mss = [pool.slots.get(r) for r in racks]
        # ids of arrays held in _fit_refs: none can be reused by another array meanwhile
        key = (self._index_key, tuple(map(id, mss)))
        if key != self._fit_key:
            start = 0
            dst_parts, src_parts = [], []
            for ms, c in zip(mss, counts, strict=True):
                if ms is not None:
                    k = min(c, ms.size)
                    dst_parts.append(start + np.arange(k, dtype=np.int64))
                    src_parts.append(ms[:k])
                start += c
            dst = np.concatenate(dst_parts) if dst_parts else np.zeros(0, dtype=np.int64)
            src = np.concatenate(src_parts) if src_parts else np.zeros(0, dtype=np.intp)
            m = src.size
            self._fit_in_order = bool(
                m and src[0] == 0 and src[-1] == m - 1 and np.all(src[1:] > src[:-1])
            )
            self._fit_map_cache = (dst, src, dst.size == sum(counts))
            self._fit_key, self._fit_refs = key, mss
        return self._fit_map_cache

    def _columns(self, states: list[Any], counts: list[int]) -> dict[str, np.ndarray]:
        """The fields of the racks' first ``counts`` GPUs end to end, rack after rack: one
        concatenation per field, without a slice per rack where every rack holds exactly its
        count (the usual case; 1,250 slices per field cost more than the copy)."""
        cut = self._cut = [s.present.size for s in states] != counts

        def cat(parts: list[np.ndarray]) -> np.ndarray:
            if cut:
                parts = [a[:c] for a, c in zip(parts, counts, strict=True)]
            return np.concatenate(parts)

        out = {"present": cat([s.present for s in states]), "ts_ms": cat([s.ts_ms for s in states])}
        names = ["temp_gpu_c", "power_w", "xid", "clock_event_reasons"]
        if "ecc_corrected" in states[0].values:
            names += ["ecc_corrected", "ecc_uncorrected", "row_remap_flags"]
        for name in names:
            out[name] = cat([s.values[name] for s in states])
        return out

    def _score_gpus(
        self,
        rt: TwinRuntime,
        racks: list[str],
        counts: list[int],
        slots: list[int],
        cols: Mapping[str, np.ndarray],
    ) -> None:
        idx = self._gpu_index(slots, counts)
        group = self._group
        n = idx.size
        # every series the detectors hold, in order (a worker that owns the whole site):
        # the detectors run on their state in place and the held scores are written whole,
        # with no gather and scatter of every state array by ``idx`` (~20 ms at the campus)
        whole = self._whole and all(d.n_series == n for d in self.gpu.values())
        whole = whole and all(v.size == n for v in self.gpu_score.values())
        present = cols["present"]
        ts_s = np.where(present, cols["ts_ms"] / 1000.0, np.nan)
        temp = cols["temp_gpu_c"].astype(np.float64)
        power = cols["power_w"].astype(np.float64)
        # the fitted model's residual and R, at the model's own sample times
        pool = rt.models
        dst, src, all_dst = self._fit_map(pool, racks, counts)
        if src.size:
            est = pool.estimator
            m = src.size
            # the estimator's series in order (its first m): a slice, not a gather
            in_order = m <= est.n_series and self._fit_in_order

            def fit(a: np.ndarray) -> np.ndarray:
                return a[:m] if in_order else a[src]

            def scatter(a: np.ndarray) -> np.ndarray:
                if all_dst:
                    return a
                out = np.full(n, np.nan)
                out[dst] = a
                return out

            res = scatter(fit(est.residual_k))
            t_fit = scatter(fit(pool.last_ts_ms) / 1000.0)
            fitted = fit(est.n_updates) > 0
            off = getattr(est, "coolant_offset_k", None)
            ref_off = np.full(n, np.nan)  # the reference's apparent offset [K]
            rack_off = np.full(n, np.nan)  # the estimator's fitted offset [K]
            if off is not None:
                # an offset the fit has not pinned down (a rack whose power barely moves:
                # R and the offset trade off, and it wanders by a kelvin or two over hours)
                # is not the sensor's: there the steady residuals carry the reference alone
                sd = getattr(est, "coolant_offset_sd_k", None)
                used = (
                    fit(off) if sd is None else np.where(fit(sd) < OFFSET_SD_MAX_K, fit(off), 0.0)
                )
                ref_off = scatter(used - fit(est.steady_residual_k))
                rack_off = scatter(used)
            if hasattr(type(est), "r_identified"):  # (on the type: asking runs it)
                # R is watched once the estimator has identified it (known to 1 %, which
                # takes power changes): before, it is the prior's and moves as the fit
                # converges (a false R trend on every GPU of a new rack). Sticky: a GPU
                # that was identified stays watched while its power holds, so only the
                # GPUs not identified yet are asked (at the campus, in steady state, few).
                seen = self.gpu_score["r_ident"]
                gi = idx if all_dst else idx[dst]
                ask = np.flatnonzero(~(seen[gi] >= 1.0))
                if ask.size:
                    ident = _identified(est, src if ask.size == m else src[ask])
                    seen[gi[ask]] = np.maximum(seen[gi[ask]], ident)
                fitted &= seen[gi] > 0.0
            r_own = fit(est.r_k_w)
            r_own[~fitted] = np.nan
            r_fit = scatter(r_own)
        else:
            res = np.full(n, np.nan)
            r_fit = np.full(n, np.nan)
            t_fit = np.full(n, np.nan)
            ref_off = np.full(n, np.nan)
            rack_off = np.full(n, np.nan)
        sc = self.gpu_score
        d = self.gpu
        # racks whose load stepped lately: their residual drift waits (and, through
        # _rack_settle_flag, their coolant reference)
        settling = self._rack_settling(slots, counts, group, ts_s, power)
        inputs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {
            "residual": (t_fit, res, None),
            "r_trend": (t_fit, r_fit, None),
            "stuck": (ts_s, temp, power),
            "rate_power": (ts_s, power, None),
            "rate_temp": (ts_s, temp, None),
            "drift": (t_fit, res, settling),
            "power_own": (ts_s, power, None),
        }
        index = None if whole else idx
        for name, (t, x, aux) in inputs.items():
            det = d[name]
            prev_t = det._state["t_last_s"].copy() if whole else det._state["t_last_s"][idx]
            grp = group if name in ("residual", "r_trend", "power_own") else None
            s = det.update(t, x, aux=aux, group=grp, index=index)
            now_t = det._state["t_last_s"]
            fresh = (now_t if whole else now_t[idx]) != prev_t
            held = {name: s}
            if name == "power_own":
                held[name] = getattr(det, "last_own", s)
            elif name in ("residual", "r_trend"):
                # _Grouped: own and common parts of the same call
                held[name] = getattr(det, "last_own", s)
                held[f"{name}_common"] = getattr(det, "last_common", np.zeros_like(s))
            for key, v in held.items():
                if whole:
                    np.copyto(sc[key], v, where=fresh)
                else:
                    sc[key][idx[fresh]] = v[fresh]
        # A drift the whole rack shares (its median GPU drifts) is the rack's coolant or its
        # inlet sensor, not each GPU: the median over the rack is its common part.
        lay = self._layout
        if lay is None:
            lay = self._layout = GroupLayout(group)
        med, _ = lay.median(sc["drift"] if whole else sc["drift"][idx], np.ones(n, dtype=bool))
        self._score_coolant_ref(lay, slots, counts, t_fit, ref_off, rack_off)
        common = np.maximum(med, self.coolant_ref_score[group])
        if whole:
            sc["drift_common"][...] = common
        else:
            sc["drift_common"][idx] = common
        self._score_fleet(cols, idx, ts_s, whole)

    def _score_coolant_ref(
        self,
        lay: GroupLayout,
        slots: list[int],
        counts: list[int],
        t_fit: np.ndarray,
        ref_off: np.ndarray,
        rack_off: np.ndarray,
    ) -> None:
        """Each rack's coolant reference against its GPUs (one call over the racks): the
        fitted offset less the median steady residual of its fitted GPUs [K]."""
        ok = np.isfinite(ref_off)
        med, _ = lay.median(ref_off, ok)
        starts = _starts(counts)
        x = med[starts]
        ts = np.fmax.reduceat(np.where(ok, t_fit, np.nan), starts)
        det = self.rack["coolant_ref"]
        rack_idx = np.asarray(slots, dtype=np.int64)
        prev = det._state["t_last_s"][rack_idx]
        # A re-solve of the fit that moves the rack's offset at once (or the offset coming
        # into use, OFFSET_SD_MAX_K) is the fit's own step,
        # not the sensor's (which shows first in the steady residuals and reaches the slow
        # offset over its ~2,000-sample memory): on a rack whose power barely moves, R and
        # the offset trade off, and a few GPUs passing the fit's gates moved an inference
        # rack's offset by 2 K in one tick (bench_detection_eval, seed 100 at 2.4 h). The
        # rack then settles as after a load step.
        # one offset per rack (the estimator's group): any of its GPUs holds it
        off_now = np.fmax.reduceat(rack_off, starts) if rack_off.size else np.zeros(0)
        was = self._rack_off_k[rack_idx]
        jump = np.isfinite(was) & (np.abs(off_now - was) > OFFSET_JUMP_K) & np.isfinite(ts)
        self._rack_off_k[rack_idx] = np.where(np.isfinite(off_now), off_now, was)
        self._rack_stepped_s[rack_idx[jump]] = ts[jump]
        self._rack_settle_flag[rack_idx[jump]] = 1.0
        settling = self._rack_settle_flag[rack_idx]
        s = det.update(ts, x, aux=settling, index=rack_idx)
        fresh = det._state["t_last_s"][rack_idx] != prev
        self.coolant_ref_score[rack_idx[fresh]] = s[fresh]

    def _rack_settling(
        self,
        slots: list[int],
        counts: list[int],
        group: np.ndarray,
        ts_s: np.ndarray,
        power_w: np.ndarray,
    ) -> np.ndarray:
        """Per scored GPU: 1.0 while its rack's load has stepped within RACK_SETTLE_S
        (models/lag.py ``load_step``), else 0.0; keeps the per-slot flags for the rack
        detectors in ``_rack_settle_flag``."""
        sl = np.asarray(slots, dtype=np.int64)
        n_slots = self.hot_until_s.size
        sums = np.bincount(group, weights=np.nan_to_num(power_w), minlength=n_slots)
        rack_w = np.asarray(sums[sl], dtype=np.float64)
        now = np.fmax.reduceat(ts_s, _starts(counts)) if ts_s.size else np.zeros(0)
        dt = now - self._rack_level_t_s[sl]
        step, level = load_step(rack_w, self._rack_level_w[sl], dt)
        fresh = np.isfinite(now) & ~(dt <= 0.0)
        self._rack_level_w[sl] = np.where(fresh, level, self._rack_level_w[sl])
        self._rack_level_t_s[sl] = np.where(fresh, now, self._rack_level_t_s[sl])
        self._rack_stepped_s[sl[fresh & step]] = now[fresh & step]
        flag = np.zeros(n_slots)
        flag[sl] = now - self._rack_stepped_s[sl] < RACK_SETTLE_S
        self._rack_settle_flag = flag
        return flag[group]

    def _score_fleet(
        self, cols: Mapping[str, np.ndarray], idx: np.ndarray, ts_s: np.ndarray, whole: bool
    ) -> None:
        """XID classes, abnormal clock events and the HBM decay chain (frames v2 fields;
        v1 frames read 0 counts and score 0). ``whole``: ``idx`` is every series, in order."""
        sc = self.gpu_score

        def get(name: str) -> np.ndarray:
            return sc[name] if whole else sc[name][idx]

        def put(name: str, v: np.ndarray) -> None:
            if whole:
                sc[name][...] = v
            else:
                sc[name][idx] = v

        xid = cols["xid"].astype(np.int64)
        put("xid_critical", np.isin(xid, XID_CRITICAL))
        put("xid_warning", np.isin(xid, XID_WARNING))
        reasons = cols["clock_event_reasons"].astype(np.uint64)
        put("hw_slowdown", (reasons & np.uint64(ABNORMAL_CLOCK_EVENTS)) != 0)
        if "ecc_corrected" not in cols:
            return
        ecc = cols["ecc_corrected"].astype(np.float64)
        unc = cols["ecc_uncorrected"].astype(np.float64)
        flags = cols["row_remap_flags"].astype(np.int64)
        last, rate, t_prev = get("ecc_last"), get("ecc_rate"), get("ecc_t")
        with np.errstate(invalid="ignore"):
            dt = ts_s - t_prev
            fresh = np.isfinite(ts_s) & ~(dt <= 0.0)
            step = fresh & np.isfinite(t_prev) & (t_prev > 0)
            inc = np.where(step, np.maximum(ecc - last, 0.0) / dt, 0.0)  # counter reset: 0
            a = -np.expm1(-np.log(2.0) * np.where(step, dt, 0.0) / ECC_RATE_HALF_LIFE_S)
            rate = np.where(step, rate + a * (inc - rate), rate)
        put("ecc_rate", rate)
        put("ecc_last", np.where(fresh, ecc, last))
        put("ecc_t", np.where(fresh, ts_s, t_prev))
        hbm = squash(rate, ECC_RATE_THRESHOLD_PER_S)
        hbm = np.where((flags & 0x3) != 0, np.maximum(hbm, 0.95), hbm)  # rows remapped
        put("hbm", np.where(unc > 0, 1.0, hbm))  # uncorrectable: the end of the chain

    def _score_racks(
        self,
        rt: TwinRuntime,
        racks: list[str],
        slots: list[int],
        states: list[Any],
        cols: Mapping[str, np.ndarray],
    ) -> None:
        n = len(racks)
        # the manifold's points per rack: a few dict reads, then whole arrays
        pos: list[int] = []
        read: list[tuple[int, int, float, float, float]] = []
        units = rt.units
        for i, r in enumerate(racks):
            u = units.get(r)
            if u is None:
                continue
            pts = u.points
            p_in = pts.get("inlet_temp_c")
            p_out = pts.get("outlet_temp_c")
            p_flow = pts.get("flow_kg_s")
            if p_in is None or p_out is None or p_flow is None:
                continue
            pos.append(i)
            read.append((p_in[0], p_out[0], p_in[1], p_out[1], p_flow[1]))
        heat = np.full(n, np.nan)
        power = np.full(n, np.nan)
        ts = np.full(n, np.nan)
        if pos:
            at = np.asarray(pos, dtype=np.int64)
            # (times [ms since epoch] < 2**53: exact in float64, as int / 1000.0 makes them)
            t_in, t_out, v_in, v_out, flow = np.array(read, dtype=np.float64).T
            heat[at] = flow * self.cp_j_kgk * (v_out - v_in)
            ts[at] = np.maximum(t_in, t_out) / 1000.0
            power[at] = self._rack_power_w(states, cols)[at]
        det = self.rack["balance"]
        idx = np.asarray(slots, dtype=np.int64)
        prev = det._state["t_last_s"][idx]
        s = det.update(ts, heat, aux=power, index=idx)
        fresh = det._state["t_last_s"][idx] != prev
        self.rack_score[idx[fresh]] = s[fresh]

    def _rack_power_w(self, states: list[Any], cols: Mapping[str, np.ndarray]) -> np.ndarray:
        """Sum of each rack's present GPUs' power [W] (every GPU it holds, in float32 as
        read). Where every rack holds ``width`` GPUs, one row sum over a (racks, width)
        view (pairwise, as a rack's own sum) and a per-rack sum only for racks missing some."""
        n = len(states)
        w = self.width
        if not self._cut and cols["power_w"].size == n * w:  # every rack holds w GPUs
            pw = cols["power_w"].reshape(n, w)
            out = pw.sum(axis=1).astype(np.float64)
            partial = np.flatnonzero(~cols["present"].reshape(n, w).all(axis=1))
        else:
            out = np.zeros(n)
            partial = np.arange(n)
        for i in partial.tolist():
            s = states[i]
            out[i] = float(s.values["power_w"][s.present].sum())
        return out

    def _score_ups(self, rt: TwinRuntime, owned: Callable[[str], bool]) -> None:
        """Measured input against output of every owned UPS module (one call over them)."""
        if not self.ups_ids:
            return
        ids = [u for u in self.ups_ids if u in rt.units and owned(u)]
        if not ids:
            self.ups_score = {}
            return
        pos = {u: i for i, u in enumerate(self.ups_ids)}
        idx = np.array([pos[u] for u in ids], dtype=np.int64)
        inp = np.full(idx.size, np.nan)
        out = np.full(idx.size, np.nan)
        ts = np.full(idx.size, np.nan)
        for i, u in enumerate(ids):  # a few UPS modules per worker: dict reads
            pts = rt.units[u].points
            if "input_power_w" in pts and "output_power_w" in pts:
                t_in, inp[i] = pts["input_power_w"]
                t_out, out[i] = pts["output_power_w"]
                ts[i] = max(int(t_in), int(t_out)) / 1000.0
        prev = self.ups._state["t_last_s"][idx] if self.ups.n_series else np.full(idx.size, 0.0)
        s = self.ups.update(ts, inp, aux=out, index=idx)
        fresh = self.ups._state["t_last_s"][idx] != prev
        self.ups_score = {
            u: float(s[i]) if fresh[i] else self.ups_score.get(u, 0.0) for i, u in enumerate(ids)
        }

    def _score_units(self, view: Mapping[str, Any]) -> None:
        units = view.get("units") or {}
        names: list[str] = []
        exp: list[float] = []
        meas: list[float] = []
        for u, pts in units.items():
            for p, v in pts.items():
                e = v.get("expected")
                m = v.get("measured")
                if e is None or m is None:
                    continue
                names.append(f"{u}/{p}")
                exp.append(float(e))
                meas.append(float(m))
        if not names:
            return
        self._unit_slots(names)
        idx = np.asarray([self.unit_no[k] for k in names], dtype=np.int64)
        e_a = np.asarray(exp)
        ts = float(view.get("ts_ms", 0) or 0) / 1000.0
        push_history(self._unit_hist, self._unit_hist_ts, idx, e_a, ts)
        m_a = np.asarray(meas)
        # The plant follows the model through the loop's lag, and its controls (a dry
        # cooler's fans at a checkpoint dip) can move a view before the model: the reading
        # of the *previous* view is scored, against the expectations of the window that
        # ends now (models/lag.py), so a lead of one view is tolerated as well as a lag.
        prev_m, prev_e = self._unit_prev_m[idx], self._unit_prev_e[idx]
        prev_ts = self._unit_prev_ts[idx]
        self._unit_prev_m[idx], self._unit_prev_e[idx] = m_a, e_a
        self._unit_prev_ts[idx] = ts if ts > 0 else np.nan
        r_det, self._unit_jitter[idx], moving = transient_residual(
            prev_m, prev_e, self._unit_hist[idx], self._unit_jitter[idx]
        )
        self._unit_moved_s[idx[moving]] = ts
        # the drift test waits for the plant to settle after its expectation moved
        settling = (ts - self._unit_moved_s[idx] < UNIT_SETTLE_S).astype(np.float64)
        # KPIs are ratios of points scored on their own; their residual is the lag of
        # numerator against denominator (PUE's steady spread is 2e-5): not scored
        kpi = np.fromiter((k.partition("/")[2] in KPI_POINTS for k in names), bool, len(names))
        r_det[kpi] = np.nan
        r_a = m_a - e_a
        ts_a = prev_ts
        out = np.zeros(idx.size)
        for det in self.unit.values():
            aux = settling if det.aux != "no" else None
            out = np.maximum(out, det.update(ts_a, r_det, aux=aux, index=idx))
        self.unit_score[idx] = out
        self.unit_expected[idx] = e_a
        self.unit_residual[idx] = r_a

    # --- views ---------------------------------------------------------------------------
    def rack_max(self, name: str) -> dict[str, float]:
        """Largest held score of a GPU detector (or ``*_common``) per scored rack."""
        racks = list(self.scored)
        if not racks:
            return {}
        idx = self._index
        vals = self.gpu_score[name][idx]
        starts = np.cumsum([0, *list(self.scored.values())[:-1]])
        mx = np.maximum.reduceat(vals, starts) if vals.size else np.zeros(len(racks))
        return dict(zip(racks, mx.tolist(), strict=True))

    def gpu_scores(self, rack: str, name: str) -> np.ndarray:
        """Held scores of one rack's GPUs for one GPU detector (or ``*_common``)."""
        c = self.scored.get(rack, self.width)
        no = self.rack_no[rack]
        return self.gpu_score[name][no * self.width : no * self.width + c].copy()

    def unit_scores(self) -> dict[str, float]:
        """Held score of every unit point (``unit/point``)."""
        return {k: float(self.unit_score[i]) for k, i in self.unit_no.items()}

    # --- alerts ---------------------------------------------------------------------------
    def feed(
        self,
        engine: AlertEngine,
        names: Callable[[str, int], np.ndarray],
        where: Mapping[str, Mapping[str, str]],
        now_s: float,
        *,
        facility_owner: bool = False,
        unit_where: Mapping[str, Mapping[str, str]] | None = None,
        blast: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Give the engine the score signals of hot racks and units (see HOT_SCORE).

        GPU signals (entity = GPU, owner = rack): ``gpu_residual_score``,
        ``gpu_r_trend_score``, ``gpu_stuck_score``, ``gpu_drift_score`` (own parts), and the
        events ``gpu_rate_score``; rack signals (entity = rack): ``rack_coolant_common_score``
        (the rack moved together) and ``rack_balance_score``; unit signals (owner
        ``facility``): ``unit_residual_score`` (largest of the unit's points).
        """
        gpu_sig = {
            "gpu_residual_score": self.gpu_score["residual"],
            "gpu_r_trend_score": self.gpu_score["r_trend"],
            "gpu_stuck_score": self.gpu_score["stuck"],
            # own drift only: a rack drifting together is reported once, as the rack's
            "gpu_drift_score": np.where(
                self.gpu_score["drift_common"] >= 0.5, 0.0, self.gpu_score["drift"]
            ),
            "gpu_power_own_score": self.gpu_score["power_own"],
            "gpu_xid_critical_bool": self.gpu_score["xid_critical"],
            "gpu_xid_warning_bool": self.gpu_score["xid_warning"],
            "gpu_hw_slowdown_bool": self.gpu_score["hw_slowdown"],
            "gpu_hbm_score": self.gpu_score["hbm"],
            "gpu_rate_score": np.maximum(self.gpu_score["rate_power"], self.gpu_score["rate_temp"]),
        }
        sc = self.gpu_score
        common = np.maximum(sc["residual_common"], sc["r_trend_common"])
        np.maximum(common, sc["drift_common"], out=common)
        if self.scored:
            self._feed_hot_racks(engine, gpu_sig, common, names, where, now_s)
        for ups, score in self.ups_score.items():
            engine.observe(
                "ups_efficiency_score",
                [ups],
                [score],
                owner=ups,
                where=(unit_where or {}).get(ups, {}),
                now_s=now_s,
            )
        if self.cdu_leak:
            # one engine call per signal over every owned CDU (1,570 at the campus: one
            # observe per CDU and signal was ~3,000 Python calls a tick); each its own owner
            cdus = list(self.cdu_leak)
            lv = np.array(list(self.cdu_leak.values()), dtype=np.float64).reshape(-1, 2)
            uw = unit_where or {}
            kw: dict[str, Any] = {
                "where": {c: uw.get(c, {"cdu": c}) for c in cdus},
                "blast": blast or {},
                "now_s": now_s,
            }
            ent = np.asarray(cdus)
            own = np.arange(len(cdus), dtype=np.int64)
            engine.observe_many("cdu_leak_detected_bool", ent, lv[:, 0], own, cdus, **kw)
            engine.observe_many("cdu_reservoir_level_frac", ent, lv[:, 1], own, cdus, **kw)
        if facility_owner and self.unit_no:
            ids, vals = self._unit_max()
            engine.observe(
                "unit_residual_score",
                ids,
                vals,
                owner=FACILITY_KEY,
                where={},
                now_s=now_s,
            )

    def _unit_max(self) -> tuple[list[str], list[float]]:
        """(units, largest score of each unit's points), taken again only when a score or the
        set of points changed: the unit detectors run every 10 s, the feed every second, and
        the campus has ~9,000 points (a Python pass over them each tick)."""
        held = self._unit_max_held
        n = len(self.unit_no)
        if held is None or held[0] != n or not np.array_equal(held[1], self.unit_score):
            per_unit: dict[str, float] = {}
            for key, i in self.unit_no.items():
                u = key.partition("/")[0]
                per_unit[u] = max(per_unit.get(u, 0.0), float(self.unit_score[i]))
            ids = list(per_unit)
            held = self._unit_max_held = (
                n,
                self.unit_score.copy(),
                ids,
                [per_unit[u] for u in ids],
            )
        return list(held[2]), list(held[3])

    def _feed_hot_racks(
        self,
        engine: AlertEngine,
        gpu_sig: Mapping[str, np.ndarray],
        common: np.ndarray,
        names: Callable[[str, int], np.ndarray],
        where: Mapping[str, Mapping[str, str]],
        now_s: float,
    ) -> None:
        """One engine call per signal over the GPUs of every hot rack (whole-array: the
        largest score per rack by ``reduceat``, hot racks by mask); the quiet majority
        costs no Python work per rack."""
        racks = list(self.scored)
        sizes = np.fromiter(self.scored.values(), dtype=np.int64, count=len(racks))
        key = tuple(racks)
        if self._nos_key != key or self._nos.size != len(racks):
            self._nos_key = key
            self._nos = np.fromiter((self.rack_no[r] for r in racks), np.int64, len(racks))
        nos = self._nos
        idx = self._index
        starts = _starts(sizes)
        # every GPU series in order: no gather; one running maximum, not a stacked copy
        whole = self._whole and idx.size == common.size
        stack = np.array(common if whole else common[idx])
        for v in gpu_sig.values():
            np.maximum(stack, v if whole else v[idx], out=stack)
        rmax = np.maximum.reduceat(stack, starts) if stack.size else np.zeros(len(racks))
        hot_now = np.maximum(rmax, self.rack_score[nos]) >= HOT_SCORE
        self.hot_until_s[nos[hot_now]] = now_s + HOT_HOLD_S
        hot = np.flatnonzero(self.hot_until_s[nos] >= now_s)
        if hot.size == 0:
            return
        owners = [racks[i] for i in hot.tolist()]  # the hot racks only
        hsizes = sizes[hot]
        ent = np.concatenate([names(r, int(c)) for r, c in zip(owners, hsizes, strict=True)])
        owner_ix = np.repeat(np.arange(hot.size, dtype=np.int64), hsizes)
        gmask = np.repeat(np.isin(np.arange(len(racks)), hot), sizes)
        gi = idx[gmask]
        kw: dict[str, Any] = {"where": where, "now_s": now_s}
        for sig, arr in gpu_sig.items():
            engine.observe_many(sig, ent, arr[gi], owner_ix, owners, **kw)
        rack_ent = np.asarray(owners)
        rack_ix = np.arange(hot.size, dtype=np.int64)
        cmax = np.maximum.reduceat(common[gi], _starts(hsizes))
        cmax = np.where(hsizes > 0, cmax, 0.0)
        engine.observe_many("rack_coolant_common_score", rack_ent, cmax, rack_ix, owners, **kw)
        bal = self.rack_score[nos[hot]]
        engine.observe_many("rack_balance_score", rack_ent, bal, rack_ix, owners, **kw)

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoints(self, racks: Sequence[str], *, facility: bool = False) -> dict[str, bytes]:
        """Array packs of the detector state and held scores of ``racks`` (and of the unit
        detectors under ``facility`` when asked)."""
        out: dict[str, bytes] = {}
        known = [(r, self.rack_no[r]) for r in racks if r in self.rack_no]
        nos = np.array([no for _, no in known], dtype=np.int64)
        # which fields of which racks are derivable, decided for all racks at once (whole
        # arrays, a (racks, width) view per field): per rack only the dict is assembled
        fields: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        for name, det in self.gpu.items() if known else ():
            for k, v in det._state.items():
                fields.append((f"gpu.{name}.{k}", *self._compact_plan(v, nos, _default_of(det, k))))
        for k in (*GPU_SCORES, *GPU_STATE) if known else ():
            fields.append((f"score.{k}", *self._compact_plan(self.gpu_score[k], nos, 0.0)))
        for j, (rack, no) in enumerate(known):
            arrays: dict[str, np.ndarray] = {
                "width": np.array([self.width]),
                "format": np.array([CHECKPOINT_FORMAT]),
            }
            for fname, per_rack, is_default, is_const in fields:
                if is_default[j]:
                    continue
                if is_const[j]:
                    arrays[f"{fname}@1"] = per_rack[j, :1]
                else:
                    arrays[fname] = per_rack[j]
            for name, det in self.rack.items():
                for k, v in det._state.items():
                    arrays[f"rack.{name}.{k}"] = v[no : no + 1]
            arrays["score.rack"] = self.rack_score[no : no + 1]
            arrays["score.coolant_ref"] = self.coolant_ref_score[no : no + 1]
            out[rack] = pack_arrays(arrays)
        pos = {u: i for i, u in enumerate(self.ups_ids)}
        for ups in self.ups_score:  # the modules scored (owned) in the last tick
            i = pos[ups]
            arrays = {
                "format": np.array([CHECKPOINT_FORMAT]),
                "score.ups": np.array([self.ups_score[ups]]),
            }
            for k, v in self.ups._state.items():
                arrays[f"ups.{k}"] = v[i : i + 1]
            out[ups] = pack_arrays(arrays)
        if facility and self.unit_no:
            keys = sorted(self.unit_no, key=self.unit_no.__getitem__)
            # one UTF-8 text, not a fixed-width UTF-32 array (4 bytes a character, padded)
            text = np.frombuffer("\n".join(keys).encode(), dtype=np.uint8)
            arrays = {"keys_utf8": text, "format": np.array([CHECKPOINT_FORMAT])}
            for name, det in self.unit.items():
                for k, v in det._state.items():
                    _put_compact(arrays, f"unit.{name}.{k}", v, _default_of(det, k))
            arrays["score.unit"] = self.unit_score
            # compressed: ~1.1 MB raw at the campus, over Kafka's 1 MB message limit
            out[FACILITY_KEY] = pack_arrays(arrays, compress=True)
        return out

    def _compact_plan(
        self, v: np.ndarray, nos: np.ndarray, default: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(per-rack view (racks, width, ...), rack at ``default`` everywhere, rack whose
        series all hold one row) of a per-GPU state array, for the racks ``nos``."""
        per_rack = v[: (v.shape[0] // self.width) * self.width].reshape(
            -1, self.width, *v.shape[1:]
        )[nos]
        axes = tuple(range(1, per_rack.ndim))
        nan_d = np.isnan(default)
        at_default = np.isnan(per_rack) if nan_d else per_rack == default
        first = per_rack[:, :1]
        same = (per_rack == first) | (np.isnan(per_rack) & np.isnan(first))
        return per_rack, at_default.all(axis=axes), same.all(axis=axes)

    def restore(self, data: Mapping[str, bytes]) -> int:
        """Take checkpoints (key -> bytes of :meth:`checkpoints`); returns how many were
        taken. A bad or foreign checkpoint is skipped, logged and counted, never raised."""
        taken = 0
        for key, blob in data.items():
            try:
                arrays = unpack_arrays(blob)
                if key == FACILITY_KEY:
                    self._restore_units(arrays)
                elif key in self.ups_ids:
                    self._restore_ups(key, arrays)
                else:
                    self._restore_rack(key, arrays)
                taken += 1
            except Exception as exc:  # a bad checkpoint must not stop the worker
                self.bad_checkpoints += 1
                log.warning("skipped a bad detector checkpoint of %s: %r", key, exc)
        return taken

    def _restore_rack(self, rack: str, arrays: Mapping[str, np.ndarray]) -> None:
        if int(arrays["width"][0]) != self.width:
            raise ValueError(f"width {int(arrays['width'][0])}, expected {self.width}")
        # check every field before writing any, so a bad pack leaves the rack untouched
        plan: list[tuple[np.ndarray, Any, np.ndarray]] = []
        no = self._slot(rack)
        sl = slice(no * self.width, (no + 1) * self.width)
        for name, det in self.gpu.items():
            for k, v in det._state.items():
                src = _get_compact(arrays, f"gpu.{name}.{k}", v[sl].shape, _default_of(det, k))
                plan.append((v, sl, src))
        for k in (*GPU_SCORES, *GPU_STATE):
            dst = self.gpu_score[k]
            plan.append((dst, sl, _get_compact(arrays, f"score.{k}", dst[sl].shape, 0.0)))
        for name, det in self.rack.items():
            for k, v in det._state.items():
                src = _get_compact(
                    arrays, f"rack.{name}.{k}", v[no : no + 1].shape, _default_of(det, k)
                )
                plan.append((v, slice(no, no + 1), src))
        plan.append((self.rack_score, slice(no, no + 1), np.asarray(arrays["score.rack"])))
        held = _get_compact(arrays, "score.coolant_ref", (1,), 0.0)
        plan.append((self.coolant_ref_score, slice(no, no + 1), held))
        for dst, where, src in plan:
            if dst[where].shape != src.shape:
                raise ValueError(f"shape {src.shape}, expected {dst[where].shape}")
        for dst, where, src in plan:
            dst[where] = src

    def _restore_ups(self, ups: str, arrays: Mapping[str, np.ndarray]) -> None:
        i = list(self.ups_ids).index(ups)
        if self.ups.n_series <= i:
            self.ups.resize(len(self.ups_ids))
        src = {k: np.asarray(arrays[f"ups.{k}"], dtype=np.float64) for k in self.ups._state}
        for k, v in src.items():
            if v.shape != (1,):
                raise ValueError(f"ups.{k}: shape {v.shape}, expected (1,)")
        for k, v in src.items():
            self.ups._state[k][i] = v[0]
        self.ups_score[ups] = float(np.asarray(arrays["score.ups"], dtype=np.float64)[0])

    def _restore_units(self, arrays: Mapping[str, np.ndarray]) -> None:
        if "keys_utf8" in arrays:
            raw = np.asarray(arrays["keys_utf8"], dtype=np.uint8).tobytes().decode()
            keys = raw.split("\n") if raw else []
        else:  # format 1
            keys = [str(k) for k in arrays["keys"].tolist()]
        self._unit_slots(keys)
        idx = np.asarray([self.unit_no[k] for k in keys], dtype=np.int64)
        plan: list[tuple[np.ndarray, np.ndarray]] = []
        for name, det in self.unit.items():
            for k, v in det._state.items():
                shape = (idx.size, *v.shape[1:])
                src = _get_compact(arrays, f"unit.{name}.{k}", shape, _default_of(det, k))
                if src.shape != shape:
                    raise ValueError(f"unit.{name}.{k}: shape {src.shape} for {idx.size} keys")
                plan.append((v, src))
        score = np.asarray(arrays["score.unit"], dtype=np.float64)
        if score.shape != (idx.size,):
            raise ValueError("score.unit: wrong shape")
        for dst, src in plan:
            dst[idx] = src
        self.unit_score[idx] = score


def _identified(est: Any, series: np.ndarray) -> np.ndarray:
    """Whether the estimator has identified the R of ``series`` [0/1]: asked of those series
    alone where they are few (the GPUs not identified yet), in one pass over all else."""
    at = getattr(est, "r_identified_at", None)
    if at is None or 4 * series.size > est.n_series:
        return np.asarray(est.r_identified, dtype=np.float64)[series]
    return np.asarray(at(series), dtype=np.float64)


def detect_runtime_for_site(site: Any) -> DetectRuntime:
    """The detector runtime of a site (its racks, GPUs per rack and rack-loop coolant)."""
    from twin.fluids import cp_j_kgk, get_fluid

    cp = float(cp_j_kgk(get_fluid(site.tcs.fluid), 40.0))
    pw = site.power
    coeff = pw.ups_eco_loss_coeff if pw.ups_mode == "eco" else pw.ups_loss_coeff
    return DetectRuntime(
        list(site.rack_ids),
        int(site.n_gpus),
        cp_j_kgk=cp,
        ups_ids=tuple(site.ups_ids),
        ups=UpsEfficiency(len(site.ups_ids), rated_w=pw.ups_rated_w, loss_coeff=tuple(coeff)),
    )


class DetectCollector(Collector):
    """/metrics of the detectors, with bounded label sets.

    ``twin_detector_rack_score{detector,rack}``: largest score of each detector per owned
    rack; ``twin_detector_top_gpu_score{detector,gpu}``: the ``top_k`` highest GPUs per
    detector; ``twin_rack_residual_max_abs_k{rack}``; per plant-unit point with a facility
    expectation ``twin_unit_expected``, ``twin_unit_residual`` and ``twin_unit_score``
    ``{unit,point}``.
    """

    def __init__(self, det: DetectRuntime, rt: TwinRuntime, top_k: int = 10) -> None:
        self.det = det
        self.rt = rt
        self.top_k = top_k

    def collect(self) -> Iterator[Any]:
        d = self.det
        g = GaugeMetricFamily(
            "twin_detector_rack_score",
            "Largest detector score [0-1] of a rack (GPU detectors, *_common: whole rack moved).",
            labels=["detector", "rack"],
        )
        top = GaugeMetricFamily(
            "twin_detector_top_gpu_score",
            "The highest-scoring GPUs of each detector (top k).",
            labels=["detector", "gpu"],
        )
        names = list(d.scored)
        idx = d._index if d.scored else np.zeros(0, dtype=np.int64)
        for name in GPU_SCORES:
            for rack, v in d.rack_max(name).items():
                g.add_metric([name, rack], v)
            if idx.size:
                vals = d.gpu_score[name][idx]
                k = min(self.top_k, vals.size)
                best = np.argpartition(-vals, k - 1)[:k]
                for j in best.tolist():
                    series = int(idx[j])
                    rack = _rack_of(d, series // d.width)
                    top.add_metric([name, f"{rack}/g{series % d.width}"], float(vals[j]))
        for rack in names:
            no = d.rack_no[rack]
            g.add_metric(["balance", rack], float(d.rack_score[no]))
        yield g
        yield top
        res = GaugeMetricFamily(
            "twin_rack_residual_max_abs_k",
            "Largest |die temperature - model| of a rack's GPUs [K].",
            labels=["rack"],
        )
        for rack in names:
            if rack in self.rt.models:
                m = self.rt.models.summary(rack).get("residual_max_abs_k")
                if m is not None:
                    res.add_metric([rack], float(m))
        yield res
        fams = {
            "expected": GaugeMetricFamily(
                "twin_unit_expected",
                "Facility model's expected value of a plant point [point unit].",
                labels=["unit", "point"],
            ),
            "residual": GaugeMetricFamily(
                "twin_unit_residual",
                "Measured minus expected of a plant point [point unit].",
                labels=["unit", "point"],
            ),
            "score": GaugeMetricFamily(
                "twin_unit_score",
                "Detector score [0-1] of a plant point's residual (z-score, drift).",
                labels=["unit", "point"],
            ),
        }
        for key, i in d.unit_no.items():
            unit, _, point = key.partition("/")
            for kind, arr in (
                ("expected", d.unit_expected),
                ("residual", d.unit_residual),
                ("score", d.unit_score),
            ):
                if np.isfinite(arr[i]):
                    fams[kind].add_metric([unit, point], float(arr[i]))
        yield from fams.values()


def _rack_of(d: DetectRuntime, no: int) -> str:
    for rack, n in d.rack_no.items():
        if n == no:
            return rack
    return "?"
