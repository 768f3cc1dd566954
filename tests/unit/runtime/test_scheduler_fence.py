"""A scheduler writes nothing once its lease is gone (no broker: a recording producer, and the
lease's group callbacks called as aiokafka calls them)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from kestream.executor.events import ExecutionCreated
from kestream.runtime.context import BrokerContext
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.scheduler_service import SchedulerService, _LeaseLost
from kestream.runtime.topics import Topics
from kestream.settings import Settings

TP = TopicPartition("t-trigger-commands", 0)


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
