"""The first sources of alerts: signals the worker already has, fed to the alert engine.

Per owned rack, one numpy pass over its GPUs:

- ``gpu_thermal_margin_k`` [K]: the frame's own thermal margin where it carries one, else
  the site's slowdown temperature minus the die temperature;
- ``gpu_temp_residual_k`` [K]: absolute die-temperature residual of the estimator;
- ``gpu_power_capped_bool``: power capping (an event, not an alert).

Per owned plant unit: ``ups_on_battery_bool``; ``cdu_supply_temp_c`` [C]; ``cdu_flow_frac``
[1], the CDU's flow over the design flow of the racks it serves. On the worker running the
facility model: ``unit_residual_k`` [K], the largest temperature residual of each unit, and
``dc_fans_stopped_bool``: a dry cooler whose fans stand still while another unit's turn.

Each unit alert carries its blast radius (the racks it feeds, from the site layout), so a
root-cause rule suppresses the GPU alerts it explains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.alerting import AlertEngine
from streams.runtime import TwinRuntime
from streams.schema import CLOCK_EVENT_SW_POWER_CAP
from twin.site import Site


@dataclass
class SiteMap:
    """What the alert sources need of the site: limits, grouping keys, blast radii."""

    slowdown_c: float  # GPU slowdown temperature [C] (NVML's slowdown threshold)
    rack_where: dict[str, dict[str, str]]  # rack -> {"rack", "cdu", "hall"}
    unit_where: dict[str, dict[str, str]]  # unit -> grouping keys
    blast: dict[str, tuple[str, ...]]  # unit -> racks it feeds
    cdu_design_flow_kg_s: dict[str, float]  # CDU -> design flow of the racks it serves
    dry_coolers: tuple[str, ...] = ()  # dry-cooler unit ids (fans share one speed)
    ups: tuple[str, ...] = ()  # UPS module ids
    _names: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    _stacked: tuple[tuple[Any, ...], np.ndarray, np.ndarray] | None = None

    def gpu_names(self, rack: str, n: int) -> np.ndarray:
        """``R0001/g0``... entity ids of a rack's first ``n`` GPUs (cached)."""
        key = (rack, n)
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = np.array([f"{rack}/g{i}" for i in range(n)])
        return names

    def stacked_names(self, racks: list[str], sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Entity ids of the GPUs of ``racks`` (``sizes`` GPUs each) in one array, and the
        index of each GPU's rack in ``racks`` (cached for the last set of racks)."""
        key = (tuple(racks), tuple(sizes))
        if self._stacked is None or self._stacked[0] != key:
            names = np.concatenate(
                [self.gpu_names(r, n) for r, n in zip(racks, sizes, strict=True)]
                or [np.zeros(0, dtype=str)]
            )
            owner_ix = np.repeat(np.arange(len(racks), dtype=np.int64), sizes)
            self._stacked = (key, names, owner_ix)
        return self._stacked[1], self._stacked[2]


def blast_radius(site: Site) -> dict[str, tuple[str, ...]]:
    """Unit -> the racks it feeds: a CDU its loop's racks, a UPS its hall's racks, the dry
    coolers, the FWS, the trim chiller and the heat pump every rack."""
    racks = np.array(site.rack_ids)
    out: dict[str, tuple[str, ...]] = {}
    for i, cdu in enumerate(site.cdu_ids):
        out[cdu] = tuple(racks[site.rack_cdu == i].tolist())
    for i, ups in enumerate(site.ups_ids):
        out[ups] = tuple(racks[site.rack_hall == site.ups_hall[i]].tolist())
    every = tuple(site.rack_ids)
    for unit in (*site.dc_ids, "FWS", "CHILLER", "HEATPUMP"):
        out[unit] = every
    return out


def site_map(site: Site) -> SiteMap:
    """The alert view of a site."""
    from twin.step import rack_design_flow_kg_s

    hall = [f"H{h + 1}" for h in range(int(site.rack_hall.max()) + 1)]
    rack_where = {
        r: {"rack": r, "cdu": site.cdu_ids[site.rack_cdu[i]], "hall": hall[site.rack_hall[i]]}
        for i, r in enumerate(site.rack_ids)
    }
    unit_where: dict[str, dict[str, str]] = {}
    served = np.bincount(site.rack_cdu, minlength=len(site.cdu_ids))
    flow = rack_design_flow_kg_s(site)
    design: dict[str, float] = {}
    for i, cdu in enumerate(site.cdu_ids):
        first = int(np.flatnonzero(site.rack_cdu == i)[0])
        unit_where[cdu] = {"cdu": cdu, "hall": hall[site.rack_hall[first]]}
        design[cdu] = float(served[i]) * flow
    for i, ups in enumerate(site.ups_ids):
        unit_where[ups] = {"hall": hall[site.ups_hall[i]]}
    return SiteMap(
        slowdown_c=float(site.gpu.slowdown_c),
        rack_where=rack_where,
        unit_where=unit_where,
        blast=blast_radius(site),
        cdu_design_flow_kg_s=design,
        dry_coolers=tuple(site.dc_ids),
        ups=tuple(site.ups_ids),
    )


def _point(values: Mapping[str, float], name: str) -> float:
    v = values.get(name)
    return float(v) if v is not None else float("nan")


def evaluate_sources(
    engine: AlertEngine,
    rt: TwinRuntime,
    sm: SiteMap,
    owned: Callable[[str], bool],
    now_s: float,
    *,
    facility_view: dict[str, Any] | None = None,
) -> None:
    """Feed every signal of the racks and units this worker owns to the engine.

    The GPU signals of all owned racks go to the engine as one array per signal
    (:meth:`AlertEngine.observe_many`): no Python loop over racks or GPUs here.
    """
    racks = [r for r, st in rt.racks.items() if owned(r) and st.present.any()]
    if racks:
        states = [rt.racks[r] for r in racks]
        sizes = [st.present.size for st in states]
        names, owner_ix = sm.stacked_names(racks, sizes)
        missing = ~np.concatenate([st.present for st in states])
        temp = np.concatenate([st.values["temp_gpu_c"] for st in states]).astype(np.float64)
        margin = sm.slowdown_c - temp
        if all("thermal_margin_k" in st.values for st in states):
            # the GPU's own margin (NVML/DCGM thermal margin, frames v2) where it gives one
            rep = np.concatenate([st.values["thermal_margin_k"] for st in states])
            margin = np.where(np.isfinite(rep), rep.astype(np.float64), margin)
        else:
            for i, st in enumerate(states):  # a mix of v1 and v2 racks: rare, per rack
                reported = st.values.get("thermal_margin_k")
                if reported is not None:
                    lo = int(np.sum(sizes[:i]))
                    rep = reported.astype(np.float64)
                    seg = margin[lo : lo + sizes[i]]
                    margin[lo : lo + sizes[i]] = np.where(np.isfinite(rep), rep, seg)
        margin[missing] = np.nan
        kw: dict[str, Any] = {"where": sm.rack_where, "now_s": now_s}
        engine.observe_many("gpu_thermal_margin_k", names, margin, owner_ix, racks, **kw)
        reasons = np.concatenate([st.values["clock_event_reasons"] for st in states])
        capped = ((reasons & CLOCK_EVENT_SW_POWER_CAP) != 0).astype(np.float64)
        capped[missing] = np.nan
        engine.observe_many("gpu_power_capped_bool", names, capped, owner_ix, racks, **kw)
        # the estimator's residual of each GPU, read in place (no per-rack JSON view)
        res = np.full(names.size, np.nan)
        slots = [rt.models.slots.get(r) for r in racks]
        if any(sl is not None for sl in slots):
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            dst = [
                lo + np.arange(min(n, sl.size))
                for lo, n, sl in zip(starts.tolist(), sizes, slots, strict=True)
                if sl is not None
            ]
            src = [
                sl[: min(n, sl.size)] for n, sl in zip(sizes, slots, strict=True) if sl is not None
            ]
            res[np.concatenate(dst)] = np.abs(rt.models.estimator.residual_k[np.concatenate(src)])
        engine.observe_many("gpu_temp_residual_k", names, res, owner_ix, racks, **kw)
    # the CDUs and UPS modules only (not every rack's manifold unit: no loop over racks);
    # one engine call per signal over all of them (157 CDUs and 38 UPS modules at the
    # campus: one observe per unit and signal was ~350 Python calls a tick)
    sig: dict[str, tuple[list[str], list[float]]] = {
        "ups_on_battery_bool": ([], []),
        "cdu_supply_temp_c": ([], []),
        "cdu_flow_frac": ([], []),
    }
    for unit in (*sm.cdu_design_flow_kg_s, *sm.ups):
        ustate = rt.units.get(unit)
        if ustate is None or not owned(unit):
            continue
        vals = ustate.values()
        if "on_battery_bool" in vals:
            sig["ups_on_battery_bool"][0].append(unit)
            sig["ups_on_battery_bool"][1].append(_point(vals, "on_battery_bool"))
        if unit in sm.cdu_design_flow_kg_s:
            design = sm.cdu_design_flow_kg_s[unit]
            sig["cdu_supply_temp_c"][0].append(unit)
            sig["cdu_supply_temp_c"][1].append(_point(vals, "supply_temp_c"))
            sig["cdu_flow_frac"][0].append(unit)
            flow = _point(vals, "flow_kg_s") / design if design > 0 else float("nan")
            sig["cdu_flow_frac"][1].append(flow)
    for name, (ids_u, vals_u) in sig.items():
        if ids_u:
            engine.observe_many(
                name,
                np.asarray(ids_u),
                np.asarray(vals_u, dtype=np.float64),
                np.arange(len(ids_u), dtype=np.int64),
                ids_u,  # each unit its own owner
                where={u: sm.unit_where.get(u, {}) for u in ids_u},
                blast=sm.blast,
                now_s=now_s,
            )
    if facility_view:
        units = facility_view.get("units") or {}
        ids = [u for u in units if any(p.endswith("_temp_c") for p in units[u])]
        worst = [
            max(
                (
                    abs(float(v["measured"]) - float(v["expected"]))
                    for p, v in units[u].items()
                    if p.endswith("_temp_c") and v.get("expected") is not None
                ),
                default=float("nan"),
            )
            for u in ids
        ]
        if ids:
            engine.observe("unit_residual_k", ids, worst, owner="facility", where={}, now_s=now_s)
        _dry_cooler_fans(engine, sm, units, now_s)


def dc_fans_stopped(speed_frac: np.ndarray) -> np.ndarray:
    """1.0 where a dry cooler's fans stand still while another unit's turn, else 0.0 (NaN
    where the speed is not known).

    The plant runs its working dry coolers in parallel at one shared speed (twin/plant.py
    ``dry_coolers``), so a unit at speed 0 while a sibling turns has lost its fans (drive
    trip, undervoltage) and the BMS isolated it: the others carry its heat at a higher
    speed, and in cold weather the supply temperature does not move at all (nothing for a
    residual to see), yet the plant has lost a unit of its N+1 margin.
    """
    v = np.asarray(speed_frac, dtype=np.float64)
    turning = np.isfinite(v) & (v > 0.0)
    others = turning.sum() - turning  # units turning besides this one
    out = ((v <= 0.0) & (others > 0)).astype(np.float64)
    out[~np.isfinite(v)] = np.nan
    return out


def _dry_cooler_fans(
    engine: AlertEngine, sm: SiteMap, units: Mapping[str, Any], now_s: float
) -> None:
    ids = [u for u in sm.dry_coolers if "fan_speed_frac" in (units.get(u) or {})]
    if len(ids) < 2:
        return  # one unit cannot be compared with a sibling
    speed = np.array(
        [float(units[u]["fan_speed_frac"].get("measured", np.nan)) for u in ids], dtype=np.float64
    )
    stopped = dc_fans_stopped(speed)
    for u, x in zip(ids, stopped.tolist(), strict=True):
        engine.observe(
            "dc_fans_stopped_bool",
            [u],
            [x],
            owner="facility",
            where={},
            blast=sm.blast.get(u, ()),
            now_s=now_s,
        )
