"""The member fence: an executor whose group membership no heartbeat has confirmed for a whole
session (frozen past it: SIGSTOP, a paused VM) writes nothing from the state it holds, drops it
and rejoins (no broker: aiokafka's coordinator and consumer stood in for)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.structs import ConsumerRecord

from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.changelog_restorer import ChangelogRestorer
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import ExecutorService, Outbox
from kestream.runtime.member_fence import MemberFence
from kestream.runtime.metrics import Metrics
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from tests.unit.runtime.executor_fakes import GroupConsumer

SESSION_S = 4.0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Coordinator:
    """aiokafka's coordinator as the fence sees it: its heartbeat call, and its rejoin."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.answers: list[bool] = []
        self.rejoins = 0

    async def _do_heartbeat(self) -> bool:
        self.clock.now += 0.05  # the round trip: the fence keeps the send time
        return self.answers.pop(0)

    def request_rejoin(self) -> None:
        self.rejoins += 1


class _Consumer:
    def __init__(self, clock: _Clock) -> None:
        self._coordinator = _Coordinator(clock)


def _fence() -> tuple[MemberFence, _Coordinator, _Clock]:
    clock = _Clock()
    fence = MemberFence(SESSION_S, clock=clock)
    consumer = _Consumer(clock)
    fence.watch(consumer)
    return fence, consumer._coordinator, clock


def test_aiokafka_keeps_the_calls_the_fence_relies_on() -> None:
    """The installed aiokafka (any version the project allows) still has a coroutine heartbeat
    call that answers whether the group took it, and a rejoin request."""
    assert asyncio.iscoroutinefunction(GroupCoordinator._do_heartbeat)
    assert callable(GroupCoordinator.request_rejoin)


async def test_answered_heartbeats_confirm_from_their_send_time_and_failed_ones_do_not() -> None:
    fence, coordinator, clock = _fence()
    assert not fence.lapsed()  # nothing assigned before the first join
    fence.confirm()
    coordinator.answers = [True, False]
    clock.now += 3.0
    sent = clock.now
    assert await coordinator._do_heartbeat() is True
    assert fence.confirmed_at == sent
    clock.now += 3.8
    assert await coordinator._do_heartbeat() is False  # refused: not a confirmation
    assert fence.confirmed_at == sent and not fence.lapsed()
    clock.now = sent + SESSION_S
    assert fence.lapsed() and fence.silent_for() == pytest.approx(SESSION_S)
    fence.rejoin()
    assert coordinator.rejoins == 1
    fence.confirm()  # the join that follows
    assert not fence.lapsed()


async def test_a_broker_away_for_a_session_is_no_lapse_a_freeze_is() -> None:
    """Heartbeats unanswered for a whole session while the loop turns (the broker restarting)
    leave the membership to aiokafka; the same silence with the loop held (SIGSTOP) is a
    lapse, seen at once on waking, before the guard has looked, and by its first look."""
    fence, _, clock = _fence()
    lapses: list[float] = []
    fence.confirm()
    fence.guard(lambda: lapses.append(clock.now), 0.001)
    try:
        for _ in range(50):  # the broker away: the loop turns, the clock runs
            clock.now += (SESSION_S + 1.0) / 50
            await asyncio.sleep(0.002)
        assert clock.now - (fence.confirmed_at or 0) > SESSION_S
        assert not fence.lapsed() and lapses == []
        fence.confirm()  # the broker is back: a heartbeat answered
        clock.now += SESSION_S + 1.0  # frozen: no turn of the loop
        assert fence.lapsed()  # at once, before any look
        await asyncio.sleep(0.01)
        assert fence.lapsed() and lapses == [clock.now] and fence.tripped
        fence.confirm()  # the rejoin
        assert not fence.lapsed() and not fence.tripped
    finally:
        fence.stop()


def test_a_consumer_without_the_heartbeat_call_is_refused() -> None:
    class Bare:
        _coordinator = object()

    with pytest.raises(RuntimeError, match="could not be fenced"):
        MemberFence(SESSION_S).watch(Bare())


# -- the executor -------------------------------------------------------------------------------

SLEEPY = """
id: sleepy
namespace: test.fence
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


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[Any]:
        self.sent.append((topic, value))
        raise AssertionError(f"a fenced executor wrote to {topic}")


def _executor() -> tuple[ExecutorService, _Clock, _Coordinator]:
    settings = Settings(broker="unused:9092", executor_inline_tasks=True)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow(SLEEPY))
    service = ExecutorService(ctx, registry, metrics=Metrics())
    service.owned = {0, 1}
    clock = _Clock()
    service.fence = MemberFence(SESSION_S, clock=clock)
    consumer = _Consumer(clock)
    service.fence.watch(consumer)
    service.fence.confirm()
    return service, clock, consumer._coordinator


def test_an_executor_woken_past_its_session_steps_nothing_and_writes_nothing() -> None:
    """Frozen past its session with an execution in flight, it wakes to a batch of its
    partitions' records (a new execution, a result): it steps none of them, writes nothing,
    commits nothing, drops the partitions' state, pauses their fetching and rejoins."""
    service, clock, coordinator = _executor()
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("e1", "test.fence", "sleepy"), out, ("executions", 0))
    assert service.states["e1"].state.current is StateType.RUNNING
    # its commands were written, its changelog records are carried to the next write
    service.writer.carried = [(service.topics.changelog, *rec) for rec in out.changelog]
    tp = TopicPartition(service.topics.executions, 0)
    created = records.encode_event(ev.ExecutionCreated("e2", "test.fence", "sleepy"))
    batch = {tp: [ConsumerRecord(tp.topic, 0, 7, 0, 0, b"e2", created, None, 0, 0, [])]}
    consumer = GroupConsumer(service, batch)
    service._consumer = consumer
    service.writer.producer = _Producer()
    clock.now += SESSION_S + 1.0  # frozen: no heartbeat went out
    asyncio.run(service._loop())
    assert service.states == {} and service.owned == set()
    assert not service.writer.carried  # dropped: never written from the state held
    assert consumer.commits == [] and consumer.paused == consumer.parts
    assert coordinator.rejoins == 1 and not service.ready.is_set()
    assert service.recovery.parked.take(0, 0.0) is None  # dropped, not parked

    # The group's answer: its revocation parks nothing, its assignment counts as a join.
    asyncio.run(service.revoked({0, 1}))
    assert service.recovery.parked.take(0, 0.0) is None
    fence = service.fence
    assert fence is not None and fence.lapsed()
    fence.confirm()
    assert not fence.lapsed()


def test_a_revocation_while_the_membership_holds_parks_the_state() -> None:
    """The usual rebalance (not a lapse): the state is parked for a warm recovery."""
    service, _, _ = _executor()
    service._apply(0, ev.ExecutionCreated("e1", "test.fence", "sleepy"), Outbox(), ("x", 0))
    service.recovery.offsets[0] = 5

    class _Quiet:
        async def commit(self, offsets: Any) -> None:
            return None

    service._consumer = _Quiet()
    asyncio.run(service.revoked({0}))
    parked = service.recovery.parked.take(0, 0.0)
    assert parked is not None and "e1" in parked.states
