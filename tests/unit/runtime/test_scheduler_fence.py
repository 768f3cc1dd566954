"""A scheduler writes nothing once its lease is gone (no broker: a recording producer, and the
lease's group callbacks called as aiokafka calls them)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord

from kestream.executor.events import ExecutionCreated
from kestream.models.clock import ManualClock
from kestream.models.flow import Flow, parse_flow
from kestream.runtime import scheduler_service
from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.context import BrokerContext
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.group_coordinator import group_generation
from kestream.runtime.process import ONLY_SCHEDULER_ENV
from kestream.runtime.restarts import RoleStepsDown
from kestream.runtime.scheduler_service import (
    SchedulerService,
    _LeaseLost,
    ended_execution,
)
from kestream.runtime.topics import Topics
from kestream.scheduler import TriggerState
from kestream.scheduler.leadership import Role
from kestream.settings import Settings

TP = TopicPartition("t-trigger-commands", 0)
REFUSED = "kestream_commit_failed_count_total"


class _Producer:
    """Records what is sent; every send is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> Any:
        self.sent.append((topic, key))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def flush(self) -> None:
        return None


def _service() -> tuple[SchedulerService, _Producer]:
    settings = Settings(broker="localhost:1", topic_prefix="t-")
    ctx = BrokerContext(settings, "localhost:1", "kafka", Topics.of(settings))
    service = SchedulerService(ctx, cast(FlowsTable, None))
    producer = _Producer()
    service._producer = cast(Any, producer)
    service._on_acquired = lambda term: None  # type: ignore[method-assign]
    service.lease.on_acquired = service._on_acquired
    return service, producer


async def _activate(service: SchedulerService) -> int:
    await service.lease.revoked()
    await service.lease.assigned([TP])
    term = service.leadership.term
    service._term = term
    assert service.leadership.activated(term)
    return term


def _event() -> ExecutionCreated:
    return ExecutionCreated(execution_id="e1", namespace="ns", flow_id="f", revision=1)


async def test_a_standby_writes_no_record_and_starts_no_execution() -> None:
    service, producer = _service()
    service._deletes.add("ns/f/t")
    with pytest.raises(_LeaseLost):
        await service._flush()
    with pytest.raises(_LeaseLost):
        await service._send_events([_event()])
    assert producer.sent == []


async def test_the_holder_writes_and_stops_at_the_revocation() -> None:
    service, producer = _service()
    await _activate(service)
    service._deletes.add("ns/f/t")
    await service._flush()
    await service._send_events([_event()])
    assert producer.sent == [("t-triggers", b"ns/f/t"), ("t-executions", b"e1")]

    await service.lease.revoked()  # the group moves the lease: _step_down runs in the callback
    assert service.health_detail()["standby"] is True
    service._deletes.add("ns/f/t")
    with pytest.raises(_LeaseLost):
        await service._flush()
    with pytest.raises(_LeaseLost):
        await service._send_events([_event()])
    assert len(producer.sent) == 2


async def test_work_of_an_old_term_is_refused_after_the_lease_came_back() -> None:
    service, producer = _service()
    old = await _activate(service)
    await service.lease.revoked()
    await service.lease.assigned([TP])  # won again: a new term, still activating
    service._term = old  # a loop of the old term that was not cancelled yet
    with pytest.raises(_LeaseLost):
        await service._send_events([_event()])
    assert producer.sent == []


# -- cold start and takeover ------------------------------------------------------------------

FLOW = """
id: f
namespace: ns
tasks:
  - id: ok
    type: io.kestra.plugin.core.debug.Return
    format: ok
triggers:
  - id: sched
    type: io.kestra.plugin.core.trigger.Schedule
    cron: '0 * * * *'
    recoverMissedSchedules: NONE
"""


