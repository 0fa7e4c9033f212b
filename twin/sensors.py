"""What the plant's sensors read for a facility state, and the KPIs of that state.

One mapping from :class:`~twin.state.FacilityState` to sensor points, shared by the
simulator (which adds noise and sensor faults on top) and the facility tracker (which shows
the model's expectation beside each measurement), so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from twin import kpi as kpi_m
from twin.site import Site
from twin.state import FacilityState

Kind = Literal["thermal", "power"]
PointGroup = tuple[Kind, Sequence[str], dict[str, NDArray[Any]]]

#: KPIs that the SITE unit publishes as points when IT runs.
SITE_KPI_POINTS = ("pue", "ere", "cue_kg_kwh", "heat_to_dh_w", "free_cooling_share", "cooling_cop")


@dataclass(frozen=True, eq=False)
class PlantGroup:
    """The readings of one group of like plant units, columnar: ``values[i, j]`` is point
    ``names[j]`` of unit ``ids[i]`` (units as the point names' suffixes say).

    Holding a frame's plant readings this way costs one small array per group; the
    unit -> point -> value dicts (:meth:`units`) cost ~1 ms at the campus and are built only
    for consumers that want them.
    """

    kind: Kind
    ids: Sequence[str]
    names: tuple[str, ...]
    values: NDArray[np.float64]  # (len(ids), len(names)), any memory order

    def units(self) -> dict[str, dict[str, float]]:
        """unit id -> point -> value."""
        # one (n_units, n_points) tolist and map(dict, ...) instead of a list per point
        # zipped per unit: ~2.5x faster for the 1,250 racks of a campus frame
        rows = self.values.tolist()
        return dict(zip(self.ids, map(dict, map(zip, repeat(self.names), rows)), strict=True))


def group(kind: Kind, ids: Sequence[str], points: dict[str, NDArray[Any]]) -> PlantGroup:
    """A :class:`PlantGroup` from point name -> array over the units ``ids``."""
    # (n_points, n_units) and its transpose: one C call, ~3x cheaper than np.stack(axis=1)
    values = np.array(list(points.values()), dtype=np.float64).T
    return PlantGroup(kind, ids, tuple(points), values)


def units(ids: Sequence[str], points: dict[str, NDArray[Any]]) -> dict[str, dict[str, float]]:
    """unit id -> point -> value from point -> array over the units."""
    return group("thermal", ids, points).units()


def point_groups(site: Site, st: FacilityState) -> list[PointGroup]:
    """Every plant sensor of the state, by group of like units, in a fixed order.

    Topic kind (telemetry.thermal or .power), unit ids, and point name [unit suffix] ->
    array over those units. The order is part of the contract: the simulator draws its
    sensor noise group by group in this order.
    """
    one = np.ones(1)
    return [
        ("thermal", site.rack_ids, {
            "inlet_temp_c": st.rack_inlet_c,
            "outlet_temp_c": st.rack_coolant_c,
            "flow_kg_s": st.rack_flow_kg_s,
            "heat_to_liquid_w": st.rack_heat_liquid_w,
            "heat_to_air_w": st.rack_heat_air_w,
        }),
        ("thermal", site.cdu_ids, {
            "supply_temp_c": st.cdu_supply_c,
            "return_temp_c": st.cdu_return_c,
            "facility_supply_temp_c": st.cdu_fac_supply_c,
            "facility_return_temp_c": st.cdu_fac_return_c,
            "flow_kg_s": st.cdu_flow_kg_s,
            "pump_speed_frac": st.cdu_pump_speed,
            "pump_power_w": st.cdu_pump_power_w,
        }),
        ("thermal", site.dc_ids, {
            "fan_speed_frac": st.dc_fan_speed,
            "fan_power_w": st.dc_fan_power_w,
            "heat_rejected_w": st.dc_heat_w,
        }),
        ("thermal", ["FWS"], {
            "supply_temp_c": st.fws_supply_c * one,
            "return_temp_c": st.fws_return_c * one,
            "flow_kg_s": st.fws_flow_kg_s * one,
            "pump_power_w": st.fws_pump_power_w * one,
        }),
        ("thermal", ["CH01"], {
            "cooling_w": st.chiller_cooling_w * one,
            "power_w": st.chiller_power_w * one,
            "cop": st.chiller_cop * one,
        }),
        ("thermal", ["HP01"], {
            "heat_delivered_w": st.hp_heat_w * one,
            "power_w": st.hp_power_w * one,
            "cop": st.hp_cop * one,
        }),
        ("thermal", ["OUTDOOR"], {"air_temp_c": st.outdoor_c * one}),
        ("power", site.tx_ids, {"input_power_w": st.tx_in_w, "loss_w": st.tx_loss_w}),
        ("power", site.ups_ids, {
            "input_power_w": st.ups_in_w,
            "output_power_w": st.ups_out_w,
            "loss_w": st.ups_loss_w,
            "on_battery_bool": st.ups_on_battery.astype(np.float64),
            "battery_soc_frac": st.ups_soc,
        }),
        ("power", site.pdu_ids, {"power_w": st.pdu_power_w, "loss_w": st.pdu_loss_w}),
        ("power", ["SITE"], {
            "it_power_w": st.it_power_w * one,
            "facility_power_w": st.facility_power_w * one,
            "mech_power_w": st.mech_power_w * one,
        }),
    ]  # fmt: skip


def state_kpis(
    site: Site, st: FacilityState, carbon_g_per_kwh: float | None, *, headroom: bool = True
) -> dict[str, float]:
    """KPIs of a state (docs/sources.md S5 definitions, twin/kpi.py).

    pue, ere, heat_to_dh_w [W], free_cooling_share, cooling_cop, it_power_w [W],
    facility_power_w [W], reused_w [W], and unless ``headroom`` is False (it reads every
    GPU) min_headroom_k [K]; with a carbon intensity [gCO2e/kWh] also carbon_g_per_kwh and
    cue_kg_kwh [kgCO2e/kWh].
    """
    reused = st.hp_heat_w if site.heat_pump.boundary == "site" else st.hp_source_w
    free = float(st.dc_heat_w.sum()) + st.hp_source_w
    cooling_w = float(st.cdu_pump_power_w.sum()) + st.fws_pump_power_w
    cooling_w += float(st.dc_fan_power_w.sum()) + st.chiller_power_w
    battery_w = kpi_m.battery_discharge_w(st.ups_in_w, st.ups_out_w, st.ups_loss_w)
    total_w = st.facility_power_w + battery_w  # grid meter + batteries (on battery)
    out = {
        "pue": float(kpi_m.pue(total_w, st.it_power_w)),
        "ere": float(kpi_m.ere(total_w, reused, st.it_power_w)),
        "heat_to_dh_w": st.hp_heat_w,
        "free_cooling_share": float(kpi_m.free_cooling_share(free, st.chiller_cooling_w)),
        "cooling_cop": float(kpi_m.cooling_cop(float(st.cdu_heat_w.sum()), cooling_w)),
        "it_power_w": st.it_power_w,
        "facility_power_w": st.facility_power_w,
        "battery_discharge_w": battery_w,
        "reused_w": reused,
    }
    if headroom:
        out["min_headroom_k"] = float(
            kpi_m.thermal_headroom_k(st.gpu_temp_c, site.gpu.slowdown_c).min()
        )
    if carbon_g_per_kwh is not None:
        out["carbon_g_per_kwh"] = carbon_g_per_kwh
        out["cue_kg_kwh"] = float(
            kpi_m.cue_kg_per_kwh(st.facility_power_w, st.it_power_w, carbon_g_per_kwh)
        )
    return out


def add_site_kpis(site_points: dict[str, float], kpis: dict[str, float]) -> None:
    """Put the SITE unit's KPI points (when IT runs) into its point dict."""
    for name in SITE_KPI_POINTS:
        if name in kpis:
            site_points[name] = kpis[name]
