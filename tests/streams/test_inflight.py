"""The poison-pill guard: what was in flight when a process died is found on restart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streams.inflight import InflightGuard


def test_clean_run_leaves_nothing(tmp_path: Path) -> None:
    g = InflightGuard(tmp_path / "inflight.json")
    g.begin([("telemetry.gpu", 0, 10), ("telemetry.gpu", 0, 11)])
    g.done()
    again = InflightGuard(tmp_path / "inflight.json")
    assert not again.suspects
    assert not again.poisoned


def test_batch_in_flight_makes_suspects(tmp_path: Path) -> None:
    g = InflightGuard(tmp_path / "inflight.json")
    g.begin([("telemetry.gpu", 3, 10), ("telemetry.gpu", 3, 12), ("telemetry.power", 1, 7)])
    restarted = InflightGuard(tmp_path / "inflight.json")
    assert restarted.is_suspect(("telemetry.gpu", 3, 11))
    assert restarted.is_suspect(("telemetry.power", 1, 7))
    assert not restarted.is_suspect(("telemetry.gpu", 3, 13))
    assert not restarted.is_suspect(("telemetry.gpu", 2, 11))
    assert not restarted.is_poisoned(("telemetry.gpu", 3, 11))


def test_solo_message_in_flight_is_poisoned(tmp_path: Path) -> None:
    g = InflightGuard(tmp_path / "inflight.json")
    g.begin([("telemetry.gpu", 3, 11)], solo=True)
    restarted = InflightGuard(tmp_path / "inflight.json")
    assert restarted.is_poisoned(("telemetry.gpu", 3, 11))
    restarted.forget(("telemetry.gpu", 3, 11))
    assert not restarted.is_poisoned(("telemetry.gpu", 3, 11))


def test_torn_note_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "inflight.json").write_text('{"ranges": [["t", 0')
    g = InflightGuard(tmp_path / "inflight.json")
    assert not g.suspects
    assert not g.poisoned


def test_survives_a_segfault(tmp_path: Path) -> None:
    # The note must be on disk when the process dies without any cleanup.
    code = (
        "import faulthandler, sys\n"
        "from streams.inflight import InflightGuard\n"
        f"g = InflightGuard({str(tmp_path / 'n.json')!r})\n"
        "g.begin([('telemetry.gpu', 0, 5)], solo=True)\n"
        "faulthandler._sigsegv()\n"
    )
    env = {**os.environ, "PYTHONFAULTHANDLER": ""}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert proc.returncode != 0
    assert InflightGuard(tmp_path / "n.json").is_poisoned(("telemetry.gpu", 0, 5))
