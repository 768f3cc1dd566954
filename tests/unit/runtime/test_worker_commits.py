"""The worker's periodic commit runs beside its loop (broker-free): a commit the broker is slow
to answer never holds the next fetched job back, and a revocation's commit waits for the
periodic one under way, so a partition's commit point never goes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kestream.models.flow import Flow
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


@pytest.fixture
async def service() -> AsyncIterator[
    tuple[WorkerService, Flow, RefusingProducer, FetchingConsumer]
]:
    worker, flow = make_worker(FLOW)
    producer, consumer = RefusingProducer(), FetchingConsumer()
    worker._producer = producer
    worker._consumer = consumer
    worker._on_assigned({JOBS})
    yield worker, flow, producer, consumer
    await close(worker)


async def _turns(count: int = 50) -> None:
    """Let the loop run ``count`` times (no clock involved)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def _finish_jobs(worker: WorkerService) -> None:
    running = [job.task for job in worker._jobs.values() if job.task is not None]
    await asyncio.gather(*running)


async def test_a_slow_commit_does_not_hold_the_next_job_back(
    service: tuple[WorkerService, Flow, RefusingProducer, FetchingConsumer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, flow, producer, consumer = service
    monkeypatch.setattr(worker_service, "COMMIT_INTERVAL_S", 0.0)  # every iteration commits
    consumer.batches = [[job_record(flow, "ret", {"format": "a"}, offset=0)]]
    await worker._iteration()  # its commit (of offset 0: the job runs) is answered
    await _finish_jobs(worker)
    await _turns()
    consumer.commit_gate.clear()  # the broker does not answer commits for now
    first = asyncio.ensure_future(worker._iteration())  # commits offset 1: not answered
    await _turns()
    assert first.done() and consumer.asked == [{JOBS: 0}, {JOBS: 1}]
    consumer.batches = [[job_record(flow, "ret", {"format": "b"}, offset=1)]]
    await worker._iteration()  # the commit is still unanswered: the next job starts anyway
    await _finish_jobs(worker)
    assert [result.task_run_id for result in producer.results()] == ["run-0", "run-1"]
    assert consumer.commits == [{JOBS: 0}]
    consumer.commit_gate.set()
    await _turns()
    assert consumer.commits == [{JOBS: 0}, {JOBS: 1}]


async def test_a_revocation_commits_after_the_periodic_commit_under_way(
    service: tuple[WorkerService, Flow, RefusingProducer, FetchingConsumer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, flow, _, consumer = service
    monkeypatch.setattr(worker_service, "COMMIT_INTERVAL_S", 0.0)
    consumer.batches = [[job_record(flow, "ret", {"format": "a"}, offset=0)]]
    await worker._iteration()
    await _finish_jobs(worker)
    await _turns()
    consumer.commit_gate.clear()
    await worker._iteration()  # the periodic commit of offset 1 goes out, unanswered
    await _turns()
    assert consumer.asked == [{JOBS: 0}, {JOBS: 1}]
    consumer.batches = [[job_record(flow, "ret", {"format": "b"}, offset=1)]]
    monkeypatch.setattr(worker_service, "COMMIT_INTERVAL_S", 3600.0)  # no periodic one now
    await worker._iteration()
    await _finish_jobs(worker)
    revoking = asyncio.ensure_future(worker._on_revoked({JOBS}))
    await _turns()
    assert not revoking.done()  # waits for the periodic commit before its own
    assert consumer.asked == [{JOBS: 0}, {JOBS: 1}]
    consumer.commit_gate.set()
    await revoking
    assert consumer.commits == [{JOBS: 0}, {JOBS: 1}, {JOBS: 2}]  # the point never goes back


async def test_a_periodic_commit_begun_during_a_revocation_leaves_its_partitions_out(
    service: tuple[WorkerService, Flow, RefusingProducer, FetchingConsumer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop runs on during the revocation callback: a periodic commit it starts then
    would reach the broker after the callback, over the partitions' next owner's commits."""
    worker, flow, _, consumer = service
    monkeypatch.setattr(worker_service, "COMMIT_INTERVAL_S", 0.0)
    consumer.batches = [[job_record(flow, "ret", {"format": "a"}, offset=0)]]
    await worker._iteration()
    await _finish_jobs(worker)
    await _turns()
    consumer.commit_gate.clear()
    revoking = asyncio.ensure_future(worker._on_revoked({JOBS}))
    await _turns()
    assert consumer.asked == [{JOBS: 0}, {JOBS: 1}]  # the revocation's, unanswered
    worker._commit_in_background()  # the loop's next pass, during the callback
    await _turns()
    consumer.commit_gate.set()
    await revoking
    await _turns()
    assert consumer.asked == [{JOBS: 0}, {JOBS: 1}]
    assert consumer.commits == [{JOBS: 0}, {JOBS: 1}]


class _StoppableConsumer(FetchingConsumer):
    def pause(self, *partitions: object) -> None:
        pass

    async def stop(self) -> None:
        pass


async def test_the_stop_does_not_wait_on_commits_the_broker_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On broker loss aiokafka's commit waits for a coordinator with no end: the stop gives
    the periodic commit and its own a bounded wait, then goes on (and the process's other
    roles with it)."""
    monkeypatch.setattr(worker_service, "COMMIT_INTERVAL_S", 0.0)
    monkeypatch.setattr(worker_service, "COMMIT_WAIT_S", 0.01)
    worker, flow = make_worker(FLOW)
    consumer = _StoppableConsumer()
    worker._producer = RefusingProducer()
    worker._consumer = consumer
    worker._on_assigned({JOBS})
    consumer.batches = [[job_record(flow, "ret", {"format": "a"}, offset=0)]]
    consumer.commit_gate.clear()  # the broker is gone: no commit is ever answered
    await worker._iteration()  # the periodic commit goes out, unanswered
    await _finish_jobs(worker)
    await _turns()
    await asyncio.wait_for(worker.stop(drain_timeout=0.0), 30)
    assert worker._committing is not None and worker._committing.cancelled()
    assert consumer.commits == []
