"""Power chain: PDUs/busways, UPS modules (loss curve a0 + a1 x + a2 x^2 of rating, double
conversion or eco mode, on battery), transformers (no-load + load^2 losses), auxiliaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.gpu import _m

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class PowerParams:
    """Electrical chain. Defaults: docs/sources.md S5 and S8 ``electrical``."""

    tx_rated_w: float = field(default=8.0e6, metadata=_m(1.0))  # est.: 2 per 64-rack hall
    tx_design_loading: float = field(default=0.85, metadata=_m(0.05, 1.0))  # est.
    tx_noload_frac: float = field(default=0.001, metadata=_m(0.0, 0.1))  # docs/sources.md S8
    tx_load_frac_at_rated: float = field(default=0.009, metadata=_m(0.0, 0.1))  # docs/sources.md S8
    ups_mode: str = field(
        default="double_conversion", metadata={"choices": {"double_conversion", "eco"}}
    )  # docs/sources.md S8
    ups_rated_w: float = field(default=3.5e6, metadata=_m(1.0))  # docs/sources.md S8 rated_MW
    ups_redundancy: int = field(default=1, metadata=_m(0))  # docs/sources.md S8 "N+1"
    ups_loss_coeff: tuple[float, ...] = field(
        default=(0.010, 0.015, 0.010), metadata={"len": 3, "min": 0.0}
    )  # docs/sources.md S8
    ups_eco_loss_coeff: tuple[float, ...] = field(
        default=(0.003, 0.002, 0.002), metadata={"len": 3, "min": 0.0}
    )  # docs/sources.md S8
    battery_autonomy_s: float = field(default=300.0, metadata=_m(1.0))  # est. Li-ion, 5 min
    recharge_frac: float = field(default=0.05, metadata=_m(0.0, 1.0))  # est. of rating
    distribution_loss_frac: float = field(default=0.005, metadata=_m(0.0, 0.2))  # sources.md S8


@dataclass(frozen=True)
class AuxParams:
    """Auxiliary loads. Defaults: docs/sources.md S8 ``aux``."""

    lighting_bms_frac_it: float = field(default=0.005, metadata=_m(0.0, 0.5))  # docs/sources.md S8
    # CRAH fan power at the design air heat (twin.room_air), est.
    residual_air_fan_frac_it: float = field(default=0.002, metadata=_m(0.0, 0.5))


def pdu_loss_w(power_w: Any, p: PowerParams) -> FloatArray:
    """Distribution loss [W] of a PDU/busway carrying ``power_w`` [W]."""
    return np.asarray(power_w, dtype=np.float64) * p.distribution_loss_frac


def ups_loss_w(out_w: Any, rated_w: float, coeff: tuple[float, ...]) -> FloatArray:
    """UPS module loss [W] = rated * (a0 + a1 x + a2 x^2), x = out/rated (docs/sources.md S5)."""
    x = np.asarray(out_w, dtype=np.float64) / rated_w
    return rated_w * (coeff[0] + coeff[1] * x + coeff[2] * x * x)


def ups_efficiency(out_w: Any, p: PowerParams) -> FloatArray:
    """Efficiency [1] of a module in the configured mode at output ``out_w`` [W]."""
    coeff = p.ups_eco_loss_coeff if p.ups_mode == "eco" else p.ups_loss_coeff
    out = np.asarray(out_w, dtype=np.float64)
    return out / (out + ups_loss_w(out, p.ups_rated_w, coeff))


def ups_modules(
    out_w: Any,
    mains_ok: Any,
    soc: Any,
    dt_s: float,
    p: PowerParams,
    loss_factor: Any = None,
) -> tuple[FloatArray, FloatArray, NDArray[np.bool_], FloatArray]:
    """Step UPS modules: (input power [W], loss [W], on battery, new state of charge [1]).

    out_w [W] per module; mains_ok (bool): rectifier input healthy. On battery the module
    draws nothing from the mains and its battery supplies output + double-conversion loss
    until empty; then it transfers to static bypass (input = output + eco loss). With mains
    back, the battery recharges at recharge_frac of rating. ``loss_factor`` [1] per module
    (None = 1): a degraded module's losses over its curve (the ``ups_degrade`` fault,
    twin/fleet_faults.py).
    """
    out = np.asarray(out_w, dtype=np.float64)
    ok = np.asarray(mains_ok, dtype=bool)
    s0 = np.asarray(soc, dtype=np.float64)
    coeff = p.ups_eco_loss_coeff if p.ups_mode == "eco" else p.ups_loss_coeff
    factor = 1.0 if loss_factor is None else np.asarray(loss_factor, dtype=np.float64)
    loss_norm = ups_loss_w(out, p.ups_rated_w, coeff) * factor
    if out.shape == ok.shape == s0.shape and ok.all() and (s0 == 1.0).all():
        # mains healthy, batteries full (the usual case): no charge, no drain
        return out + loss_norm, loss_norm, np.zeros(out.shape, dtype=bool), s0.copy()
    loss_dc = ups_loss_w(out, p.ups_rated_w, p.ups_loss_coeff) * factor
    energy_j = p.ups_rated_w * p.battery_autonomy_s
    on_batt = ~ok & (s0 > 0.0)
    # on battery: the battery carries output + loss until it is empty; if it empties within
    # the step, the static bypass takes over and the mains supply the rest of the step's
    # energy (so no energy is created when a step is longer than the autonomy left)
    from_batt = np.minimum(out + loss_dc, s0 * energy_j / dt_s)  # [W] mean over the step
    charge = np.where(ok & (s0 < 1.0), p.recharge_frac * p.ups_rated_w, 0.0)
    charge = np.minimum(charge, (1.0 - s0) * energy_j / dt_s)
    soc_new = np.where(
        on_batt, np.maximum(s0 - from_batt * dt_s / energy_j, 0.0), s0 + charge * dt_s / energy_j
    )
    loss_bypass = ups_loss_w(out, p.ups_rated_w, p.ups_eco_loss_coeff) * factor
    loss = np.where(on_batt, loss_dc, np.where(ok, loss_norm, loss_bypass))
    inp = np.where(on_batt, out + loss_dc - from_batt, out + loss + charge)
    return inp, loss, on_batt, soc_new


def transformer_loss_w(load_w: Any, p: PowerParams) -> FloatArray:
    """Transformer loss [W] = rated * (noload + load_frac * x^2), x = load/rated (sources.md S8)."""
    x = np.asarray(load_w, dtype=np.float64) / p.tx_rated_w
    return p.tx_rated_w * (p.tx_noload_frac + p.tx_load_frac_at_rated * x * x)
