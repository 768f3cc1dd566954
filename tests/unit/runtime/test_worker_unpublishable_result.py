"""A result the broker refuses for what it is never stalls the worker: the task run fails with
the broker's reason and the partition's commit point moves past the job. A broker that is only
away changes no result: the same result is sent again until it is acknowledged (broker-free:
the service's producer is replaced by one that refuses what a real broker would)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import ConsumerRecord

from kestream.executor import commands as cmd
from kestream.models.flow import Flow
from kestream.models.state import StateType
from kestream.runtime import worker_service
from kestream.runtime.record_limit import RECORD_MARGIN, RecordLimit
from kestream.runtime.worker_service import WorkerService
from tests.unit.runtime.worker_fakes import (
    JOBS,
    DrainingProducer,
    RefusingProducer,
    close,
    job_record,
    make_worker,
)

FLOW = """
id: refuse
namespace: test.worker
tasks:
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.text }}"
"""


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_service, "_ERROR_BACKOFF_S", 0.0)


@pytest.fixture
async def service() -> AsyncIterator[tuple[WorkerService, Flow]]:
    worker, flow = make_worker(FLOW)
    yield worker, flow
    await close(worker)


def _job_record(flow: Flow, text: str, offset: int) -> ConsumerRecord[Any, Any]:
    return job_record(flow, "ret", {"format": text}, offset)


async def _run(worker: WorkerService, record: ConsumerRecord[Any, Any]) -> None:
    worker._handle(record)
    (job,) = worker._jobs.values()
    assert job.task is not None
    await asyncio.wait_for(job.task, 10.0)


async def test_a_result_too_large_for_the_broker_fails_the_task_run_and_moves_on(
    service: tuple[WorkerService, Flow],
) -> None:
    worker, flow = service
    producer = RefusingProducer(max_bytes=600)
    worker._producer = producer
    await _run(worker, _job_record(flow, "x" * 2_000, offset=41))

    (result,) = producer.results()
    assert result.state is StateType.FAILED
    assert result.outputs is None
    assert result.error is not None
    assert "MessageSizeTooLargeError" in result.error and "'ret'" in result.error
    assert "SUCCESS" in result.error  # the state the task had reached
    assert producer.refused == 1  # the same record would be refused again: not retried
    assert worker._partitions[JOBS].commit_point() == 42
    assert worker.in_flight == 0 and worker.stats["finished"] == 1


async def test_a_broker_outage_delays_the_result_without_changing_it(
    service: tuple[WorkerService, Flow],
) -> None:
    worker, flow = service
    # Unreachable for more tries than the old give-up (5): the result still arrives unchanged.
    producer = RefusingProducer(max_bytes=10_000, outage=12)
    worker._producer = producer
    await _run(worker, _job_record(flow, "small", offset=7))

    (result,) = producer.results()
    assert result.state is StateType.SUCCESS and result.outputs == {"value": "small"}
    assert producer.refused == 12
    assert worker._partitions[JOBS].commit_point() == 8
    assert worker.stats["finished"] == 1


async def test_a_refused_result_waits_for_a_broker_that_comes_back_with_its_failure(
    service: tuple[WorkerService, Flow],
) -> None:
    worker, flow = service
    # Refused as too large, then the broker is away for 3 sends of the FAILED result.
    producer = RefusingProducer(max_bytes=600, outage_after_refusal=3)
    worker._producer = producer
    await _run(worker, _job_record(flow, "x" * 2_000, offset=7))

    (result,) = producer.results()
    assert result.state is StateType.FAILED
    assert result.error is not None and "MessageSizeTooLargeError" in result.error
    assert producer.refused == 1 + 3
    assert worker._partitions[JOBS].commit_point() == 8


async def test_a_result_still_unsent_at_stop_leaves_its_record_for_the_next_owner(
    service: tuple[WorkerService, Flow],
) -> None:
    worker, flow = service
    producer = RefusingProducer(max_bytes=10_000, outage=10**9)  # the broker never comes back
    worker._producer = producer
    worker._handle(_job_record(flow, "small", offset=7))
    (job,) = worker._jobs.values()
    assert job.task is not None
    while producer.refused < 3:  # retrying the result
        await asyncio.sleep(0)
    worker._stopping = True
    await asyncio.wait_for(job.task, 10.0)

    assert producer.results() == []
    assert worker._partitions[JOBS].commit_point() == 7  # the next owner runs the job again
    assert worker.stats["finished"] == 0


async def test_a_result_the_broker_takes_is_sent_as_it_is(
    service: tuple[WorkerService, Flow],
) -> None:
    worker, flow = service
    producer = RefusingProducer(max_bytes=10_000)
    worker._producer = producer
    await _run(worker, _job_record(flow, "fine", offset=0))

    (result,) = producer.results()
    assert result.state is StateType.SUCCESS and result.outputs == {"value": "fine"}
    assert producer.refused == 0


async def test_jobs_ending_together_hand_their_records_over_one_at_a_time(
    service: tuple[WorkerService, Flow],
) -> None:
    """Every caller waiting in aiokafka's ``send`` for a full batch is woken at each drain:
    with thousands of results for one partition that was quadratic. The worker hands records
    over one caller at a time, in the order the jobs ended."""
    worker, flow = service
    producer = DrainingProducer()
    worker._producer = producer
    for offset in range(40):
        worker._handle(_job_record(flow, f"r{offset}", offset))
    running = [job.task for job in worker._jobs.values() if job.task is not None]
    assert len(running) == 40
    await asyncio.wait_for(asyncio.gather(*running), 10.0)
    assert producer.most_inside == 1
    assert sorted(r.outputs["value"] for r in producer.results()) == sorted(
        f"r{offset}" for offset in range(40)
    )


LOGGING_FLOW = """
id: refused-logs
namespace: test.worker
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: "{{ inputs.text }}"
"""


async def test_log_lines_refused_by_the_broker_leave_the_result_as_it_was() -> None:
    """The logs are refused for what they are (a policy on the logs topic) while the result is
    taken: the result stands, once, and the partition moves on. Before, the refusal replaced
    the acknowledged SUCCESS by a FAILED result: two answers for one attempt."""
    worker, flow = make_worker(LOGGING_FLOW)
    try:
        producer = RefusingProducer(refused_topics=frozenset({worker.ctx.topics.logs}))
        worker._producer = producer
        await _run(worker, job_record(flow, "say", {"message": "hello"}, offset=7))

        (result,) = producer.results()
        assert result.state is StateType.SUCCESS
        assert producer.refused >= 1  # the log record was sent, and refused
        assert all(topic != worker.ctx.topics.logs for topic, _ in producer.acked)
        assert worker._partitions[JOBS].commit_point() == 8
        assert worker.in_flight == 0 and worker.stats["finished"] == 1
    finally:
        await close(worker)


async def test_a_log_record_the_client_refuses_as_it_is_handed_over_leaves_the_result() -> None:
    """The client refuses the log record at ``send``, before the result is handed over: the
    result is sent all the same, and stands. Before, the refusal raised out of the hand-over
    and the result was replaced by a FAILED one."""
    worker, flow = make_worker(LOGGING_FLOW)
    try:
        too_large = MessageSizeTooLargeError("the log record is too large")
        producer = RefusingProducer(send_errors={worker.ctx.topics.logs: too_large})
        worker._producer = producer
        await _run(worker, job_record(flow, "say", {"message": "hello"}, offset=7))

        (result,) = producer.results()
        assert result.state is StateType.SUCCESS
        assert producer.refused >= 1  # (the stream may have tried it first)
        assert worker._partitions[JOBS].commit_point() == 8
        assert worker.failure is None
    finally:
        await close(worker)


async def test_a_logs_topic_the_worker_may_not_write_fails_it_once_the_results_standing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An authorization error on the logs topic is no record's fault, and sending again only
    spins (before, the result was sent again for ever and the partition never moved on): the
    lines are left out, each result stands, and the worker fails once, loudly, as the executor
    stops on an authorization error on its topics (its process is replaced)."""
    monkeypatch.setattr(worker_service, "_ERROR_BACKOFF_S", 0.1)  # a retry loop spins slowly
    worker, flow = make_worker(LOGGING_FLOW)
    failures: list[BaseException] = []
    order: list[str] = []  # the acknowledged result reaches the local executor first
    worker.on_failure = lambda failure: (failures.append(failure), order.append("failed"))
    worker.on_result = lambda acked, value: order.append("handed")
    try:
        denied = TopicAuthorizationFailedError(worker.ctx.topics.logs)
        producer = RefusingProducer(send_errors={worker.ctx.topics.logs: denied})
        worker._producer = producer
        for offset in (7, 8):
            await _run(worker, job_record(flow, "say", {"message": "hello"}, offset=offset))

        assert [result.state for result in producer.results()] == [StateType.SUCCESS] * 2
        assert worker._partitions[JOBS].commit_point() == 9
        assert order == ["handed", "failed", "handed"]
        (failure,) = failures
        assert failure is worker.failure and failure.__cause__ is denied
        assert f"the worker may not write to topic '{worker.ctx.topics.logs}'" in str(failure)
        assert "left out" in caplog.text
    finally:
        await close(worker)


