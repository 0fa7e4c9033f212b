"""A small async publisher of telemetry frames (simulator, collectors, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from streams.kafka_security import KafkaSecurity, check_access, kafka_client_kwargs
from twin.errors import BrokerError

log = logging.getLogger(__name__)

#: How long a frame may wait for the broker's acknowledgement before it is dropped [s]:
#: Java's ``delivery.timeout.ms`` default. aiokafka has no such setting and expires a
#: batch after ``request_timeout_ms`` (40 s by default), so a broker down for a minute
#: would silently cost every frame published in the first 20 s of the outage.
DELIVERY_TIMEOUT_S = 120.0


class FramePublisher:
    """aiokafka producer tuned for frames: batching with a short linger, keys as utf-8."""

    def __init__(
        self,
        bootstrap: str,
        *,
        linger_ms: int = 5,
        connect_timeout_s: float = 30.0,
        security: KafkaSecurity | None = None,
        delivery_timeout_s: float = DELIVERY_TIMEOUT_S,
    ):
        self.bootstrap = bootstrap
        self.connect_timeout_s = connect_timeout_s
        self.security = security
        #: Messages the broker never acknowledged (each also logged as an error).
        self.failed = 0
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=linger_ms,
            max_batch_size=1 << 20,
            max_request_size=4 << 20,
            acks="all",
            # aiokafka's only bound on how long a batch may wait for a (returning) leader.
            request_timeout_ms=int(delivery_timeout_s * 1000),
            **kafka_client_kwargs(security),
        )

    async def start(self) -> None:
        """Connect, retrying until the connect timeout."""
        deadline = asyncio.get_running_loop().time() + self.connect_timeout_s
        await check_access(self.bootstrap, self.security)  # bad credentials: fail at once
        while True:
            try:
                await self._producer.start()
                return
            except KafkaConnectionError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise BrokerError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from None
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Flush and disconnect."""
        await self._producer.stop()

    async def send(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[object]:
        """Queue one message; the returned future resolves when the broker has it."""
        k = key.encode() if isinstance(key, str) else key
        fut: asyncio.Future[object] = await self._producer.send(
            topic, value=value, key=k, headers=headers
        )
        fut.add_done_callback(self._count_failure)
        return fut

    def _count_failure(self, fut: asyncio.Future[object]) -> None:
        # Callers that never await the future (the simulator) still hear of a lost frame.
        if not fut.cancelled() and fut.exception() is not None:
            self.failed += 1
            log.error("frame not delivered to Kafka: %r", fut.exception())

    async def flush(self) -> None:
        """Wait until every queued message is acknowledged."""
        await self._producer.flush()

    async def __aenter__(self) -> FramePublisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
