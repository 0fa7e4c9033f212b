"""Reports of a what-if run: the text summary and a PNG plot.

matplotlib is imported lazily and only its object-oriented API is used (``Figure`` with the
Agg canvas), so plotting never switches a global backend or opens a window.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from twin.extras import import_extra

if TYPE_CHECKING:
    from twin.whatif import WhatIfResult, WhatIfSeries


def _duration(s: float) -> str:
    s = float(s)
    if s >= 3600.0:
        return f"{s / 3600.0:.2f} h".replace(".00 h", " h")
    if s >= 60.0:
        return f"{s / 60.0:.1f} min".replace(".0 min", " min")
    return f"{s:.0f} s"


def _minute(s: float) -> str:
    """A time after the start as the minute it falls in, to a tenth: ``+3.5 min``."""
    return f"+{float(s) / 60.0:.1f} min"


def _groups_line(groups: tuple[tuple[str, float], ...], limit: int = 8) -> str:
    """Compact unit groups with their first crossing: ``R0009-R0012 at +0.2 min, ...``."""
    shown = ", ".join(f"{u} at {_minute(t)}" for u, t in groups[:limit])
    if len(groups) > limit:
        shown += f", ... ({len(groups) - limit} more groups)"
    return shown


def _kpi_lines(s: WhatIfSeries, b: WhatIfSeries | None) -> list[str]:
    mwh = 3.6e9
    hours = max(float(s.t_s[-1]), 1e-9) / 3600.0

    def vs(get: Callable[[WhatIfSeries], float], fmt: str) -> str:
        text = format(get(s), fmt)
        return text if b is None else f"{text} (baseline {format(get(b), fmt)})"

    return [
        f"  PUE over the horizon: {vs(lambda x: x.pue_over_horizon, '.4f')}",
        f"  IT energy: {vs(lambda x: x.energy_j('it_power_w') / mwh, '.2f')} MWh",
        "  cooling power (pumps, fans, chiller), mean: "
        f"{vs(lambda x: x.energy_j('cooling_power_w') / 3.6e9 / hours, '.3f')} MW",
        f"  heat to district heating: {vs(lambda x: x.energy_j('heat_to_dh_w') / mwh, '.2f')}"
        f" MWh (mean {s.energy_j('heat_to_dh_w') / mwh / hours:.2f} MW)",
        f"  heat to dry coolers: {vs(lambda x: x.energy_j('heat_to_dc_w') / mwh, '.2f')} MWh",
        f"  outdoor {s.outdoor_c.min():.1f}..{s.outdoor_c.max():.1f} C, facility water supply "
        f"max {s.fws_supply_c.max():.1f} C, rack inlet max {s.max_rack_inlet_c.max():.1f} C, "
        f"GPU max {s.max_gpu_temp_c.max():.1f} C",
        f"  GPUs shut down at the end: {int(s.gpus_off[-1])}"
        + ("" if b is None else f" (baseline {int(b.gpus_off[-1])})"),
    ]


def format_summary(result: WhatIfResult) -> str:
    """The text report of a what-if run: scenarios, limit crossings, KPIs over the horizon."""
    start = datetime.fromtimestamp(result.start_ms / 1000.0, tz=UTC).strftime("%Y-%m-%d %H:%M")
    names = ", ".join(sc.text for sc in result.scenarios) or "no change (baseline)"
    lines = [
        f"What-if: {names}",
        f"  from {start} UTC, {result.n_racks} racks, horizon {_duration(result.horizon_s)}, "
        f"step {result.dt_s:g} s",
    ]
    lines += [f"  note: {n}" for n in result.notes]
    lines.append("Limits:")
    crossed = {c.limit: c for c in result.crossings}
    s = result.series
    peak = {
        "gpu_slowdown": f"max {s.max_gpu_temp_c.max():.1f} C",
        "gpu_shutdown": f"max {s.max_gpu_temp_c.max():.1f} C",
        "coolant_supply": f"max {s.max_coolant_c.max():.1f} C",
        "fws_w45": f"max {s.fws_supply_c.max():.1f} C",
        "ups_overload": f"max {s.max_ups_load_frac.max() * 100:.0f} % of rating",
        "cdu_capacity": f"max {s.max_cdu_load_frac.max() * 100:.0f} % of rating",
    }
    for name, desc in result.limits.items():
        c = crossed.get(name)
        if c is None:
            lines.append(f"  {desc}: not crossed ({peak[name]})")
            continue
        kind = "racks" if name.startswith(("gpu_", "coolant_")) else "units"
        lines.append(
            f"  {desc}: CROSSED at {_minute(c.first_s[0])} in {len(c.units)} {kind} "
            f"({peak[name]}): {_groups_line(c.groups)}"
        )
        if name == "gpu_slowdown":
            lines.append(
                f"    GPUs in thermal slowdown: {int(s.gpus_throttling.max())} at most, "
                f"{int(s.gpus_throttling[-1])} at the end"
            )
        elif name == "gpu_shutdown":
            lines.append(
                f"    GPUs shut down (off for the rest of the horizon): {int(s.gpus_off[-1])}"
            )
    lines.append("Over the horizon:")
    lines += _kpi_lines(s, result.baseline)
    return "\n".join(lines)


def plot_whatif(result: WhatIfResult, path: str | os.PathLike[str]) -> Path:
    """Write a PNG of the run (scenario solid, baseline dashed) to ``path``; return it.

    MissingExtra without matplotlib (the ``plots`` extra).
    """
    import_extra("matplotlib", "plots", "a what-if plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from twin.whatif import W45_SUPPLY_MAX_C

    s, b = result.series, result.baseline
    fig = Figure(figsize=(11, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True)
    # minutes read better than fractions of an hour on short horizons
    unit_s, unit = (60.0, "minutes") if result.horizon_s <= 3 * 3600.0 else (3600.0, "hours")
    x = s.t_s / unit_s
    panels = [
        (axes[0, 0], "max GPU die [C]", "max_gpu_temp_c", 1.0),
        (axes[0, 1], "facility water supply [C]", "fws_supply_c", 1.0),
        (axes[1, 0], "power [MW]", "it_power_w", 1e-6),
        (axes[1, 1], "PUE [1]", "pue", 1.0),
    ]
    for ax, title, name, scale in panels:
        it = "IT, " if name == "it_power_w" else ""
        ax.plot(x, getattr(s, name) * scale, label=f"{it}scenario", color="C3")
        if b is not None:
            ax.plot(
                b.t_s / unit_s, getattr(b, name) * scale, "--", label=f"{it}baseline", color="C0"
            )
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0, 0].axhline(result.slowdown_c, color="k", lw=0.8, ls=":", label="slowdown")
    axes[0, 1].axhline(W45_SUPPLY_MAX_C, color="k", lw=0.8, ls=":", label="W45 limit")
    axes[1, 0].plot(x, s.heat_to_dh_w * 1e-6, color="C2", label="heat to district heating")
    axes[1, 0].plot(x, s.cooling_power_w * 1e-6, color="C1", label="cooling power")
    for ax in axes.flat:
        ax.legend(fontsize=8, loc="best")
    for ax in axes[1]:
        ax.set_xlabel(f"{unit} from start")
    names = ", ".join(sc.text for sc in result.scenarios) or "baseline"
    fig.suptitle(f"What-if: {names}")
    out = Path(path)
    fig.savefig(out, dpi=100)
    return out
