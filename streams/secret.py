"""A string that never shows itself: API tokens and Kafka passwords.

``repr``/``str``/f-strings of a :class:`Secret` print ``***``, so a secret inside settings,
an argparse namespace, a dataclass repr or a log line stays hidden; only ``reveal()`` gives
the value, at the one place that hands it to a client or compares it.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from twin.errors import ConfigError

MASK = "***"


class Secret:
    """An opaque secret string; compare with :meth:`matches` (constant time)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only for handing it to a client library."""
        return self._value

    def matches(self, candidate: str | bytes) -> bool:
        """True if ``candidate`` equals the secret, in time independent of where they differ.

        Both sides are hashed first, so the comparison also takes the same time whatever
        the candidate's length (``hmac.compare_digest`` alone leaks the length).
        """
        given = (
            candidate.encode("utf-8", "surrogateescape")
            if isinstance(candidate, str)
            else candidate
        )
        want = self._value.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(want).digest())

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self.matches(other._value)

    def __hash__(self) -> int:
        return hash(Secret)

    def __copy__(self) -> Secret:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, object]) -> Secret:
        return self

    def __reduce__(self) -> tuple[object, ...]:
        # Settings are pickled into worker processes by nothing today; refuse rather than
        # write a secret somewhere unexpected.
        raise TypeError("a Secret is not picklable")


def read_secret_file(path: Path, what: str) -> Secret:
    """The first line of ``path`` (trailing newline and spaces dropped) as a Secret.

    Raises ConfigError naming ``what`` when the file is unreadable or empty; the message
    never contains the file's content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"cannot read {what} from {path}: {why}") from None
    lines = text.splitlines()
    value = lines[0].strip() if lines else ""
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return Secret(value)
