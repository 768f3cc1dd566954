"""The local hand-off between the executor and the worker of one process (broker-free): a job
or result is handed over only once acknowledged, and its broker copy, fetched later, is
recognised: a handed-over job runs and is answered once, a job sent again by a replayed step is
answered again, and a handed-over result is applied once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import ConsumerRecord, RecordMetadata

from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import Flow, parse_flow
from kestream.models.state import StateType
from kestream.runtime import local_handoff, records
from kestream.runtime.changelog_restorer import ChangelogRestorer
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_outbox import Outbox
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.local_handoff import QUEUED_MAX, LocalHandoff, LocalResults
from kestream.runtime.metrics import Metrics
from kestream.runtime.topics import Topics
from kestream.runtime.worker_jobs import RecentJobs
from kestream.runtime.worker_service import HANDED_UNFETCHED_MAX, WorkerService
from kestream.settings import Settings
from tests.unit.runtime.test_executor_faults import _Producer
from tests.unit.runtime.worker_fakes import (
    JOBS,
    FetchingConsumer,
    RefusingProducer,
    close,
    job_record,
    make_worker,
)

FLOW = """
id: two
namespace: test.handoff
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: one
  - id: second
    type: io.kestra.plugin.core.debug.Return
    format: two
"""


class AckingProducer(RefusingProducer):
    """Acknowledges every record with where it went, as a broker does (partition 0)."""

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acked.append((topic, value))
        future.set_result(RecordMetadata(topic, 0, None, len(self.acked) - 1, -1, None, 0))
        return future


@pytest.fixture
async def worker() -> AsyncIterator[tuple[WorkerService, Flow, AckingProducer]]:
    service, flow = make_worker(FLOW)
    producer = AckingProducer()
    service._producer = producer
    service._consumer = FetchingConsumer()
    service._on_assigned({JOBS})
    yield service, flow, producer
    await close(service)


async def _finish(worker: WorkerService) -> None:
    running = [job.task for job in worker._jobs.values() if job.task is not None]
    await asyncio.gather(*running)
    if worker._side_tasks:
        await asyncio.gather(*worker._side_tasks)


async def test_the_broker_copy_of_a_job_handed_over_is_not_answered_again(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, producer = worker
    record = job_record(flow, "first", {"format": "one"}, offset=7)
    assert service.accept_local(record)
    await _finish(service)
    assert len(producer.results()) == 1
    service._handle(record)  # its broker copy, at the offset it was acknowledged at
    await _finish(service)
    assert len(producer.results()) == 1
    assert service.stats["handed_copies"] == 1 and service.stats["started"] == 1
    assert service._partitions[JOBS].commit_point() == 8  # the copy's offset is done


async def test_a_job_sent_again_after_a_finished_hand_off_is_answered_again(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, producer = worker
    record = job_record(flow, "first", {"format": "one"}, offset=7, run_id="run-a")
    assert service.accept_local(record)
    await _finish(service)
    service._handle(record)  # the broker copy: done, no answer
    resent = job_record(flow, "first", {"format": "one"}, offset=9, run_id="run-a")
    service._handle(resent)  # the executor replayed its step: it waits for this answer
    await _finish(service)
    assert [r.task_run_id for r in producer.results()] == ["run-a", "run-a"]
    assert service.stats["answered_again"] == 1 and service.stats["started"] == 1


async def test_a_broker_copy_fetched_while_the_handed_job_runs_waits_for_it(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, producer = worker
    record = job_record(flow, "first", {"format": "one"}, offset=3)
    assert service.accept_local(record)
    service._handle(record)  # fetched before the job ended: its offset waits for the job
    assert service._partitions[JOBS].commit_point() == 3
    await _finish(service)
    assert len(producer.results()) == 1
    assert service._partitions[JOBS].commit_point() == 4


async def test_the_copy_of_a_handed_job_is_recognised_after_the_finished_memory_forgot_it(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, producer = worker
    record = job_record(flow, "first", {"format": "one"}, offset=5)
    assert service.accept_local(record)
    await _finish(service)
    service._finished = RecentJobs()  # evicted (DEDUP_MAX jobs later, or DEDUP_TTL_S later)
    service._handle(record)
    await _finish(service)
    assert len(producer.results()) == 1 and service.stats["started"] == 1
    assert service.stats["handed_copies"] == 1
    assert service._partitions[JOBS].commit_point() == 6 and not service._partitions[JOBS].handed


async def test_hand_offs_stop_while_too_many_copies_of_a_partition_are_unfetched(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, _ = worker
    jobs = [
        job_record(flow, "first", {"format": "one"}, offset=n, run_id=f"run-{n}")
        for n in range(HANDED_UNFETCHED_MAX + 1)
    ]
    assert all(service.accept_local(record) for record in jobs[:-1])
    await _finish(service)
    assert not service.accept_local(jobs[-1])  # all ended, but none of their copies fetched
    service._handle(jobs[0])  # one copy fetched: room for one more
    assert service.accept_local(jobs[-1])
    await _finish(service)
    assert service.stats["handed_over"] == HANDED_UNFETCHED_MAX + 1


async def test_hand_offs_leave_slots_to_fetched_jobs_and_to_the_fetch_under_way(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, _ = worker
    service.max_in_flight = 4  # one slot (FETCH_RESERVE_SHARE) kept for fetched jobs
    jobs = [
        job_record(flow, "first", {"format": "one"}, offset=n, run_id=f"run-{n}") for n in range(5)
    ]
    assert [service.accept_local(record) for record in jobs[:4]] == [True, True, True, False]
    await _finish(service)
    service._fetch_room = 3  # a fetch under way may bring three jobs: one slot is left
    assert service.accept_local(jobs[3]) and not service.accept_local(jobs[4])
    await _finish(service)


async def test_a_fetch_claims_half_the_free_slots_and_hand_offs_meanwhile_the_rest(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, _ = worker
    service.max_in_flight = 8
    service.on_result = lambda acked, value: None  # in a process's local hand-off
    jobs = [
        job_record(flow, "first", {"format": "one"}, offset=n, run_id=f"run-{n}") for n in range(5)
    ]
    asked: list[int | None] = []
    taken: list[bool] = []

    class Claiming(FetchingConsumer):
        async def getmany(
            self, timeout_ms: int = 0, max_records: int | None = None
        ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
            asked.append(max_records)
            taken.extend(service.accept_local(record) for record in jobs)  # acked meanwhile
            return {}

    service._consumer = Claiming()
    await service._iteration()
    assert asked == [4] and taken == [True, True, True, True, False]  # never past 8 in flight
    await _finish(service)


async def test_a_handed_copy_is_dropped_with_its_revoked_partition(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, _ = worker
    assert service.accept_local(job_record(flow, "first", {"format": "one"}, offset=2))
    await _finish(service)
    await service._on_revoked({JOBS})
    service._on_assigned({JOBS})
    assert not service._partitions[JOBS].handed


async def test_a_failing_result_hook_neither_fails_nor_repeats_the_job(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, producer = worker

    def failing(acked: Any, value: bytes) -> None:
        raise RuntimeError("hook failed")

    service.on_result = failing
    service._handle(job_record(flow, "first", {"format": "one"}, offset=0))
    await _finish(service)
    assert len(producer.results()) == 1 and service.stats["finished"] == 1
    assert service._partitions[JOBS].commit_point() == 1


async def test_a_stopping_role_leaves_its_process_hand_off(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, _, _ = worker
    local = LocalResults(lambda partition: True)
    executor: Any = SimpleNamespace(writer=SimpleNamespace(on_acked=None), local=local)
    handoff = LocalHandoff()
    handoff.add_executor(executor)
    handoff.add_worker(service)
    local_handoff._HANDOFFS[("test", "t.")] = handoff
    assert local.enabled and service.on_result is not None
    local_handoff.disconnect(service)
    assert not local.enabled and service.on_result is None and not handoff.workers
    local_handoff.disconnect(executor)
    assert executor.writer.on_acked is None and ("test", "t.") not in local_handoff._HANDOFFS


async def test_the_copy_of_a_handed_job_given_up_is_not_dead_lettered_again(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, producer = worker
    good = job_record(flow, "first", {"format": "one"}, offset=4)
    body = records.loads(good.value)
    body["workdir"] = {}  # not a shared directory: the job cannot be decoded
    value = records.dumps(body)
    record = ConsumerRecord(JOBS.topic, 0, 4, 0, 0, good.key, value, None, 0, len(value), [])
    assert service.accept_local(record)
    await _finish(service)
    service._handle(record)  # its broker copy
    await _finish(service)
    assert service.stats["dead_lettered"] == 1 and service.stats["handed_copies"] == 1
    assert [t for t, _ in producer.acked] == ["t.dead-letter"]
    assert service._partitions[JOBS].commit_point() == 5


async def test_a_job_of_a_partition_not_owned_or_already_known_is_not_taken(
    worker: tuple[WorkerService, Flow, AckingProducer],
) -> None:
    service, flow, _ = worker
    record = job_record(flow, "first", {"format": "one"}, offset=1)
    elsewhere = ConsumerRecord(
        JOBS.topic, 1, 1, 0, 0, record.key, record.value, None, 0, len(record.value), []
    )
    assert not service.accept_local(elsewhere)  # partition 1 is another worker's
    service._handle(record)  # fetched first: the job is known, the hand-off comes too late
    assert not service.accept_local(record)
    await _finish(service)
    assert service.stats["started"] == 1 and service.stats["handed_over"] == 0


async def test_a_result_queued_for_a_partition_given_up_is_left_to_its_broker_copy() -> None:
    owned = {0}
    results = LocalResults(lambda partition: partition in owned)
    results.enabled = True
    value = records.encode_event(ev.WorkerResult("e", "r", 1, StateType.SUCCESS))
    assert results.offer(0, 5, value) and not results.offer(1, 5, value)
    owned.clear()  # revoked before the next cycle
    assert list(results.take(10)) == []
    assert not results.stepped_copy(0, 5)  # never stepped here: its copy is


async def test_a_cycle_takes_at_most_a_batch_of_results_and_the_queue_is_bounded() -> None:
    results = LocalResults(lambda partition: True)
    results.enabled = True
    values = [
        records.encode_event(ev.WorkerResult(f"e{n}", "r", 1, StateType.SUCCESS))
        for n in range(QUEUED_MAX + 1)
    ]
    offered = [results.offer(0, offset, value) for offset, value in enumerate(values)]
    assert offered.count(True) == QUEUED_MAX and not offered[-1]  # left to its broker copy
    assert [event.execution_id for _, _, event in results.take(2)] == ["e0", "e1"]
    assert len(results) == QUEUED_MAX - 2 and results._arrived.is_set()  # the next cycle's
    assert len(list(results.take(QUEUED_MAX))) == QUEUED_MAX - 2
    assert not results._arrived.is_set()


class _Fetching:
    """A consumer whose getmany waits for :meth:`deliver`, inside aiokafka's own
    ``fetch_context``, as ``AIOKafkaConsumer.getmany`` does."""

    def __init__(self) -> None:
        self._subscription = SubscriptionState()
        self.delivered = asyncio.Event()
        self.calls = 0

    async def getmany(self, **_: Any) -> dict[Any, Any]:
        self.calls += 1
        with self._subscription.fetch_context():
            await self.delivered.wait()
            return {JOBS: ["record"]}


async def test_a_fetch_is_cut_short_by_a_result_handed_over_and_its_getmany_kept() -> None:
    results = LocalResults(lambda partition: True)
    results.enabled = True
    consumer = _Fetching()
    fetch = asyncio.ensure_future(results.fetch(consumer, 60_000, 10, 3))
    await asyncio.sleep(0)
    results.offer(0, 0, records.encode_event(ev.WorkerResult("e", "r", 1, StateType.SUCCESS)))
    assert await fetch == (3, {})
    assert [event.execution_id for _, _, event in results.take(10)] == ["e"]
    assert consumer._subscription._fetch_count == 1  # the getmany goes on, not cancelled
    fetch = asyncio.ensure_future(results.fetch(consumer, 60_000, 10, 4))
    await asyncio.sleep(0)
    consumer.delivered.set()
    assert await fetch == (3, {JOBS: ["record"]})  # from the getmany begun in generation 3
    assert consumer.calls == 1 and consumer._subscription._fetch_count == 0


def test_an_execution_runs_through_the_hand_off_and_applies_each_result_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Executor and worker in one process: both jobs are handed over, both results handed back;
    then the broker copies arrive (results to the executor, jobs to the worker) and change
    nothing: no job, result or record more, and the results' copies are not stepped again."""

    async def empty(self: ChangelogRestorer, topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}

    monkeypatch.setattr(ChangelogRestorer, "_read_table", empty)
    asyncio.run(asyncio.wait_for(_run_through_hand_off(), 60))


