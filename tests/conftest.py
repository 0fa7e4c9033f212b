"""Project-wide fixtures: real Kafka brokers (embedded tansu, Apache Kafka) for integration tests.

``broker`` is session-scoped and parametrized over the legs named by TWIN_TEST_BROKERS
(comma list, default "tansu,kafka"); a test that asks for it, directly or through another
fixture, runs once per leg. With CI=true the Apache Kafka leg always runs and fails, never
skips, when Java, Maven or the broker is missing; elsewhere a machine without Java skips it
with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from streams.brokers import BROKER_KINDS, Broker, BrokerKind, make_broker
from twin.errors import BrokerError

DEFAULT_LEGS = "tansu,kafka"


def in_ci() -> bool:
    """True on CI (CI=true), where the Apache Kafka leg is mandatory."""
    return os.environ.get("CI", "").strip().lower() == "true"


def broker_legs() -> list[str]:
    """Broker kinds to test, from TWIN_TEST_BROKERS; CI always includes Apache Kafka."""
    raw = os.environ.get("TWIN_TEST_BROKERS", DEFAULT_LEGS)
    legs = [leg.strip() for leg in raw.split(",") if leg.strip()]
    unknown = sorted(set(legs) - set(BROKER_KINDS))
    if unknown:
        raise pytest.UsageError(
            f"TWIN_TEST_BROKERS names unknown broker(s) {unknown}; expected a comma list of "
            f"{', '.join(BROKER_KINDS)}"
        )
    if in_ci() and "kafka" not in legs:
        legs.append("kafka")
    return list(dict.fromkeys(legs))


def require_apache_kafka() -> None:
    """Skip the calling test when Apache Kafka cannot run here, except on CI (fail there)."""
    from streams.brokers.apache import prerequisites_missing

    reason = prerequisites_missing()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI requires the Apache Kafka leg: {reason}", pytrace=False)
    pytest.skip(f"Apache Kafka leg skipped: {reason}")


@pytest.fixture(scope="session", params=broker_legs(), ids=lambda kind: str(kind))
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A started broker (``.bootstrap`` "127.0.0.1:P", ``.url`` "kafka://127.0.0.1:P")."""
    kind: BrokerKind = request.param
    if kind == "kafka":
        require_apache_kafka()
    try:
        started = make_broker(kind).start()
    except BrokerError as exc:
        pytest.fail(f"{kind} broker did not start: {exc}", pytrace=False)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix for the topics and group ids of one test (brokers are shared)."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def apache_kafka_required() -> None:
    """For tests that start their own Apache Kafka: skip without Java (fail on CI instead).

    Also skips when TWIN_TEST_BROKERS leaves out "kafka" (never on CI, which forces it).
    """
    if "kafka" not in broker_legs():
        pytest.skip("Apache Kafka leg not selected by TWIN_TEST_BROKERS")
    require_apache_kafka()
