"""Heat-transfer fluid properties: density, heat capacity, viscosity, freezing point.

Tables are CoolProp 8.0.0 values at 3 bar (PyPI ``coolprop``; PG25 = ``INCOMP::MPG[0.25]``,
PG35 = ``INCOMP::MPG[0.35]``, mass fractions); the PG25 rows from 30 to 55 C match
docs/sources.md S4. Between rows properties are interpolated linearly; outside the table
they are held at the end rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from twin.errors import ConfigError

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class FluidTable:
    """Property table of one fluid.

    temp_c [C], density_kg_m3 [kg/m^3], cp_j_kgk [J/(kg K)], viscosity_pa_s [Pa s],
    freezing_c [C].
    """

    name: str
    temp_c: tuple[float, ...]
    density_kg_m3: tuple[float, ...]
    cp_j_kgk: tuple[float, ...]
    viscosity_pa_s: tuple[float, ...]
    freezing_c: float


_T = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0)

#: Registry of fluids by name (models are chosen by name, not by code edits).
FLUIDS: dict[str, FluidTable] = {
    # CoolProp 8.0.0 INCOMP::MPG[0.25]; 30-50 C rows = docs/sources.md S4; freezes -9.8 C
    "PG25": FluidTable(
        "PG25",
        _T,
        (1025.8, 1022.9, 1019.3, 1014.9, 1009.9, 1004.4, 998.4, 992.1),
        (3872.0, 3896.0, 3920.0, 3945.0, 3969.0, 3992.0, 4016.0, 4039.0),
        (5.52e-3, 3.56e-3, 2.45e-3, 1.78e-3, 1.35e-3, 1.07e-3, 0.88e-3, 0.74e-3),
        -9.8,
    ),
    # CoolProp 8.0.0 INCOMP::MPG[0.35]; docs/sources.md S8 fws.fluid; freezes -16.3 C
    "PG35": FluidTable(
        "PG35",
        _T,
        (1037.1, 1033.0, 1028.2, 1022.8, 1016.9, 1010.5, 1003.8, 996.8),
        (3726.0, 3756.0, 3786.0, 3815.0, 3844.0, 3873.0, 3901.0, 3929.0),
        (9.21e-3, 5.55e-3, 3.61e-3, 2.50e-3, 1.83e-3, 1.41e-3, 1.13e-3, 0.93e-3),
        -16.3,
    ),
    # CoolProp 8.0.0 Water; 30-50 C rows = docs/sources.md S4
    "water": FluidTable(
        "water",
        _T,
        (999.9, 999.8, 998.3, 995.7, 992.3, 988.1, 983.3, 977.9),
        (4218.0, 4194.0, 4183.0, 4179.0, 4179.0, 4181.0, 4185.0, 4190.0),
        (1.79e-3, 1.31e-3, 1.00e-3, 0.80e-3, 0.65e-3, 0.55e-3, 0.47e-3, 0.40e-3),
        0.0,
    ),
}


def get_fluid(name: str) -> FluidTable:
    """Return the property table of fluid ``name``; ConfigError lists the valid names."""
    try:
        return FLUIDS[name]
    except KeyError:
        raise ConfigError(f"unknown fluid {name!r}; expected one of {sorted(FLUIDS)}") from None


def density_kg_m3(fluid: FluidTable, temp_c: Any) -> FloatArray:
    """Density [kg/m^3] of ``fluid`` at ``temp_c`` [C]."""
    return np.interp(temp_c, fluid.temp_c, fluid.density_kg_m3)


def cp_j_kgk(fluid: FluidTable, temp_c: Any) -> FloatArray:
    """Specific heat capacity [J/(kg K)] of ``fluid`` at ``temp_c`` [C]."""
    return np.interp(temp_c, fluid.temp_c, fluid.cp_j_kgk)


def viscosity_pa_s(fluid: FluidTable, temp_c: Any) -> FloatArray:
    """Dynamic viscosity [Pa s] of ``fluid`` at ``temp_c`` [C], log-linear interpolation."""
    return np.exp(np.interp(temp_c, fluid.temp_c, np.log(fluid.viscosity_pa_s)))


def outlet_temp_c(
    inlet_temp_c: ArrayLike, heat_w: ArrayLike, flow_kg_s: ArrayLike, cp: ArrayLike
) -> FloatArray:
    """Outlet temperature [C] from the heat balance Q = m_dot * cp * dT.

    inlet_temp_c [C], heat_w [W] added to the stream, flow_kg_s [kg/s] (> 0),
    cp [J/(kg K)].
    """
    m = np.maximum(np.asarray(flow_kg_s, dtype=np.float64), 1e-9)
    return np.asarray(inlet_temp_c, dtype=np.float64) + np.asarray(heat_w) / (m * np.asarray(cp))
