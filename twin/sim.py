"""The simulator: steps the facility model under a workload, weather and injected faults,
and returns what the sensors read (noise and the quantisation of real sources) as a
:class:`SimFrame` in the shape of the telemetry contracts (streams/schema.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin import fleet_faults
from twin import kpi as kpi_m
from twin.errors import ConfigError
from twin.faults import (
    FaultSpec,
    apply_physical,
    is_sensor_fault,
    parse_fault,
    resolve,
    sensor_reading,
)
from twin.gpu import sm_clock_mhz
from twin.sensors import add_site_kpis, point_groups, state_kpis, units
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


@dataclass(frozen=True)
class SimFrame:
    """What the sensors read at one instant (see the module docstring of twin/sim.py)."""

    ts_ms: int
    rack_ids: list[str]
    gpu: dict[str, np.ndarray]
    thermal: dict[str, dict[str, float]]
    power: dict[str, dict[str, float]]
    faults_started: list[dict[str, Any]]


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
        # workspaces for the per-step draws (the frames keep converted copies, never these)
        self._z_util = np.empty(shape)
        self._z_noise = np.empty((3, *shape))
        # energy counters count from driver load, some time before the simulation (sources.md S7)
        self._energy0_mj = self._rng.integers(10**9, 10**12, size=shape, dtype=np.uint64)
        self._faults = [resolve(f, site) for f in faults]
        self._pending = sorted(range(len(self._faults)), key=lambda i: self._faults[i].spec.at_s)
        self._stuck: dict[int, float | np.ndarray] = {}
        state = initial_state(site, outdoor_c=self._weather(self.start_ms, 0.0))
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
        util = utilisation(self._plan, t_s, hour, z, site.workload)
        inputs = StepInputs(
            util=util,
            power_limit_w=np.repeat(self._plan.power_limit_w[:, None], site.n_gpus, axis=1),
            outdoor_c=self._weather(ts_ms, weather_noise_k),
            day_of_year=float(day_of_year(ts_ms)),
            fouling=np.ones_like(util),
            gpu_stuck=np.zeros(util.shape, dtype=bool),
            pump_health=np.ones(len(site.cdu_ids)),
            pump_on=np.ones(len(site.cdu_ids), dtype=bool),
            dc_fan_ok=np.ones(len(site.dc_ids), dtype=bool),
            ups_mains_ok=np.ones(len(site.ups_ids), dtype=bool),
        )
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
        shape = st.gpu_temp_c.shape
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
            temp, mem, pw = st.gpu_temp_c.copy(), st.gpu_mem_temp_c.copy(), st.gpu_power_w * 1000.0
        for a in (temp, mem, pw):
            np.round(a, out=a)
        pw /= 1000.0
        energy_mj = np.floor(st.gpu_energy_j * 1000.0).astype(np.uint64)
        energy_mj += self._energy0_mj
        clock_mhz = sm_clock_mhz(st.gpu_clock_frac, st.gpu_util, site.gpu)
        clock_mhz /= 15.0
        np.round(clock_mhz, out=clock_mhz)
        clock_mhz *= 15.0
        any_off = bool(st.gpu_off.any())
        util_pct = (np.where(st.gpu_off, 0.0, st.gpu_util) if any_off else st.gpu_util) * 100.0
        np.round(util_pct, out=util_pct)
        gpu: dict[str, np.ndarray] = {
            # NVML: power in mW, temperatures as integers, energy counter in mJ (docs/sources.md S7)
            "power_w": pw.astype(np.float32),
            "energy_mj": energy_mj,
            "temp_gpu_c": temp.astype(np.float32),
            "temp_mem_c": mem.astype(np.float32),
            # clocks move in ~15 MHz bins (est.)
            "sm_clock_mhz": clock_mhz.astype(np.uint16),
            "util_pct": util_pct.astype(np.float32),
            "clock_event_reasons": st.gpu_reasons.astype(np.uint64),
            # XID 79, "GPU has fallen off the bus", for a GPU lost to thermal shutdown (est.)
            "xid": (
                np.where(st.gpu_off, 79, 0).astype(np.uint32)
                if any_off
                else np.zeros(shape, dtype=np.uint32)
            ),
            "power_limit_w": st.gpu_power_limit_w.astype(np.float32),
        }
        readings: dict[str, dict[str, dict[str, float]]] = {"thermal": {}, "power": {}}
        for kind, ids, pts in point_groups(site, st):
            readings[kind] |= units(ids, self._noisy(pts))
        thermal, power = readings["thermal"], readings["power"]
        if st.it_power_w > 0.0 and st is self._state:
            add_site_kpis(power["SITE"], self.kpis())
        # telemetry.gpu/v2 columns and the fleet faults' fingerprints (XID, ECC, remaps,
        # NVLink, a straggler's reported limit); leak and supply-voltage points
        fleet_faults.gpu_readings(self._faults, st.t_s, gpu, site.gpu.slowdown_c)
        fleet_faults.plant_points(self._faults, st.t_s, site, thermal, power, self._fleet_rng)
        self._apply_sensor_faults(st.t_s, gpu, thermal, power)
        # NVML's margin is slowdown minus the die sensor's reading: a faulty die sensor
        # moves it too
        np.subtract(np.float32(site.gpu.slowdown_c), gpu["temp_gpu_c"], out=gpu["thermal_margin_k"])
        return SimFrame(ts_ms, list(site.rack_ids), gpu, thermal, power, started)

    def _apply_sensor_faults(
        self,
        t_s: float,
        gpu: dict[str, np.ndarray],
        thermal: dict[str, dict[str, float]],
        power: dict[str, dict[str, float]],
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
            units = thermal if f.unit in thermal else power
            val = units[f.unit][f.point]
            stuck = float(self._stuck.setdefault(i, val))
            units[f.unit][f.point] = sensor_reading(f, t_s, val, stuck)

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
