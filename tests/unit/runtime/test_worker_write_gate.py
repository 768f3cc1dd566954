"""The worker's write gate: a worker the group may have expelled reports no result and commits
no offset for partitions the group may have given to another worker (which runs their jobs
again), and stops the jobs it learns it lost; whether it learns so from aiokafka (an expulsion
told while its loop kept turning), at a revocation, at a rejoin under a new member id, or from
heartbeats unanswered for a session (no broker: aiokafka's coordinator and consumer stood in
for; the jobs are real Sleeps on the worker's runner)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.models.flow import Flow
from kestream.runtime import records, worker_service
from kestream.runtime.member_fence import MemberFence
from kestream.runtime.worker_service import FULL_POLL_EVERY_S, WorkerService
from tests.unit.runtime.executor_fakes import Clock, Coordinator, GroupConsumer, turns
from tests.unit.runtime.worker_fakes import JOBS, RefusingProducer, close, job_record, make_worker

FLOW = """
id: naps
namespace: test.worker
tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
"""

SESSION_S = 4.0


@dataclass
class Member:
    worker: WorkerService
    flow: Flow
    producer: RefusingProducer
    consumer: GroupConsumer
    clock: Clock
    coordinator: Coordinator

    @property
    def parts(self) -> set[TopicPartition]:
        return set(self.consumer.parts)


@pytest.fixture
async def member() -> AsyncIterator[Member]:
    """A worker of a group that has just joined it (partitions 0 and 1 of its jobs topic; the
    gate noted the membership), with a long revoke grace: a revocation that waited for a job
    would let it end."""
    worker, flow = make_worker(FLOW)
    worker.revoke_grace_s = 30.0
    producer, consumer = RefusingProducer(), GroupConsumer(worker)
    worker._producer = producer
    worker._consumer = consumer
    clock, coordinator = Clock(), Coordinator("worker-1")
    worker.fence = MemberFence(SESSION_S, clock=clock)
    worker.fence.watch(SimpleNamespace(_coordinator=coordinator))
    worker._on_assigned(set(consumer.parts))  # the join: confirms, notes the membership
    worker.fence.guard(worker._lapsed, 0.01)
    yield Member(worker, flow, producer, consumer, clock, coordinator)
    worker.fence.stop()
    await close(worker)


def _done_record(offset: int) -> ConsumerRecord[Any, Any]:
    """A record of :data:`JOBS` done as soon as it is read (a kill of a run not here)."""
    value = records.dumps({"type": "kill", "id": "gone", "run": "gone"})
    return ConsumerRecord(JOBS.topic, 0, offset, 0, 0, b"gone", value, None, 4, len(value), [])


def _nap(m: Member, seconds: float, offset: int) -> asyncio.Task[None]:
    """Fetch (hand the worker) a Sleep job of ``seconds``; its task."""
    m.worker._handle(job_record(m.flow, "nap", {"duration": f"PT{seconds}S"}, offset=offset))
    (job,) = [j for j in m.worker._jobs.values() if j.record.offset == offset]
    assert job.task is not None
    return job.task


async def _ran(worker: WorkerService) -> None:
    """Until no task code runs on the worker's runner (a finished job then waits at the gate
    for its result, or is reporting it)."""
    while worker._runner._running:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the result's way to the producer, had the gate let it pass


async def test_an_expulsion_told_while_the_loop_turns_stops_the_jobs_and_writes_nothing(
    member: Member,
) -> None:
    """No freeze: the coordinator answered that it does not know the member (cut off from
    it for longer than the session, a paused VM whose clock stopped too) and aiokafka reset its
    generation and rejoins. The revocation that comes first stops the running job at once,
    without waiting the grace (it would end and report meanwhile), and commits nothing, though
    a record was done; the rejoin under a new member id opens the gate for what comes next."""
    m = member
    m.worker._handle(_done_record(3))
    task = _nap(m, 0.3, 4)
    m.coordinator.reset_generation()
    assert m.worker.gate.closed() is not None
    await m.worker._on_revoked(m.parts)
    await asyncio.gather(task)
    assert m.producer.results() == [] and m.consumer.commits == []
    assert m.worker.stats["abandoned"] == 1 and m.worker.in_flight == 0

    m.coordinator.join("worker-2")
    m.worker._on_assigned(m.parts)
    assert m.worker.gate.closed() is None
    await asyncio.gather(_nap(m, 0.01, 4))  # fetched again from the committed offset
    assert [r.state.value for r in m.producer.results()] == ["SUCCESS"]


async def test_a_result_waits_while_unconfirmed_and_goes_out_once_a_heartbeat_is_answered(
    member: Member,
) -> None:
    """Heartbeats unanswered for a session while the loop turns (a worker cut off from its
    group coordinator only, a broker restart): no lapse, the job runs on, but its result and
    the offsets wait; an answered heartbeat lets both through."""
    m = member
    await turns(m.clock, SESSION_S + 1.0)
    fence = m.worker.fence
    assert fence is not None and not fence.lapsed() and m.worker.gate.closed() is not None
    task = _nap(m, 0.01, 4)
    await _ran(m.worker)
    assert m.producer.results() == [] and not task.done()
    await m.worker._commit(force=True)
    assert m.consumer.commits == []

    m.coordinator.answers = [True]
    await m.coordinator._do_heartbeat()  # (the fence's wrapper)
    await asyncio.gather(task)
    assert [r.state.value for r in m.producer.results()] == ["SUCCESS"]
    await m.worker._commit(force=True)
    assert m.consumer.commits == [{JOBS: 5}]
    assert m.worker.stats["abandoned"] == 0


async def test_a_job_still_running_when_the_member_rejoins_under_a_new_id_stops_unreported(
    member: Member,
) -> None:
    """A rebalance the worker took part in (the gate open at the revocation, no grace): the
    job runs through it, as it should when its partition comes back. But the member was
    expelled during the join and came back under a new member id: another worker may have
    owned the partition meanwhile and run the job, so this copy stops, unreported, though the
    partition is assigned back."""
    m = member
    m.worker.revoke_grace_s = 0.0
    task = _nap(m, 0.3, 4)
    await m.worker._on_revoked(m.parts)
    assert not task.done()
    m.coordinator.reset_generation()
    m.coordinator.join("worker-2")
    m.worker._on_assigned(m.parts)
    await asyncio.gather(task)
    assert m.producer.results() == []
    assert m.worker.stats["abandoned"] == 1 and m.worker.in_flight == 0


@pytest.mark.parametrize("back", [False, True], ids=["moved", "assigned-back"])
async def test_a_result_ended_between_the_join_and_the_assignment_waits_for_it(
    member: Member, back: bool
) -> None:
    """A rebalance that keeps the member (same member id, the next generation). A job that
    ends after the join, before the assignment, waits at the gate (the generation moved) and
    goes out once the assignment confirms the membership, whether or not its partition is this
    worker's again: it ran, and its answer is what keeps a copy fetched again from running
    its effects twice."""
    m = member
    m.worker.revoke_grace_s = 0.0
    task = _nap(m, 0.05, 4)
    await m.worker._on_revoked(m.parts)
    m.coordinator.join()
    await _ran(m.worker)
    assert m.producer.results() == []
    m.worker._on_assigned(m.parts if back else {TopicPartition(JOBS.topic, 1)})
    await asyncio.gather(task)
    assert [r.state.value for r in m.producer.results()] == ["SUCCESS"]
    assert m.worker.stats["abandoned"] == 0


async def test_a_lapsed_worker_revoked_commits_nothing(member: Member) -> None:
    """Frozen past its session (the guard sees the stall): its running job stops, and the
    revocation of aiokafka's rejoin commits nothing, though a record was done before the
    freeze; the group may have handed the partition on, and its new owner commits."""
    m = member
    m.worker._handle(_done_record(3))
    task = _nap(m, 30, 4)
    m.clock.now += SESSION_S + 1.0  # frozen: no heartbeat, no look of the guard
    await asyncio.gather(task)  # the guard's first look stops it
    fence = m.worker.fence
    assert fence is not None and fence.tripped and m.coordinator.rejoins == 1
    await m.worker._on_revoked(m.parts)
    assert m.consumer.commits == [] and m.producer.results() == []


class _StartingProducer(RefusingProducer):
    async def start(self) -> None:
        pass


class _JoiningConsumer(GroupConsumer):
    """A subscribed consumer whose start waits for the first join, as aiokafka's does: its
    coordination exists from the start on, and the join's assignment reaches the listener
    before ``start()`` returns."""

    def __init__(self, service: WorkerService) -> None:
        super().__init__(service)
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        self._coordinator = Coordinator("worker-1")
        await self.listener.on_partitions_assigned(set(self.parts))

    def paused(self) -> set[TopicPartition]:
        return set()

    async def stop(self) -> None:
        pass


async def test_the_first_join_inside_the_consumers_start_notes_the_membership(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka's start of a subscribed consumer waits for the first join, so the first
    assignment comes before the worker can watch the consumer: the fence, made before the
    start, watches it then, and the gate notes that membership (an expulsion in the first
    generation closes it). Driven through :meth:`WorkerService.start`."""
    worker, _ = make_worker(FLOW)
    consumer = _JoiningConsumer(worker)
    worker.max_in_flight = 0  # (the loop only polls, paused)
    monkeypatch.setattr(worker_service, "make_producer", lambda *_, **__: _StartingProducer())
    monkeypatch.setattr(worker_service, "make_consumer", lambda *_, **__: consumer)
    await worker.start()
    try:
        coordinator = consumer._coordinator
        assert worker.fence is not None and worker.fence.confirmed_at is not None
        assert worker.gate.closed() is None
        coordinator.reset_generation()  # aiokafka was told of an expulsion
        assert worker.gate.closed() is not None
    finally:
        assert worker.fence is not None
        worker.fence.stop()
        worker._stopping = True
        assert worker._task is not None
        await worker._task
        await close(worker)


