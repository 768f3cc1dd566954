"""The only scheduler of a broker (``standalone``'s, on its own embedded broker) joins no group:
it holds the lease from its start and assigns itself the partitions of the ended-executions and
commands topics (broker-free: consumers that record what they are asked)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from kestream.runtime import scheduler_service
from kestream.runtime.context import BrokerContext
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.lone_lease import LoneLease
from kestream.runtime.scheduler_lease import SchedulerLease
from kestream.runtime.scheduler_service import SchedulerService
from kestream.runtime.topics import Topics
from kestream.scheduler.leadership import Leadership, Role
from kestream.settings import Settings
from tests.unit.runtime.test_scheduler_fence import _Records, _StartedProducer, _Table
from tests.unit.runtime.worker_fakes import MadeConsumer, made_consumers

PARTITIONS = {"t-execution-updates": 3, "t-trigger-commands": 1}


class _Consumer(MadeConsumer):
    """Its topics have their own partition counts."""

    def partitions_of(self, topic: str) -> int:
        return PARTITIONS[topic]


def _service(
    monkeypatch: pytest.MonkeyPatch, *, only_scheduler: bool
) -> tuple[SchedulerService, list[_Consumer]]:
    settings = Settings(broker="localhost:1", topic_prefix="t-")
    ctx = BrokerContext(settings, "localhost:1", "tansu", Topics.of(settings))
    service = SchedulerService(ctx, cast(FlowsTable, _Table()), only_scheduler=only_scheduler)
    made = made_consumers(monkeypatch, (scheduler_service,), _Consumer)
    monkeypatch.setattr(scheduler_service, "make_producer", lambda *a, **k: _StartedProducer())
    service.trigger_records = cast(Any, _Records())
    return service, made


async def test_the_only_scheduler_is_active_at_start_without_joining_a_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each group cost a first join held half a session by the embedded broker, and a heartbeat
    a second after: the lease was a group's, and so were both topics it reads."""
    service, made = _service(monkeypatch, only_scheduler=True)
    assert isinstance(service.lease, LoneLease)
    await service.start()
    try:
        assert service.leadership.role is Role.ACTIVE and service.is_ready
        assert len(service._tasks) == 3
        updates, commands = made  # no consumer for a lease group
        assert updates.subscribed == [] and commands.subscribed == []
        assert updates.assigned == [TopicPartition("t-execution-updates", p) for p in range(3)]
        assert commands.assigned == [TopicPartition("t-trigger-commands", 0)]
        # Offsets are still committed and read under the groups' names.
        assert updates.group_id == "t-scheduler" and commands.group_id == "t-scheduler-commands"
        assert service.lease.valid(service._term)
    finally:
        await service.stop()
    assert updates.stopped and commands.stopped
    assert service.leadership.role is Role.STANDBY and not service.lease.alive
    assert not service.lease.valid(service._term)
    assert not service.is_live


async def test_a_scheduler_that_may_have_peers_keeps_the_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, _ = _service(monkeypatch, only_scheduler=False)
    assert isinstance(service.lease, SchedulerLease)
    updates, commands = _Consumer("t-scheduler", {}), _Consumer("t-scheduler-commands", {})
    await service._follow(cast(Any, updates), "t-execution-updates")
    await service._follow(cast(Any, commands), "t-trigger-commands")
    assert updates.subscribed == ["t-execution-updates"] and updates.assigned == []
    assert commands.subscribed == ["t-trigger-commands"] and commands.assigned == []
    assert not service._assigned  # until the group assigns


async def test_a_lone_lease_steps_the_scheduler_down_when_it_stops() -> None:
    leadership = Leadership()
    acquired: list[int] = []
    lost: list[bool] = []

    async def on_lost() -> None:
        lost.append(leadership.role is not Role.STANDBY)

    lease = LoneLease(leadership, on_acquired=acquired.append, on_lost=on_lost)
    assert not lease.alive and not lease.decided.is_set()
    await lease.start()
    assert acquired == [1] and lease.decided.is_set() and lease.alive
    assert leadership.role is Role.ACTIVATING and lease.valid(1) and not lease.valid(0)
    assert leadership.activated(1) and lease.valid(1)
    await lease.stop()
    assert lost == [True] and leadership.role is Role.STANDBY
    assert not lease.alive and not lease.valid(1)
