"""The worker's stop (broker-free): a job that finishes during the drain reports its result
(a clean stop does not run finished work again), a job abandoned by a revocation still does not,
and the steps that wait on the broker (records under way, the producer's close) are bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.models.flow import Flow
from kestream.models.state import StateType
from kestream.runtime import worker_service
from kestream.runtime.worker_service import WorkerService
from tests.unit.runtime.worker_fakes import (
    JOBS,
    FetchingConsumer,
    RefusingProducer,
    close,
    job_record,
    make_worker,
)

FLOW = """
id: quick
namespace: test.worker
tasks:
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.text }}"
"""


class _StoppableConsumer(FetchingConsumer):
    def pause(self, *partitions: object) -> None:
        pass

    async def stop(self) -> None:
        pass


class _GoneProducer(RefusingProducer):
    """A producer to a broker that is gone: nothing is acknowledged, and closing it (which
    flushes what is queued) never ends."""

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        await asyncio.Event().wait()


async def _turns(count: int = 50) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def _gated_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[WorkerService, Flow, RefusingProducer, asyncio.Event]:
    """A worker whose jobs end (SUCCESS) only once the returned gate is set."""
    worker, flow = make_worker(FLOW)
    producer = RefusingProducer()
    worker._producer = producer
    worker._consumer = _StoppableConsumer()
    worker._on_assigned({JOBS})
    gate = asyncio.Event()

    async def run(job: cmd.RunTask, on_line: Any = None) -> tuple[ev.WorkerResult, list[Any]]:
        await gate.wait()
        result = ev.WorkerResult(job.execution_id, job.task_run_id, job.attempt, StateType.SUCCESS)
        return result, []

    monkeypatch.setattr(worker._runner, "run", run)
    return worker, flow, producer, gate


async def test_a_job_that_finishes_during_the_stop_reports_its_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, flow, producer, gate = _gated_worker(monkeypatch)
    consumer = worker._consumer
    assert isinstance(consumer, _StoppableConsumer)
    consumer.batches = [[job_record(flow, "ret", {"format": "a"}, offset=0)]]
    await worker._iteration()
    await _turns()
    assert worker.in_flight == 1
    stopping = asyncio.create_task(worker.stop(drain_timeout=30.0))
    await _turns()
    gate.set()  # the job ends during the drain
    await asyncio.wait_for(stopping, 30)
    assert [(r.task_run_id, r.state) for r in producer.results()] == [("run-0", StateType.SUCCESS)]
    assert consumer.commits[-1] == {JOBS: 1}  # done: the next owner does not run it again


async def test_a_job_abandoned_by_a_revocation_still_reports_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, flow, producer, gate = _gated_worker(monkeypatch)
    consumer = worker._consumer
    assert isinstance(consumer, _StoppableConsumer)
    consumer.batches = [[job_record(flow, "ret", {"format": "a"}, offset=0)]]
    await worker._iteration()
    await _turns()
    (job,) = worker._jobs.values()
    worker._on_assigned(set())  # the partition went to another worker
    assert job.abandoned
    stopping = asyncio.create_task(worker.stop(drain_timeout=30.0))
    await _turns()
    gate.set()
    await asyncio.wait_for(stopping, 30)
    assert producer.results() == []
    await close(worker)


async def test_the_stop_cancels_records_the_broker_never_acknowledges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dead letter under way when the broker is gone is given up past the drain's deadline
    (its record is not marked done), and the producer's close, which would flush it for ever,
    is given up too: the stop ends within its bounds."""
    monkeypatch.setattr(worker_service, "SIDE_TASKS_WAIT_S", 0.0)
    monkeypatch.setattr(worker_service, "PRODUCER_CLOSE_S", 0.01)
    monkeypatch.setattr(worker_service, "COMMIT_WAIT_S", 0.01)
    worker, flow = make_worker(FLOW)
    worker._producer = _GoneProducer()
    worker._consumer = _StoppableConsumer()
    worker._on_assigned({JOBS})
    worker._dead_letter(job_record(flow, "ret", {"format": "a"}, offset=0), "unreadable", [])
    (letter,) = worker._side_tasks
    await _turns()
    await asyncio.wait_for(worker.stop(drain_timeout=0.0), 30)
    assert letter.cancelled()
    assert worker._producer is None