class _Polls(GroupConsumer):
    """Counts the polls made with the whole assignment paused (returns nothing)."""

    def __init__(self, service: WorkerService) -> None:
        super().__init__(service)
        self.paused_polls = 0

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        if self.paused >= self.parts:
            self.paused_polls += 1
        return {}

    def paused(self) -> set[TopicPartition]:  # (aiokafka's name; the set is ``paused``)
        return set()


async def test_a_full_worker_keeps_polling_with_its_partitions_paused(member: Member) -> None:
    """A worker at ``max_in_flight`` fetches no job, but still polls (its partitions paused)
    once :data:`FULL_POLL_EVERY_S` passed since its last poll: aiokafka leaves the group once
    ``getmany`` is not called for ``max_poll_interval_ms``, and the gate would then stop every
    running job, unreported. Not at every turn: aiokafka drops what it fetched ahead for a
    paused partition it is polled for."""
    m = member
    consumer = _Polls(m.worker)
    m.worker._consumer = consumer
    m.worker.max_in_flight = 1
    task = _nap(m, 30, 4)
    await m.worker._iteration()
    assert consumer.paused_polls == 0  # (polled just now: at the worker's start)
    m.worker._polled_at -= FULL_POLL_EVERY_S
    await m.worker._iteration()
    await m.worker._iteration()
    assert consumer.paused_polls == 1 and m.worker.in_flight == 1
    assert m.worker.gate.closed() is None and not task.done()


