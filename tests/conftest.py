"""Shared fixtures: real PostgreSQL and Kafka (embedded unless the environment names them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ops.stack import EmbeddedKafka
from tests.support.services import (
    KafkaService,
    create_topic,
    kafka_for_tests,
    postgres_for_tests,
    unique_topic_name,
)

_MARKERS_BY_FIXTURE = {
    "database_url": "postgres",
    "kafka_bootstrap": "kafka",
    "kafka_broker": "kafka",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _MARKERS_BY_FIXTURE.items():
            if fixture in names:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL database of this session's own: private embedded server or scratch db."""
    with postgres_for_tests(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture(scope="session")
def _kafka_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaService]:
    with kafka_for_tests(tmp_path_factory.mktemp("kafka")) as service:
        yield service


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_service: KafkaService) -> str:
    return _kafka_service.bootstrap


@pytest.fixture
def kafka_broker(_kafka_service: KafkaService) -> Iterator[EmbeddedKafka]:
    """The session's embedded broker, for tests that kill or restart it.

    Its memory storage forgets every topic on restart; other tests are unaffected because
    each creates its own topic (`fresh_topic`).
    """
    if _kafka_service.broker is None:
        pytest.skip("XENTREE_KAFKA_BOOTSTRAP names an external broker; cannot restart it")
    broker = _kafka_service.broker
    yield broker
    if not broker.running():  # a fault test left it down: bring it back for the others
        broker.start()


@pytest.fixture
def fresh_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> str:
    """A new 4-partition topic named after the test, so no test sees another's messages."""
    return create_topic(kafka_bootstrap, unique_topic_name(request.node.name))
