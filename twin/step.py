"""One step of the facility model: ``step(site, state, inputs, dt_s) -> state``.

It chains the pure model functions (gpu, rack, cdu, plant, power) in the direction heat
flows: GPUs -> rack coolant -> CDUs -> facility water -> heat pump / dry coolers / chiller,
and power flows backwards: racks -> PDUs -> UPS -> transformers. Coupling between stages uses
the previous state (explicit), each stage integrates its own lags exactly, so any dt_s is
stable. Physics and parameters: docs/physics.md.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from twin import cdu as cdu_m
from twin import district_heat, room_air
from twin import gpu as gpu_m
from twin import plant as plant_m
from twin import power as power_m
from twin import rack as rack_m
from twin.fluids import FluidTable, cp_j_kgk, density_kg_m3, get_fluid
from twin.site import Site
from twin.state import FacilityState, exp_relax

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(eq=False)
class StepInputs:
    """Everything outside the model for one step: workload, weather, setpoints, faults.

    util, power_limit_w, fouling, gpu_stuck: (R, G); pump_health, pump_on: (C,);
    dc_fan_ok: (D,); ups_mains_ok: (U,).
    """

    util: FloatArray  # GPU utilisation [1]
    power_limit_w: FloatArray  # enforced power limit [W]
    outdoor_c: float  # outdoor dry bulb [C]
    day_of_year: float  # [d]; the plant follows outdoor_c (district-heat demand, supply)
    fouling: FloatArray  # cold-plate resistance multiplier [1], 1 = clean
    gpu_stuck: BoolArray  # GPU stuck in HW slowdown
    pump_health: FloatArray  # CDU pump head/flow factor [1], 1 = new
    pump_on: BoolArray  # CDU pump running
    dc_fan_ok: BoolArray  # dry-cooler fans working
    ups_mains_ok: BoolArray  # UPS rectifier input healthy
    chiller_ok: bool = True  # trim chiller available (False: tripped, takes no heat)
    tcs_setpoint_c: float | None = None  # CDU supply setpoint [C]; None = site value
    fws_setpoint_c: float | None = None  # facility supply setpoint [C]; None = site value
    # a GPU that shut down stays off (a what-if horizon: nobody restarts the node); False: it
    # comes back once cooled (twin/gpu.py shutdown_latch)
    gpu_latch_off: bool = False
    # UPS module loss over its curve [1] (U,); None = 1 (the ups_degrade fault)
    ups_loss_factor: FloatArray | None = None


def nominal_inputs(
    site: Site, util: FloatArray, *, outdoor_c: float = 5.0, day_of_year: float = 100.0
) -> StepInputs:
    """Inputs with no faults, full power limits and the given utilisation (R, G)."""
    r, g = site.n_racks, site.n_gpus
    return StepInputs(
        util=np.asarray(util, dtype=np.float64),
        power_limit_w=np.full((r, g), site.gpu.tdp_w),
        outdoor_c=outdoor_c,
        day_of_year=day_of_year,
        fouling=np.ones((r, g)),
        gpu_stuck=np.zeros((r, g), dtype=bool),
        pump_health=np.ones(len(site.cdu_ids)),
        pump_on=np.ones(len(site.cdu_ids), dtype=bool),
        dc_fan_ok=np.ones(len(site.dc_ids), dtype=bool),
        ups_mains_ok=np.ones(len(site.ups_ids), dtype=bool),
    )


def rack_design_flow_kg_s(site: Site) -> float:
    """Design coolant flow per rack [kg/s]: flow_l_min_per_kw * design kW at supply density."""
    rho = float(density_kg_m3(get_fluid(site.tcs.fluid), site.tcs.supply_temp_c))
    return site.tcs.flow_l_min_per_kw * site.rack.design_power_w / 1000.0 / 60_000.0 * rho


def fws_design_flow_kg_s(site: Site) -> float:
    """Design facility-water flow [kg/s] for the site's design IT heat at design_dt_k."""
    cp = float(cp_j_kgk(get_fluid(site.fws.fluid), site.fws.supply_setpoint_c))
    return site.it_design_w / (cp * site.fws.design_dt_k)


