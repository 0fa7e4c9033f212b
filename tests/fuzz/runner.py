"""Run fuzz cases in worker subprocesses: a segfault or a hang costs one case, not the run.

A worker (``python -m tests.fuzz.runner --target T --start A --end B --seed S``) writes one
line a case, ``index<TAB>json(outcome)``, after the case. When a worker dies, the case after
its last line is the one that killed it; when no line comes for the target's per-case time
limit, that case hung and the worker is killed. Either way the parent regenerates the case's
bytes from (seed, target, index), records them, and starts a new worker at the next case.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import os
import random
import re
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
#: Address-space limit of a worker: a decoder that believes a corrupt length must fail
#: with MemoryError (a crash) instead of taking the machine's memory.
WORKER_MEMORY_BYTES: Final = 6 << 30
STARTUP_S: Final = 120.0


def case_rng(seed: int, target: str, index: int) -> random.Random:
    """The generator of one case (string seeds hash with SHA-512: stable across runs)."""
    return random.Random(f"{seed}:{target}:{index}")


def seed_files(directory: Path, target: str) -> list[Path]:
    """Saved inputs of one target: ``<directory>/<target>/*.bin`` in name order."""
    return sorted((directory / target).glob("*.bin"))


def make_case(target: str, seed: int, index: int, files: Path | None = None) -> bytes:
    """Bytes of case ``index``: generated from (seed, target, index), or the index-th saved
    input under ``files`` when given."""
    from tests.fuzz.targets import all_targets

    if files is not None:
        return seed_files(files, target)[index].read_bytes()
    return all_targets()[target].make(case_rng(seed, target, index))


def run_case(target: str, data: bytes) -> str:
    """Outcome of one case: A, R:<code>, I:<invariant broken>, C:<crash>."""
    from tests.fuzz.targets import all_targets, reason_codes, refusal_code, refusal_types

    t = all_targets()[target]
    try:
        return t.run(data)
    except refusal_types(t) as exc:
        code = refusal_code(exc)
        if not str(exc).strip():
            return "I:refused without a reason"
        codes = reason_codes()
        if t.group != "sql" and codes is not None and code not in codes:
            return f"I:refusal code {code!r} is not in REASON_CODES ({exc})"
        return "R:" + code
    except Exception as exc:  # the oracle: anything else is a crash
        tb = traceback.extract_tb(exc.__traceback__)
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb[-4:]))
        return f"C:{type(exc).__name__}: {str(exc)[:300]} @ {where}"


# ---- worker ----------------------------------------------------------------------------


def _worker(target: str, seed: int, start: int, end: int, files: Path | None) -> None:
    faulthandler.enable()
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    from tests.fuzz.targets import all_targets, sql_world

    t = all_targets()[target]
    if t.group == "sql":
        sql_world(1 if target == "sql_pool" else 0)
    make_case(target, seed, start, files)  # build the corpus before case 1's clock starts
    os.write(1, b"ready\n")
    for i in range(start, end):
        out = run_case(target, make_case(target, seed, i, files))
        os.write(1, f"{i}\t{json.dumps(out)}\n".encode())
    if t.group == "sql":
        sql_world(1 if target == "sql_pool" else 0).close()


# ---- parent ----------------------------------------------------------------------------


@dataclass
class Finding:
    """A crash, hang or broken invariant, with the input that caused it."""

    target: str
    index: int
    kind: str  # crash, hang, invariant
    detail: str
    data: bytes = b""

    def short(self) -> str:
        head = self.data[:48]
        return (
            f"{self.target}#{self.index} {self.kind}: {self.detail[:400]} "
            f"(input {len(self.data)} B, starts {head!r})"
        )


@dataclass
class TargetStats:
    """Counts of one target's outcomes."""

    target: str
    cases: int = 0
    accepted: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    crashes: list[Finding] = field(default_factory=list)
    hangs: list[Finding] = field(default_factory=list)
    violations: list[Finding] = field(default_factory=list)
    slow: list[Finding] = field(default_factory=list)  # timeouts of targets not deadline-bound
    busy_s: float = 0.0  # worker time from ready to its last case

    @property
    def rate(self) -> float:
        return self.cases / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class _Worker:
    target: str
    seed: int
    next_index: int
    end: int
    files: Path | None
    proc: subprocess.Popen[bytes]
    stderr: Path
    scratch: Path
    started: float
    last: float
    ready_at: float | None = None
    buf: bytes = b""


def _spawn(
    target: str, seed: int, start: int, end: int, python: str, files: Path | None
) -> _Worker:
    scratch = Path(tempfile.mkdtemp(prefix="twin-fuzz-cwd-"))
    err = scratch.parent / (scratch.name + ".stderr")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [python, "-m", "tests.fuzz.runner", "--worker", "--target", target]
    cmd += ["--seed", str(seed), "--start", str(start), "--end", str(end)]
    if files is not None:
        cmd += ["--files", str(files.resolve())]
    with err.open("wb") as ef:
        proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=ef)
    now = time.monotonic()
    return _Worker(target, seed, start, end, files, proc, err, scratch, now, now)


def _stderr_tail(w: _Worker, n: int = 3000) -> str:
    try:
        return w.stderr.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def _cleanup(w: _Worker) -> list[str]:
    """Remove the worker's scratch dir; names of files left in it (a query wrote there)."""
    left = sorted(p.name for p in w.scratch.iterdir()) if w.scratch.exists() else []
    for p in sorted(w.scratch.rglob("*"), reverse=True):
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink()
    w.scratch.rmdir()
    w.stderr.unlink(missing_ok=True)
    return left


def run_fuzz(
    plan: Iterable[tuple[str, int]],
    *,
    seed: int = 0,
    jobs: int = 1,
    chunk: int = 25_000,
    python: str = sys.executable,
    progress: bool = False,
    files: Path | None = None,
) -> dict[str, TargetStats]:
    """Run ``cases`` cases of each (target, cases) in ``plan`` in worker subprocesses.

    With ``files``, the cases are the saved inputs ``<files>/<target>/*.bin`` instead.
    """
    from tests.fuzz.targets import all_targets

    targets = all_targets()
    stats: dict[str, TargetStats] = {}
    pending: collections.deque[tuple[str, int, int]] = collections.deque()
    for name, n in plan:
        stats[name] = TargetStats(name)
        for a in range(0, n, chunk):
            pending.append((name, a, min(n, a + chunk)))
    sel = selectors.DefaultSelector()
    active: dict[int, _Worker] = {}
    done = 0
    reported = 0

    def finding(w: _Worker, kind: str, detail: str) -> None:
        data = make_case(w.target, seed, w.next_index, files)
        f = Finding(w.target, w.next_index, kind, detail, data)
        s = stats[w.target]
        s.cases += 1
        if kind == "crash":
            s.crashes.append(f)
        elif targets[w.target].deadline_bound:
            s.hangs.append(f)
        else:
            s.slow.append(f)

    def retire(w: _Worker, kind: str | None, detail: str) -> None:
        sel.unregister(w.proc.stdout)  # type: ignore[arg-type]
        del active[w.proc.pid]
        if w.proc.stdout is not None:
            w.proc.stdout.close()
        if w.ready_at is not None:
            stats[w.target].busy_s += time.monotonic() - w.ready_at
        if kind is not None and w.next_index < w.end:
            finding(w, kind, detail)
            if w.next_index + 1 < w.end:
                pending.appendleft((w.target, w.next_index + 1, w.end))
        left = _cleanup(w)
        if left:
            stats[w.target].violations.append(
                Finding(w.target, w.next_index, "invariant", f"files written to cwd: {left}")
            )

    while pending or active:
        while pending and len(active) < max(1, jobs):
            name, a, b = pending.popleft()
            w = _spawn(name, seed, a, b, python, files)
            active[w.proc.pid] = w
            assert w.proc.stdout is not None
            sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        for key, _ in sel.select(timeout=0.1):
            w = key.data
            chunk_bytes = os.read(key.fd, 1 << 16)
            now = time.monotonic()
            if not chunk_bytes:  # EOF: the worker exited
                rc = w.proc.wait()
                if w.next_index < w.end:
                    why = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
                    retire(w, "crash", f"worker died ({why}): {_stderr_tail(w)}")
                else:
                    retire(w, None, "")
                continue
            w.buf += chunk_bytes
            *lines, w.buf = w.buf.split(b"\n")
            for line in lines:
                w.last = now
                if line == b"ready":
                    w.ready_at = now
                    continue
                idx_s, out_s = line.split(b"\t", 1)
                idx, out = int(idx_s), json.loads(out_s)
                s = stats[w.target]
                s.cases += 1
                done += 1
                w.next_index = idx + 1
                if out == "A":
                    s.accepted += 1
                elif out.startswith("R:"):
                    s.refused[out[2:]] += 1
                else:
                    kind = "crash" if out.startswith("C:") else "invariant"
                    data = make_case(w.target, seed, idx, files)
                    f = Finding(w.target, idx, kind, out[2:], data)
                    (s.crashes if kind == "crash" else s.violations).append(f)
        now = time.monotonic()
        for w in list(active.values()):
            limit = targets[w.target].hang_s if w.ready_at is not None else STARTUP_S
            if now - w.last > limit and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
                retire(w, "hang", f"no result within {limit:g} s")
        if progress and done >= reported + 10_000:
            reported = done - done % 10_000
            print(f"  {done} cases", file=sys.stderr, flush=True)
    sel.close()
    return stats


def format_table(stats: Sequence[TargetStats]) -> str:
    """Markdown table: target, cases, accepted, refused per reason code, crashes, hangs."""
    rows = [
        "| target | cases | accepted | refused (by reason code) | crashes | hangs "
        "| invariant violations | slow (in-process SQL) | cases/s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in stats:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(s.refused.items(), key=lambda kv: -kv[1]))
        rows.append(
            f"| {s.target} | {s.cases} | {s.accepted} | {sum(s.refused.values())}: {refused} "
            f"| {len(s.crashes)} | {len(s.hangs)} | {len(s.violations)} | {len(s.slow)} "
            f"| {s.rate:.0f} |"
        )
    return "\n".join(rows)


_NUMBERS: Final = re.compile(r"\d+(\.\d+)?(e[+-]?\d+)?")


def finding_class(f: Finding) -> str:
    """A finding's kind and detail with numbers, quotes and inputs blurred, for grouping."""
    detail = f.detail.split(" (", 1)[0] if f.kind == "invariant" else f.detail
    detail = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", detail)
    detail = re.sub(r"byte 0x[0-9a-f]+ in position \d+: [a-z ]+", "byte 0xN ", detail)
    return f"{f.kind}: {_NUMBERS.sub('N', detail)[:140]}"


def summarize_findings(stats: Iterable[TargetStats]) -> list[str]:
    """One line per class of finding: count, target, class, and the first case's index."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for s in stats:
        for f in [*s.crashes, *s.hangs, *s.violations]:
            groups.setdefault((f.target, finding_class(f)), []).append(f)
    return [
        f"{len(fs):6d}  {t}  {cls}  [first #{fs[0].index}, {len(fs[0].data)} B]"
        for (t, cls), fs in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]


def save_findings(stats: Iterable[TargetStats], directory: Path) -> list[Path]:
    """Write each finding's input as ``<target>-<kind>-<index>.bin`` plus a .txt note."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for s in stats:
        for f in [*s.crashes, *s.hangs, *s.violations]:
            p = directory / f"{f.target}-{f.kind}-{f.index}.bin"
            p.write_bytes(f.data)
            p.with_suffix(".txt").write_text(f.detail + "\n")
            out.append(p)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--files", type=Path, help="cases are the saved inputs <dir>/<target>/*.bin")
    ap.add_argument("--target", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--end", type=int, default=100)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.target, args.seed, args.start, args.end, args.files)
        return
    n = len(seed_files(args.files, args.target)) if args.files else args.end - args.start
    st = run_fuzz([(args.target, n)], seed=args.seed, files=args.files)
    print(format_table(list(st.values())))
    print("\n".join(summarize_findings(st.values())))


if __name__ == "__main__":
    main()
