"""A worker frozen past its group session (SIGSTOP: no timer, no heartbeat runs) stops its
running jobs the moment it wakes, before a task woken with it takes effect, reports none of
them and rejoins: its partitions may be another worker's, which runs the jobs again
(broker-free: the freeze is the event loop held, as a stopped process holds it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import TopicPartition

from kestream.models.flow import Flow
from kestream.runtime.member_fence import MemberFence
from kestream.runtime.worker_service import WorkerService
from tests.unit.runtime.worker_fakes import (
    JOBS,
    RecordingConsumer,
    RefusingProducer,
    close,
    job_record,
    make_worker,
)

FLOW = """
id: naps
namespace: test.worker
tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
"""

#: The session of these tests: far shorter than a real one, longer than a loop turn.
SESSION_S = 0.2


class _PausingConsumer(RecordingConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.paused_parts: set[TopicPartition] = set()
        self.polls = 0

    def assignment(self) -> set[TopicPartition]:
        return {JOBS}

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_parts.update(partitions)

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        """Nothing: only a paused assignment is polled here (the worker keeps polling while
        it takes no job, or aiokafka leaves the group)."""
        assert self.paused_parts >= self.assignment()
        self.polls += 1
        return {}


class _Coordinator:
    def __init__(self) -> None:
        self.rejoins = 0
        #: The group knows this member: its heartbeats are answered (else UNKNOWN_MEMBER_ID).
        self.member = True

    async def _do_heartbeat(self) -> bool:
        return self.member

    def request_rejoin(self) -> None:
        self.rejoins += 1


@pytest.fixture
async def service() -> AsyncIterator[tuple[WorkerService, Flow, RefusingProducer, Any]]:
    worker, flow = make_worker(FLOW)
    producer, consumer = RefusingProducer(), _PausingConsumer()
    worker._producer = producer
    worker._consumer = consumer
    coordinator = _Coordinator()
    worker.fence = MemberFence(SESSION_S)
    worker.fence.watch(type("Consumer", (), {"_coordinator": coordinator})())
    worker._on_assigned({JOBS})  # a join: confirms the membership
    worker.fence.guard(worker._lapsed, 0.01)

    async def heartbeats() -> None:  # aiokafka's heartbeat routine, on the same loop
        while True:
            await asyncio.sleep(SESSION_S / 4)
            await coordinator._do_heartbeat()  # (the fence's wrapper)

    beating = asyncio.create_task(heartbeats())
    yield worker, flow, producer, coordinator
    beating.cancel()
    worker.fence.stop()
    await close(worker)


async def _running(worker: WorkerService) -> asyncio.Task[None]:
    (job,) = worker._jobs.values()
    assert job.task is not None
    for _ in range(5):  # the job reaches its Sleep
        await asyncio.sleep(0.01)
    assert not job.task.done()
    return job.task


async def test_a_job_whose_sleep_ended_while_frozen_stops_unreported(
    service: tuple[WorkerService, Flow, RefusingProducer, Any],
) -> None:
    worker, flow, producer, coordinator = service
    worker._handle(job_record(flow, "nap", {"duration": "PT0.3S"}, offset=5))
    task = await _running(worker)
    coordinator.member = False  # the group expels it meanwhile
    time.sleep(0.5)  # frozen: the Sleep falls due, and so does the session
    await asyncio.gather(task, return_exceptions=True)
    assert producer.results() == []  # neither its result nor its effect
    assert worker.stats["abandoned"] == 1 and worker.fence is not None and worker.fence.tripped
    assert coordinator.rejoins == 1
    consumer = worker._consumer
    assert isinstance(consumer, _PausingConsumer) and consumer.paused_parts == {JOBS}
    await worker._iteration()  # fetches nothing until the group answers the rejoin
    assert worker.in_flight == 0
    assert consumer.polls == 1  # but polls, paused: aiokafka leaves the group otherwise

    worker._on_assigned({JOBS})  # the group's answer: the jobs are fetched again
    assert not worker.fence.tripped


async def test_a_job_of_a_worker_never_frozen_reports(
    service: tuple[WorkerService, Flow, RefusingProducer, Any],
) -> None:
    worker, flow, producer, coordinator = service
    worker._handle(job_record(flow, "nap", {"duration": "PT0.3S"}, offset=5))
    await asyncio.gather(await _running(worker))
    assert [r.state.value for r in producer.results()] == ["SUCCESS"]
    assert coordinator.rejoins == 0 and worker.stats["abandoned"] == 0
