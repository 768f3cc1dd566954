"""The only scheduler of a broker (``standalone``'s, on its own embedded broker) on a real broker:
without a group, it fires each slot once across a restart, and the offsets it commits under its
groups' names (the partitions assigned, no member joined) are where its next start reads on."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

from kestream.client import Client
from kestream.executor.flow_registry import FlowRegistry
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.lone_lease import LoneLease
from kestream.runtime.scheduler_service import SchedulerService
from kestream.scheduler.commands import TriggerCommand
from kestream.scheduler.leadership import Role
from kestream.settings import Settings
from tests.integration.test_scheduler_service import FLOW, _slots

pytestmark = pytest.mark.integration

KEY = "test.scheduler/ticking/every-second"


async def _lone_scheduler(ctx: BrokerContext) -> tuple[FlowsTable, SchedulerService]:
    table = FlowsTable(ctx, FlowRegistry())
    await table.start()
    await table.loaded.wait()
    service = SchedulerService(ctx, table, only_scheduler=True)
    await service.start()
    return table, service


async def _stop(table: FlowsTable, service: SchedulerService) -> None:
    await service.stop()
    await table.stop()


async def _committed(ctx: BrokerContext, group: str, tp: TopicPartition) -> int | None:
    """The offset ``group`` has committed for ``tp``, read by a consumer assigned to it."""
    consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=group)
    await consumer.start()
    try:
        consumer.assign([tp])
        committed: int | None = await consumer.committed(tp)
        return committed
    finally:
        await consumer.stop()


async def test_the_only_scheduler_fires_and_commits_without_joining_a_group(
    broker: Any, topic_prefix: str, eventually: Callable[..., Awaitable[Any]]
) -> None:
    settings = Settings(
        broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=2, scheduler_tick_ms=100
    )
    ctx = await connect(settings)
    commands = TopicPartition(ctx.topics.trigger_commands, 0)
    async with await Client.connect(settings) as client:
        await client.deploy(FLOW)
        first = await _lone_scheduler(ctx)
        try:
            service = first[1]
            assert isinstance(service.lease, LoneLease)
            assert service.leadership.role is Role.ACTIVE and service.is_ready
            await eventually(lambda: _fired(ctx, 2), timeout=15)
            producer = make_producer(settings, ctx.bootstrap, ctx.kind)
            await producer.start()
            try:
                disable = TriggerCommand(KEY, "disable").to_json()
                await producer.send_and_wait(commands.topic, disable, key=KEY.encode())
            finally:
                await producer.stop()

            async def disabled() -> bool:
                state = service.schedules.state(KEY)
                return state is not None and state.disabled

            await eventually(disabled, timeout=15)
            group = settings.topic("scheduler-commands")
            await eventually(lambda: _is(_committed(ctx, group, commands), 1), timeout=15)
        finally:
            await _stop(*first)
        fired = len(await _slots(ctx))

        second = await _lone_scheduler(ctx)  # reads on from the committed offset
        try:
            assert second[1]._commands is not None
            assert await second[1]._commands.position(commands) == 1
            state = second[1].schedules.state(KEY)
            assert state is not None and state.disabled  # from its trigger record
            await asyncio.sleep(2.0)
        finally:
            await _stop(*second)

    slots = await _slots(ctx)
    assert len(slots) == fired  # disabled: nothing more fired, by either
    assert max(Counter(when for _, when in slots).values()) == 1


async def _fired(ctx: BrokerContext, count: int) -> bool:
    return len(await _slots(ctx)) >= count


async def _is(offset: Awaitable[int | None], expected: int) -> bool:
    return await offset == expected