async def _run_through_hand_off() -> None:
    settings = Settings(topic_prefix="t.", partitions=1, executor_inline_tasks=False)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow(FLOW))
    executor = ExecutorService(ctx, registry, metrics=Metrics())
    executor.owned = {0}
    written = _Producer(refused=b"")
    executor.writer.producer = written
    worker = WorkerService(ctx, registry, threads=1, metrics=Metrics())
    answers = AckingProducer()
    worker._producer = answers
    worker._consumer = FetchingConsumer()
    worker._on_assigned({JOBS})
    handoff = LocalHandoff()
    handoff.add_executor(executor)
    handoff.add_worker(worker)
    consumer = _ScriptedConsumer(executor, answers, settings)
    executor._consumer = consumer
    stepped: list[ev.Event] = []
    step = executor.executor.step

    def counting_step(state: Any, event: ev.Event) -> Any:
        stepped.append(event)
        return step(state, event)

    setattr(executor.executor, "step", counting_step)  # noqa: B010 (an instance's method)
    try:
        await executor._loop()
    finally:
        await close(worker)
    assert [type(e).__name__ for e in stepped] == ["ExecutionCreated"] + ["WorkerResult"] * 2
    assert consumer.copies == 2  # fetched, recognised by their offsets, not stepped
    jobs = [(t, v) for t, v in written.acked if t == ctx.topics.worker_tasks]
    assert len(jobs) == 2 and handoff.jobs == 2 and handoff.results == 2
    assert worker.stats["started"] == 2
    assert consumer.written_at_copies == len(written.acked)  # the copies wrote nothing
    assert executor.ended.get("exec-1") is not None  # ended, from the handed-over results
    for offset, (topic, value) in enumerate(written.acked):  # the jobs' broker copies (1-based)
        if topic == ctx.topics.worker_tasks:
            assert value is not None
            copy = ConsumerRecord(topic, 0, offset + 1, 0, 0, b"", value, None, 0, len(value), [])
            worker._handle(copy)
    assert worker.stats["handed_copies"] == 2 and len(answers.results()) == 2


