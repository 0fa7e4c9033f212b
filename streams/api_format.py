"""How the HTTP API writes numbers and times (docs/api.md, "Numbers and times").

Floats are rounded by the unit their key names (the suffixes of docs/nomenclature.md) to what
the sensors and models behind them resolve: 0.01 K for temperatures, 0.1 W for power, 1 g/s
for mass flow, four significant digits for fitted parameters and dimensionless KPIs. A key
without a unit suffix (``value``, ``expected``, ``residual``, ``measured``) takes the unit of
the key it sits under (the point's name). ``?precision=full`` skips the rounding: values as
the worker holds them (float32 readings widened to float64 exactly), for programs that
compare with what they sent or difference successive readings. Not-finite floats are null in
both, so every answer is strict JSON.

Every ``ts_ms`` (epoch milliseconds, UTC) gets an ISO 8601 UTC twin ``ts`` beside it, and
every ``<name>_ts_ms`` a ``<name>_ts``.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

#: Digits kept per unit suffix: ("dec", n) decimals or ("sig", n) significant digits;
#: matched longest suffix first (``_k_w`` before ``_w``).
SUFFIX_ROUNDING: dict[str, tuple[str, int]] = {
    "_c": ("dec", 2),  # temperature [C]: coolant RTDs resolve ~0.1 K, residuals need 0.01
    "_k": ("dec", 2),  # temperature difference [K]
    "_w": ("dec", 1),  # power [W]: NVML reports mW, meters ~1 W
    "_j": ("dec", 0),
    "_kg_s": ("dec", 3),  # mass flow [kg/s]: 1 g/s
    "_pa": ("dec", 0),
    "_s": ("dec", 1),  # durations, ages [s]
    "_ms": ("dec", 0),
    "_pct": ("dec", 1),
    "_frac": ("dec", 4),
    "_bool": ("dec", 0),
    "_mhz": ("dec", 0),
    "_k_w": ("sig", 4),  # fitted thermal resistance [K/W]
    "_w_k": ("sig", 4),
    "_j_k": ("sig", 4),  # fitted heat capacity [J/K]
    "_j_kgk": ("sig", 4),
    "_m3_s": ("sig", 4),
    "_pa_s": ("sig", 4),
    "_per_s": ("sig", 4),
    "_g_per_kwh": ("sig", 4),
    "_kg_kwh": ("sig", 4),
}
#: Significant digits of floats whose key names no unit (pue, ere, cop, shares).
DEFAULT_SIG_DIGITS = 4
_SUFFIXES = sorted(SUFFIX_ROUNDING, key=len, reverse=True)
PRECISIONS = ("display", "full")


@functools.lru_cache(maxsize=4096)
def unit_suffix(key: str) -> str | None:
    """The unit suffix ``key`` ends with (longest first), or None."""
    for s in _SUFFIXES:
        if key.endswith(s) and len(key) > len(s):
            return s
    return None


def round_for(value: float, suffix: str | None) -> float | None:
    """``value`` rounded for a key with unit ``suffix``; None when not finite."""
    if not math.isfinite(value):
        return None
    mode, n = SUFFIX_ROUNDING.get(suffix or "", ("sig", DEFAULT_SIG_DIGITS))
    if mode == "dec":
        return round(value, n) + 0.0  # + 0.0: no "-0.0"
    if value == 0.0:
        return 0.0
    return round(value, n - 1 - math.floor(math.log10(abs(value))))


def iso_utc(ts_ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC (``2026-12-02T10:39:27.123Z``); None for none/0."""
    if ts_ms is None or ts_ms <= 0:
        return None
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ts_ms))
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age_s(ts_ms: int | None, now_ms: int) -> float | None:
    """Seconds from ``ts_ms`` to ``now_ms`` (both epoch ms); None when there is no reading."""
    if ts_ms is None or ts_ms <= 0:
        return None
    return (now_ms - ts_ms) / 1000.0


def api_json(doc: Any, precision: str = "display") -> Any:
    """``doc`` ready for the wire: floats rounded by unit (``display``) or kept (``full``),
    not-finite floats as null, an ISO ``ts`` beside every ``ts_ms``."""
    return _walk(doc, None, precision != "full")


def _walk(x: Any, suffix: str | None, rounding: bool) -> Any:
    if isinstance(x, dict):
        out: dict[str, Any] = {}
        for k, v in x.items():
            key = str(k)
            if v is None or isinstance(v, str | int):  # the common leaves, without a call
                out[key] = v
            else:
                out[key] = _walk(v, unit_suffix(key) or suffix, rounding)
            if key == "ts_ms" or key.endswith("_ts_ms"):
                iso_key = key[:-3]
                if iso_key not in x and (v is None or isinstance(v, int)):
                    out[iso_key] = iso_utc(v)
        return out
    if isinstance(x, list | tuple):
        return [_walk(v, suffix, rounding) for v in x]
    if isinstance(x, float):
        if rounding:
            return round_for(x, suffix)
        return x if math.isfinite(x) else None
    return x
