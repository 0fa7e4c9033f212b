"""The facility model run beside the measurements: the "twin" of the digital twin.

A :class:`FacilityTracker` holds a :class:`~twin.state.FacilityState` and steps it with
twin/step.py under the **inputs** it has seen in telemetry, so that every plant sensor and
every GPU has a model expectation to show beside its measurement, and ``twin whatif
--from-url`` can start from the model state of a running worker. Pure numpy: no I/O, no
clock (time comes in with each :meth:`FacilityTracker.advance`).

The tracker is deliberately open loop: only model *inputs* are taken from telemetry, never
its outputs, so a fault that is not an input (a fouled cold plate, a worn pump, a drifting
sensor) shows as measured minus expected instead of being absorbed into the state.

Measured points used as inputs (``observe_*``); everything else is an output and only
compared:

============================  ==============================================================
telemetry                     model input (twin.step.StepInputs)
============================  ==============================================================
GPU ``util_pct``              ``util`` = util_pct / 100 (per GPU, or a rack mean)
GPU ``power_limit_w``         ``power_limit_w`` (enforced limit)
GPU ``clock_event_reasons``   ``gpu_stuck`` when HW slowdown (0x8) is set without HW thermal
                              slowdown (0x40): an external slowdown; the model's own thermal
                              throttle sets 0x8 only together with 0x40 (twin/gpu.py)
``OUTDOOR/air_temp_c``        ``outdoor_c``
``CDUnn/pump_speed_frac``     ``pump_on`` = speed > 1 % (a running pump turns at >= its VFD
                              floor, 20 %; twin/cdu.py)
``DCnn/fan_speed_frac``       ``dc_fan_ok`` = False when the unit's fans stand still while
                              another unit's turn (the BMS isolates a unit with failed fans;
                              working units share one speed, twin/plant.py dry_coolers)
``UPSnn/on_battery_bool``     ``ups_mains_ok`` = False when on battery, or when
``UPSnn/battery_soc_frac``    the battery is flat (static bypass: with mains a module
                              recharges at once, twin/power.py)
message timestamps            ``day_of_year`` (district-heating season)
============================  ==============================================================

Not inputs, so left at their nominal values: cold-plate fouling (1), pump health (1: a worn
pump shows as a higher measured pump speed than expected), and the loop setpoints (the site
file's values).

Measured die temperatures (``temp_gpu_c`` per GPU, or a rack's hottest die) are not inputs
either; they enter only the thermal headroom shown to an operator (:meth:`rack_headroom`):
the distance of the worst GPU, measured or predicted, from its slowdown limit, so that a
GPU the model does not know is hot (a fouled plate) still shows its real headroom. A reading
older than MEASURED_MAX_AGE_S is not used (a GPU that stopped reporting).

Inputs hold their last observed value (zero-order hold) until the next observation; calling
``observe_*`` with the readings stamped ``ts`` and then ``advance(ts)`` applies them over the
interval that ends at ``ts``, which is how :class:`twin.sim.Simulator` samples its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin import kpi as kpi_m
from twin import sensors
from twin.errors import TwinError
from twin.gpu import REASON_HW_SLOWDOWN, REASON_HW_THERMAL
from twin.site import Site
from twin.snapshot import SnapshotError, TwinSnapshot
from twin.state import FacilityState
from twin.step import StepInputs, initial_state, step
from twin.weather import day_of_year, local_hour

FloatArray = NDArray[np.float64]

#: Warm-up at the first advance: 30 x 60 s, as twin/sim.py WARMUP_STEPS, brings every loop
#: (FWS transport lag ~2 min, CDU mixing ~16 s) to its operating point under the first inputs.
WARMUP_STEPS = 30
WARMUP_DT_S = 60.0
#: A pump below this speed [1] is stopped: a running VFD turns at >= min_speed_frac, 20 %
#: (twin/cdu.py CduParams, est.).
PUMP_STOPPED_FRAC = 0.01
#: Age [s] beyond which a measured die temperature no longer counts for the headroom.
MEASURED_MAX_AGE_S = 60.0
_NEVER_MS = np.iinfo(np.int64).min // 2  # "never measured", far older than any max age
_EXTRA = "tracker."
_HW_BITS = REASON_HW_SLOWDOWN | REASON_HW_THERMAL


class TrackerError(TwinError):
    """An observation the tracker cannot use (shapes that disagree, a bad step size)."""


def state_kpis(site: Site, state: FacilityState, ts_ms: int) -> dict[str, float]:
    """KPIs of ``state`` (same keys and definitions as :meth:`twin.sim.Simulator.kpis`).

    carbon_g_per_kwh and cue_kg_kwh are left out for a site whose carbon model is a CSV
    file: reading it is I/O, which this module does not do.
    """
    carbon = None
    if site.carbon.model in kpi_m.CARBON_MODELS:
        hour = local_hour(ts_ms, site.weather.utc_offset_h)
        carbon = float(kpi_m.carbon_intensity_g_per_kwh(day_of_year(ts_ms), hour, site.carbon))
    return sensors.state_kpis(site, state, carbon)


def state_points(site: Site, state: FacilityState, ts_ms: int) -> dict[str, dict[str, float]]:
    """What each plant sensor reads when ``state`` is the truth: unit id -> point -> value,
    with the unit ids and point names of :class:`twin.sim.SimFrame` ``thermal`` and ``power``
    (merged: their unit ids do not overlap). SITE carries the KPI points when IT runs."""
    pts: dict[str, dict[str, float]] = {}
    for _kind, ids, group in sensors.point_groups(site, state):
        pts |= sensors.units(ids, group)
    if state.it_power_w > 0.0:
        sensors.add_site_kpis(pts["SITE"], state_kpis(site, state, ts_ms))
    return pts


class FacilityTracker:
    """The facility model kept in step with measured telemetry (see the module docstring).

    site: the facility; start_ms [ms since epoch, UTC]: the clock origin of ``state.t_s``
    and the time before the first :meth:`advance`; outdoor_c [C]: outdoor temperature until
    OUTDOOR is observed; site_file: path of the site file, written into snapshots so that
    ``twin whatif --from-url`` loads the same site ("" = the default site file).
    """

    def __init__(
        self, site: Site, *, start_ms: int, outdoor_c: float = 5.0, site_file: str = ""
    ) -> None:
        self.site = site
        self.site_file = site_file
        self.start_ms = int(start_ms)
        r, g = site.n_racks, site.n_gpus
        self._rack_index = {rid: i for i, rid in enumerate(site.rack_ids)}
        self._cdu_index = {u: i for i, u in enumerate(site.cdu_ids)}
        self._dc_index = {u: i for i, u in enumerate(site.dc_ids)}
        self._ups_index = {u: i for i, u in enumerate(site.ups_ids)}
        self._util = np.zeros((r, g))
        self._power_limit_w = np.full((r, g), site.gpu.tdp_w)
        self._gpu_stuck = np.zeros((r, g), dtype=bool)
        self._fouling = np.ones((r, g))  # not an input: fouling shows in the residuals
        self._pump_health = np.ones(len(site.cdu_ids))  # not an input: see module docstring
        self._pump_on = np.ones(len(site.cdu_ids), dtype=bool)
        self._dc_fan_speed = np.full(len(site.dc_ids), np.nan)  # last measured, NaN = unknown
        self._ups_mains_ok = np.ones(len(site.ups_ids), dtype=bool)
        # measured die temperatures [C] and when [ms]: per GPU, and a rack's hottest die for
        # racks known only by their summary (not inputs: only the headroom reads them)
        self._meas_temp_c = np.full((r, g), np.nan)
        self._meas_ts_ms = np.full((r, g), _NEVER_MS, dtype=np.int64)
        self._meas_rack_max_c = np.full(r, np.nan)
        self._meas_rack_ts_ms = np.full(r, _NEVER_MS, dtype=np.int64)
        self._outdoor_c = float(outdoor_c)
        self._state = initial_state(site, outdoor_c=self._outdoor_c)
        self._ts_ms = self.start_ms
        self._started = False  # the first advance sets the time
        self._warm = True  # ... and warms up a fresh model

    # --- observations (inputs)
    def observe_rack_gpus(
        self,
        rack: str,
        gpu: NDArray[Any],
        util_pct: NDArray[Any],
        power_limit_w: NDArray[Any],
        *,
        clock_event_reasons: NDArray[Any] | None = None,
        temp_gpu_c: NDArray[Any] | None = None,
        ts_ms: int | NDArray[Any] | None = None,
    ) -> None:
        """Latest measured inputs of one rack's GPUs: indices ``gpu`` [0, n_gpus) (NVML index),
        utilisation ``util_pct`` [%], enforced ``power_limit_w`` [W] and optionally the NVML
        ``clock_event_reasons`` bits and the measured die temperature ``temp_gpu_c`` [C]
        (for the headroom only) read at ``ts_ms`` [ms since epoch, one or per GPU; default:
        the model's time]. Racks not in the site, GPU indices out of range and non-finite values are
        ignored; arrays of different lengths raise TrackerError."""
        r = self._rack_index.get(rack)
        if r is None:
            return
        idx = np.asarray(gpu).reshape(-1)
        util = np.asarray(util_pct, dtype=np.float64).reshape(-1)
        limit = np.asarray(power_limit_w, dtype=np.float64).reshape(-1)
        bits = None if clock_event_reasons is None else np.asarray(clock_event_reasons).ravel()
        temp = None if temp_gpu_c is None else np.asarray(temp_gpu_c, dtype=np.float64).ravel()
        n = idx.size
        if temp is not None and temp.size != n:
            raise TrackerError(
                f"rack {rack}: expected temp_gpu_c of the length of gpu ({n}), got {temp.size}"
            )
        t_ms = None
        if temp is not None:
            t_ms = np.asarray(self._ts_ms if ts_ms is None else ts_ms, dtype=np.int64).ravel()
            if t_ms.size not in (1, n):
                raise TrackerError(f"rack {rack}: expected ts_ms of length 1 or {n}")
            t_ms = np.broadcast_to(t_ms, (n,))
        if util.size != n or limit.size != n or (bits is not None and bits.size != n):
            raise TrackerError(
                f"rack {rack}: expected gpu, util_pct, power_limit_w (and clock_event_reasons) "
                f"of one length, got {n}, {util.size}, {limit.size}"
                + ("" if bits is None else f", {bits.size}")
            )
        if n == 0:
            return
        # hot path (one call per rack frame): whole-array checks first, masks only when needed
        if int(idx.max()) >= self.site.n_gpus or (idx.dtype.kind != "u" and int(idx.min()) < 0):
            ok = (idx >= 0) & (idx < self.site.n_gpus)
            idx, util, limit = idx[ok], util[ok], limit[ok]
            bits = None if bits is None else bits[ok]
            temp = None if temp is None else temp[ok]
            t_ms = None if t_ms is None else t_ms[ok]
            if idx.size == 0:
                return
        u_row, l_row = self._util[r], self._power_limit_w[r]
        if math.isfinite(float(util.sum())):
            u_row[idx] = np.minimum(np.maximum(util, 0.0), 100.0) * 0.01
        else:
            u_ok = np.isfinite(util)
            u_row[idx[u_ok]] = np.minimum(np.maximum(util[u_ok], 0.0), 100.0) * 0.01
        if math.isfinite(float(limit.sum())) and float(limit.min()) > 0.0:
            l_row[idx] = limit
        else:
            l_ok = np.isfinite(limit) & (limit > 0.0)
            l_row[idx[l_ok]] = limit[l_ok]
        if bits is not None:
            b = bits.astype(np.uint64, copy=False)
            self._gpu_stuck[r][idx] = (b & _HW_BITS) == REASON_HW_SLOWDOWN
        if temp is not None and t_ms is not None:
            t_ok = np.isfinite(temp)
            self._meas_temp_c[r][idx[t_ok]] = temp[t_ok]
            self._meas_ts_ms[r][idx[t_ok]] = t_ms[t_ok]

    def observe_rack_mean(
        self,
        rack: str,
        util_pct_mean: float,
        *,
        power_limit_w: float | None = None,
        temp_gpu_max_c: float | None = None,
        ts_ms: int | None = None,
    ) -> None:
        """A rack known only by its summary (racks of other workers): every GPU at the mean
        utilisation ``util_pct_mean`` [%] and, if given, the power limit [W]; its hottest
        measured die ``temp_gpu_max_c`` [C] read at ``ts_ms`` (headroom only)."""
        r = self._rack_index.get(rack)
        if r is None:
            return
        if temp_gpu_max_c is not None and math.isfinite(float(temp_gpu_max_c)):
            self._meas_rack_max_c[r] = float(temp_gpu_max_c)
            self._meas_rack_ts_ms[r] = self._ts_ms if ts_ms is None else int(ts_ms)
        u = float(util_pct_mean)
        if math.isfinite(u):
            self._util[r] = min(max(u, 0.0), 100.0) / 100.0
        if power_limit_w is not None and math.isfinite(power_limit_w) and power_limit_w > 0.0:
            self._power_limit_w[r] = float(power_limit_w)

    def observe_points(self, unit: str, points: Mapping[str, float]) -> None:
        """Plant readings of one unit; the points that are model inputs (module docstring)
        are taken, all others and unknown units are ignored."""

        def get(name: str) -> float | None:
            v = points.get(name)
            if v is None:
                return None
            f = float(v)
            return f if math.isfinite(f) else None

        if unit == "OUTDOOR":
            t = get("air_temp_c")
            if t is not None:
                self._outdoor_c = t
        elif unit in self._cdu_index:
            s = get("pump_speed_frac")
            if s is not None:
                self._pump_on[self._cdu_index[unit]] = s > PUMP_STOPPED_FRAC
        elif unit in self._dc_index:
            s = get("fan_speed_frac")
            if s is not None:
                self._dc_fan_speed[self._dc_index[unit]] = s
        elif unit in self._ups_index:
            on_batt, soc = get("on_battery_bool"), get("battery_soc_frac")
            if on_batt is None and soc is None:
                return
            lost = (on_batt is not None and on_batt >= 0.5) or (soc is not None and soc <= 1e-6)
            self._ups_mains_ok[self._ups_index[unit]] = not lost

    def _dc_fan_ok(self) -> NDArray[np.bool_]:
        speed = self._dc_fan_speed
        turning = bool(np.any(speed > 0.0))
        return ~(turning & (speed <= 0.0))

    def inputs(self, ts_ms: int | None = None) -> StepInputs:
        """The model inputs as last observed (fresh arrays: safe to keep or change)."""
        t = self._ts_ms if ts_ms is None else ts_ms
        return StepInputs(
            util=self._util.copy(),
            power_limit_w=self._power_limit_w.copy(),
            outdoor_c=self._outdoor_c,
            day_of_year=float(day_of_year(t)),
            fouling=self._fouling,
            gpu_stuck=self._gpu_stuck.copy(),
            pump_health=self._pump_health,
            pump_on=self._pump_on.copy(),
            dc_fan_ok=self._dc_fan_ok(),
            ups_mains_ok=self._ups_mains_ok.copy(),
        )

    # --- time
    def advance(self, ts_ms: int, *, max_dt_s: float = 10.0, max_steps: int = 720) -> None:
        """Step the model from the last time to ``ts_ms`` [ms since epoch] in equal substeps
        of at most ``max_dt_s`` [s] under the inputs observed so far.

        The first call sets the time and warms the model up under the inputs seen so far
        (WARMUP_STEPS x WARMUP_DT_S: every loop at its operating point). A ``ts_ms`` not
        after the present time is ignored (late or repeated messages). A gap longer than
        ``max_steps`` x ``max_dt_s`` (a worker that was down) is crossed in ``max_steps``
        longer steps, which the exact integration keeps stable (docs/physics.md)."""
        if not max_dt_s > 0.0 or max_steps < 1:
            raise TrackerError(
                f"advance: expected max_dt_s > 0 and max_steps >= 1, got {max_dt_s}, {max_steps}"
            )
        ts = int(ts_ms)
        if not self._started:
            if ts < self._ts_ms:
                return
            if self._warm:
                self._warm_up(ts)
            else:  # a restored state without its time: its clock runs on from here
                self.start_ms = ts - round(self._state.t_s * 1000.0)
            self._ts_ms = ts
            self._state.t_s = (ts - self.start_ms) / 1000.0
            self._started = True
            return
        if ts <= self._ts_ms:
            return
        total_s = (ts - self._ts_ms) / 1000.0
        n = min(max(1, math.ceil(total_s / max_dt_s - 1e-9)), max_steps)
        dt_s = total_s / n
        st = self._state
        held = self.inputs()
        for k in range(1, n + 1):
            held.day_of_year = float(day_of_year(self._ts_ms + k * dt_s * 1000.0))
            st = step(self.site, st, held, dt_s)
        st.t_s = (ts - self.start_ms) / 1000.0
        self._state = st
        self._ts_ms = ts

    def _warm_up(self, ts: int) -> None:
        st = initial_state(self.site, outdoor_c=self._outdoor_c)
        inputs = self.inputs(ts)
        for _ in range(WARMUP_STEPS):
            st = step(self.site, st, inputs, WARMUP_DT_S)
        # like the simulator after its warm-up: no energy counted, no trend yet
        st.gpu_energy_j[...] = 0.0
        st.gpu_temp_rate_k_s[...] = 0.0
        self._state = st

    @property
    def state(self) -> FacilityState:
        """The model state now; read-only (``state.copy()`` to change it)."""
        return self._state

    @property
    def ts_ms(self) -> int:
        """Time of the model state [ms since epoch, UTC]."""
        return self._ts_ms

    # --- expectations
    def expected_points(self) -> dict[str, dict[str, float]]:
        """What each plant sensor should read now: unit id -> point name -> value, with the
        ids and names of the simulator's SimFrame ``thermal`` and ``power`` (merged)."""
        return state_points(self.site, self._state, self._ts_ms)

    def expected_gpu(self) -> dict[str, np.ndarray]:
        """Per GPU (n_racks, n_gpus): temp_gpu_c [C], temp_mem_c [C], power_w [W] (copies)
        and clock_event_reasons (the NVML bits the model sets)."""
        st = self._state
        return {
            "temp_gpu_c": st.gpu_temp_c.copy(),
            "temp_mem_c": st.gpu_mem_temp_c.copy(),
            "power_w": st.gpu_power_w.copy(),
            "clock_event_reasons": st.gpu_reasons.copy(),
        }

    def kpis(self) -> dict[str, float]:
        """Model KPIs now: pue, ere, cue_kg_kwh, heat_to_dh_w, free_cooling_share,
        cooling_cop, it_power_w, facility_power_w, reused_w, carbon_g_per_kwh,
        min_headroom_k (keys of :meth:`twin.sim.Simulator.kpis`; see :func:`state_kpis`);
        min_headroom_k is that of :meth:`rack_headroom` (measured or predicted, the worse)."""
        k = state_kpis(self.site, self._state, self._ts_ms)
        k["min_headroom_k"] = float(self.rack_headroom()["headroom_k"].min())
        return k

    def worst_gpu_temp_c(self) -> FloatArray:
        """Per GPU (n_racks, n_gpus): the hotter of the model's die temperature and a
        measured one at most MEASURED_MAX_AGE_S old [C]."""
        return np.fmax(self._state.gpu_temp_c, self._fresh_measured_c())  # NaN loses

    def _fresh_measured_c(self) -> FloatArray:
        """Measured die temperatures [C] (R, G) at most MEASURED_MAX_AGE_S old, NaN else."""
        fresh = (self._ts_ms - self._meas_ts_ms) <= MEASURED_MAX_AGE_S * 1000.0
        return np.where(fresh, self._meas_temp_c, np.nan)

    def rack_headroom(self) -> dict[str, np.ndarray]:
        """Per rack (n_racks,), for an operator: headroom_k [K] = min over the rack's GPUs of
        slowdown_c - max(measured die, model die) (a measured reading counts while at most
        MEASURED_MAX_AGE_S old; a rack known by its summary counts its hottest measured die),
        model_headroom_k and measured_headroom_k [K] (NaN: nothing measured) apart, and
        seconds_to_throttle_s [s] until the first GPU reaches slowdown at the model's present
        trend, from the worse temperature."""
        st, slow = self._state, self.site.gpu.slowdown_c
        meas = self._fresh_measured_c()
        worst = np.fmax(st.gpu_temp_c, meas)  # fmax: NaN (not measured) loses
        rack_fresh = (self._ts_ms - self._meas_rack_ts_ms) <= MEASURED_MAX_AGE_S * 1000.0
        rack_meas = np.where(rack_fresh, self._meas_rack_max_c, np.nan)
        # the hottest measured die per rack (NaN where nothing is measured: fmax skips NaN)
        meas_max = np.fmax(np.fmax.reduce(meas, axis=1), rack_meas)
        model_head = kpi_m.thermal_headroom_k(st.gpu_temp_c, slow)
        head = np.fmin(kpi_m.thermal_headroom_k(worst, slow), slow - meas_max)
        return {
            "headroom_k": head,
            "model_headroom_k": model_head,
            "measured_headroom_k": slow - meas_max,
            "seconds_to_throttle_s": kpi_m.seconds_to_throttle(worst, st.gpu_temp_rate_k_s, slow),
        }

    # --- persistence
    def snapshot(self) -> TwinSnapshot:
        """State, held inputs (extras ``tracker.*``) and meta: racks, ts_ms, start_ms, site
        (the site file, "" = default) and site_name. Arrays are copies."""
        extras = {
            f"{_EXTRA}util": self._util.copy(),
            f"{_EXTRA}power_limit_w": self._power_limit_w.copy(),
            f"{_EXTRA}gpu_stuck": self._gpu_stuck.copy(),
            f"{_EXTRA}pump_on": self._pump_on.copy(),
            f"{_EXTRA}dc_fan_speed": self._dc_fan_speed.copy(),
            f"{_EXTRA}ups_mains_ok": self._ups_mains_ok.copy(),
            f"{_EXTRA}outdoor_c": np.array(self._outdoor_c),
        }
        meta = {
            "racks": str(self.site.n_racks),
            "ts_ms": str(self._ts_ms),
            "start_ms": str(self.start_ms),
            "site": self.site_file,
            "site_name": self.site.info.name,
            "source": "tracker",
        }
        return TwinSnapshot(state=self._state.copy(), extras=extras, meta=meta)

    @classmethod
    def restore(cls, site: Site, snap: TwinSnapshot) -> FacilityTracker:
        """A tracker that resumes from ``snap`` (its own snapshot, or any snapshot with a
        state: inputs missing from the extras are taken from the state). SnapshotError when
        the snapshot holds no state or its shapes do not fit ``site``."""
        st = snap.state
        if st is None:
            raise SnapshotError("snapshot: holds no facility state to resume a tracker from")
        want = (site.n_racks, site.n_gpus)
        if st.gpu_temp_c.shape != want or st.cdu_supply_c.shape != (len(site.cdu_ids),):
            raise SnapshotError(
                f"snapshot: expected a state of {want[0]} racks x {want[1]} GPUs and "
                f"{len(site.cdu_ids)} CDUs, got {st.gpu_temp_c.shape} and {st.cdu_supply_c.shape}"
            )
        meta = snap.meta
        ts_known = bool(meta.get("ts_ms"))
        ts_ms = int(meta["ts_ms"]) if ts_known else 0
        start_ms = int(meta["start_ms"]) if meta.get("start_ms") else ts_ms - round(st.t_s * 1e3)
        tr = cls(site, start_ms=start_ms, outdoor_c=st.outdoor_c, site_file=meta.get("site", ""))
        ex = snap.extras

        def extra(name: str, default: NDArray[Any], dtype: type) -> NDArray[Any]:
            v = ex.get(_EXTRA + name)
            if v is None:
                return np.array(default, dtype=dtype)
            if v.shape != np.shape(default):
                raise SnapshotError(
                    f"snapshot: extra.{_EXTRA}{name}: expected shape {np.shape(default)}, "
                    f"got {v.shape}"
                )
            return np.array(v, dtype=dtype)

        tr._util = extra("util", st.gpu_util, np.float64)
        tr._power_limit_w = extra("power_limit_w", st.gpu_power_limit_w, np.float64)
        tr._gpu_stuck = extra("gpu_stuck", tr._gpu_stuck, np.bool_)
        tr._pump_on = extra("pump_on", st.cdu_pump_speed > PUMP_STOPPED_FRAC, np.bool_)
        tr._dc_fan_speed = extra("dc_fan_speed", st.dc_fan_speed, np.float64)
        tr._ups_mains_ok = extra("ups_mains_ok", ~st.ups_on_battery, np.bool_)
        tr._outdoor_c = float(extra("outdoor_c", np.array(st.outdoor_c), np.float64))
        tr._state = st.copy()
        tr._ts_ms = ts_ms
        # a state without its time resumes at the first advance, without a warm-up
        tr._started = ts_known
        tr._warm = False
        return tr