def initial_state(site: Site, *, outdoor_c: float = 5.0) -> FacilityState:
    """A cold-start state: idle GPUs, every loop at its setpoint, design flows."""
    r, g = site.n_racks, site.n_gpus
    n_c, n_d = len(site.cdu_ids), len(site.dc_ids)
    n_u, n_t, n_p = len(site.ups_ids), len(site.tx_ids), len(site.pdu_ids)
    sup, fws = site.tcs.supply_temp_c, site.fws.supply_setpoint_c
    rack_flow = rack_design_flow_kg_s(site)
    served = np.bincount(site.rack_cdu, minlength=n_c).astype(np.float64)
    zeros_rg = np.zeros((r, g))
    return FacilityState(
        t_s=0.0,
        gpu_temp_c=np.full((r, g), sup),
        gpu_mem_temp_c=np.full((r, g), sup),
        gpu_power_w=np.full((r, g), site.gpu.idle_w),
        gpu_clock_frac=np.ones((r, g)),
        gpu_util=zeros_rg.copy(),
        gpu_power_limit_w=np.full((r, g), site.gpu.tdp_w),
        gpu_energy_j=zeros_rg.copy(),
        gpu_reasons=np.zeros((r, g), dtype=np.uint64),
        gpu_temp_rate_k_s=zeros_rg.copy(),
        gpu_heat_to_coolant_w=zeros_rg.copy(),
        gpu_off=np.zeros((r, g), dtype=bool),
        rack_inlet_c=np.full(r, sup),
        rack_coolant_c=np.full(r, sup),
        rack_flow_kg_s=np.full(r, rack_flow),
        rack_power_w=np.zeros(r),
        rack_heat_liquid_w=np.zeros(r),
        rack_heat_air_w=np.zeros(r),
        cdu_supply_c=np.full(n_c, sup),
        cdu_return_c=np.full(n_c, sup),
        cdu_fac_supply_c=np.full(n_c, fws),
        cdu_fac_return_c=np.full(n_c, fws),
        cdu_flow_kg_s=served * rack_flow,
        cdu_fac_flow_kg_s=np.zeros(n_c),
        cdu_pump_speed=np.full(n_c, 1.0 / site.cdu.flow_max_frac),
        cdu_pump_power_w=np.zeros(n_c),
        cdu_heat_w=np.zeros(n_c),
        fws_supply_c=fws,
        fws_return_c=fws,
        fws_flow_kg_s=0.0,
        fws_pump_power_w=0.0,
        dc_fan_speed=np.zeros(n_d),
        dc_fan_power_w=np.zeros(n_d),
        dc_heat_w=np.zeros(n_d),
        chiller_cooling_w=0.0,
        chiller_power_w=0.0,
        chiller_cop=0.0,
        hp_heat_w=0.0,
        hp_source_w=0.0,
        hp_power_w=0.0,
        hp_cop=0.0,
        pdu_power_w=np.zeros(n_p),
        pdu_loss_w=np.zeros(n_p),
        ups_in_w=np.zeros(n_u),
        ups_out_w=np.zeros(n_u),
        ups_loss_w=np.zeros(n_u),
        ups_on_battery=np.zeros(n_u, dtype=bool),
        ups_soc=np.ones(n_u),
        tx_in_w=np.zeros(n_t),
        tx_loss_w=np.zeros(n_t),
        mech_power_w=0.0,
        it_power_w=0.0,
        facility_power_w=0.0,
        outdoor_c=outdoor_c,
        weather_noise_k=0.0,
    )


