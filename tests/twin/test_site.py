"""Site files: the shipped Borlänge hall, rescaling, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from twin.errors import SiteError
from twin.site import DEFAULT_SITE_FILE, load_site, scale_site


def test_default_site_is_the_borlange_hall() -> None:
    site = load_site()
    assert site.n_racks == 64 and site.n_gpus == 72
    assert site.rack_ids[0] == "R0001" and site.rack_ids[-1] == "R0064"
    assert site.cdu_ids == tuple(f"CDU{i:02d}" for i in range(1, 9))
    assert np.array_equal(np.bincount(site.rack_cdu), [8] * 8)
    assert site.rack_cdu[7] == 0 and site.rack_cdu[8] == 1
    assert len(site.dc_ids) == 9  # 12.8 MW / 1.6 MW + 1
    assert len(site.ups_ids) == 5  # ceil(12.8 / 3.5) + 1 (docs/sources.md S8: N+1)
    assert site.tx_ids == ("TX01", "TX02")
    assert site.gpu.tdp_w == 1800.0 and site.tcs.fluid == "PG25"
    assert site.tcs.supply_temp_c == 45.0


def test_rescale_to_the_campus() -> None:
    site = load_site(racks=1250)
    assert site.n_racks == 1250 and site.rack_ids[-1] == "R1250"
    assert site.n_halls == 20
    # CDUs never span halls: 19 full halls x 8 + the last hall's 34 racks in 5 CDUs
    assert len(site.cdu_ids) == 19 * 8 + 5
    assert np.bincount(site.rack_cdu).max() == 8
    assert len(site.dc_ids) == int(np.ceil(1250 * 200e3 / 1.6e6)) + 1
    assert site.scale == pytest.approx(1250 / 64)
    big = scale_site(site, 10_000, max_racks=10_000)
    assert big.n_racks == 10_000 and big.rack_ids[-1] == "R10000"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[cdu]\napproach_k = "three"\n', r"\[cdu\] approach_k: expected a number, got 'three'"),
        ("[layout]\nracks = 6.5\n", r"\[layout\] racks: expected an integer"),
        ("[gpu]\ntdp_w = -5\n", r"\[gpu\] tdp_w: expected a value >= 1.0"),
        ("[cdu]\napproch_k = 3\n", r"\[cdu\] approch_k: unknown key; expected one of"),
        ("[chillers]\nx = 1\n", r"\[chillers\]: unknown section"),
        ('[tcs]\nfluid = "brine"\n', r"\[tcs\] fluid: expected one of"),
        ("[weather]\nmonthly_mean_c = [1, 2]\n", r"expected a list of 12 numbers, got 2"),
        ('[power]\nups_mode = "turbo"\n', r"\[power\] ups_mode: expected one of"),
        ("[layout]\nracks = 2000\n", r"racks: expected an integer from 1 to 1250"),
        ("cdu = 3\n", r"\[cdu\]: expected a table"),
        ("[cdu\n", r"expected valid TOML"),
    ],
)
def test_site_errors_name_the_field(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(SiteError, match=match):
        load_site(_write(tmp_path, text))


def test_missing_file_and_bad_racks(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="not found"):
        load_site(tmp_path / "none.toml")
    with pytest.raises(SiteError, match="racks: expected an integer from 1 to 1250, got 0"):
        load_site(racks=0)
    with pytest.raises(SiteError, match="got 1251"):
        load_site(racks=1251)


def test_shipped_file_equals_code_defaults() -> None:
    # the shipped file documents every parameter, and the code defaults are the same values
    import tomllib
    from dataclasses import fields

    from twin.site import SECTIONS

    doc = tomllib.loads(DEFAULT_SITE_FILE.read_text())
    optional = {"csv_path", "grid_summer_g_per_kwh", "grid_winter_g_per_kwh"}
    for name, cls in SECTIONS.items():
        defaults = cls()
        for f in fields(cls):
            if f.name in optional and f.name not in doc[name]:
                continue
            assert f.name in doc[name], f"[{name}] lacks {f.name}"
            value = doc[name][f.name]
            want = getattr(defaults, f.name)
            if name == "site" and f.name == "name":
                continue
            assert (list(want) if isinstance(want, tuple) else want) == value, (name, f.name)
