"""An attempt runs on one worker at a time across a rebalance (broker-free): a revocation lets
its partitions' running jobs end and commits them before the partitions move; a job still
running when its partition goes to another worker stops there, unreported; one whose partition
comes straight back goes on and reports; one whose partition comes back only after the job was
stopped runs again once the stopped copy has ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from kestream.models.flow import Flow
from kestream.models.state import StateType
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


@pytest.fixture
async def service() -> AsyncIterator[
    tuple[WorkerService, Flow, RefusingProducer, RecordingConsumer]
]:
    # A grace shorter than the test jobs that run through a rebalance, from the setting.
    worker, flow = make_worker(FLOW, worker_revoke_grace_s=0.05)
    assert worker.revoke_grace_s == 0.05
    producer, consumer = RefusingProducer(), RecordingConsumer()
    worker._producer = producer
    worker._consumer = consumer
    worker._on_assigned({JOBS})
    yield worker, flow, producer, consumer
    await close(worker)


async def test_a_revocation_lets_running_jobs_end_and_commits_them_first(
    service: tuple[WorkerService, Flow, RefusingProducer, RecordingConsumer],
) -> None:
    worker, flow, producer, consumer = service
    worker.revoke_grace_s = 60.0  # far longer than the job: it ends within the grace
    worker._handle(job_record(flow, "nap", {"duration": "PT0.3S"}, offset=5))
    assert worker.in_flight == 1 and not producer.results()

    await worker._on_revoked({JOBS})

    (result,) = producer.results()
    assert result.state is StateType.SUCCESS
    assert consumer.commits == [{JOBS: 6}]  # past the job, before the partition moves
    assert worker.in_flight == 0


async def test_a_job_whose_partition_goes_elsewhere_stops_unreported(
    service: tuple[WorkerService, Flow, RefusingProducer, RecordingConsumer],
) -> None:
    worker, flow, producer, consumer = service
    worker._handle(job_record(flow, "nap", {"duration": "PT30S"}, offset=5))
    (job,) = worker._jobs.values()

    await worker._on_revoked({JOBS})
    assert job.task is not None and not job.task.done()  # still running through the rebalance
    assert consumer.commits == [{JOBS: 5}]  # not past it: the next owner runs it again

    worker._on_assigned(set())  # the partition went to another worker
    await asyncio.wait_for(job.task, 5.0)
    assert producer.results() == []
    assert worker.in_flight == 0 and worker.stats["abandoned"] == 1


async def test_a_job_whose_partition_comes_back_goes_on_and_reports(
    service: tuple[WorkerService, Flow, RefusingProducer, RecordingConsumer],
) -> None:
    worker, flow, producer, _ = service
    record = job_record(flow, "nap", {"duration": "PT0.5S"}, offset=5)
    worker._handle(record)
    (job,) = worker._jobs.values()

    await worker._on_revoked({JOBS})
    worker._on_assigned({JOBS})  # the common eager rebalance: everything comes back
    worker._handle(record)  # fetched again from the committed offset: the running job's
    assert worker.stats["duplicates"] == 1
    assert job.task is not None
    await asyncio.wait_for(job.task, 5.0)
    (result,) = producer.results()
    assert result.state is StateType.SUCCESS
    assert worker._partitions[JOBS].commit_point() == 6


async def test_a_finished_job_sent_again_is_answered_again_without_running(
    service: tuple[WorkerService, Flow, RefusingProducer, RecordingConsumer],
) -> None:
    """The executor replays a step after a crash and sends the job again; its replayed state
    waits for the result, so the worker answers with the one it produced, and runs nothing."""
    worker, flow, producer, _ = service
    worker._handle(job_record(flow, "nap", {"duration": "PT0.01S"}, offset=5))
    (job,) = worker._jobs.values()
    assert job.task is not None
    await asyncio.wait_for(job.task, 5.0)
    (first,) = producer.acked

    worker._handle(job_record(flow, "nap", {"duration": "PT0.01S"}, offset=6, run_id="run-5"))
    await asyncio.gather(*worker._side_tasks)

    assert producer.acked == [first, first]
    assert worker.stats["started"] == 1 and worker.stats["answered_again"] == 1
    assert worker._partitions[JOBS].commit_point() == 7


async def _abandon_and_take_back(
    worker: WorkerService, flow: Flow, duration: str
) -> tuple[ConsumerRecord[Any, Any], asyncio.Task[None]]:
    """Run a job, let its partition go to another worker (the job is stopped) and come back
    before the stopped job has ended; the record is then fetched again from the commit."""
    record = job_record(flow, "nap", {"duration": duration}, offset=5)
    worker._handle(record)
    (job,) = worker._jobs.values()
    assert job.task is not None
    await worker._on_revoked({JOBS})
    worker._on_assigned(set())  # the partition went to another worker: the job is stopped
    await worker._on_revoked(set())
    worker._on_assigned({JOBS})  # ...and came back before the stopped job has ended
    assert job.abandoned and not job.task.done()
    return record, job.task


async def test_a_job_whose_partition_comes_back_after_it_was_stopped_runs_again(
    service: tuple[WorkerService, Flow, RefusingProducer, RecordingConsumer],
) -> None:
    """The record fetched again must not attach to the stopped copy (which ends unreported):
    that lost the job and froze the partition's commit point at its offset."""
    worker, flow, producer, _ = service
    record, stopped = await _abandon_and_take_back(worker, flow, "PT0.2S")
    worker._handle(record)
    (successor,) = worker._jobs.values()
    assert successor.task is None  # waits for the stopped copy, never runs beside it

    await asyncio.wait_for(stopped, 5.0)
    assert successor.task is not None
    await asyncio.wait_for(successor.task, 5.0)

    (result,) = producer.results()
    assert result.state is StateType.SUCCESS
    assert worker._partitions[JOBS].commit_point() == 6
    assert worker.in_flight == 0 and worker.stats["started"] == 2