class _ScriptedConsumer:
    """The executor's consumer: the creation, then empty polls (a wait cut short by the
    results handed over) until the execution has ended; then the results' broker copies; then
    stop."""

    def __init__(self, executor: ExecutorService, answers: AckingProducer, settings: Settings):
        self.executor, self.answers = executor, answers
        topics = Topics.of(settings)
        created = records.encode_event(ev.ExecutionCreated("exec-1", "test.handoff", "two"))
        self.executions = TopicPartition(topics.executions, 0)
        self.results = TopicPartition(topics.results, 0)
        self.batches = [{self.executions: [_record(self.executions, 0, created)]}]
        self.written_at_copies: int | None = None
        self.copies = 0

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        if self.batches:
            return self.batches.pop(0)
        if self.written_at_copies is not None:
            self.executor._stopping = True
            return {}
        if "exec-1" not in self.executor.states and self.executor.ended.get("exec-1"):
            acked = enumerate(self.answers.acked)  # at the offsets the broker acknowledged
            copies = [_record(self.results, i, v) for i, (t, v) in acked if t == self.results.topic]
            self.copies = len(copies)
            # written, or carried to the next write (the end's changelog records)
            written = len(self.executor.writer.producer.acked)  # type: ignore[union-attr]
            self.written_at_copies = written + len(self.executor.writer.carried)
            return {self.results: copies}
        await asyncio.sleep(0.001)  # nothing on the broker: the poll times out
        return {}

    async def commit(self, offsets: Any) -> None:
        pass

    def highwater(self, tp: TopicPartition) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return set()


