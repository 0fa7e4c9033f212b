"""The worker's poison-pill guard never stops an agent when its note cannot be written."""

from __future__ import annotations

from pathlib import Path

from streams.app import _TolerantGuard


def test_unwritable_note_loses_protection_for_a_while_but_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the note's directory should be (as on a full disk)")
    guard = _TolerantGuard(blocker / "gpu-frames.json")  # unreadable: starts clean
    guard.begin([("telemetry.gpu", 0, 5), ("telemetry.gpu", 0, 9)])
    assert guard.failing
    guard.done()
    blocker.unlink()
    guard.begin([("telemetry.gpu", 0, 10)], solo=True)
    assert not guard.failing and (blocker / "gpu-frames.json").exists()
    # What a restarted worker reads: the message in flight alone is poisoned.
    assert _TolerantGuard(blocker / "gpu-frames.json").is_poisoned(("telemetry.gpu", 0, 10))
    guard.done()
    assert not (blocker / "gpu-frames.json").exists()