async def test_a_lapsed_worker_keeps_polling_until_the_rejoin_is_answered(
    member: Member,
) -> None:
    """Tripped (lapsed, the rejoin asked): nothing is fetched, but the consumer is polled with
    its partitions paused; aiokafka refuses to rejoin a member idle past
    ``max_poll_interval_ms``, and the worker would never fetch again."""
    m = member
    consumer = _Polls(m.worker)
    m.worker._consumer = consumer
    m.clock.now += SESSION_S + 1.0  # frozen
    await asyncio.sleep(0.05)  # the guard's look trips it
    fence = m.worker.fence
    assert fence is not None and fence.tripped
    await m.worker._iteration()
    await m.worker._iteration()
    assert consumer.paused_polls == 2


async def test_a_result_ended_after_a_revocation_waits_for_the_assignment(
    member: Member,
) -> None:
    """Between a revocation (the gate open: the job runs through the rebalance) and the
    JoinGroup answer the gate is still open: a job that ran to its end then is reported at
    once, whatever the assignment will decide about its partition (its effects are done)."""
    m = member
    m.worker.revoke_grace_s = 0.0
    kept, moved = _nap(m, 0.05, 4), _nap_on(m, 1, 0.05, 5)
    await m.worker._on_revoked(m.parts)
    await asyncio.gather(kept, moved)
    assert [r.state.value for r in m.producer.results()] == ["SUCCESS", "SUCCESS"]
    m.coordinator.join()
    m.worker._on_assigned({TopicPartition(JOBS.topic, 0)})
    assert m.worker.stats["abandoned"] == 0


