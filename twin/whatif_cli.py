"""``twin whatif``: the command line of twin/whatif.py.

Takes the starting state from a snapshot file, a running worker (GET /api/snapshot) or a
freshly warmed-up simulator of the site, runs the scenarios and prints the summary (and a
PNG plot with ``--out``).
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

from twin.extras import import_extra
from twin.site import Site
from twin.state import FacilityState
from twin.whatif import WhatIfError, parse_horizon, parse_scenario, run_whatif, scenario_forms


def _parse_time_ms(text: str) -> int:
    from twin.timeparse import TimeError, parse_ms

    try:
        return parse_ms(text, unit=None, naive_utc=True)  # ISO 8601, no zone = UTC
    except TimeError as exc:
        raise WhatIfError(
            f"--start {text!r}: expected an ISO time like 2026-07-15T14:00Z ({exc})"
        ) from None


def _fetch_snapshot(url: str, timeout_s: float = 30.0) -> bytes:
    import urllib.error
    import urllib.request

    full = url.rstrip("/") + "/api/snapshot"
    if not full.startswith(("http://", "https://")):
        raise WhatIfError(f"--from-url {url!r}: expected http://host:port")
    try:
        with urllib.request.urlopen(full, timeout=timeout_s) as resp:
            return bytes(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        cause = getattr(cause, "strerror", None) or cause
        raise WhatIfError(
            f"--from-url {url!r}: cannot fetch {full} ({cause}): is a worker serving there? "
            "(twin worker or twin demo, at its --web-port)"
        ) from None


def starting_point(
    args: argparse.Namespace,
) -> tuple[Site, FacilityState, int, Literal["hold", "plan"], str]:
    """(site, state, wall time [ms], workload mode, description) from the CLI flags.

    A snapshot (file or worker) gives the state; its ``meta`` may name the site file
    (``site``), the rack count (``racks``) and the state's wall time (``ts_ms``). Without
    one, a simulator of the site warms up for ``--warmup`` minutes before ``--start``.
    """
    import time

    from twin.site import load_site
    from twin.snapshot import load_snapshot, load_snapshot_bytes

    if args.snapshot or args.from_url:
        if args.snapshot:
            snap, source = load_snapshot(args.snapshot), f"snapshot {args.snapshot}"
        else:
            snap = load_snapshot_bytes(_fetch_snapshot(args.from_url))
            source = f"worker {args.from_url}"
        if snap.state is None:
            raise WhatIfError(f"{source}: holds no facility state")
        racks = args.racks or int(snap.meta.get("racks") or snap.state.gpu_temp_c.shape[0])
        site = load_site(args.site or snap.meta.get("site") or None, racks=racks)
        ts_ms = snap.meta.get("ts_ms")
        start_ms = int(ts_ms) if ts_ms is not None else round(time.time() * 1000)
        return site, snap.state, start_ms, "hold", source
    from twin.sim import Simulator

    site = load_site(args.site, racks=args.racks)
    start_ms = _parse_time_ms(args.start) if args.start else round(time.time() * 1000)
    warm_s = max(float(args.warmup), 0.0) * 60.0
    sim = Simulator(site, seed=args.seed, start_ms=start_ms - round(warm_s * 1000))
    for _ in range(round(warm_s / 10.0)):
        sim.step(10.0)
    return site, sim.state, start_ms, "plan", f"fresh site warmed up {warm_s / 60:.0f} min"


def _finite(x: Any) -> Any:
    """``x`` with every non-finite number as None (JSON has no NaN or infinity) and numpy
    scalars as plain numbers."""
    import math

    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (bool, str)) or x is None:
        return x
    f = float(x)
    if isinstance(x, int) or (f.is_integer() and type(x).__name__.startswith("int")):
        return int(x)
    return f if math.isfinite(f) else None


def add_whatif_parser(subparsers: Any) -> None:
    """Register ``twin whatif`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "whatif",
        help="run the model forward under a changed condition and report limits, PUE, reuse",
        description="Run the facility model forward from a given state under a changed "
        "condition; report when and where limits are crossed, PUE and heat reuse.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--snapshot", metavar="FILE", help="start from a snapshot (.npz)")
    src.add_argument(
        "--from-url", metavar="URL", help="start from a running worker (GET URL/api/snapshot)"
    )
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="TEXT",
        help=f"change to apply (repeatable): {scenario_forms()}".replace("%", "%%"),
    )
    p.add_argument("--horizon", default="2h", help="how far to run: 2h, 30m, 3600s (default 2h)")
    p.add_argument("--dt", type=float, default=5.0, help="model step [s] (default 5)")
    p.add_argument("--racks", type=int, default=None, help="racks of the site (default: file)")
    p.add_argument("--site", default=None, help="site file (default: Borlänge hall)")
    p.add_argument("--out", default=None, metavar="PNG", help="write a plot to this file")
    p.add_argument("--seed", type=int, default=0, help="workload seed of a fresh start")
    p.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        metavar="MIN",
        help="fresh start: simulated minutes to warm up (default 10)",
    )
    p.add_argument(
        "--start",
        default=None,
        metavar="ISO",
        help="fresh start: wall time, e.g. 2026-07-15T14:00Z (default: now)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the comparison run")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON (limits with the minute of first crossing and the "
        "racks, KPIs, energy balance) instead of the text summary",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_whatif_cli)


def run_whatif_cli(args: argparse.Namespace) -> int:
    """``twin whatif``: print the summary (and write the plot); 0 on success."""
    if args.out:  # the plot's library, before the warm-up and the run rather than after them
        import_extra("matplotlib", "plots", "twin whatif --out")
    horizon_s = parse_horizon(str(args.horizon))
    site, state, start_ms, workload, source = starting_point(args)
    for text in args.scenario:  # fail fast, before any warm-up
        parse_scenario(text, site)
    result = run_whatif(
        site,
        state,
        args.scenario,
        horizon_s,
        float(args.dt),
        not args.no_progress,
        start_ms=start_ms,
        baseline=not args.no_baseline,
        workload=workload,
        seed=args.seed,
    )
    result.notes.insert(0, f"start: {source}")
    if args.json:
        import json

        print(json.dumps(_finite(result.as_dict()), indent=2, allow_nan=False))
    else:
        print(result.summary())
    if args.out:
        from twin.plot import plot_whatif

        print(f"plot: {plot_whatif(result, args.out)}")
    return 0
