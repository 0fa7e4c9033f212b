"""A durable note of the messages a consumer is about to process: the poison-pill guard.

Most bad input raises and is dead-lettered, but a crash of the process itself (a segfault in
a native library, the kernel's OOM killer) cannot be caught, and a restarted consumer would
read the same message again and die again. Kafka Streams' deserialization exception handler
and DLQ policies solve this by remembering what was being processed; so does this guard:

1. before a batch is processed, ``begin`` writes its offset ranges to a small file;
2. after it was processed, ``done`` clears the file;
3. a restarted consumer reads the file: offsets of a batch that was in flight are
   *suspects* and are processed one message at a time (``begin(..., solo=True)``);
4. a message that was in flight alone when the process died is *poisoned*: it is
   dead-lettered with reason ``crashed`` instead of being processed a third time.

The file survives a process crash without fsync (the page cache belongs to the kernel), so
the cost is one small write per batch, not one per message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: (topic, partition, offset) of one Kafka message.
MessageKey = tuple[str, int, int]


def _ranges(keys: Iterable[MessageKey]) -> list[list[object]]:
    """[topic, partition, first, last] per topic partition (offsets of a batch are dense)."""
    span: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in keys:
        lo_hi = span.setdefault((topic, partition), [offset, offset])
        lo_hi[0] = min(lo_hi[0], offset)
        lo_hi[1] = max(lo_hi[1], offset)
    return [[t, p, lo, hi] for (t, p), (lo, hi) in sorted(span.items())]


@dataclass
class InflightGuard:
    """Remembers the batch in flight in ``path``; see the module docstring for the protocol."""

    path: Path
    suspects: set[tuple[str, int]] = field(default_factory=set, init=False)
    _suspect_ranges: list[tuple[str, int, int, int]] = field(default_factory=list, init=False)
    poisoned: set[MessageKey] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            ranges = [(str(t), int(p), int(lo), int(hi)) for t, p, lo, hi in doc["ranges"]]
            solo = bool(doc.get("solo", False))
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError):
            # A torn write of the note itself: nothing to learn from it, start clean.
            self.path.unlink(missing_ok=True)
            return
        if solo:
            for t, p, lo, _hi in ranges:
                self.poisoned.add((t, p, lo))
        else:
            self._suspect_ranges = ranges
            self.suspects = {(t, p) for t, p, _lo, _hi in ranges}

    def is_suspect(self, key: MessageKey) -> bool:
        """True when ``key`` was in a batch in flight when the process last died."""
        topic, partition, offset = key
        if (topic, partition) not in self.suspects:
            return False
        return any(
            t == topic and p == partition and lo <= offset <= hi
            for t, p, lo, hi in self._suspect_ranges
        )

    def is_poisoned(self, key: MessageKey) -> bool:
        """True when ``key`` alone was in flight when the process died: dead-letter it."""
        return key in self.poisoned

    def begin(self, keys: Iterable[MessageKey], *, solo: bool = False) -> None:
        """Note the messages about to be processed (``solo``: exactly one message)."""
        doc = {"ranges": _ranges(keys), "solo": solo, "pid": os.getpid()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, self.path)

    def done(self) -> None:
        """The noted messages were processed (or dead-lettered): forget them."""
        self.path.unlink(missing_ok=True)

    def forget(self, key: MessageKey) -> None:
        """A poisoned message was dead-lettered: it needs no special care any more."""
        self.poisoned.discard(key)
