"""Stand-ins for a worker's broker clients, for broker-free tests of
:class:`~kestream.runtime.worker_service.WorkerService`: a producer that acknowledges or refuses
as a broker would, a consumer that records commits, and job records as the executor sends
them. :func:`made_consumers` stands in for a processor's ``make_consumer`` (the executor's too),
recording how each consumer is made and asked to read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, TypeVar

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
)
from aiokafka.structs import ConsumerRecord

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import Flow, parse_flow
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.topics import Topics
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings
from kestream.tasks.base import RunnableTask

JOBS = TopicPartition("t.worker-tasks", 0)


class RefusingProducer:
    """Acknowledges a record only when it is at most ``max_bytes`` and no outage is left;
    each refusal is the error a broker would answer."""

    def __init__(
        self,
        max_bytes: int = 1_000_000,
        outage: int = 0,
        outage_after_refusal: int = 0,
        refused_topics: frozenset[str] = frozenset(),
        send_errors: dict[str, KafkaError] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        #: Topics whose every record is refused by a policy (a record fault).
        self.refused_topics = refused_topics
        #: Per topic, what ``send`` itself raises for each of its records, before any broker
        #: saw it (the client's own checks of a record's size; the authorization aiokafka's
        #: metadata lookup reports).
        self.send_errors = send_errors or {}
        self.outage = outage  # the next sends refused as if the broker were unreachable
        #: An outage of this many sends that starts after the first record refused for its size.
        self.outage_after_refusal = outage_after_refusal
        self.acked: list[tuple[str, bytes]] = []
        self.refused = 0

    def _ack(self, topic: str, value: bytes) -> None:
        if self.outage > 0:
            self.outage -= 1
            self.refused += 1
            raise KafkaConnectionError("broker unreachable")
        if topic in self.refused_topics:
            self.refused += 1
            raise PolicyViolationError(f"no records on {topic}")
        if len(value) > self.max_bytes:
            self.refused += 1
            self.outage, self.outage_after_refusal = self.outage_after_refusal, 0
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        self.acked.append((topic, value))

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        if topic in self.send_errors:
            self.refused += 1
            raise self.send_errors[topic]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._ack(topic, value)
        except KafkaError as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)
        return future

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> None:
        self._ack(topic, value)

    async def stop(self) -> None:
        pass

    def results(self) -> list[ev.WorkerResult]:
        found = []
        for topic, value in self.acked:
            if topic == "t.worker-results":
                event = records.decode_event(value)
                assert isinstance(event, ev.WorkerResult)
                found.append(event)
        return found


class DrainingProducer(RefusingProducer):
    """Like aiokafka's producer when a partition's open batch is full: ``send`` waits (for the
    batch to drain) before it takes the record; counts the callers waiting in it at once."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.most_inside = 0

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            return await super().send(topic, value, key)
        finally:
            self.inside -= 1


class RecordingConsumer:
    """Takes commits and remembers them (the only consumer call a revocation makes)."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


class FetchingConsumer(RecordingConsumer):
    """Hands out the batches queued in ``batches`` (one per ``getmany``, nothing once they run
    out) from :data:`JOBS`; a commit is answered only when ``commit_gate`` is open, like a
    broker slow to answer."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[ConsumerRecord[Any, Any]]] = []
        self.commit_gate = asyncio.Event()
        self.commit_gate.set()
        #: Commits asked for, answered or not.
        self.asked: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.asked.append(dict(offsets))
        await self.commit_gate.wait()
        await super().commit(offsets)

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        await asyncio.sleep(0)
        return {JOBS: self.batches.pop(0)} if self.batches else {}

    def assignment(self) -> set[TopicPartition]:
        return {JOBS}

    def paused(self) -> set[TopicPartition]:
        return set()

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


def make_worker(flow_yaml: str, **settings_fields: Any) -> tuple[WorkerService, Flow]:
    """A worker of the group (not owning every partition) with ``flow_yaml`` deployed, and
    ``settings_fields`` set besides the test topics."""
    settings = Settings(topic_prefix="t.", partitions=1, **settings_fields)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    flow = registry.put(parse_flow(flow_yaml))
    return WorkerService(ctx, registry, threads=1), flow


def job_record(
    flow: Flow,
    task_id: str,
    props: dict[str, Any],
    offset: int,
    execution_id: str = "exec-1",
    run_id: str | None = None,
) -> ConsumerRecord[Any, Any]:
    """The ``run`` record of one attempt of ``task_id``, at ``offset`` of :data:`JOBS`."""
    task = flow.task_index()[task_id]
    assert isinstance(task, RunnableTask)
    revision = flow.revision or 1
    job = cmd.RunTask(
        execution_id, run_id or f"run-{offset}", 1, flow.namespace, flow.id, revision, task, props
    )
    value = records.encode_job(job)
    key = execution_id.encode()
    return ConsumerRecord(JOBS.topic, 0, offset, 0, 0, key, value, None, len(key), len(value), [])


async def close(worker: WorkerService) -> None:
    worker._stopping = True
    for job in list(worker._jobs.values()):
        if job.task is not None:
            job.task.cancel()
            await asyncio.gather(job.task, return_exceptions=True)
    worker._runner.close()


class _Cluster:
    def __init__(self, consumer: MadeConsumer) -> None:
        self.consumer = consumer

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.consumer.partitions_of(topic)))


class _Client:
    def __init__(self, consumer: MadeConsumer) -> None:
        self.consumer = consumer

    async def fetch_all_metadata(self) -> _Cluster:
        return _Cluster(self.consumer)


class MadeConsumer:
    """Records how it is made (its group, the other ``make_consumer`` keywords in ``extra``),
    how it is asked to read (by group or by assignment), what it commits and whether it was
    stopped; its topics have :attr:`partitions` partitions (:meth:`partitions_of`)."""

    partitions = 4

    def __init__(self, group_id: str | None, extra: dict[str, Any]) -> None:
        self.group_id, self.extra = group_id, extra
        self._client = _Client(self)
        self.subscribed: list[str] = []
        self.assigned: list[TopicPartition] = []
        self.commits: list[dict[TopicPartition, Any]] = []
        self.stopped = False

    def partitions_of(self, topic: str) -> int:
        return self.partitions

    async def start(self) -> None:
        return None

    def subscribe(self, topics: list[str], listener: object = None) -> None:
        self.subscribed += topics

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        return None

    async def getmany(self, *_: Any, **__: Any) -> dict[TopicPartition, list[Any]]:
        await asyncio.Event().wait()
        return {}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append(offsets)

    def highwater(self, tp: TopicPartition) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True


class _IdleProducer:
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


C = TypeVar("C", bound=MadeConsumer)


def made_consumers(
    monkeypatch: pytest.MonkeyPatch, modules: Iterable[Any], consumer: type[C]
) -> list[C]:
    """Have ``modules`` make ``consumer``s (and producers that do nothing); the list of those
    made, in order."""
    made: list[C] = []

    def make_consumer(*_: Any, group_id: str | None, **extra: Any) -> C:
        made.append(consumer(group_id, extra))
        return made[-1]

    for module in modules:
        monkeypatch.setattr(module, "make_consumer", make_consumer)
        monkeypatch.setattr(module, "make_producer", lambda *_, **__: _IdleProducer())
    return made
