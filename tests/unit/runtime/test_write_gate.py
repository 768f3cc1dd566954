"""The executor's write gate: a member the group may have expelled writes nothing (changelog,
commands, offsets), whether it learns of it at a revocation, from aiokafka's generation, or from
heartbeats unanswered for a session (no broker: aiokafka's coordinator and consumer stood in
for)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import parse_flow
from kestream.runtime import records
from kestream.runtime.changelog_restorer import ChangelogRestorer
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import ExecutorService, Outbox
from kestream.runtime.member_fence import MemberFence
from kestream.runtime.metrics import Metrics
from kestream.runtime.topics import Topics
from kestream.runtime.write_gate import WriteGate, WriteRefused
from kestream.settings import Settings
from tests.unit.runtime.executor_fakes import Clock, Coordinator, GroupConsumer, turns

SESSION_S = 4.0

SLEEPY = """
id: sleepy
namespace: test.gate
tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1H
"""


@pytest.fixture(autouse=True)
def _no_admission_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    async def empty(self: ChangelogRestorer, topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}

    monkeypatch.setattr(ChangelogRestorer, "_read_table", empty)


class _Ack:
    def __init__(self, topic: str, partition: int | None) -> None:
        self.topic, self.partition, self.offset = topic, partition or 0, 1


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes | None]] = []

    async def send(self, topic: str, value: bytes | None, **kw: Any) -> asyncio.Future[Any]:
        self.sent.append((topic, kw["key"].decode(), value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(_Ack(topic, kw.get("partition")))
        return done


def _executor() -> tuple[ExecutorService, Clock, Coordinator, _Producer]:
    """An executor that owns partitions 0 and 1 after a join (the gate noted the generation),
    with execution e1 running and its changelog records carried to the next write."""
    settings = Settings(broker="unused:9092", executor_inline_tasks=True)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow(SLEEPY))
    service = ExecutorService(ctx, registry, metrics=Metrics())
    clock = Clock()
    coordinator = Coordinator()
    service.fence = MemberFence(SESSION_S, clock=clock)
    service.fence.watch(SimpleNamespace(_coordinator=coordinator))
    service.owned = {0, 1}
    asyncio.run(service.assigned({0, 1}))  # the join: confirms, notes the generation
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("e1", "test.gate", "sleepy"), out, ("executions", 0))
    service.writer.carried = [(service.topics.changelog, *rec) for rec in out.changelog]
    service.recovery.offsets[0] = 5
    producer = _Producer()
    service.writer.producer = producer
    return service, clock, coordinator, producer


def _created(service: ExecutorService, execution_id: str, offset: int) -> dict[TopicPartition, Any]:
    tp = TopicPartition(service.topics.executions, 0)
    value = records.encode_event(ev.ExecutionCreated(execution_id, "test.gate", "sleepy"))
    key = execution_id.encode()
    return {tp: [ConsumerRecord(tp.topic, 0, offset, 0, 0, key, value, None, 0, 0, [])]}


def test_aiokafka_resets_the_generation_and_member_id_the_gate_compares() -> None:
    """On UNKNOWN_MEMBER_ID and ILLEGAL_GENERATION aiokafka resets both to values no join
    hands out, so a member told it was expelled differs from what its assignment noted."""
    coordinator = Coordinator()
    coordinator.reset_generation()
    assert (coordinator.generation, coordinator.member_id) == (-1, "")
    assert coordinator.rejoins == 1


def test_the_first_join_inside_the_consumers_start_notes_the_generation() -> None:
    """aiokafka's start of a subscribed consumer waits for the first join, so the executor's
    first assignment comes before it can watch the consumer: the fence, made before the start,
    watches it then, and the gate notes that generation (an expulsion in it closes the gate)."""
    settings = Settings(broker="unused:9092")
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    service = ExecutorService(ctx, FlowRegistry(), metrics=Metrics())
    consumer, coordinator = GroupConsumer(service), Coordinator()
    service._consumer = consumer
    service.fence = MemberFence(SESSION_S, clock=Clock())
    consumer._coordinator = coordinator  # (created by the start, before its join)
    service.owned = {0, 1}  # (nothing to recover)
    asyncio.run(service.assigned({0, 1}))
    assert service.writer.gate.closed() is None
    coordinator.reset_generation()
    assert service.writer.gate.closed() is not None


def test_a_lapsed_member_revoked_before_its_loop_looks_writes_nothing() -> None:
    """Frozen past its session with a cycle's changelog records carried, it wakes and aiokafka's
    rejoin revokes its partitions before its loop looks at the fence: the revocation writes
    none of the carried records, commits nothing and parks nothing."""
    service, clock, _, producer = _executor()
    consumer = GroupConsumer(service)
    consumer.parts = set()
    service._consumer = consumer
    service._uncommitted[TopicPartition(service.topics.executions, 0)] = 9
    clock.now += SESSION_S + 1.0  # frozen: no heartbeat went out
    asyncio.run(service.revoked({0, 1}))
    assert producer.sent == [] and consumer.commits == []
    assert not service.writer.carried and service.states == {}
    assert service.recovery.parked.take(0, 0.0) is None


def test_an_expulsion_told_by_aiokafka_while_the_loop_turns_is_fenced() -> None:
    """No freeze: heartbeats were answered until the coordinator said the member is unknown
    (a rebalance that timed out while a cycle held the executor), and aiokafka reset its
    generation. The next cycle writes nothing (neither its commands nor the carried changelog),
    commits nothing, drops the state and rejoins; the revocation that follows writes nothing."""
    service, clock, coordinator, producer = _executor()
    consumer = GroupConsumer(service, _created(service, "e2", 7), _created(service, "e3", 8))
    service._consumer = consumer
    clock.now += 1.0  # well within the session: no lapse, no doubt
    coordinator.reset_generation()  # (asks aiokafka to rejoin: one)
    asyncio.run(service._loop())
    assert producer.sent == [] and consumer.commits == []
    assert service.states == {} and service.owned == set() and not service.writer.carried
    assert consumer.paused == consumer.parts and not service.ready.is_set()
    assert coordinator.rejoins == 2  # the executor's own, once: the next batch is not stepped
    assert service.recovery.parked.take(0, 0.0) is None
    asyncio.run(service.revoked({0, 1}))
    assert producer.sent == []


def test_a_revocation_with_the_generation_reset_writes_nothing() -> None:
    service, _, coordinator, producer = _executor()
    service._consumer = GroupConsumer(service)
    coordinator.reset_generation()
    asyncio.run(service.revoked({0, 1}))
    assert producer.sent == [] and service.recovery.parked.take(0, 0.0) is None


def test_a_usual_revocation_writes_the_carried_records_commits_and_parks() -> None:
    """The gate open (a rebalance the member takes part in): the carried records are written
    before the commit, and the state is parked for a warm recovery."""
    service, _, _, producer = _executor()
    consumer = GroupConsumer(service)
    service._consumer = consumer
    service._uncommitted[TopicPartition(service.topics.executions, 0)] = 9
    asyncio.run(service.revoked({0, 1}))
    assert [key for topic, key, _ in producer.sent if topic == service.topics.changelog]
    assert len(consumer.commits) == 1
    parked = service.recovery.parked.take(0, 0.0)
    assert parked is not None and "e1" in parked.states


async def test_writes_wait_while_unconfirmed_and_go_on_once_a_heartbeat_is_answered() -> None:
    """Heartbeats unanswered for a session while the loop turns (a broker restart, a member
    cut off from its coordinator): no lapse, the state is kept, but nothing is written until a
    heartbeat is answered."""
    clock, coordinator = Clock(), Coordinator()
    fence = MemberFence(SESSION_S, clock=clock)
    fence.watch(SimpleNamespace(_coordinator=coordinator))
    gate = WriteGate(fence)
    fence.confirm()
    gate.note()
    fence.guard(None, 0.01)
    try:
        await turns(clock, SESSION_S + 1.0)
        assert not fence.lapsed() and gate.closed() is not None
        passing = asyncio.create_task(gate.passing())
        await asyncio.sleep(0.05)
        assert not passing.done()  # held while in doubt
        coordinator.answers = [True]
        await coordinator._do_heartbeat()
        await asyncio.wait_for(passing, 5)
        assert gate.closed() is None
    finally:
        fence.stop()


async def test_a_write_held_while_unconfirmed_is_refused_once_aiokafka_says_expelled() -> None:
    clock, coordinator = Clock(), Coordinator()
    fence = MemberFence(SESSION_S, clock=clock)
    fence.watch(SimpleNamespace(_coordinator=coordinator))
    gate = WriteGate(fence)
    fence.confirm()
    gate.note()
    fence.guard(None, 0.01)
    try:
        await turns(clock, SESSION_S + 1.0)
        passing = asyncio.create_task(gate.passing())
        await asyncio.sleep(0.05)
        assert not passing.done()
        coordinator.reset_generation()
        with pytest.raises(WriteRefused):
            await asyncio.wait_for(passing, 5)
    finally:
        fence.stop()


def test_without_a_group_the_gate_is_open() -> None:
    assert WriteGate().closed() is None
    asyncio.run(WriteGate().passing())


def test_a_cycle_with_nothing_to_write_passes_no_gate() -> None:
    """An idle cycle neither waits at a closed gate (the executor's lock would be held for
    nothing) nor is refused: nothing of it could land anywhere."""
    service, clock, _, producer = _executor()
    service.writer.carried = []
    clock.now += SESSION_S + 1.0  # unconfirmed (and, unguarded, lapsed): the gate is closed
    assert service.writer.gate.closed() is not None
    written = asyncio.run(service.writer.write(Outbox(), carry=False))
    assert written.checkpoints == {} and producer.sent == []