def _fired_ten_seconds_late(service: SchedulerService) -> list[datetime]:
    """The slots an activation now fires for a record owed since 15:00, at 15:00:10."""
    book = service._schedule_book(takeover=service.leadership.takeover)
    book.load_state(
        TriggerState(
            "ns",
            "f",
            "sched",
            date=datetime(2025, 1, 1, 14, tzinfo=UTC),
            next_execution_date=datetime(2025, 1, 1, 15, tzinfo=UTC),
            schedule="0 * * * *|UTC|m",
        )
    )
    book.sync_flow(parse_flow(FLOW))
    return [fire.slot for fire in book.tick()]


def _clocked_service() -> tuple[SchedulerService, _Producer]:
    service, producer = _service()
    service.clock = ManualClock(datetime(2025, 1, 1, 15, 0, 10, tzinfo=UTC))
    return service, producer


async def test_a_cold_start_skips_the_slots_none_skips() -> None:
    """A first assignment (a lone scheduler's restart, the return after an outage): the slot
    owed for 10 s was missed, not delayed by a handover."""
    service, _ = _clocked_service()
    await _activate(service)
    assert _fired_ten_seconds_late(service) == []


async def test_a_takeover_fires_the_slots_owed_while_the_lease_moved() -> None:
    for previous in ([], [TP]):  # another member held it, or this one in an earlier term
        service, _ = _clocked_service()
        await service.lease.revoked()
        await service.lease.assigned(previous)
        await service.lease.revoked()
        await service.lease.assigned([TP])
        assert _fired_ten_seconds_late(service) == [datetime(2025, 1, 1, 15, tzinfo=UTC)]


# -- a step-down during a batch of ended executions --------------------------------------------


class _SlowAcks(_Producer):
    """Acknowledges only once :attr:`acked` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.acked = asyncio.Event()

    async def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> Any:
        self.sent.append((topic, key))
        return asyncio.ensure_future(self.acked.wait())


class _Updates:
    """One batch of execution updates, then nothing; records the commits."""

    def __init__(self) -> None:
        self.batches = [
            {UPDATES: [ConsumerRecord(UPDATES.topic, 0, 5, 0, 0, b"e1", b"{}", None, 2, 2, [])]}
        ]
        self.committed: list[dict[TopicPartition, int]] = []

    async def getmany(self, timeout_ms: int = 0) -> Any:
        if self.batches:
            return self.batches.pop()
        await asyncio.Event().wait()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(offsets)

    async def stop(self) -> None:
        return None


UPDATES = TopicPartition("t-execution-updates", 0)


async def test_a_step_down_lets_the_batch_in_flight_commit_what_it_wrote() -> None:
    """Cancelled between its records and its commit, the batch would be read again by the next
    term, and its executions counted twice in the precondition windows."""
    service, _ = _service()
    producer = _SlowAcks()
    service._producer = cast(Any, producer)
    await _activate(service)
    updates = _Updates()
    service._updates = cast(Any, updates)
    service._deletes.add("ns/f/t")  # what the batch writes with its records
    service._tasks = [asyncio.create_task(service._ended_loop())]
    while not producer.sent:
        await asyncio.sleep(0)
    revoking = asyncio.create_task(service.lease.revoked())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not revoking.done()  # the step-down waits for the batch
    producer.acked.set()
    await revoking
    assert updates.committed == [{UPDATES: 6}]
    assert service.leadership.role is Role.STANDBY and service._tasks == []


# -- the generation fence ---------------------------------------------------------------------


class _Coordinator:
    def __init__(self) -> None:
        self.generation = 3
        self.member_id = "scheduler-0-a"


class _LeaseConsumer:
    def __init__(self, coordinator: object) -> None:
        self._coordinator = coordinator

    def pause(self, *partitions: TopicPartition) -> None:
        return None


def test_a_consumer_whose_generation_cannot_be_read_is_refused() -> None:
    with pytest.raises(RuntimeError, match="cannot be fenced"):
        group_generation(cast(Any, _LeaseConsumer(object())))
    assert group_generation(cast(Any, _LeaseConsumer(_Coordinator()))) == 3


async def test_the_lease_is_invalid_once_the_group_generation_moved() -> None:
    service, _ = _service()
    coordinator = _Coordinator()
    service.lease._consumer = cast(Any, _LeaseConsumer(coordinator))
    term = await _activate(service)
    assert service.lease.valid(term)
    coordinator.generation = 4  # expelled: the group went on without this member
    assert not service.lease.valid(term)


async def test_the_lease_is_invalid_once_another_process_took_its_instance_id() -> None:
    """Static membership: a process started with this one's group.instance.id replaces it in
    the same generation; this one's next heartbeat is refused and aiokafka takes a new member
    id, which is all that tells the two apart."""
    service, _ = _service()
    coordinator = _Coordinator()
    service.lease._consumer = cast(Any, _LeaseConsumer(coordinator))
    term = await _activate(service)
    assert service.lease.valid(term)
    coordinator.member_id = "scheduler-0-b"
    assert coordinator.generation == 3
    assert not service.lease.valid(term)


# -- flows deployed while activating ----------------------------------------------------------


class _Table:
    def __init__(self) -> None:
        self.by_uid: dict[str, Flow] = {}

    def flows(self) -> list[Flow]:
        return list(self.by_uid.values())

    def latest(self, namespace: str, flow_id: str) -> Flow | None:
        return self.by_uid.get(f"{namespace}/{flow_id}")

    def add_listener(self, callback: object) -> None:
        return None


class _GroupConsumer:
    """A consumer of the scheduler's groups; starting one deploys a flow (as while activating)."""

    def __init__(self, table: _Table) -> None:
        self.table = table
        self.stopped = False

    async def start(self) -> None:
        flow = parse_flow(FLOW.replace("id: f\n", "id: late\n"))
        self.table.by_uid[flow.uid] = flow

    def subscribe(self, topics: list[str], listener: object = None) -> None:
        return None

    async def getmany(self, timeout_ms: int = 0) -> Any:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.stopped = True


