"""Facility description: parameters of every model and the layout (which CDU, PDU and UPS
serves which rack), loaded from a TOML site file (docs/physics.md, "Site file").

Defaults are the Borlänge parameter set of docs/sources.md S8; each names its source.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from twin.cdu import CduParams, TcsParams
from twin.district_heat import DistrictHeatParams
from twin.errors import SiteError
from twin.fluids import FLUIDS
from twin.gpu import GpuParams, _m
from twin.kpi import CarbonParams
from twin.plant import ChillerParams, DryCoolerParams, FwsParams, HeatPumpParams
from twin.power import AuxParams, PowerParams
from twin.rack import RackParams
from twin.room_air import RoomAirParams
from twin.weather import WeatherParams
from twin.workload import WorkloadParams


@dataclass(frozen=True)
class SiteInfo:
    """Identity of the site. Defaults: docs/sources.md S1 and S8."""

    name: str = "Borlänge"
    lat: float = field(default=60.48, metadata=_m(-90.0, 90.0))  # docs/sources.md S8
    lon: float = field(default=15.43, metadata=_m(-180.0, 180.0))  # docs/sources.md S8
    # 250 MW campus / 200 kW racks = 1,250 racks (docs/sources.md S1 and S8)
    max_racks: int = field(default=1250, metadata=_m(1))
    # Partitions of the keyed Kafka topics and of the worker's changelogs, so at most this
    # many workers share the site: 24 for the campus (docs/scaling.md, "Partition count").
    kafka_partitions: int = field(default=24, metadata=_m(1, 1024))


@dataclass(frozen=True)
class LayoutParams:
    """Hall layout; CDUs, PDUs and halls serve consecutive racks. docs/sources.md S8."""

    racks: int = field(default=64, metadata=_m(1))  # docs/sources.md S8 it.racks
    racks_per_row: int = field(default=8, metadata=_m(1))  # est.
    racks_per_hall: int = field(default=64, metadata=_m(1))  # docs/sources.md S8: one hall
    racks_per_cdu: int = field(default=8, metadata=_m(1))  # docs/sources.md S8 racks_per_cdu
    racks_per_pdu: int = field(default=8, metadata=_m(1))  # one busway per row (est.)


DEFAULT_SITE_FILE = Path(__file__).with_name("sites") / "borlange.toml"

#: Sections of a site file and the dataclass each fills.
SECTIONS: dict[str, type] = {
    "site": SiteInfo,
    "layout": LayoutParams,
    "gpu": GpuParams,
    "rack": RackParams,
    "tcs": TcsParams,
    "cdu": CduParams,
    "fws": FwsParams,
    "dry_coolers": DryCoolerParams,
    "trim_chiller": ChillerParams,
    "heat_pump": HeatPumpParams,
    "district_heating": DistrictHeatParams,
    "room_air": RoomAirParams,
    "power": PowerParams,
    "aux": AuxParams,
    "weather": WeatherParams,
    "carbon": CarbonParams,
    "workload": WorkloadParams,
}


def _ids(prefix: str, n: int, width: int = 2) -> tuple[str, ...]:
    w = max(width, len(str(n)))
    return tuple(f"{prefix}{i:0{w}d}" for i in range(1, n + 1))


@dataclass(frozen=True, eq=False)
class Site:
    """A facility: model parameters plus the layout as index arrays over racks and units."""

    info: SiteInfo
    layout: LayoutParams
    gpu: GpuParams
    rack: RackParams
    tcs: TcsParams
    cdu: CduParams
    fws: FwsParams
    dry_coolers: DryCoolerParams
    trim_chiller: ChillerParams
    heat_pump: HeatPumpParams
    district_heating: DistrictHeatParams
    room_air: RoomAirParams
    power: PowerParams
    aux: AuxParams
    weather: WeatherParams
    carbon: CarbonParams
    workload: WorkloadParams
    rack_ids: tuple[str, ...]
    rack_hall: NDArray[np.int64]  # (R,) hall index
    rack_row: NDArray[np.int64]  # (R,) row index within the site
    rack_cdu: NDArray[np.int64]  # (R,) CDU index serving the rack
    rack_pdu: NDArray[np.int64]  # (R,) PDU/busway index feeding the rack
    pdu_hall: NDArray[np.int64]  # (P,) hall whose UPS group feeds the PDU
    ups_hall: NDArray[np.int64]  # (U,) hall of each UPS module
    tx_hall: NDArray[np.int64]  # (T,) hall of each transformer
    cdu_ids: tuple[str, ...]
    dc_ids: tuple[str, ...]
    ups_ids: tuple[str, ...]
    tx_ids: tuple[str, ...]
    pdu_ids: tuple[str, ...]
    scale: float = 1.0  # racks / racks in the file: scales the heat-pump plant's capacity

    @property
    def n_racks(self) -> int:
        return len(self.rack_ids)

    @property
    def n_gpus(self) -> int:
        return self.rack.gpus

    @property
    def n_halls(self) -> int:
        return int(self.rack_hall.max()) + 1

    @property
    def it_design_w(self) -> float:
        """Design IT power of the site [W] (racks x rack design power)."""
        return self.n_racks * self.rack.design_power_w


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    return "a list of numbers"


def _coerce(section: str, key: str, tp: Any, meta: Any, value: Any) -> Any:
    where = f"[{section}] {key}"
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    elif tp is str:
        ok = isinstance(value, str)
    else:  # tuple[float, ...]
        ok = isinstance(value, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        )
        if ok:
            value = tuple(float(v) for v in value)
            n = meta.get("len")
            if n is not None and len(value) != n:
                raise SiteError(f"{where}: expected a list of {n} numbers, got {len(value)}")
    if not ok:
        raise SiteError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    vals = value if isinstance(value, tuple) else (value,)
    if tp is not str and tp is not bool:
        for v in vals:
            if lo is not None and v < lo:
                raise SiteError(f"{where}: expected a value >= {lo}, got {v!r}")
            if hi is not None and v > hi:
                raise SiteError(f"{where}: expected a value <= {hi}, got {v!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise SiteError(f"{where}: expected one of {sorted(choices)}, got {value!r}")
    return value


def _parse_section(section: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise SiteError(f"[{section}]: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise SiteError(f"[{section}] {unknown[0]}: unknown key; expected one of {sorted(known)}")
    kw = {}
    for key, value in table.items():
        tp = hints[key]
        if isinstance(tp, types.GenericAlias):
            tp = tuple
        kw[key] = _coerce(section, key, tp, known[key].metadata, value)
    return cls(**kw)


def _layout(layout: LayoutParams, racks: int) -> dict[str, Any]:
    """Index arrays of the layout for ``racks`` racks (halls filled in order)."""
    idx = np.arange(racks, dtype=np.int64)
    hall = idx // layout.racks_per_hall
    n_halls = int(hall[-1]) + 1
    in_hall = idx % layout.racks_per_hall
    row = hall * math.ceil(layout.racks_per_hall / layout.racks_per_row) + (
        in_hall // layout.racks_per_row
    )
    # CDUs and PDUs never span halls: groups restart at each hall boundary
    cdus_per_hall = math.ceil(layout.racks_per_hall / layout.racks_per_cdu)
    pdus_per_hall = math.ceil(layout.racks_per_hall / layout.racks_per_pdu)
    cdu = hall * cdus_per_hall + in_hall // layout.racks_per_cdu
    pdu = hall * pdus_per_hall + in_hall // layout.racks_per_pdu
    # renumber densely (the last hall may be partial)
    _, cdu = np.unique(cdu, return_inverse=True)
    pdu_keys, pdu = np.unique(pdu, return_inverse=True)
    return {
        "hall": hall,
        "row": row,
        "cdu": cdu.astype(np.int64),
        "pdu": pdu.astype(np.int64),
        "pdu_hall": (pdu_keys // pdus_per_hall).astype(np.int64),
        "n_halls": n_halls,
    }


def build_site(
    doc: dict[str, Any], *, racks: int | None = None, max_racks: int | None = None
) -> Site:
    """Build a :class:`Site` from a parsed site document (the TOML as a dict).

    racks: rescale the hall to this many racks (CDUs, PDUs, UPS modules, transformers and dry
    coolers follow); max_racks: upper limit (default: ``[site] max_racks``).
    """
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise SiteError(f"[{unknown[0]}]: unknown section; expected one of {sorted(SECTIONS)}")
    parts = {name: _parse_section(name, cls, doc.get(name, {})) for name, cls in SECTIONS.items()}
    info: SiteInfo = parts["site"]
    layout: LayoutParams = parts["layout"]
    rack: RackParams = parts["rack"]
    for sec, key in (("tcs", "fluid"), ("fws", "fluid")):
        name = getattr(parts[sec], key)
        if name not in FLUIDS:
            raise SiteError(f"[{sec}] {key}: expected one of {sorted(FLUIDS)}, got {name!r}")
    for sec in ("weather", "carbon"):
        if parts[sec].model == "csv" and not parts[sec].csv_path:
            raise SiteError(f'[{sec}] csv_path: expected a CSV file path when model = "csv"')
    dcp: DryCoolerParams = parts["dry_coolers"]
    if dcp.design_air_rise_k >= dcp.design_range_k + dcp.design_approach_k:
        raise SiteError(
            "[dry_coolers] design_air_rise_k: expected less than design_range_k + "
            f"design_approach_k = {dcp.design_range_k + dcp.design_approach_k} K (air cannot "
            f"leave warmer than the fluid enters), got {dcp.design_air_rise_k}"
        )
    ra: RoomAirParams = parts["room_air"]
    if ra.coil_return_c <= ra.coil_supply_c:
        raise SiteError(
            f"[room_air] coil_return_c: expected more than coil_supply_c = {ra.coil_supply_c},"
            f" got {ra.coil_return_c}"
        )
    limit = info.max_racks if max_racks is None else max_racks
    n = layout.racks if racks is None else racks
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n > limit:
        raise SiteError(f"racks: expected an integer from 1 to {limit}, got {n!r}")
    lay = _layout(layout, n)
    n_halls = lay["n_halls"]
    power: PowerParams = parts["power"]
    dcs: DryCoolerParams = parts["dry_coolers"]
    hall_racks = np.bincount(lay["hall"], minlength=n_halls)
    # UPS modules: N+redundancy per hall, N from the hall's design IT power (docs/sources.md S8)
    ups_per_hall = [
        math.ceil(h * rack.design_power_w / power.ups_rated_w) + power.ups_redundancy
        for h in hall_racks
    ]
    tx_per_hall = [
        max(1, math.ceil(h * rack.design_power_w / (power.tx_rated_w * power.tx_design_loading)))
        for h in hall_racks
    ]
    n_dc = math.ceil(n * rack.design_power_w / dcs.rating_w) + dcs.redundancy
    n_cdu = int(lay["cdu"].max()) + 1
    n_pdu = int(lay["pdu"].max()) + 1
    return Site(
        **{k: v for k, v in parts.items() if k != "site"},
        info=info,
        rack_ids=tuple(f"R{i:04d}" for i in range(1, n + 1)),
        rack_hall=lay["hall"],
        rack_row=lay["row"],
        rack_cdu=lay["cdu"],
        rack_pdu=lay["pdu"],
        pdu_hall=lay["pdu_hall"],
        ups_hall=np.repeat(np.arange(n_halls), ups_per_hall).astype(np.int64),
        tx_hall=np.repeat(np.arange(n_halls), tx_per_hall).astype(np.int64),
        cdu_ids=_ids("CDU", n_cdu),
        dc_ids=_ids("DC", n_dc),
        ups_ids=_ids("UPS", sum(ups_per_hall)),
        tx_ids=_ids("TX", sum(tx_per_hall)),
        pdu_ids=_ids("PDU", n_pdu),
        scale=n / layout.racks,
    )


def load_site(path: str | Path | None = None, *, racks: int | None = None) -> Site:
    """Load a site file (default: the shipped Borlänge hall, twin/sites/borlange.toml).

    racks: rescale to this many racks, up to ``[site] max_racks`` (1,250 = the full campus).
    Raises SiteError naming the field and what was expected.
    """
    p = DEFAULT_SITE_FILE if path is None else Path(path)
    try:
        with p.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise SiteError(f"site file {str(p)!r}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(f"site file {str(p)!r}: expected valid TOML ({exc})") from None
    site = build_site(doc, racks=racks)
    # CSV paths in a site file are relative to the file
    for sec in ("weather", "carbon"):
        params = getattr(site, sec)
        if params.csv_path and not Path(params.csv_path).is_absolute():
            site = replace(site, **{sec: replace(params, csv_path=str(p.parent / params.csv_path))})
    return site


def scale_site(site: Site, racks: int, *, max_racks: int | None = None) -> Site:
    """Return ``site`` rescaled to ``racks`` racks (for benchmarks beyond the campus size)."""
    doc: dict[str, Any] = {
        name: {
            f.name: getattr(getattr(site, "info" if name == "site" else name), f.name)
            for f in fields(cls)
        }
        for name, cls in SECTIONS.items()
    }
    for sec in doc.values():
        for k, v in sec.items():
            if isinstance(v, tuple):
                sec[k] = list(v)
    return replace(
        build_site(doc, racks=racks, max_racks=max_racks or site.info.max_racks),
        scale=racks / site.layout.racks,
    )
