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
  ``unit_drift`` (CUSUM) of the residual measured - expected;
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
    return {"unit_z": RobustZScore(threshold=6.0, min_scale=0.05), "unit_drift": Drift(h=10.0)}


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
        racks = [r for r, s in rt.racks.items() if owned(r) and s.present.any()]
        counts = [min(rt.racks[r].present.size, self.width) for r in racks]
        slots = [self._slot(r) for r in racks]
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
            self._score_gpus(rt, racks, counts, slots)
            self._score_racks(rt, racks, slots)
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
        return self._index

    def _score_gpus(
        self, rt: TwinRuntime, racks: list[str], counts: list[int], slots: list[int]
    ) -> None:
        idx = self._gpu_index(slots, counts)
        group = idx // self.width
        st = [rt.racks[r] for r in racks]
        present = np.concatenate([s.present[:c] for s, c in zip(st, counts, strict=True)])
        ts_s = np.concatenate([s.ts_ms[:c] for s, c in zip(st, counts, strict=True)]) / 1000.0
        ts_s = np.where(present, ts_s, np.nan)
        temp = np.concatenate(
            [s.values["temp_gpu_c"][:c] for s, c in zip(st, counts, strict=True)]
        ).astype(np.float64)
        power = np.concatenate(
            [s.values["power_w"][:c] for s, c in zip(st, counts, strict=True)]
        ).astype(np.float64)
        # the fitted model's residual and R, at the model's own sample times
        res = np.full(idx.size, np.nan)
        r_fit = np.full(idx.size, np.nan)
        t_fit = np.full(idx.size, np.nan)
        ref_off = np.full(idx.size, np.nan)  # the reference's apparent offset [K]
        pool = rt.models
        start = 0
        pieces = []
        for r, c in zip(racks, counts, strict=True):
            ms = pool.slots.get(r)
            if ms is not None:
                k = min(c, ms.size)
                pieces.append((start, ms[:k]))
            start += c
        if pieces:
            dst = np.concatenate([start + np.arange(m.size) for start, m in pieces])
            src = np.concatenate([m for _, m in pieces])
            est = pool.estimator
            res[dst] = est.residual_k[src]
            r_fit[dst] = est.r_k_w[src]
            t_fit[dst] = pool.last_ts_ms[src] / 1000.0
            fitted = est.n_updates[src] > 0
            off = getattr(est, "coolant_offset_k", None)
            if off is not None:
                ref_off[dst] = off[src] - est.steady_residual_k[src]
            ident = getattr(est, "r_identified", None)
            if ident is not None:
                # R is watched once the estimator has identified it (known to 1 %, which
                # takes power changes): before, it is the prior's and moves as the fit
                # converges (a false R trend on every GPU of a new rack). Sticky: a GPU
                # that was identified stays watched while its power holds.
                seen = self.gpu_score["r_ident"]
                gi = idx[dst]
                seen[gi] = np.maximum(seen[gi], np.asarray(ident, dtype=np.float64)[src])
                fitted &= seen[gi] > 0.0
            r_fit[dst[~fitted]] = np.nan
        sc = self.gpu_score
        d = self.gpu
        inputs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {
            "residual": (t_fit, res, None),
            "r_trend": (t_fit, r_fit, None),
            "stuck": (ts_s, temp, power),
            "rate_power": (ts_s, power, None),
            "rate_temp": (ts_s, temp, None),
            "drift": (t_fit, res, None),
            "power_own": (ts_s, power, None),
        }
        for name, (t, x, aux) in inputs.items():
            det = d[name]
            prev_t = det._state["t_last_s"][idx]
            grp = group if name in ("residual", "r_trend", "power_own") else None
            s = det.update(t, x, aux=aux, group=grp, index=idx)
            fresh = det._state["t_last_s"][idx] != prev_t
            sc[name][idx[fresh]] = s[fresh]
            if name == "power_own":
                sc[name][idx[fresh]] = getattr(det, "last_own", s)[fresh]
            elif name in ("residual", "r_trend"):
                g = det  # _Grouped: own and common parts of the same call
                own = getattr(g, "last_own", s)
                common = getattr(g, "last_common", np.zeros_like(s))
                sc[name][idx[fresh]] = own[fresh]
                sc[f"{name}_common"][idx[fresh]] = common[fresh]
        # A drift the whole rack shares (its median GPU drifts) is the rack's coolant or its
        # inlet sensor, not each GPU: the median over the rack is its common part.
        lay = self._layout
        if lay is None or not np.array_equal(lay.group, group):
            lay = self._layout = GroupLayout(group)
        med, _ = lay.median(sc["drift"][idx], np.ones(idx.size, dtype=bool))
        self._score_coolant_ref(lay, slots, counts, t_fit, ref_off)
        sc["drift_common"][idx] = np.maximum(med, self.coolant_ref_score[group])
        self._score_fleet(st, counts, idx, ts_s)

    def _score_coolant_ref(
        self,
        lay: GroupLayout,
        slots: list[int],
        counts: list[int],
        t_fit: np.ndarray,
        ref_off: np.ndarray,
    ) -> None:
        """Each rack's coolant reference against its GPUs (one call over the racks): the
        fitted offset less the median steady residual of its fitted GPUs [K]."""
        ok = np.isfinite(ref_off)
        med, _ = lay.median(ref_off, ok)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        x = med[starts]
        ts = np.fmax.reduceat(np.where(ok, t_fit, np.nan), starts)
        det = self.rack["coolant_ref"]
        rack_idx = np.asarray(slots, dtype=np.int64)
        prev = det._state["t_last_s"][rack_idx]
        s = det.update(ts, x, index=rack_idx)
        fresh = det._state["t_last_s"][rack_idx] != prev
        self.coolant_ref_score[rack_idx[fresh]] = s[fresh]

    def _score_fleet(
        self, st: list[Any], counts: list[int], idx: np.ndarray, ts_s: np.ndarray
    ) -> None:
        """XID classes, abnormal clock events and the HBM decay chain (frames v2 fields;
        v1 frames read 0 counts and score 0)."""
        sc = self.gpu_score

        def col(name: str) -> np.ndarray:
            parts = [s.values[name][:c] for s, c in zip(st, counts, strict=True)]
            return np.concatenate(parts)

        xid = col("xid").astype(np.int64)
        sc["xid_critical"][idx] = np.isin(xid, XID_CRITICAL)
        sc["xid_warning"][idx] = np.isin(xid, XID_WARNING)
        reasons = col("clock_event_reasons").astype(np.uint64)
        sc["hw_slowdown"][idx] = (reasons & np.uint64(ABNORMAL_CLOCK_EVENTS)) != 0
        if "ecc_corrected" not in st[0].values:
            return
        ecc = col("ecc_corrected").astype(np.float64)
        unc = col("ecc_uncorrected").astype(np.float64)
        flags = col("row_remap_flags").astype(np.int64)
        last, rate, t_prev = sc["ecc_last"][idx], sc["ecc_rate"][idx], sc["ecc_t"][idx]
        with np.errstate(invalid="ignore"):
            dt = ts_s - t_prev
            fresh = np.isfinite(ts_s) & ~(dt <= 0.0)
            step = fresh & np.isfinite(t_prev) & (t_prev > 0)
            inc = np.where(step, np.maximum(ecc - last, 0.0) / dt, 0.0)  # counter reset: 0
            a = -np.expm1(-np.log(2.0) * np.where(step, dt, 0.0) / ECC_RATE_HALF_LIFE_S)
            rate = np.where(step, rate + a * (inc - rate), rate)
        sc["ecc_rate"][idx] = rate
        sc["ecc_last"][idx] = np.where(fresh, ecc, last)
        sc["ecc_t"][idx] = np.where(fresh, ts_s, t_prev)
        hbm = squash(rate, ECC_RATE_THRESHOLD_PER_S)
        hbm = np.where((flags & 0x3) != 0, np.maximum(hbm, 0.95), hbm)  # rows remapped
        sc["hbm"][idx] = np.where(unc > 0, 1.0, hbm)  # uncorrectable: the end of the chain

    def _score_racks(self, rt: TwinRuntime, racks: list[str], slots: list[int]) -> None:
        n = len(racks)
        heat = np.full(n, np.nan)
        power = np.full(n, np.nan)
        ts = np.full(n, np.nan)
        for i, r in enumerate(racks):  # per rack, not per GPU: a few dict reads
            u = rt.units.get(r)
            if u is None:
                continue
            pts = u.points
            try:
                t_in, v_in = pts["inlet_temp_c"]
                t_out, v_out = pts["outlet_temp_c"]
                _, flow = pts["flow_kg_s"]
            except KeyError:
                continue
            rs = rt.racks[r]
            heat[i] = float(flow) * self.cp_j_kgk * (float(v_out) - float(v_in))
            power[i] = float(rs.values["power_w"][rs.present].sum())
            ts[i] = max(int(t_in), int(t_out)) / 1000.0
        det = self.rack["balance"]
        idx = np.asarray(slots, dtype=np.int64)
        prev = det._state["t_last_s"][idx]
        s = det.update(ts, heat, aux=power, index=idx)
        fresh = det._state["t_last_s"][idx] != prev
        self.rack_score[idx[fresh]] = s[fresh]

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
        r_a = np.asarray(meas) - e_a
        ts = float(view.get("ts_ms", 0) or 0) / 1000.0
        ts_a = np.full(idx.size, ts if ts > 0 else np.nan)
        out = np.zeros(idx.size)
        for det in self.unit.values():
            out = np.maximum(out, det.update(ts_a, r_a, index=idx))
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
        common = np.maximum.reduce(
            [self.gpu_score[k] for k in ("residual_common", "r_trend_common", "drift_common")]
        )
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
        for cdu, (leak, level) in self.cdu_leak.items():
            kw: dict[str, Any] = {
                "owner": cdu,
                "where": (unit_where or {}).get(cdu, {"cdu": cdu}),
                "blast": (blast or {}).get(cdu, ()),
                "now_s": now_s,
            }
            engine.observe("cdu_leak_detected_bool", [cdu], [leak], **kw)
            engine.observe("cdu_reservoir_level_frac", [cdu], [level], **kw)
        if facility_owner and self.unit_no:
            per_unit: dict[str, float] = {}
            for key, i in self.unit_no.items():
                u = key.partition("/")[0]
                per_unit[u] = max(per_unit.get(u, 0.0), float(self.unit_score[i]))
            ids = list(per_unit)
            engine.observe(
                "unit_residual_score",
                ids,
                [per_unit[u] for u in ids],
                owner=FACILITY_KEY,
                where={},
                now_s=now_s,
            )

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
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        stack = np.maximum.reduce([v[idx] for v in gpu_sig.values()])
        stack = np.maximum(stack, common[idx])
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
        cmax = np.maximum.reduceat(common[gi], np.concatenate([[0], np.cumsum(hsizes)[:-1]]))
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
            out[FACILITY_KEY] = pack_arrays(arrays)
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