async def test_flows_deployed_while_activating_are_synced_when_active(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = _Table()
    service, _ = _service()
    service.table = cast(FlowsTable, table)
    monkeypatch.setattr(scheduler_service, "make_consumer", lambda *a, **k: _GroupConsumer(table))

    async def caught_up() -> None:
        return None

    monkeypatch.setattr(service.trigger_records, "catch_up", caught_up)
    await service.lease.revoked()
    await service.lease.assigned([TP])
    await service._activate(service.leadership.term)
    try:
        assert service.leadership.role is Role.ACTIVE
        assert service.schedules.state("ns/late/sched") is not None
    finally:
        await service._step_down()


async def test_a_lease_given_back_in_the_next_generation_keeps_the_books_and_consumers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A standby joining or leaving rebalances the lease group: the active one is asked for the
    lease and most often gets it back. Rebuilt, it would rejoin its other groups and read the
    ended executions again; kept, it goes on under a new term."""
    table = _Table()
    service, _ = _service()
    service.table = cast(FlowsTable, table)
    monkeypatch.setattr(scheduler_service, "make_consumer", lambda *a, **k: _GroupConsumer(table))

    async def caught_up() -> None:
        return None

    monkeypatch.setattr(service.trigger_records, "catch_up", caught_up)
    del service._on_acquired  # activations run
    service.lease.on_acquired = service._on_acquired
    coordinator = _Coordinator()
    service.lease._consumer = cast(Any, _LeaseConsumer(coordinator))

    async def rebalance(generation: int, partitions: list[TopicPartition]) -> None:
        await service.lease.revoked()
        coordinator.generation = generation
        await service.lease.assigned(partitions)
        if service._activation is not None:
            await service._activation

    await rebalance(3, [TP])
    books, updates = service.schedules, cast(_GroupConsumer, service._updates)
    assert service.leadership.role is Role.ACTIVE and len(service._tasks) == 3
    try:
        await rebalance(4, [TP])  # back in the next generation: kept
        assert service.leadership.role is Role.ACTIVE and service._term == 2
        assert service.schedules is books and service._updates is updates
        assert not updates.stopped and len(service._tasks) == 3
        assert all(not task.done() for task in service._tasks)

        await rebalance(6, [TP])  # a generation in between: another may have held it
        assert service.leadership.role is Role.ACTIVE and service._term == 3
        assert service.schedules is not books and updates.stopped
        updates = cast(Any, service._updates)

        await rebalance(7, [])  # another member has it: the groups are left at once
        assert service.leadership.role is Role.STANDBY
        assert updates.stopped and service._updates is None and service._tasks == []
    finally:
        await service._step_down()


# -- the groups joined at start ---------------------------------------------------------------


class _StartedProducer(_Producer):
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class _Records:
    """The trigger records, read to their (empty) end."""

    alive = True
    latest: dict[str, bytes] = {}

    async def start(self) -> None:
        return None

    async def catch_up(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def _starting_service(
    monkeypatch: pytest.MonkeyPatch,
    lease_answers: list[list[TopicPartition]],
    *,
    only_scheduler: bool = True,
) -> tuple[SchedulerService, list[_GroupConsumer], list[int]]:
    """A scheduler whose start runs as in a role process, broker-free: its lease's group answers
    ``lease_answers[0]`` at the join. Returns it, the group consumers it makes (in order), and
    how many of them had been made when the lease's join began."""
    table = _Table()
    service, _ = _service()
    service.only_scheduler = only_scheduler
    service.table = cast(FlowsTable, table)
    made: list[_GroupConsumer] = []

    def consumer(*args: Any, **kwargs: Any) -> _GroupConsumer:
        made.append(_GroupConsumer(table))
        return made[-1]

    monkeypatch.setattr(scheduler_service, "make_consumer", consumer)
    monkeypatch.setattr(scheduler_service, "make_producer", lambda *a, **k: _StartedProducer())
    service.trigger_records = cast(Any, _Records())
    del service._on_acquired  # activations run
    service.lease.on_acquired = service._on_acquired
    at_lease: list[int] = []

    async def lease_start() -> None:
        at_lease.append(len(made))
        service.lease._consumer = cast(Any, _LeaseConsumer(_Coordinator()))
        service.lease._task = asyncio.create_task(asyncio.Event().wait())  # its poll loop
        await service.lease.assigned(lease_answers[0])

    async def lease_stop() -> None:
        if service.lease._task is not None:
            service.lease._task.cancel()

    monkeypatch.setattr(service.lease, "start", lease_start)
    monkeypatch.setattr(service.lease, "stop", lease_stop)
    return service, made, at_lease


def test_only_the_scheduler_of_a_standalone_on_its_own_broker_is_the_only_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(broker="localhost:1", topic_prefix="t-")
    ctx = BrokerContext(settings, "localhost:1", "kafka", Topics.of(settings))
    monkeypatch.delenv(ONLY_SCHEDULER_ENV, raising=False)
    assert not SchedulerService(ctx, cast(FlowsTable, None)).only_scheduler
    monkeypatch.setenv(ONLY_SCHEDULER_ENV, "1")
    assert SchedulerService(ctx, cast(FlowsTable, None)).only_scheduler


async def test_a_scheduler_that_may_have_peers_joins_the_groups_once_active(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A standby that joined the ended-executions and commands groups at start would take
    partitions from the active scheduler for a rebalance, and leave them in another: each
    rebalance refuses the active one's commit of the batch in flight and makes it not ready."""
    service, made, at_lease = _starting_service(monkeypatch, [[]], only_scheduler=False)
    await service.start()
    try:
        assert at_lease == [0] and made == []  # a standby joins nothing but the lease's group
        assert service.leadership.role is Role.STANDBY and service.is_ready
        await service.lease.revoked()
        await service.lease.assigned([TP])  # the lease moves here: now it joins them
        assert service._activation is not None
        await service._activation
        assert service.leadership.role is Role.ACTIVE
        assert len(made) == 2 and service._updates is made[0] and not made[0].stopped
    finally:
        await service.stop()


# -- a commit the group refuses ---------------------------------------------------------------

DOWNSTREAM = """
id: downstream
namespace: ns
tasks:
  - id: ok
    type: io.kestra.plugin.core.debug.Return
    format: ok
triggers:
  - id: on-both
    type: io.kestra.plugin.core.trigger.Flow
    preconditions:
      id: both
      flows:
        - namespace: ns
          flowId: a
        - namespace: ns
          flowId: b
"""


_EXECUTIONS = [
    {
        "id": f"{flow_id}-1",
        "namespace": "ns",
        "flowId": flow_id,
        "state": {"current": "SUCCESS", "endDate": "2025-01-01T09:00:00+00:00"},
    }
    for flow_id in ("a", "b")
]


def _ended_update(offset: int, execution: dict[str, Any]) -> ConsumerRecord[Any, Any]:
    value = orjson.dumps({"full": True, "execution": execution})
    return ConsumerRecord(UPDATES.topic, 0, offset, 0, 0, b"", value, None, 0, 0, [])


class _RebalancingUpdates:
    """Hands out ``batches``; the first commit is refused as by a group that has moved on, after
    which (aiokafka rejoins from the last commit) the same batch is read again."""

    def __init__(self, batch: list[ConsumerRecord[Any, Any]]) -> None:
        self.batches = [{UPDATES: batch}, {UPDATES: batch}]
        self.tried: list[dict[TopicPartition, int]] = []
        self.committed: list[dict[TopicPartition, int]] = []

    async def getmany(self, timeout_ms: int = 0) -> Any:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.Event().wait()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.tried.append(offsets)
        if len(self.tried) == 1:
            raise CommitFailedError("the group has already rebalanced")
        self.committed.append(offsets)


async def test_a_refused_commit_is_a_rebalance_and_the_batch_read_again_counts_once() -> None:
    """Before, the refusal ended the loop and the process (executor, worker and API with it in
    standalone); the batch read again after the rejoin must fire nothing and count nothing
    twice in the precondition window."""
    failures: list[BaseException] = []
    service, producer = _service()
    service.on_failure = failures.append
    await _activate(service)
    service.flow_triggers.sync_flow(parse_flow(DOWNSTREAM))
    updates = _RebalancingUpdates([_ended_update(5 + n, e) for n, e in enumerate(_EXECUTIONS)])
    service._updates = cast(Any, updates)
    refused_before = service.metrics.value(REFUSED, {"consumer": "scheduler"}) or 0.0
    loop = asyncio.create_task(service._guard(service._ended_loop()))
    try:
        for _ in range(1000):
            if updates.committed:
                break
            await asyncio.sleep(0)
        assert updates.tried == [{UPDATES: 7}, {UPDATES: 7}] and updates.committed
        assert not loop.done() and failures == []
        fired = [key for topic, key in producer.sent if topic == "t-executions"]
        assert len(fired) == 1  # the batch read again fired nothing more
        (window,) = service.flow_triggers.windows()  # fired and reset: counted, both
        assert all(window.has_counted(ended_execution(u, service.clock)) for u in _EXECUTIONS)
        refused = service.metrics.value(REFUSED, {"consumer": "scheduler"})
        assert refused == refused_before + 1
    finally:
        await cancel_and_wait(loop)


async def test_a_scheduler_stepped_down_for_good_stops_its_process() -> None:
    """Its lease's group coordination died (another process took its instance id): it fires
    nothing more, reports not live, and hands its host the failure, which stops the process
    (``standalone``'s supervisor then starts another, counting the exit as stepped down)."""
    service, producer = _service()
    failures: list[BaseException] = []
    service.on_failure = failures.append
    service._started = True
    await _activate(service)
    await service.lease._coordination_died(RuntimeError("FENCED_INSTANCE_ID"))
    assert service.leadership.role is Role.STANDBY and not service._holds()
    assert not service.is_live  # the lease's task is not running
    (exc,) = failures
    assert isinstance(exc, RoleStepsDown) and exc.cause == "stepped down"
    assert producer.sent == []
