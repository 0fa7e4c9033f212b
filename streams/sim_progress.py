"""Progress of ``twin sim`` on a terminal: steps, simulated time, GPU samples.

Drawn on stderr, and only when stderr is a terminal: piped or logged runs stay quiet and
their stdout holds only the final summary line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from streams.sim_source import SimStats


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


@contextmanager
def sim_progress(
    duration_s: float | None, dt_s: float, stream: IO[str] | None = None
) -> Iterator[Callable[[SimStats], None]]:
    """Yield the ``on_tick`` callback of a progress display for a run of ``duration_s``.

    ``duration_s`` [s] of simulated time (None: until stopped, no bar), ``dt_s`` [s] per
    step. ``stream`` (default stderr) must be a terminal for anything to be drawn.
    """
    out = stream if stream is not None else sys.stderr
    total = round(duration_s / dt_s) if duration_s else None
    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns += [
        TextColumn("sim time {task.fields[sim_time]}"),
        TextColumn("{task.fields[samples]:,} GPU samples"),
        TimeElapsedColumn(),
    ]
    progress = Progress(
        *columns,
        console=Console(file=out),
        disable=not out.isatty(),
        transient=True,
    )
    task = progress.add_task("simulating", total=total, sim_time=_clock(0), samples=0)

    def tick(stats: SimStats) -> None:
        progress.update(
            task,
            completed=stats.ticks,
            sim_time=_clock(stats.ticks * dt_s),
            samples=stats.gpu_samples,
        )

    with progress:
        yield tick
