"""The scheduler lease's group callbacks drive the leadership (no broker: the consumer's
callbacks are called as aiokafka calls them, revocation first, then the new assignment)."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from kestream.runtime.context import BrokerContext
from kestream.runtime.instance_id_guard import (
    DUPLICATE_INSTANCE_ID,
    DuplicateInstanceId,
    InstanceHolder,
)
from kestream.runtime.restarts import RoleStepsDown
from kestream.runtime.scheduler_lease import STEPPED_DOWN, SchedulerLease
from kestream.runtime.topics import Topics
from kestream.scheduler.leadership import Leadership, Role
from kestream.settings import Settings


class _Calls:
    def __init__(self) -> None:
        self.acquired: list[int] = []
        self.lost = 0

    def on_acquired(self, term: int) -> None:
        self.acquired.append(term)

    async def on_lost(self) -> None:
        await asyncio.sleep(0)
        self.lost += 1


def _lease() -> tuple[SchedulerLease, Leadership, _Calls]:
    settings = Settings(broker="localhost:1", topic_prefix="t-")
    ctx = BrokerContext(settings, "localhost:1", "kafka", Topics.of(settings))
    leadership, calls = Leadership(), _Calls()
    lease = SchedulerLease(ctx, leadership, on_acquired=calls.on_acquired, on_lost=calls.on_lost)
    return lease, leadership, calls


TP = TopicPartition("t-trigger-commands", 0)


async def test_the_member_given_the_partition_acquires_and_the_others_stand_by() -> None:
    active, active_state, active_calls = _lease()
    standby, standby_state, standby_calls = _lease()
    await active.revoked()
    await active.assigned([TP])
    await standby.revoked()
    await standby.assigned([])
    assert active_calls.acquired == [1] and active_state.role is Role.ACTIVATING
    assert standby_calls.acquired == [] and standby_state.role is Role.STANDBY
    assert active.decided.is_set() and standby.decided.is_set()
    assert active_state.activated(1)
    assert active.valid(1) and not standby.valid(0)


async def test_revocation_awaits_the_step_down_of_the_holder_only() -> None:
    lease, leadership, calls = _lease()
    await lease.revoked()  # the first join revokes nothing held
    assert calls.lost == 0
    await lease.assigned([TP])
    assert leadership.activated(1)
    await lease.revoked()
    assert calls.lost == 1
    assert leadership.role is Role.STANDBY and not lease.valid(1)


async def test_a_rebalance_that_hands_the_lease_back_starts_a_new_term() -> None:
    lease, leadership, calls = _lease()
    await lease.assigned([TP])
    assert leadership.activated(1)
    await lease.revoked()
    await lease.assigned([TP])
    assert calls.acquired == [1, 2] and calls.lost == 1
    assert not lease.valid(1)  # work of the first term cannot write any more
    assert leadership.activated(2) and lease.valid(2)


async def test_a_lease_moved_away_leaves_a_standby() -> None:
    lease, leadership, calls = _lease()
    await lease.assigned([TP])
    assert leadership.activated(1)
    await lease.revoked()
    await lease.assigned([])
    assert leadership.role is Role.STANDBY and calls.lost == 1 and calls.acquired == [1]


class _DeadCoordinator:
    """aiokafka's coordinator after its coordination task ended with an error (SyncGroup
    answered FENCED_INSTANCE_ID, which aiokafka 0.14 raises as an unexpected error)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self._coordination_task: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._coordination_task.set_exception(
            error or KafkaError("Unexpected error from SyncGroup")
        )
        self._coordination_task.exception()  # (retrieved: no "never retrieved" warning)
        self.generation, self.member_id = 3, "m-1"


class _FencedConsumer:
    """getmany raises the coordination's error each time, as aiokafka's does; after a few
    polls it gives up with :class:`_StillPolling` (the lease never noticed)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self._coordinator = _DeadCoordinator(error)
        self.polls = 0

    async def getmany(self, **_: object) -> dict[TopicPartition, list[object]]:
        self.polls += 1
        if self.polls > 3:
            raise _StillPolling
        raise KafkaError("Unexpected error from SyncGroup")


class _StillPolling(Exception):
    pass


async def test_an_active_scheduler_whose_group_coordination_died_steps_down() -> None:
    """Another process took the active one's instance id: its coordination ends, no
    rebalance will ever revoke the lease, and the generation it holds stops changing, so the
    lease must see the dead coordination itself and stop the scheduler firing."""
    lease, leadership, calls = _lease()
    await lease.revoked()
    await lease.assigned([TP])
    assert leadership.activated(1) and lease.valid(1)
    consumer = _FencedConsumer()
    await lease._poll(consumer)  # type: ignore[arg-type]
    assert calls.lost == 1 and leadership.role is Role.STANDBY
    assert not lease.valid(1)
    assert consumer.polls == 0


async def test_a_lease_whose_group_coordination_died_says_its_process_must_be_replaced() -> None:
    """Standby or active, a member whose coordination died can never hold the lease again in
    this process: once stepped down it tells ``on_dead`` (whose host stops the process, for
    its supervisor to start a new one), once, with the cause standalone counts it under."""
    for active in (True, False):
        lease, leadership, calls = _lease()
        dead: list[BaseException] = []
        lease.on_dead = dead.append
        await lease.revoked()
        await lease.assigned([TP] if active else [])
        if active:
            assert leadership.activated(1)
        await lease._poll(_FencedConsumer())  # type: ignore[arg-type]
        (exc,) = dead
        assert isinstance(exc, RoleStepsDown) and exc.cause == STEPPED_DOWN == "stepped down"
        assert "Unexpected error from SyncGroup" in str(exc)
        assert calls.lost == (1 if active else 0) and leadership.role is Role.STANDBY


async def test_a_scheduler_replaced_by_another_live_process_stops_naming_the_instance_id() -> None:
    """Another live process took the active one's instance id and the rejoin was refused
    (:mod:`kestream.runtime.instance_id_guard`): it steps down, and ``on_dead`` is told the
    duplicate itself, whose cause standalone does not restart."""
    duplicate = DuplicateInstanceId(
        "scheduler-0", "t-scheduler-lease", InstanceHolder("m", "c", "/h")
    )
    try:
        raise KafkaError(f"Unexpected error during coordination {duplicate!r}") from duplicate
    except KafkaError as exc:
        wrapped = exc
    lease, leadership, calls = _lease()
    dead: list[BaseException] = []
    lease.on_dead = dead.append
    await lease.revoked()
    await lease.assigned([TP])
    assert leadership.activated(1)
    await lease._poll(_FencedConsumer(wrapped))  # type: ignore[arg-type]
    assert dead == [duplicate] and duplicate.cause == DUPLICATE_INSTANCE_ID
    assert calls.lost == 1 and leadership.role is Role.STANDBY and not lease.valid(1)
