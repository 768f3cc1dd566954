"""A result the broker keeps refusing never stalls the worker: the task run fails with the
broker's reason and the partition's commit point moves past the job (broker-free: the service's
producer is replaced by one that refuses what a real broker would)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import Flow, parse_flow
from kestream.models.state import StateType
from kestream.runtime import records, worker_service
from kestream.runtime.context import BrokerContext
from kestream.runtime.topics import Topics
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings
from kestream.tasks.base import RunnableTask

FLOW = """
id: refuse
namespace: test.worker
tasks:
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.text }}"
"""


class RefusingProducer:
    """Acknowledges a record only when it is at most ``max_bytes`` and no outage is left;
    each refusal is the error a broker would answer."""

    def __init__(self, max_bytes: int, outage: int = 0) -> None:
        self.max_bytes = max_bytes
        self.outage = outage  # the next sends refused as if the broker were unreachable
        self.acked: list[tuple[str, bytes]] = []
        self.refused = 0

    def _ack(self, topic: str, value: bytes) -> None:
        if self.outage > 0:
            self.outage -= 1
            self.refused += 1
            raise KafkaConnectionError("broker unreachable")
        if len(value) > self.max_bytes:
            self.refused += 1
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        self.acked.append((topic, value))

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._ack(topic, value)
        except KafkaError as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)
        return future

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._ack(topic, value)

    async def stop(self) -> None:
        pass


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_service, "_ERROR_BACKOFF_S", 0.0)


@pytest.fixture
async def service() -> AsyncIterator[tuple[WorkerService, Flow]]:
    settings = Settings(topic_prefix="t.", partitions=1)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    flow = registry.put(parse_flow(FLOW))
    worker = WorkerService(ctx, registry, threads=1)
    yield worker, flow
    worker._stopping = True
    worker._runner.close()


def _job_record(flow: Flow, text: str, offset: int) -> ConsumerRecord[Any, Any]:
    task = flow.task_index()["ret"]
    assert isinstance(task, RunnableTask)
    job = cmd.RunTask(
        "exec-1", "run-1", 1, flow.namespace, flow.id, flow.revision or 1, task, {"format": text}
    )
    value = records.encode_job(job)
    topic = "t.worker-tasks"
    return ConsumerRecord(topic, 0, offset, 0, 0, b"exec-1", value, None, 6, len(value), [])


async def _run(worker: WorkerService, record: ConsumerRecord[Any, Any]) -> None:
    worker._handle(record)
    (job,) = worker._jobs.values()
    assert job.task is not None
    await asyncio.wait_for(job.task, 10.0)


def _results(producer: RefusingProducer) -> list[ev.WorkerResult]:
    found = []
    for topic, value in producer.acked:
        if topic == "t.worker-results":
            event = records.decode_event(value)
            assert isinstance(event, ev.WorkerResult)
            found.append(event)
    return found


async def test_a_result_too_large_for_the_broker_fails_the_task_run_and_moves_on(
    service: tuple[WorkerService, Flow],
) -> None:
    worker, flow = service
    producer = RefusingProducer(max_bytes=600)
    worker._producer = producer
    await _run(worker, _job_record(flow, "x" * 2_000, offset=41))

    (result,) = _results(producer)
    assert result.state is StateType.FAILED
    assert result.outputs is None
    assert result.error is not None
    assert "MessageSizeTooLargeError" in result.error and "'ret'" in result.error
    assert "SUCCESS" in result.error  # the state the task had reached
    assert producer.refused == worker_service._PRODUCE_ATTEMPTS
    tp = TopicPartition("t.worker-tasks", 0)
    assert worker._partitions[tp].commit_point() == 42
    assert worker.in_flight == 0 and worker.stats["finished"] == 1


async def test_the_failed_result_waits_for_a_broker_that_comes_back(
    service: tuple[WorkerService, Flow],
) -> None:
    worker, flow = service
    # Unreachable for the full tries and three more: the FAILED result gets through on the 4th.
    producer = RefusingProducer(max_bytes=600, outage=worker_service._PRODUCE_ATTEMPTS + 3)
    worker._producer = producer
    await _run(worker, _job_record(flow, "small", offset=7))

    (result,) = _results(producer)
    assert result.state is StateType.FAILED
    assert result.error is not None and "KafkaConnectionError" in result.error
    assert worker._partitions[TopicPartition("t.worker-tasks", 0)].commit_point() == 8


async def test_a_result_the_broker_takes_is_sent_as_it_is(
    service: tuple[WorkerService, Flow],
) -> None:
    worker, flow = service
    producer = RefusingProducer(max_bytes=10_000)
    worker._producer = producer
    await _run(worker, _job_record(flow, "fine", offset=0))

    (result,) = _results(producer)
    assert result.state is StateType.SUCCESS and result.outputs == {"value": "fine"}
    assert producer.refused == 0
