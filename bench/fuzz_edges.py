"""Fuzz every untrusted edge at scale: frames, JSON ingest, the store's decoder, SQL.

    .venv/bin/python bench/fuzz_edges.py [--cases 1000000] [--sql-cases 10000] [--jobs 1]
        [--seed 0] [--groups arrow,json,store,sql] [--save DIR] [--json OUT]

``--cases`` is shared equally by the arrow, json and store groups (then among their targets
by weight); the SQL group runs ``--sql-cases`` because a SQL case costs ~50x a frame case
(a DuckDB connection for the statement check and one for the query). Cases run in worker
subprocesses (tests/fuzz/runner.py): a segfault or a hang costs one case and is recorded
with its input. Prints a table: target, cases, accepted, refused per reason code, crashes,
hangs, broken invariants, cases/s (per worker); then one line per class of finding.
Deterministic for a given seed; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.runner import format_table, run_fuzz, save_findings, summarize_findings
from tests.fuzz.targets import groups, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", type=int, default=1_000_000, help="arrow+json+store cases")
    ap.add_argument("--sql-cases", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=25_000, help="cases per worker process")
    ap.add_argument("--groups", default="arrow,json,store,sql")
    ap.add_argument("--save", type=Path, help="write each finding's input here")
    ap.add_argument("--json", type=Path, help="write the counts as JSON here")
    args = ap.parse_args()
    wanted = [g for g in args.groups.split(",") if g]
    unknown = set(wanted) - set(groups())
    if unknown:
        ap.error(f"unknown groups {sorted(unknown)}; have {sorted(groups())}")
    frame_groups = [g for g in wanted if g != "sql"]
    todo: list[tuple[str, int]] = []
    for i, g in enumerate(frame_groups):
        share = args.cases // len(frame_groups) + (i < args.cases % len(frame_groups))
        todo += plan(g, share)
    if "sql" in wanted:
        todo += plan("sql", args.sql_cases)
    t0 = time.monotonic()
    stats = run_fuzz(todo, seed=args.seed, jobs=args.jobs, chunk=args.chunk, progress=True)
    wall = time.monotonic() - t0
    rows = list(stats.values())
    total = sum(s.cases for s in rows)
    print(f"# fuzz_edges: {total} cases, seed {args.seed}, jobs {args.jobs}, {wall:.0f} s wall\n")
    print(format_table(rows))
    crashes = sum(len(s.crashes) for s in rows)
    hangs = sum(len(s.hangs) for s in rows)
    broken = sum(len(s.violations) for s in rows)
    print(f"\ntotal: {total} cases, {crashes} crashes, {hangs} hangs, {broken} broken invariants")
    lines = summarize_findings(rows)
    if lines:
        print("\nfindings by class (count, target, class, first case):")
        print("\n".join(lines[:60]))
    if args.save:
        saved = save_findings(rows, args.save)
        print(f"\n{len(saved)} inputs saved under {args.save}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "wall_s": wall,
                    "targets": {
                        s.target: {
                            "cases": s.cases,
                            "accepted": s.accepted,
                            "refused": dict(s.refused),
                            "crashes": len(s.crashes),
                            "hangs": len(s.hangs),
                            "violations": len(s.violations),
                            "cases_per_s": s.rate,
                        }
                        for s in rows
                    },
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
