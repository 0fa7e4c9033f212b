"""Write requirements.lock: the tested version of every runtime dependency of dc-twin.

Usage: .venv/bin/python scripts/lock.py   (from the repository root, after scripts/setup.sh)

The lock is the dependency closure of pyproject's ``dependencies`` and of every extra but
``dev``, pinned to the versions installed in the running environment (the ones the test
suite passed with). The container image installs with ``pip install -c requirements.lock``
so that a rebuild gets the same versions; scripts/setup.sh uses it as well. Versions only,
no hashes: the image is built for more than one platform, and hashes pin one wheel each.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
HEADER = """\
# The tested version of every runtime dependency of dc-twin (all extras but dev), written by
# scripts/lock.py from the environment the tests passed in. compose/Dockerfile and
# scripts/setup.sh install with `pip install -c requirements.lock`. Regenerate after changing
# a dependency in pyproject.toml: .venv/bin/python scripts/lock.py
"""


def roots(pyproject: dict) -> list[Requirement]:
    """The project's runtime requirements: dependencies and every extra but dev."""
    project = pyproject["project"]
    out = [Requirement(r) for r in project["dependencies"]]
    name = canonicalize_name(project["name"])
    for extra, reqs in project.get("optional-dependencies", {}).items():
        if extra == "dev":
            continue
        out += [r for r in map(Requirement, reqs) if canonicalize_name(r.name) != name]
    return out


def closure(start: list[Requirement]) -> dict[str, str]:
    """Canonical name -> installed version of every distribution ``start`` pulls in."""
    pinned: dict[str, str] = {}
    todo = [(r, frozenset(r.extras)) for r in start]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, extras = todo.pop()
        key = (canonicalize_name(req.name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"lock.py: {req.name} is not installed here; run scripts/setup.sh first")
        pinned[key[0]] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append((sub, frozenset(sub.extras)))
    return pinned


def main() -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = closure([r for r in roots(pyproject) if r.marker is None or r.marker.evaluate()])
    lines = [f"{name}=={version}" for name, version in sorted(pinned.items())]
    LOCK.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"{LOCK.name}: {len(lines)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
