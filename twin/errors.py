"""One error tree for the whole project: every expected failure is a TwinError."""

from __future__ import annotations


class TwinError(Exception):
    """Base of every error the twin raises on purpose (bad input, bad config, broker down)."""


class ConfigError(TwinError):
    """A setting, a CLI flag or a site file is wrong; the message names the field."""


class SiteError(ConfigError):
    """A site file is invalid; the message names the field and what was expected."""


class DecodeError(TwinError):
    """A telemetry message could not be decoded or failed validation.

    ``reason`` is the human detail (the ``dlq.detail`` header); ``code`` is one of the fixed
    reason codes of ``streams.schema.DlqReason`` (the ``dlq.reason`` header and the
    ``/metrics`` label). Callers that give no code get ``invalid``.
    """

    def __init__(self, reason: str, code: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = str(code)


class BrokerError(TwinError):
    """A Kafka broker could not be started, reached or stopped."""


class NoGpuError(TwinError):
    """NVML or an NVIDIA GPU is not available on this machine."""