async def test_a_job_waiting_for_its_stopped_copy_is_let_go_when_its_partition_leaves_again(
    service: tuple[WorkerService, Flow, RefusingProducer, RecordingConsumer],
) -> None:
    worker, flow, producer, _ = service
    record, stopped = await _abandon_and_take_back(worker, flow, "PT0.2S")
    worker._handle(record)
    (successor,) = worker._jobs.values()

    await worker._on_revoked({JOBS})
    worker._on_assigned(set())
    await asyncio.wait_for(stopped, 5.0)

    assert successor.task is None and worker.in_flight == 0  # the next owner runs it
    assert producer.results() == [] and worker.stats["started"] == 1


async def test_a_kill_of_a_job_waiting_for_its_stopped_copy_reports_it_killed(
    service: tuple[WorkerService, Flow, RefusingProducer, RecordingConsumer],
) -> None:
    worker, flow, producer, _ = service
    record, stopped = await _abandon_and_take_back(worker, flow, "PT0.2S")
    worker._handle(record)

    worker._kill("exec-1", "run-5")
    await asyncio.wait_for(stopped, 5.0)
    await asyncio.gather(*worker._side_tasks)

    (result,) = producer.results()
    assert result.state is StateType.KILLED
    assert worker.stats["started"] == 1 and worker.in_flight == 0
    assert worker._partitions[JOBS].commit_point() == 6


async def test_work_fetched_before_a_rebalance_commits_nothing_after_it(
    service: tuple[WorkerService, Flow, RefusingProducer, RecordingConsumer],
) -> None:
    """Offsets after a rebalance come only from records fetched under the new assignment: a
    job fetched before it that ends after it does not commit its old offset, which another
    worker may have committed past meanwhile (the record fetched again commits it)."""
    worker, flow, producer, consumer = service
    record = job_record(flow, "nap", {"duration": "PT0.2S"}, offset=5)
    worker._handle(record)
    (job,) = worker._jobs.values()
    assert job.task is not None
    await worker._on_revoked({JOBS})
    worker._on_assigned({JOBS})
    await asyncio.wait_for(job.task, 5.0)
    await worker._commit(force=True)

    assert producer.results()[0].state is StateType.SUCCESS
    assert consumer.commits == [{JOBS: 5}]  # the revocation's, before the job ended
    worker._handle(record)  # fetched again from the committed offset: answered, committed
    await asyncio.gather(*worker._side_tasks)
    await worker._commit(force=True)
    assert consumer.commits == [{JOBS: 5}, {JOBS: 6}]