@dataclass(frozen=True, eq=False)
class _SiteConstants:
    """What a step needs that depends on the site alone (layout counts, design flows)."""

    tcs_fluid: FluidTable
    fws_fluid: FluidTable
    n_cdus: int
    n_pdus: int
    n_halls: int
    rack_flow_kg_s: float  # design coolant flow per rack [kg/s]
    served: FloatArray  # (C,) racks per CDU
    fws_design_kg_s: float  # design facility-water flow [kg/s]
    fac_design_kg_s: FloatArray  # (C,) design facility flow per CDU [kg/s]
    tcs_set_c: float  # CDU supply setpoint of the site [C]
    cdu_design_m3_s: FloatArray  # (C,) design flow per CDU at tcs_set_c [m^3/s]
    fws_volume_m3: float
    ups_per_hall: FloatArray  # (H,)
    tx_per_hall: FloatArray  # (H,)
    air_design_w: float  # design heat of the room-air system [W]

    @classmethod
    def of(cls, site: Site) -> _SiteConstants:
        tcs_fluid = get_fluid(site.tcs.fluid)
        n_c, n_h = len(site.cdu_ids), site.n_halls
        rack_flow = rack_design_flow_kg_s(site)
        served = np.bincount(site.rack_cdu, minlength=n_c).astype(np.float64)
        fws_design = fws_design_flow_kg_s(site)
        tcs_set = site.tcs.supply_temp_c
        k = cls(
            tcs_fluid=tcs_fluid,
            fws_fluid=get_fluid(site.fws.fluid),
            n_cdus=n_c,
            n_pdus=len(site.pdu_ids),
            n_halls=n_h,
            rack_flow_kg_s=rack_flow,
            served=served,
            fws_design_kg_s=fws_design,
            fac_design_kg_s=fws_design * served / site.n_racks,
            tcs_set_c=tcs_set,
            cdu_design_m3_s=_cdu_design_m3_s(served, rack_flow, tcs_fluid, tcs_set),
            fws_volume_m3=site.fws.volume_m3_per_mw * site.it_design_w / 1e6,
            ups_per_hall=np.bincount(site.ups_hall, minlength=n_h).astype(np.float64),
            tx_per_hall=np.bincount(site.tx_hall, minlength=n_h).astype(np.float64),
            air_design_w=site.room_air.design_heat_frac_it * site.it_design_w,
        )
        for v in vars(k).values():
            if isinstance(v, np.ndarray):
                v.setflags(write=False)  # shared by every step of the site
        return k


def _cdu_design_m3_s(
    served: FloatArray, rack_flow_kg_s: float, fluid: FluidTable, setpoint_c: float
) -> FloatArray:
    """Design volume flow of each CDU [m^3/s] at the supply setpoint's density."""
    return served * rack_flow_kg_s / float(density_kg_m3(fluid, setpoint_c))


# A memo, not state: the site is frozen, so its constants never change; weak keys let a
# dropped site take its entry with it. Saves ~0.1 ms of small numpy calls per step.
_CONSTANTS: weakref.WeakKeyDictionary[Site, _SiteConstants] = weakref.WeakKeyDictionary()


def _constants(site: Site) -> _SiteConstants:
    k = _CONSTANTS.get(site)
    if k is None:
        k = _CONSTANTS[site] = _SiteConstants.of(site)
    return k