def _record(tp: TopicPartition, offset: int, value: bytes) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"", value, None, 0, 0, [])


def _result_value(execution_id: str) -> bytes:
    return records.encode_event(ev.WorkerResult(execution_id, "r", 1, StateType.SUCCESS))


async def test_only_the_copies_of_results_stepped_here_are_skipped() -> None:
    owned = {0, 1}
    results = LocalResults(lambda partition: partition in owned)
    results.enabled = True
    assert results.offer(0, 4, _result_value("e4")) and results.offer(1, 4, _result_value("x"))
    assert results.offer(0, 6, b"not a result")  # undecodable: its copy is dead-lettered
    owned.discard(1)  # revoked before the cycle: its copy is the next owner's to step
    assert [(p, o) for p, o, _ in results.take(10)] == [(0, 4)]
    assert not results.stepped_copy(0, 3)  # another result's copy
    assert results.stepped_copy(0, 4)
    assert not results.stepped_copy(0, 4)  # (fetched again after a rewind: stepped, a no-op)
    assert not results.stepped_copy(0, 6) and not results.stepped_copy(1, 4)
    assert results.skipped == 1


async def test_entries_left_behind_a_fetched_copy_are_forgotten_and_a_revocation_drops_all() -> (
    None
):
    results = LocalResults(lambda partition: True)
    results.enabled = True
    for offset in (2, 3, 9):
        results.offer(0, offset, _result_value(f"e{offset}"))
    assert len(list(results.take(10))) == 3
    # Copy 2 was fetched (and stepped) before its handed result was taken: fetching 3 forgets it.
    assert results.stepped_copy(0, 3) and results._stepped[0] == {9: None}
    results.forget({0})
    assert not results.stepped_copy(0, 9)