async def test_a_job_that_ran_while_its_partition_moved_is_answered_not_run_again(
    member: Member,
) -> None:
    """A job that ran to its end but could not be reported (the stop's drain ended while its
    result waited at a closed gate) is remembered with its result: when its job is fetched
    again, this worker answers it instead of running the attempt (its effects) twice."""
    m = member
    m.worker.revoke_grace_s = 0.0
    moved = _nap_on(m, 1, 0.05, 5)
    (job,) = m.worker._jobs.values()
    await m.worker._on_revoked(m.parts)
    m.coordinator.join()  # the gate closes until the assignment
    await _ran(m.worker)
    job.abandoned = True  # given up while it waited (the stop's drain ended)
    m.worker.gate.wake()
    await moved
    assert m.producer.results() == []
    await m.worker._on_revoked({TopicPartition(JOBS.topic, 0)})
    m.coordinator.join()
    back = {TopicPartition(JOBS.topic, 0), TopicPartition(JOBS.topic, 1)}
    m.worker._on_assigned(back)  # and came back: its job is fetched again
    m.worker._handle(job.record)
    assert job.key not in m.worker._jobs  # answered from memory, not started
    while not m.producer.results():
        await asyncio.sleep(0.01)
    assert [r.state.value for r in m.producer.results()] == ["SUCCESS"]
    assert m.worker.stats["answered_again"] == 1


def _nap_on(m: Member, partition: int, seconds: float, offset: int) -> asyncio.Task[None]:
    """:func:`_nap` on another partition of :data:`JOBS`'s topic."""
    record = job_record(m.flow, "nap", {"duration": f"PT{seconds}S"}, offset=offset)
    record = dataclasses.replace(record, partition=partition)
    m.worker._handle(record)
    (job,) = [j for j in m.worker._jobs.values() if j.record.offset == offset]
    assert job.task is not None and job.partition.partition == partition
    return job.task


async def test_a_result_given_up_while_it_waits_for_the_producer_is_not_sent(
    member: Member,
) -> None:
    """A result past the gate waits for its turn at the producer behind another caller (in
    ``send`` while a full batch drains, the broker slow). Its job is stopped meanwhile (its
    partition went to another worker): once its turn comes it is not handed over."""
    m = member
    turn = asyncio.Event()

    class _Draining:
        async def send(self, *_: Any, **__: Any) -> asyncio.Future[Any]:
            await turn.wait()
            return asyncio.get_running_loop().create_future()

    first = asyncio.create_task(m.worker._hand_over.send(_Draining(), [("t", b"", None)]))
    await asyncio.sleep(0)
    task = _nap(m, 0.01, 4)
    await _ran(m.worker)  # ended, passed the gate, waiting for its turn
    assert not task.done() and m.producer.results() == []
    (job,) = m.worker._jobs.values()
    m.worker._abandon(job)
    turn.set()
    await asyncio.gather(first, task)
    assert m.producer.results() == []


async def test_results_waiting_at_a_closed_gate_wake_together_only_when_it_moves(
    member: Member,
) -> None:
    """Thousands of a worker's results can wait at a closed gate: they wait on one event,
    not each on a timer of its own, and look again only when the gate or their job moved."""
    m = member
    gate = m.worker.gate
    await turns(m.clock, SESSION_S + 1.0)  # unconfirmed: closed
    assert gate.closed() is not None
    looks = [0] * 50

    def given_up(i: int) -> Any:
        def up() -> bool:
            looks[i] += 1
            return False

        return up

    waiting = [asyncio.create_task(gate.passing(given_up(i))) for i in range(50)]
    for _ in range(5):  # several looks of the gate's timer, which sees nothing move
        await asyncio.sleep(0.15)
    assert looks == [1] * 50 and not any(t.done() for t in waiting)
    m.coordinator.answers = [True]
    await m.coordinator._do_heartbeat()  # opens the gate: the next look wakes them all
    assert all(await asyncio.gather(*waiting))
    assert looks == [2] * 50
