"""Kafka offset bookkeeping of the store: which records are durably on disk.

Every file the sink writes names, in its footer, the exact offset ranges of the records it
holds (``twin.offsets``). On start the sink unions these ranges and seeks each partition to
the first offset at or after the committed one that is not yet durable, then skips any
later record that is already in the store. That gives exactly-once rows even when a crash
falls between a file's rename and the offset commit.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from storage.layout import META_OFFSETS, list_parts
from twin.errors import TwinError

TopicPartition = tuple[str, int]


class OffsetMetadataError(TwinError):
    """A store file has unreadable offset metadata; the message names the file."""


@dataclass
class RangeSet:
    """A set of integers kept as sorted, disjoint, non-adjacent inclusive ranges."""

    ranges: list[tuple[int, int]] = field(default_factory=list)

    def add(self, first: int, last: int | None = None) -> None:
        last = first if last is None else last
        if last < first:
            raise ValueError(f"empty range [{first}, {last}]")
        starts = [r[0] for r in self.ranges]
        i = bisect.bisect_left(starts, first)
        # Merge with the left neighbour when it touches or overlaps.
        if i > 0 and self.ranges[i - 1][1] >= first - 1:
            i -= 1
            first = self.ranges[i][0]
            last = max(last, self.ranges[i][1])
        j = i
        while j < len(self.ranges) and self.ranges[j][0] <= last + 1:
            last = max(last, self.ranges[j][1])
            j += 1
        self.ranges[i:j] = [(first, last)]

    def update(self, other: RangeSet) -> None:
        for a, b in other.ranges:
            self.add(a, b)

    def __contains__(self, x: object) -> bool:
        if not isinstance(x, int):
            return False
        i = bisect.bisect_right([r[0] for r in self.ranges], x) - 1
        return i >= 0 and self.ranges[i][0] <= x <= self.ranges[i][1]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def first_missing_from(self, start: int) -> int:
        """Smallest integer >= ``start`` not in the set."""
        for a, b in self.ranges:
            if b < start:
                continue
            if a > start:
                return start
            return b + 1
        return start

    def discard_below(self, bound: int) -> None:
        """Forget everything below ``bound`` (already committed; keeps memory flat)."""
        kept = []
        for a, b in self.ranges:
            if b < bound:
                continue
            kept.append((max(a, bound), b))
        self.ranges = kept

    def to_list(self) -> list[list[int]]:
        return [[a, b] for a, b in self.ranges]

    @classmethod
    def from_list(cls, items: Iterable[Iterable[int]]) -> RangeSet:
        rs = cls()
        for item in items:
            a, b = item
            rs.add(int(a), int(b))
        return rs


OffsetMap = dict[TopicPartition, RangeSet]


def encode_offsets(offsets: Mapping[TopicPartition, RangeSet]) -> bytes:
    doc: dict[str, dict[str, list[list[int]]]] = {}
    for (topic, part), rs in sorted(offsets.items()):
        if rs:
            doc.setdefault(topic, {})[str(part)] = rs.to_list()
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode_offsets(raw: bytes) -> OffsetMap:
    doc = json.loads(raw)
    out: OffsetMap = {}
    for topic, parts in doc.items():
        for part, ranges in parts.items():
            out[(str(topic), int(part))] = RangeSet.from_list(ranges)
    return out


def merge_offsets(maps: Iterable[Mapping[TopicPartition, RangeSet]]) -> OffsetMap:
    out: OffsetMap = {}
    for m in maps:
        for tp, rs in m.items():
            out.setdefault(tp, RangeSet()).update(rs)
    return out


def file_offsets(path: Path) -> OffsetMap:
    """Offset ranges recorded in one file's footer (empty for files without them)."""
    try:
        meta = pq.read_metadata(path).metadata or {}
    except (OSError, ValueError) as exc:
        raise OffsetMetadataError(f"{path}: unreadable Parquet footer ({exc})") from exc
    raw = meta.get(META_OFFSETS)
    if raw is None:
        return {}
    try:
        return decode_offsets(raw)
    except (ValueError, TypeError, AttributeError) as exc:
        raise OffsetMetadataError(f"{path}: bad {META_OFFSETS.decode()} metadata: {exc}") from exc


def store_offsets(data_dir: Path, table_names: Iterable[str]) -> OffsetMap:
    """Union of the offset ranges of every durable file of the given tables."""
    maps = []
    for name in table_names:
        for path in list_parts(data_dir / name):
            maps.append(file_offsets(path))
    return merge_offsets(maps)


def resume_offset(committed: int | None, earliest: int, durable: RangeSet | None) -> int:
    """Where to seek a partition on start.

    ``committed`` is the group's committed offset (next record to read) or None, and
    ``earliest`` the log start. Records from there on that the store already holds are
    skipped by seeking past the contiguous durable run; later durable records are skipped
    one by one while consuming.
    """
    start = earliest if committed is None else max(committed, earliest)
    if durable is None:
        return start
    return durable.first_missing_from(start)


def commit_offset(position: int, pending_first: Iterable[int]) -> int:
    """Offset safe to commit: below every record still buffered, at most ``position``."""
    return min([position, *pending_first])
