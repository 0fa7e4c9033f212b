"""Optional dependencies (pyproject's extras): import one, or fail with a one-line fix.

Only some commands need them (the embedded broker, plots, NVML), so they are imported when
a command needs them, never at module import, and a missing one is a :class:`MissingExtra`
naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from twin.errors import TwinError


class MissingExtra(TwinError):
    """A command needs an optional dependency that is not installed."""


def missing_extra_message(what: str, extra: str, module: str) -> str:
    """One line: what needs which extra, and the command that installs it."""
    return (
        f"{what} needs the '{extra}' extra (module {module} is not installed): "
        f"pip install 'dc-twin[{extra}]'"
    )


def import_extra(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` of pyproject's extra ``extra``; MissingExtra if it is absent.

    ``what`` names the command or feature that needs it, for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(missing_extra_message(what, extra, module)) from exc