async def test_streamed_lines_the_worker_may_not_write_fail_it_at_once_while_the_job_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Lines a running job logs go out every 0.2 s (:class:`LogStream`): refused to the worker
    (the logs topic's ACLs), they are left out and the worker fails there, as for the lines
    that go with a result. Before, they were sent again every 0.2 s until the job ended, and
    only its result's hand-over failed the worker."""
    worker, flow = make_worker(LOGGING_FLOW)
    failures: list[BaseException] = []
    worker.on_failure = failures.append
    try:
        denied = TopicAuthorizationFailedError(worker.ctx.topics.logs)
        producer = RefusingProducer(send_errors={worker.ctx.topics.logs: denied})
        worker._producer = producer
        key = ("exec-1", "run-1", 1)
        line = cmd.LogLine("exec-1", "run-1", "say", 1, "INFO", "hello", datetime.now(UTC))
        worker.log_stream.add(key, flow.namespace, flow.id, line)
        await worker.log_stream.flush()

        (failure,) = failures
        assert failure is worker.failure and failure.__cause__ is denied
        assert f"the worker may not write to topic '{worker.ctx.topics.logs}'" in str(failure)
        assert await worker.log_stream.take(key) == []  # left out, not sent again
        assert producer.refused == 1 and "left out" in caplog.text
    finally:
        await worker.log_stream.close()
        await close(worker)


async def test_streamed_lines_refused_for_what_they_are_are_left_out_at_once() -> None:
    """A policy on the logs topic refuses them again each time: left out, not sent with the
    job's result, and the worker goes on (no authorization is in question)."""
    worker, flow = make_worker(LOGGING_FLOW)
    try:
        producer = RefusingProducer(refused_topics=frozenset({worker.ctx.topics.logs}))
        worker._producer = producer
        key = ("exec-1", "run-1", 1)
        line = cmd.LogLine("exec-1", "run-1", "say", 1, "INFO", "hello", datetime.now(UTC))
        worker.log_stream.add(key, flow.namespace, flow.id, line)
        await worker.log_stream.flush()

        assert await worker.log_stream.take(key) == []
        assert producer.refused == 1 and worker.failure is None
    finally:
        await worker.log_stream.close()
        await close(worker)


async def test_streamed_lines_of_a_part_the_broker_may_take_later_are_kept() -> None:
    """Lines in two records, one refused for good and one refused while the broker is away:
    the batch is kept to be sent again (the index keeps each line once), not dropped whole
    with the part refused for good."""
    worker, flow = make_worker(LOGGING_FLOW)
    try:
        loop = asyncio.get_running_loop()
        counts: list[int] = []

        async def produce(sends: Any) -> list[asyncio.Future[Any]]:
            counts.append(len(sends))
            acks: list[asyncio.Future[Any]] = [loop.create_future() for _ in sends]
            acks[0].set_exception(MessageSizeTooLargeError("too large"))
            for ack in acks[1:]:
                ack.set_exception(KafkaConnectionError("broker away"))
            return acks

        worker._produce = produce  # type: ignore[method-assign]
        worker.limit = RecordLimit(RECORD_MARGIN + 400, "test")  # lines in several records
        key = ("exec-1", "run-1", 1)
        for n in range(6):
            line = cmd.LogLine("exec-1", "run-1", "say", 1, "INFO", "x" * 120 + str(n),
                               datetime.now(UTC))  # fmt: skip
            worker.log_stream.add(key, flow.namespace, flow.id, line)
        await worker.log_stream.flush()

        assert counts[0] > 1
        assert len(await worker.log_stream.take(key)) == 6  # kept, to be sent again
    finally:
        await worker.log_stream.close()
        await close(worker)


async def test_a_results_topic_the_worker_may_not_write_fails_it_once_the_job_left_undone(
    service: tuple[WorkerService, Flow],
) -> None:
    """An authorization error on the results topic fails the worker once, as on the logs
    topic, instead of sending the result again for ever: the job is not done, so the
    partition's next owner runs it (its commit point stays before it)."""
    worker, flow = service
    failures: list[BaseException] = []
    worker.on_failure = failures.append
    denied = TopicAuthorizationFailedError(worker.ctx.topics.results)
    producer = RefusingProducer(send_errors={worker.ctx.topics.results: denied})
    worker._producer = producer
    worker._handle(_job_record(flow, "small", offset=7))
    (job,) = worker._jobs.values()
    assert job.task is not None
    await asyncio.wait_for(job.task, 3.0)

    assert producer.results() == [] and producer.refused == 1  # not sent again
    assert worker._partitions[JOBS].commit_point() == 7
    (failure,) = failures
    assert failure is worker.failure and failure.__cause__ is denied
    assert f"the worker may not write to topic '{worker.ctx.topics.results}'" in str(failure)


async def test_a_dead_letter_topic_the_worker_may_not_write_fails_it_once(
    service: tuple[WorkerService, Flow],
) -> None:
    """A record that must get through (:meth:`WorkerService._send_until_acked`: a dead
    letter, a FAILED result, an answer again) fails the worker on an authorization error
    rather than being sent again until the stop."""
    worker, _ = service
    failures: list[BaseException] = []
    worker.on_failure = failures.append
    denied = TopicAuthorizationFailedError(worker.ctx.topics.dead_letter)
    worker._producer = RefusingProducer(send_errors={worker.ctx.topics.dead_letter: denied})
    sent = worker._send_until_acked(worker.ctx.topics.dead_letter, b"letter", None)

    assert await asyncio.wait_for(sent, 3.0) is False
    (failure,) = failures
    assert failure.__cause__ is denied