async def test_the_memory_of_stepped_results_is_bounded_per_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_handoff, "STEPPED_MAX", 2)
    results = LocalResults(lambda partition: True)
    results.enabled = True
    for offset in (1, 2, 3):
        results.offer(0, offset, _result_value(f"e{offset}"))
    assert len(list(results.take(10))) == 3
    assert list(results._stepped[0]) == [2, 3]  # the oldest forgotten: its copy is stepped


def test_a_handed_result_held_behind_its_execution_holds_the_commit_at_its_copy() -> None:
    settings = Settings(topic_prefix="t.", partitions=1, executor_inline_tasks=False)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    executor = ExecutorService(ctx, FlowRegistry(), metrics=Metrics())
    executor.owned = {0}
    executor.local.enabled = True
    created = ev.ExecutionCreated("exec-1", "test.handoff", "unknown")
    executor.held.hold(0, (ctx.topics.executions, 3), created, "flow unknown", executor.clock())
    assert executor.local.offer(0, 17, _result_value("exec-1"))
    asyncio.run(executor._step_handed(Outbox()))
    bounds = executor.held.commit_bounds()
    assert bounds[(ctx.topics.results, 0)] == 17  # never committed past the held result's copy
    # Its copy, fetched later, is skipped: the held result stands for it.
    results = TopicPartition(ctx.topics.results, 0)
    executor._handle(results, _record(results, 17, _result_value("exec-1")), Outbox())
    assert [type(h.event).__name__ for h in executor.held._queues["exec-1"]] == [
        "ExecutionCreated",
        "WorkerResult",
    ]
