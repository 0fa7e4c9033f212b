"""Energy bookkeeping of the facility model: for each node, the power in, the power out and
the rate of change of what it stores over one step, from two consecutive states.

Nodes (docs/physics.md, "Energy balance"): GPU dies (R, G), racks (R,), technology loops per
CDU (C,), facility water, heat pump, room air, and the site. Over any run, in - out -
stored = 0 for every node up to rounding; :class:`EnergyLedger` sums the terms over steps and
reports each node's residual. The stored terms use the heat capacities the step used (those
at the start state's temperatures), so the books close step by step, not only on average.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.fluids import cp_j_kgk, density_kg_m3, get_fluid
from twin.site import Site
from twin.state import FacilityState

FloatArray = NDArray[np.float64]

NODES = ("gpu", "rack", "cdu", "fws", "heat_pump", "room_air", "site")


@dataclass(frozen=True)
class NodeFlows:
    """Mean power over a step [W] into and out of a node, and its stored-energy rate [W]
    (arrays per unit, or 0-d for a single node)."""

    in_w: FloatArray
    out_w: FloatArray
    stored_w: FloatArray


def _stored_w(site: Site, s0: FacilityState, s1: FacilityState, dt_s: float) -> dict[str, Any]:
    tcs = get_fluid(site.tcs.fluid)
    fws = get_fluid(site.fws.fluid)
    die = site.gpu.c_th_j_k * (s1.gpu_temp_c - s0.gpu_temp_c) / dt_s  # (R, G)
    cap_r = (
        site.rack.coolant_volume_m3
        * density_kg_m3(tcs, s0.rack_coolant_c)
        * cp_j_kgk(tcs, s0.rack_coolant_c)
    )
    coolant = cap_r * (s1.rack_coolant_c - s0.rack_coolant_c) / dt_s  # (R,)
    n_c = len(site.cdu_ids)
    loop = site.cdu.thermal_mass_j_k * (s1.cdu_supply_c - s0.cdu_supply_c) / dt_s  # (C,)
    cdu = np.bincount(site.rack_cdu, weights=coolant, minlength=n_c) + loop
    volume = site.fws.volume_m3_per_mw * site.it_design_w / 1e6
    c_fws = (
        volume * float(density_kg_m3(fws, s0.fws_supply_c)) * float(cp_j_kgk(fws, s0.fws_supply_c))
    )
    water = c_fws * (s1.fws_supply_c - s0.fws_supply_c) / dt_s
    pw = site.power
    battery = pw.ups_rated_w * pw.battery_autonomy_s * (s1.ups_soc - s0.ups_soc).sum() / dt_s
    return {"die": die, "cdu": cdu, "fws": water, "battery": float(battery)}


def step_flows(
    site: Site, s0: FacilityState, s1: FacilityState, dt_s: float
) -> dict[str, NodeFlows]:
    """Each node's mean in/out power and stored-energy rate [W] over the step s0 -> s1 of
    ``dt_s`` [s] (s1 = step(site, s0, inputs, dt_s))."""
    st = _stored_w(site, s0, s1, dt_s)
    die_rack = st["die"].sum(axis=1)
    light_w = site.aux.lighting_bms_frac_it * s1.it_power_w
    hp_in = s1.hp_power_w if site.heat_pump.boundary != "site" else 0.0
    a = np.asarray
    flows = {
        "gpu": NodeFlows(s1.gpu_power_w, s1.gpu_heat_to_coolant_w, st["die"]),
        "rack": NodeFlows(s1.rack_power_w, s1.rack_heat_liquid_w + s1.rack_heat_air_w, die_rack),
        "cdu": NodeFlows(
            np.bincount(site.rack_cdu, weights=s1.rack_heat_liquid_w, minlength=len(site.cdu_ids))
            + s1.cdu_pump_power_w,
            s1.cdu_heat_w,
            st["cdu"],
        ),
        "fws": NodeFlows(
            a(s1.cdu_heat_w.sum() + s1.fws_pump_power_w),
            a(s1.hp_source_w + s1.dc_heat_w.sum() + s1.chiller_cooling_w),
            a(st["fws"]),
        ),
        "heat_pump": NodeFlows(a(s1.hp_source_w + s1.hp_power_w), a(s1.hp_heat_w), a(0.0)),
        "room_air": NodeFlows(
            a(
                s1.rack_heat_air_w.sum()
                + s1.pdu_loss_w.sum()
                + s1.ups_loss_w.sum()
                + light_w
                + s1.crah_fan_power_w
            ),
            a(s1.air_heat_w),
            a(0.0),
        ),
        # electricity in (the meter, plus a utility-owned heat pump's supply) = heat out:
        # district heat, dry coolers (fluid heat + fans), trim-chiller condenser, room air
        # (free cooling + chiller condenser), transformer losses; + stored energy
        "site": NodeFlows(
            a(s1.facility_power_w + hp_in),
            a(
                s1.hp_heat_w
                + s1.dc_heat_w.sum()
                + s1.dc_fan_power_w.sum()
                + s1.chiller_cooling_w
                + s1.chiller_power_w
                + s1.air_heat_w
                + s1.air_chiller_power_w
                + s1.tx_loss_w.sum()
            ),
            a(st["die"].sum() + st["cdu"].sum() + st["fws"] + st["battery"]),
        ),
    }
    return flows


@dataclass
class EnergyLedger:
    """Energy [J] into and out of each node, and stored, summed over the steps recorded."""

    in_j: dict[str, FloatArray] = field(default_factory=dict)
    out_j: dict[str, FloatArray] = field(default_factory=dict)
    stored_j: dict[str, FloatArray] = field(default_factory=dict)

    def record(self, site: Site, s0: FacilityState, s1: FacilityState, dt_s: float) -> None:
        """Add the step s0 -> s1 of ``dt_s`` [s]."""
        for name, f in step_flows(site, s0, s1, dt_s).items():
            for book, w in (
                (self.in_j, f.in_w),
                (self.out_j, f.out_w),
                (self.stored_j, f.stored_w),
            ):
                book[name] = book.get(name, 0.0) + np.asarray(w, dtype=np.float64) * dt_s

    def residual(self, name: str) -> FloatArray:
        """(in - out - stored) / in [1] per unit of node ``name`` (0 where nothing came in
        and nothing went out or was stored)."""
        i, o, s = self.in_j[name], self.out_j[name], self.stored_j[name]
        scale = np.maximum(np.maximum(np.abs(i), np.abs(o)), np.abs(s))
        return np.where(scale > 0.0, (i - o - s) / np.where(scale > 0.0, scale, 1.0), 0.0)
