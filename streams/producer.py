"""A small async publisher of telemetry frames (simulator, collectors, tests, benchmarks)."""

from __future__ import annotations

import asyncio
from types import TracebackType

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from streams.kafka_security import KafkaSecurity, check_access, kafka_client_kwargs
from twin.errors import BrokerError


class FramePublisher:
    """aiokafka producer tuned for frames: batching with a short linger, keys as utf-8."""

    def __init__(
        self,
        bootstrap: str,
        *,
        linger_ms: int = 5,
        connect_timeout_s: float = 30.0,
        security: KafkaSecurity | None = None,
    ):
        self.bootstrap = bootstrap
        self.connect_timeout_s = connect_timeout_s
        self.security = security
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=linger_ms,
            max_batch_size=1 << 20,
            max_request_size=4 << 20,
            acks="all",
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
        return fut

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
