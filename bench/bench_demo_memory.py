"""Long-run memory of ``twin demo``: is it bounded with the embedded broker?

    .venv/bin/python bench/bench_demo_memory.py [--minutes 20] [--racks 64] [--recycle-mb 256]

Runs ``twin demo`` as a user would and samples, every 5 s, the resident memory of every
process it owns (the demo with the simulator, the worker, the sink, the tansu broker), read
from /proc. Prints the peak and the last value per process role, the broker recycles, and
the broker's growth rate between recycles. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out.append(int(k))
            out.extend(children(int(k)))
    return out


def role(pid: int) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    for name in ("worker", "sink", "tansu"):
        if name in cmd:
            return "broker" if name == "tansu" else name
    return None


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except OSError:
        return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--racks", type=int, default=64)
    ap.add_argument("--recycle-mb", type=float, default=256.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    argv = [
        sys.executable, "-m", "streams", "demo", "--duration", str(args.minutes * 60),
        "--racks", str(args.racks), "--recycle-mb", str(args.recycle_mb),
        "--state-dir", str(tmp / "state"), "--data-dir", str(tmp / "data"), "--web-port", "0",
    ]  # fmt: skip
    argv[argv.index("--web-port") + 1] = str(_free_port())
    out = (tmp / "demo.out").open("w")
    demo = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    peak: dict[str, float] = defaultdict(float)
    last: dict[str, float] = {}
    broker_series: list[tuple[float, float]] = []
    t0 = time.monotonic()
    while demo.poll() is None:
        sample = {"demo": rss_mb(demo.pid)}
        for pid in children(demo.pid):
            r = role(pid)
            if r:
                sample[r] = sample.get(r, 0.0) + rss_mb(pid)
        for r, v in sample.items():
            peak[r] = max(peak[r], v)
            last[r] = v
        broker_series.append((time.monotonic() - t0, sample.get("broker", 0.0)))
        time.sleep(5)
    out.close()
    text = (tmp / "demo.out").read_text()
    m = re.search(r"(\d+) GPU samples published, (\d+) broker recycles", text)
    print(f"twin demo, {args.racks} racks, {args.minutes:g} min, recycle at {args.recycle_mb:g} MB")
    print(f"  exit {demo.returncode}; {m.group(0) if m else 'no summary: see ' + str(tmp)}")
    for r in ("demo", "worker", "sink", "broker"):
        print(f"  {r:7s} peak {peak.get(r, 0):7.0f} MB   last {last.get(r, 0):7.0f} MB")
    rates = []
    for (t1, a), (t2, b) in itertools.pairwise(broker_series):
        if b > a > 0:
            rates.append((b - a) / (t2 - t1))
    if rates:
        rates.sort()
        print(f"  broker growth between recycles: median {rates[len(rates) // 2]:.2f} MB/s")
    print(f"  output and logs: {tmp}")


def _free_port() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from streams.brokers.ports import free_port

    return free_port()


if __name__ == "__main__":
    main()