def step(site: Site, state: FacilityState, inputs: StepInputs, dt_s: float) -> FacilityState:
    """Advance ``state`` by ``dt_s`` [s] under ``inputs``; returns a new state."""
    g, rk, cd = site.gpu, site.rack, site.cdu
    k = _constants(site)
    tcs_fluid, fws_fluid = k.tcs_fluid, k.fws_fluid
    n_c = k.n_cdus
    tcs_set = site.tcs.supply_temp_c if inputs.tcs_setpoint_c is None else inputs.tcs_setpoint_c
    fws_set = site.fws.supply_setpoint_c if inputs.fws_setpoint_c is None else inputs.fws_setpoint_c

    # --- GPUs, against the rack coolant of the previous state
    design_flow = k.rack_flow_kg_s
    flow_frac = state.rack_flow_kg_s / design_flow
    # clean plates (the usual case): one resistance per rack, broadcast over its GPUs
    fouled = bool((inputs.fouling != 1.0).any())
    r_gpu = gpu_m.cold_plate_resistance_k_w(
        flow_frac[:, None], inputs.fouling if fouled else 1.0, g
    )
    t_cool = rack_m.gpu_coolant_c(state.rack_inlet_c, state.rack_coolant_c, flow_frac)[:, None]
    decay = gpu_m.die_decay(r_gpu, dt_s, g)
    gs = gpu_m.gpu_step(
        inputs.util,
        inputs.power_limit_w,
        inputs.gpu_stuck,
        state.gpu_temp_c,
        state.gpu_mem_temp_c,
        state.gpu_energy_j,
        state.gpu_off,
        t_cool,
        r_gpu,
        decay,
        dt_s,
        g,
        recover=not inputs.gpu_latch_off,
    )

    # --- racks
    # a GPU's thermal trip powers its compute tray off (est.: THERMTRIP, the BMC cuts the
    # tray): the rack's other loads scale with the share of GPUs still on, at the mean
    # utilisation of those (the same as before where every GPU is on)
    on = gs.on_frac
    other_w = rack_m.non_gpu_power_w(gs.util_sum / (site.n_gpus * np.maximum(on, 1e-9)), rk) * on
    rack_ac = rack_m.rack_input_power_w(gs.power_sum_w, other_w, rk)
    q_liq, q_air = rack_m.heat_split_w(gs.heat_sum_w, other_w, rack_ac, rk)

    # --- CDU pumps hold design flow; a worn pump runs faster, a tripped one delivers nothing
    speed = cdu_m.pump_speed_frac(1.0, inputs.pump_health, cd)
    speed = np.where(inputs.pump_on, speed, 0.0)
    cdu_flow_frac = cdu_m.pump_flow_frac(speed, inputs.pump_health, inputs.pump_on, cd)
    rack_flow = cdu_flow_frac[site.rack_cdu] * design_flow
    inlet = state.cdu_supply_c[site.rack_cdu]
    cp_rack = cp_j_kgk(tcs_fluid, state.rack_coolant_c)
    cap = rk.coolant_volume_m3 * density_kg_m3(tcs_fluid, state.rack_coolant_c) * cp_rack
    out_c, out_mean = rack_m.coolant_step(
        state.rack_coolant_c, inlet, rack_flow, q_liq, cp_rack, cap, dt_s
    )

    # --- CDU pumps (their work ends up in the coolant as heat), CDUs: each CDU's loop (its
    # racks' coolant and the loop mass at supply temperature) gains the racks' liquid heat
    # and the pump work, and loses what the HX passes to facility water. The supply relaxes
    # toward its target with the loop's mixing lag; the HX heat is what closes the loop's
    # energy balance exactly over the step.
    served = k.served
    design_m3_s = (
        k.cdu_design_m3_s
        if tcs_set == k.tcs_set_c
        else _cdu_design_m3_s(served, design_flow, tcs_fluid, tcs_set)
    )
    pump_w = cdu_m.pump_power_w(speed, inputs.pump_on, design_m3_s, cd)
    cdu_flow = np.bincount(site.rack_cdu, weights=rack_flow, minlength=n_c).astype(np.float64)
    mixed = np.bincount(site.rack_cdu, weights=rack_flow * out_mean, minlength=n_c)
    plain = np.bincount(site.rack_cdu, weights=out_c, minlength=n_c) / served
    ret_c = np.where(cdu_flow > 0.0, mixed / np.where(cdu_flow > 0.0, cdu_flow, 1.0), plain)
    # enthalpy the rack loops return to the CDU above their inlet [W], as the racks saw it
    carried = np.bincount(
        site.rack_cdu, weights=rack_flow * cp_rack * (out_mean - inlet), minlength=n_c
    )
    q_in_cdu = carried + pump_w
    cp_cdu = cp_j_kgk(tcs_fluid, ret_c)
    target = cdu_m.supply_target_c(tcs_set, state.fws_supply_c, q_in_cdu, cd)
    supply_c = cdu_m.supply_step(state.cdu_supply_c, target, cdu_flow, cp_cdu, dt_s, cd)
    q_hx = q_in_cdu - cd.thermal_mass_j_k * (supply_c - state.cdu_supply_c) / dt_s
    if (q_hx < 0.0).any():
        # the HX cannot heat the loop: what the racks and pump add stays in it
        neg = q_hx < 0.0
        supply_c = np.where(
            neg, state.cdu_supply_c + q_in_cdu * dt_s / cd.thermal_mass_j_k, supply_c
        )
        q_hx = np.where(neg, 0.0, q_hx)
    cp_f = float(cp_j_kgk(fws_fluid, state.fws_supply_c))
    fws_design = k.fws_design_kg_s
    fac_design = k.fac_design_kg_s
    fac_flow, fac_ret = cdu_m.facility_side(
        q_hx, state.fws_supply_c, cp_f, site.fws.design_dt_k, fac_design, cd
    )

    # --- facility water: heat pump first, then dry coolers, then the trim chiller. The loop's
    # water (one mixed volume at supply temperature) relaxes toward what the plant can reach;
    # the heat the plant takes over the step is what closes the loop's balance, given to the
    # stages in order, each up to what it can take at this step's inlet temperature.
    fw = site.fws
    # a floor keeps m_cp > 0 even with a site file that sets every flow floor to 0
    fws_flow = max(float(fac_flow.sum()), fw.min_flow_frac * fws_design, 1e-6 * fws_design)
    m_cp = fws_flow * cp_f
    rho_f = float(density_kg_m3(fws_fluid, state.fws_supply_c))
    fws_pump_w = float(plant_m.fws_pump_power_w(fws_flow, fws_design, rho_f, fw))
    q_fws = float(q_hx.sum()) + fws_pump_w  # the pump's work heats the water
    fws_ret = state.fws_supply_c + q_fws / m_cp
    out = inputs.outdoor_c
    hp, dh = site.heat_pump, site.district_heating
    dh_demand = district_heat.heat_demand_w(out, dh)
    offtake = district_heat.campus_offtake_w(out, hp.capacity_w * site.scale, dh)
    dh_supply = district_heat.supply_temp_c(out, hp.dh_supply_summer_c, hp.dh_supply_winter_c, dh)
    hp_cop = float(plant_m.heat_pump_cop(dh_supply, hp))
    hp_max = min(max(m_cp * (fws_ret - hp.source_out_c), 0.0), offtake * (hp_cop - 1.0) / hp_cop)
    t_hp = fws_ret - hp_max / m_cp
    dcp = site.dry_coolers
    n_ok = int(np.count_nonzero(inputs.dc_fan_ok))
    m_cp_unit = m_cp / max(n_ok, 1)
    dc_max = n_ok * plant_m.dry_cooler_heat_w(1.0, m_cp_unit, t_hp, out, dcp)
    dc_max = min(dc_max, max(m_cp * (t_hp - fws_set), 0.0))
    t_dc = t_hp - dc_max / m_cp
    ch = site.trim_chiller
    ch_max = min(max(m_cp * (t_dc - fws_set), 0.0), ch.capacity_frac_it * site.it_design_w)
    if not inputs.chiller_ok:
        ch_max = 0.0
    t_plant = t_dc - ch_max / m_cp
    volume = k.fws_volume_m3
    c_fws = volume * rho_f * cp_f  # [J/K]
    t_relax = float(exp_relax(state.fws_supply_c, t_plant, fws_flow / (volume * rho_f), dt_s))
    q_plant = max(q_fws - c_fws * (t_relax - state.fws_supply_c) / dt_s, 0.0)
    hp_src = min(q_plant, hp_max)
    dc_q = min(q_plant - hp_src, dc_max)
    ch_q = min(q_plant - hp_src - dc_q, ch_max)
    fws_supply = state.fws_supply_c + (q_fws - hp_src - dc_q - ch_q) * dt_s / c_fws
    hp_heat = hp_src * hp_cop / (hp_cop - 1.0) if hp_src > 0.0 else 0.0
    hp_w = hp_heat - hp_src
    s_unit = plant_m.dry_cooler_speed(dc_q / max(n_ok, 1), m_cp_unit, t_hp, out, dcp)
    dc_speed = np.where(inputs.dc_fan_ok, s_unit, 0.0)
    dc_heat = np.where(inputs.dc_fan_ok, dc_q / max(n_ok, 1), 0.0)
    dc_fan_w = plant_m.dry_cooler_fan_power_w(dc_speed, dcp)
    ch_cop = float(plant_m.chiller_cop(fws_set + ch.t_evap_offset_k, out + ch.t_cond_offset_k, ch))
    ch_w = ch_q / ch_cop if ch_q > 0.0 else 0.0

    # --- power chain: racks -> PDUs -> UPS (per hall) -> transformers (per hall)
    pw = site.power
    n_h = k.n_halls
    pdu_out = np.bincount(site.rack_pdu, weights=rack_ac, minlength=k.n_pdus).astype(np.float64)
    pdu_loss = power_m.pdu_loss_w(pdu_out, pw)
    hall_ups_load = np.bincount(site.pdu_hall, weights=pdu_out + pdu_loss, minlength=n_h)
    ups_out = (hall_ups_load / k.ups_per_hall)[site.ups_hall]
    ups_in, ups_loss, on_batt, soc = power_m.ups_modules(
        ups_out, inputs.ups_mains_ok, state.ups_soc, dt_s, pw, inputs.ups_loss_factor
    )
    it_w = float(rack_ac.sum())

    # --- room air: rack air share, PDU and UPS losses, lighting and the CRAH fans go to the
    # CRAH coils; the coil loop is free-cooled below the economiser limit, the chiller
    # takes the rest (same Carnot fraction as the trim chiller, evaporating below the coil
    # supply)
    ra = site.room_air
    light_w = site.aux.lighting_bms_frac_it * it_w
    air_in = float(q_air.sum()) + float(pdu_loss.sum()) + float(ups_loss.sum()) + light_w
    crah_w = room_air.crah_fan_power_w(
        air_in, k.air_design_w, site.aux.residual_air_fan_frac_it * site.it_design_w, ra
    )
    air_heat = air_in + crah_w
    air_ch_q = air_heat * (1.0 - room_air.economiser_frac(out, ra))
    air_ch_cop = float(
        plant_m.chiller_cop(ra.coil_supply_c + ch.t_evap_offset_k, out + ch.t_cond_offset_k, ch)
    )
    air_ch_w = air_ch_q / air_ch_cop if air_ch_q > 0.0 else 0.0

    mech_w = (
        float(pump_w.sum()) + fws_pump_w + float(dc_fan_w.sum()) + ch_w + light_w + crah_w
    ) + air_ch_w
    if hp.boundary == "site":
        mech_w += hp_w
    hall_it = np.bincount(site.rack_hall, weights=rack_ac, minlength=n_h)
    # with no IT load at all (every GPU tripped) the plant's power still reaches the meter
    hall_share = hall_it / it_w if it_w > 0.0 else np.full(n_h, 1.0 / n_h)
    hall_tx_load = np.bincount(site.ups_hall, weights=ups_in, minlength=n_h) + mech_w * hall_share
    tx_load = (hall_tx_load / k.tx_per_hall)[site.tx_hall]
    tx_loss = power_m.transformer_loss_w(tx_load, pw)
    tx_in = tx_load + tx_loss

    return FacilityState(
        t_s=state.t_s + dt_s,
        gpu_temp_c=gs.temp_c,
        gpu_mem_temp_c=gs.mem_temp_c,
        gpu_power_w=gs.power_w,
        gpu_clock_frac=gs.clock_frac,
        gpu_util=np.asarray(inputs.util, dtype=np.float64),
        gpu_power_limit_w=np.asarray(inputs.power_limit_w, dtype=np.float64),
        gpu_energy_j=gs.energy_j,
        gpu_reasons=gs.reasons,
        gpu_temp_rate_k_s=gs.temp_rate_k_s,
        gpu_heat_to_coolant_w=gs.heat_w,
        gpu_off=gs.off,
        rack_inlet_c=supply_c[site.rack_cdu],
        rack_coolant_c=out_c,
        rack_flow_kg_s=rack_flow,
        rack_power_w=rack_ac,
        rack_heat_liquid_w=q_liq,
        rack_heat_air_w=q_air,
        cdu_supply_c=supply_c,
        cdu_return_c=ret_c,
        cdu_fac_supply_c=np.full(n_c, state.fws_supply_c),
        cdu_fac_return_c=fac_ret,
        cdu_flow_kg_s=cdu_flow,
        cdu_fac_flow_kg_s=fac_flow,
        cdu_pump_speed=speed,
        cdu_pump_power_w=pump_w,
        cdu_heat_w=q_hx,
        fws_supply_c=fws_supply,
        fws_return_c=fws_ret,
        fws_flow_kg_s=fws_flow,
        fws_pump_power_w=fws_pump_w,
        dc_fan_speed=dc_speed,
        dc_fan_power_w=dc_fan_w,
        dc_heat_w=dc_heat,
        chiller_cooling_w=ch_q,
        chiller_power_w=ch_w,
        chiller_cop=ch_cop if ch_q > 0.0 else 0.0,
        hp_heat_w=hp_heat,
        hp_source_w=hp_src,
        hp_power_w=hp_w,
        hp_cop=hp_cop,
        pdu_power_w=pdu_out,
        pdu_loss_w=pdu_loss,
        ups_in_w=ups_in,
        ups_out_w=ups_out,
        ups_loss_w=ups_loss,
        ups_on_battery=on_batt,
        ups_soc=soc,
        tx_in_w=tx_in,
        tx_loss_w=tx_loss,
        mech_power_w=mech_w,
        it_power_w=it_w,
        facility_power_w=float(tx_in.sum()),
        outdoor_c=inputs.outdoor_c,
        weather_noise_k=state.weather_noise_k,
        air_heat_w=air_heat,
        crah_fan_power_w=crah_w,
        air_chiller_cooling_w=air_ch_q,
        air_chiller_power_w=air_ch_w,
        dh_demand_w=dh_demand,
        dh_offtake_w=offtake,
    )
