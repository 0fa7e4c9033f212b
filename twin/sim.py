"""The simulator: steps the facility model under a workload, weather and injected faults,
and returns what the sensors read (noise and the quantisation of real sources) as a
:class:`SimFrame` in the shape of the telemetry contracts (streams/schema.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin import fleet_faults
from twin import kpi as kpi_m
from twin.errors import ConfigError
from twin.faults import (
    FAULT_KINDS,
    FaultSpec,
    apply_physical,
    is_sensor_fault,
    parse_fault,
    resolve,
    sensor_reading,
)
from twin.gpu import sm_clock_mhz
from twin.sensors import SITE_KPI_POINTS, PlantGroup, group, point_groups, state_kpis
from twin.site import Site
from twin.state import FacilityState
from twin.step import StepInputs, initial_state, step
from twin.weather import HourlySeries, ar1_step, day_of_year, load_hourly_csv, make_weather
from twin.weather import local_hour as _local_hour
from twin.workload import make_plan, utilisation

__all__ = ["SimFrame", "Simulator", "parse_fault"]

#: Sensor noise sd by point-name suffix (est.: class-A RTDs +-0.15 K, magnetic flow meters
#: +-0.5 %, class 0.2S power meters). Points without an entry are read exactly.
_NOISE_ABS = {"_temp_c": 0.05}
_NOISE_REL = {"_kg_s": 0.005, "_w": 0.002}
WARMUP_STEPS = 30  # 30 x 60 s brings every loop to its operating point before t = 0
_TWO52 = 2.0**52
_TWO52_BITS = np.float64(_TWO52).view(np.uint64)


@dataclass(frozen=True)
class SimFrame:
    """What the sensors read at one instant (see the module docstring of twin/sim.py).

    ``gpu``: field -> (n_racks, n_gpus) array in the telemetry.gpu dtypes. ``plant``: the
    plant units' readings by group of like units (:class:`~twin.sensors.PlantGroup`), in
    the order of :func:`~twin.sensors.point_groups`; ``thermal`` and ``power`` are the same
    readings as unit -> point -> value, built on first access.

    A frame is read-only: the simulator never writes to a frame's arrays once it has
    returned it, and some arrays (the columns that no active fault touches, such as the
    error counters and an unchanged power limit) are shared, read-only, between frames.
    Copy before editing.
    """

    ts_ms: int
    rack_ids: list[str]
    gpu: dict[str, np.ndarray]
    plant: tuple[PlantGroup, ...]
    faults_started: list[dict[str, Any]]

    @cached_property
    def thermal(self) -> dict[str, dict[str, float]]:
        """telemetry.thermal: unit id -> point name -> reading."""
        return self._units("thermal")

    @cached_property
    def power(self) -> dict[str, dict[str, float]]:
        """telemetry.power: unit id -> point name -> reading."""
        return self._units("power")

    def _units(self, kind: str) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for g in self.plant:
            if g.kind == kind:
                out |= g.units()
        return out


class Simulator:
    """Steps the model; ``state`` is the true state, :meth:`step` returns sensor readings."""

    def __init__(
        self,
        site: Site,
        *,
        seed: int = 0,
        start_ms: int,
        faults: Sequence[FaultSpec] = (),
        sensor_noise: bool = True,
    ) -> None:
        self.site = site
        self.start_ms = int(start_ms)
        self.sensor_noise = sensor_noise
        self._rng = np.random.default_rng(seed)
        self._noise_rng = np.random.default_rng([seed, 1])
        # noise of the leak-detection and supply-voltage points (twin/fleet_faults.py): a
        # stream of its own, so adding those points moved no other reading of a seed
        self._fleet_rng = np.random.default_rng([seed, 2]) if sensor_noise else None
        self._plan = make_plan(site.n_racks, site.gpu.tdp_w, site.workload, self._rng)
        self._weather = make_weather(site.weather)
        self._carbon_csv: HourlySeries | None = None
        if site.carbon.model == "csv":
            self._carbon_csv = load_hourly_csv(Path(site.carbon.csv_path), "gco2_per_kwh")
        shape = (site.n_racks, site.n_gpus)
        # workspaces for the per-step draws and the frame's arithmetic (the frames keep
        # converted copies, never these)
        self._z_util = np.empty(shape)
        self._z_noise = np.empty((3, *shape))
        self._work = np.empty((2, *shape))
        # inputs no fault touches are the same every step: built once, read-only, and
        # copied only for a step with an active physical fault (which edits them in place)
        n_c, n_d, n_u = len(site.cdu_ids), len(site.dc_ids), len(site.ups_ids)
        self._const_inputs = {
            "power_limit_w": np.repeat(self._plan.power_limit_w[:, None], site.n_gpus, axis=1),
            "fouling": np.ones(shape),
            "gpu_stuck": np.zeros(shape, dtype=bool),
            "pump_health": np.ones(n_c),
            "pump_on": np.ones(n_c, dtype=bool),
            "dc_fan_ok": np.ones(n_d, dtype=bool),
            "ups_mains_ok": np.ones(n_u, dtype=bool),
        }
        # GPU columns that are the same every step while no fault writes into them
        self._const_gpu = {
            name: np.zeros(shape, dtype=dt) for name, dt in fleet_faults.V2_COUNTERS.items()
        }
        self._const_gpu["xid"] = np.zeros(shape, dtype=np.uint32)
        self._const_gpu["power_limit_w"] = self._const_inputs["power_limit_w"].astype(np.float32)
        for a in (*self._const_inputs.values(), *self._const_gpu.values()):
            a.setflags(write=False)
        # energy counters count from driver load, some time before the simulation (sources.md S7)
        self._energy0_mj = self._rng.integers(10**9, 10**12, size=shape, dtype=np.uint64)
        # the same as float64 plus 2^52 (exact: below 2^53 every integer is a float64), for
        # the counter's fast conversion in _gpu_readings
        self._energy0_2p52 = self._energy0_mj.astype(np.float64) + _TWO52
        self._faults = [resolve(f, site) for f in faults]
        # start times [s] of the faults that act on the physics, and of those that write
        # into the GPU readings (fleet GPU faults, sensor faults on a GPU field)
        self._physical_at = [f.spec.at_s for f in self._faults if not is_sensor_fault(f.spec)]
        self._gpu_write_at = [
            f.spec.at_s
            for f in self._faults
            if FAULT_KINDS[f.spec.kind][0] == "gpu" or (is_sensor_fault(f.spec) and f.gpu >= 0)
        ]
        self._pending = sorted(range(len(self._faults)), key=lambda i: self._faults[i].spec.at_s)
        self._stuck: dict[int, float | np.ndarray] = {}
        state = initial_state(site, outdoor_c=self._weather(self.start_ms, 0.0))
        # where each plant unit's readings are: (group, row), a thermal unit before a power
        # unit of the same id (as a sensor fault's target is looked up)
        kinds_ids = [(kind, list(ids)) for kind, ids, _ in point_groups(site, state)]
        self._unit_at: dict[str, tuple[int, int]] = {}
        for want in ("thermal", "power"):
            for g, (kind, ids) in enumerate(kinds_ids):
                for row, unit in enumerate(ids):
                    if kind == want:
                        self._unit_at.setdefault(unit, (g, row))
        self._cdu_group = kinds_ids.index(("thermal", list(site.cdu_ids)))
        self._ups_group = kinds_ids.index(("power", list(site.ups_ids)))
        self._site_group = kinds_ids.index(("power", ["SITE"]))
        for _ in range(WARMUP_STEPS):
            state = step(site, state, self._inputs(0.0, 0.0), 60.0)
        state.t_s = 0.0
        state.gpu_energy_j[...] = 0.0
        state.gpu_temp_rate_k_s[...] = 0.0
        self._state = state
        self._check_sensor_targets(self._read(state, []))

    # --- inputs
    def _inputs(self, t_s: float, weather_noise_k: float) -> StepInputs:
        site = self.site
        ts_ms = self.start_ms + round(t_s * 1000)
        hour = float(_local_hour(ts_ms, site.weather.utc_offset_h))
        z = self._rng.standard_normal(out=self._z_util)  # = standard_normal((R, G))
        # the state keeps each step's utilisation: a fresh array, filled in one pass
        util = utilisation(self._plan, t_s, hour, z, site.workload, out=np.empty(z.shape))
        const = self._const_inputs
        active = any(at <= t_s for at in self._physical_at)
        arrays = {k: v.copy() for k, v in const.items()} if active else const
        inputs = StepInputs(
            util=util,
            power_limit_w=arrays["power_limit_w"],
            outdoor_c=self._weather(ts_ms, weather_noise_k),
            day_of_year=float(day_of_year(ts_ms)),
            fouling=arrays["fouling"],
            gpu_stuck=arrays["gpu_stuck"],
            pump_health=arrays["pump_health"],
            pump_on=arrays["pump_on"],
            dc_fan_ok=arrays["dc_fan_ok"],
            ups_mains_ok=arrays["ups_mains_ok"],
        )
        if active:
            apply_physical(self._faults, t_s, inputs)
        return inputs

    # --- stepping
    @property
    def state(self) -> FacilityState:
        """The true (noise-free) state."""
        return self._state

    def step(self, dt_s: float) -> SimFrame:
        """Advance the model by dt_s [s] and return what the sensors read at the new instant."""
        if not dt_s > 0.0:
            raise ConfigError(f"dt_s: expected a positive number of seconds, got {dt_s!r}")
        st = self._state
        t_end = st.t_s + dt_s
        z = self._rng.standard_normal()
        noise = float(ar1_step(st.weather_noise_k, z, dt_s, self.site.weather))
        # faults starting inside this step act over the whole step
        new = step(self.site, st, self._inputs(t_end, noise), dt_s)
        new.weather_noise_k = noise
        self._state = new
        started: list[dict[str, Any]] = []
        while self._pending and self._faults[self._pending[0]].spec.at_s <= t_end:
            started.append(self._faults[self._pending.pop(0)].spec.record(self.start_ms))
        return self._read(new, started)

    # --- sensors
    def _carbon_g_per_kwh(self, ts_ms: int) -> float:
        if self._carbon_csv is not None:
            return float(self._carbon_csv.at(ts_ms))
        hour = _local_hour(ts_ms, self.site.weather.utc_offset_h)
        return float(kpi_m.carbon_intensity_g_per_kwh(day_of_year(ts_ms), hour, self.site.carbon))

    def kpis(self) -> dict[str, float]:
        """Current KPIs: pue, ere, cue_kg_kwh, heat_to_dh_w, free_cooling_share, cooling_cop,
        it_power_w, facility_power_w, reused_w, carbon_g_per_kwh, min_headroom_k."""
        st = self._state
        ts_ms = self.start_ms + round(st.t_s * 1000)
        return state_kpis(self.site, st, self._carbon_g_per_kwh(ts_ms))

    def rack_headroom(self) -> dict[str, np.ndarray]:
        """Per rack (n_racks,): thermal headroom [K] to slowdown of the hottest GPU, and
        seconds until the first GPU throttles at the present trend (inf: not warming)."""
        st, slow = self._state, self.site.gpu.slowdown_c
        return {
            "headroom_k": kpi_m.thermal_headroom_k(st.gpu_temp_c, slow),
            "seconds_to_throttle_s": kpi_m.seconds_to_throttle(
                st.gpu_temp_c, st.gpu_temp_rate_k_s, slow
            ),
        }

    def _noisy(self, points: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        if not self.sensor_noise:
            return points
        out: dict[str, NDArray[Any]] = {}
        for name, v in points.items():
            arr = np.asarray(v, dtype=np.float64)
            for suf, sd in _NOISE_ABS.items():
                if name.endswith(suf):
                    arr = np.round(arr + self._noise_rng.normal(0.0, sd, arr.shape), 2)
            for suf, rel in _NOISE_REL.items():
                if name.endswith(suf):
                    arr = arr * (1.0 + self._noise_rng.normal(0.0, rel, arr.shape))
            out[name] = arr
        return out

    def _read(self, st: FacilityState, started: list[dict[str, Any]]) -> SimFrame:
        site = self.site
        ts_ms = self.start_ms + round(st.t_s * 1000)
        gpu = self._gpu_readings(st)
        plant = self._plant_readings(st)
        # telemetry.gpu/v2 columns and the fleet faults' fingerprints (XID, ECC, remaps,
        # NVLink, a straggler's reported limit)
        fleet_faults.gpu_readings(self._faults, st.t_s, gpu, site.gpu.slowdown_c)
        self._apply_sensor_faults(st.t_s, gpu, plant)
        # NVML's margin is slowdown minus the die sensor's reading: a faulty die sensor
        # moves it too
        np.subtract(np.float32(site.gpu.slowdown_c), gpu["temp_gpu_c"], out=gpu["thermal_margin_k"])
        return SimFrame(ts_ms, list(site.rack_ids), gpu, tuple(plant), started)

    def _gpu_readings(self, st: FacilityState) -> dict[str, np.ndarray]:
        """NVML's view of the GPUs: power in mW, temperatures as integers, energy counter in
        mJ (docs/sources.md S7), clocks in ~15 MHz bins (est.). Each fresh array is computed
        in the float64 workspaces and rounded into its own dtype in one pass (rint with a
        float32 or integer ``out`` rounds in float64 and then converts: the same values as
        round().astype())."""
        site = self.site
        shape = st.gpu_temp_c.shape
        f32 = np.float32
        w0, w1 = self._work
        if self.sensor_noise:
            # one draw, in the order of three normal() calls (the same stream): die and HBM
            # noise sd 0.3 K, power 0.5 %; normal(0, sd) is sd * standard_normal exactly
            z = self._noise_rng.standard_normal(out=self._z_noise)
            temp, mem, pw = z
            temp *= 0.3
            temp += st.gpu_temp_c
            mem *= 0.3
            mem += st.gpu_mem_temp_c
            pw *= 0.005
            pw += 1.0
            pw *= st.gpu_power_w
            pw *= 1000.0
        else:
            temp, mem = st.gpu_temp_c, st.gpu_mem_temp_c
            pw = np.multiply(st.gpu_power_w, 1000.0, out=w0)
        temp_c = np.rint(temp, out=np.empty(shape, f32), casting="same_kind")
        mem_c = np.rint(mem, out=np.empty(shape, f32), casting="same_kind")
        np.rint(pw, out=pw)
        power_w = np.divide(pw, 1000.0, out=np.empty(shape, f32), casting="same_kind")
        energy_mj = self._energy_counter_mj(st)
        clock = sm_clock_mhz(st.gpu_clock_frac, st.gpu_util, site.gpu, out=w0)
        clock /= 15.0
        np.rint(clock, out=clock)
        clock_mhz = np.multiply(clock, 15.0, out=np.empty(shape, np.uint16), casting="unsafe")
        any_off = bool(st.gpu_off.any())
        util = np.multiply(st.gpu_util, 100.0, out=w1)
        if any_off:
            util[st.gpu_off] = 0.0
        util_pct = np.rint(util, out=np.empty(shape, f32), casting="same_kind")
        # columns no fault writes into this step: shared, read-only (SimFrame's contract)
        shared = not any(at <= st.t_s for at in self._gpu_write_at)
        const = self._const_gpu
        if shared and st.gpu_power_limit_w is self._const_inputs["power_limit_w"]:
            limit_w = const["power_limit_w"]
        else:
            limit_w = st.gpu_power_limit_w.astype(f32)
        if shared:
            reasons = st.gpu_reasons.view()
            reasons.setflags(write=False)  # the state's own array: nobody may write to it
        else:
            reasons = st.gpu_reasons.astype(np.uint64)
        gpu: dict[str, np.ndarray] = {
            "power_w": power_w,
            "energy_mj": energy_mj,
            "temp_gpu_c": temp_c,
            "temp_mem_c": mem_c,
            "sm_clock_mhz": clock_mhz,
            "util_pct": util_pct,
            "clock_event_reasons": reasons,
            # XID 79, "GPU has fallen off the bus", for a GPU lost to thermal shutdown (est.)
            "xid": (
                np.where(st.gpu_off, 79, 0).astype(np.uint32)
                if any_off or not shared
                else const["xid"]
            ),
            "power_limit_w": limit_w,
            "thermal_margin_k": np.empty(shape, f32),  # filled once the readings are final
        }
        if shared:
            gpu |= {name: const[name] for name in fleet_faults.V2_COUNTERS}
        return gpu

    def _energy_counter_mj(self, st: FacilityState) -> NDArray[np.uint64]:
        """NVML's energy counter [mJ]: energy0 + floor(energy [J] * 1000), as uint64."""
        e = np.multiply(st.gpu_energy_j, 1000.0, out=np.empty(st.gpu_energy_j.shape))
        np.floor(e, out=e)
        # a GPU draws at most its TDP, so below this bound every counter is < 2^52 - 1: a
        # float64 2^52 + n then holds n in its mantissa bits, and its bits less those of
        # 2^52 are n as an integer (exact, and ~2x cheaper than numpy's float -> uint64)
        if 2.0 * self.site.gpu.tdp_w * 1000.0 * max(st.t_s, 0.0) < _TWO52 - 2.0 * 10**12:
            e += self._energy0_2p52
            counter = e.view(np.uint64)
            counter -= _TWO52_BITS
            return counter
        counter = e.astype(np.uint64)
        counter += self._energy0_mj
        return counter

    def _plant_readings(self, st: FacilityState) -> list[PlantGroup]:
        """Every plant point, by group of like units (sensors.point_groups' order), with
        sensor noise, the SITE unit's KPIs and the CDUs' and UPSes' sensor-only points."""
        site = self.site
        # points after a group's own: leak (CDUs) and supply voltage (UPSes) from a noise
        # stream of their own, the SITE unit's KPIs while IT runs
        cdu_pts, ups_pts = fleet_faults.plant_points(self._faults, st.t_s, site, self._fleet_rng)
        extra: dict[int, dict[str, NDArray[Any]]] = {
            self._cdu_group: cdu_pts,
            self._ups_group: ups_pts,
        }
        if st.it_power_w > 0.0 and st is self._state:
            ts_ms = self.start_ms + round(st.t_s * 1000)
            kpis = state_kpis(site, st, self._carbon_g_per_kwh(ts_ms), headroom=False)
            extra[self._site_group] = {n: np.array([kpis[n]]) for n in SITE_KPI_POINTS if n in kpis}
        return [
            group(kind, ids, self._noisy(pts) | extra.get(g, {}))
            for g, (kind, ids, pts) in enumerate(point_groups(site, st))
        ]

    def _apply_sensor_faults(
        self, t_s: float, gpu: dict[str, np.ndarray], plant: list[PlantGroup]
    ) -> None:
        for i, f in enumerate(self._faults):
            if not is_sensor_fault(f.spec) or t_s < f.spec.at_s:
                continue
            if f.gpu >= 0:
                r = self.site.rack_ids.index(f.unit)
                arr = gpu[f.point]
                val = float(arr[r, f.gpu])
                stuck = float(self._stuck.setdefault(i, val))
                arr[r, f.gpu] = sensor_reading(f, t_s, val, stuck)
                continue
            g, row = self._unit_at[f.unit]
            names = plant[g].names
            if f.point not in names:  # a SITE KPI point while no IT runs: nothing to read
                continue
            col = names.index(f.point)
            values = plant[g].values
            val = float(values[row, col])
            stuck = float(self._stuck.setdefault(i, val))
            values[row, col] = sensor_reading(f, t_s, val, stuck)

    def _check_sensor_targets(self, frame: SimFrame) -> None:
        for f in self._faults:
            if not is_sensor_fault(f.spec):
                continue
            where = f"fault {f.spec.kind}:{f.spec.target}"
            if f.gpu >= 0:
                if f.unit not in self.site.rack_ids or f.gpu >= self.site.n_gpus:
                    raise ConfigError(f"{where}: no GPU {f.unit}/G{f.gpu:02d} in this site")
                if f.point not in frame.gpu or f.point in ("energy_mj", "thermal_margin_k"):
                    raise ConfigError(f"{where}: expected a GPU field of {sorted(frame.gpu)}")
                continue
            units = frame.thermal if f.unit in frame.thermal else frame.power
            if f.unit not in units:
                raise ConfigError(f"{where}: no unit {f.unit!r} in this site")
            if f.point not in units[f.unit]:
                raise ConfigError(
                    f"{where}: unit {f.unit} has no point {f.point!r}; expected one of "
                    f"{sorted(units[f.unit])}"
                )
