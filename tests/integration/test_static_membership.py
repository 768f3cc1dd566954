"""Static membership on Apache Kafka (kestream.runtime.static_membership).

The sessions here are two minutes, and every wait is one minute: a partition that moves within
the wait moved because of what is tested (the member was replaced, or it left), never because a
session expired.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import AIOKafkaConsumer

from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.kafka import make_consumer
from kestream.runtime.static_membership import static_member, stop_member
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = [pytest.mark.integration, pytest.mark.brokers("apache")]

Eventually = Callable[..., Awaitable[Any]]
SESSION_MS = 120_000
WAIT_S = 60.0


async def _context(broker: BrokerHandle, prefix: str) -> BrokerContext:
    settings = Settings(
        broker=broker.bootstrap, topic_prefix=prefix, partitions=4,
        session_timeout_ms=SESSION_MS, heartbeat_interval_ms=1_000,
    )  # fmt: skip
    return await connect(settings)


def _member(ctx: BrokerContext, instance: str | None) -> AIOKafkaConsumer:
    settings = ctx.settings.model_copy(update={"group_instance_id": instance})
    return make_consumer(
        settings, ctx.bootstrap, ctx.kind, group_id=ctx.settings.topic("static-test"),
        **static_member(settings, ctx.kind),
    )  # fmt: skip


async def _owns(consumer: AIOKafkaConsumer, count: int) -> bool:
    await consumer.getmany(timeout_ms=100)
    return len(consumer.assignment()) == count


async def _joined(first: AIOKafkaConsumer, second: AIOKafkaConsumer) -> bool:
    await first.getmany(timeout_ms=100)
    await second.getmany(timeout_ms=100)
    return bool(first.assignment()) and bool(second.assignment())


async def test_a_restarted_static_member_takes_the_dead_ones_place(
    broker: BrokerHandle, topic_prefix: str, eventually: Eventually
) -> None:
    ctx = await _context(broker, topic_prefix)
    survivor, dead = _member(ctx, None), _member(ctx, "executor-0")
    for consumer in (survivor, dead):
        await consumer.start()
        consumer.subscribe([ctx.topics.executions])
    try:
        await eventually(lambda: _joined(survivor, dead), WAIT_S, message="both joined")
        held = set(dead.assignment())
        # aiokafka's own stop sends no LeaveGroup for a static member: to the group it is a
        # member gone silent, as after a kill -9, whose session has two minutes to run.
        await dead.stop()
        fresh = _member(ctx, "executor-0")
        await fresh.start()
        fresh.subscribe([ctx.topics.executions])
        try:
            await eventually(lambda: _owns(fresh, len(held)), WAIT_S, message="replaced")
            await eventually(lambda: _owns(survivor, 4 - len(held)), WAIT_S)
        finally:
            await stop_member(fresh)
    finally:
        await survivor.stop()


async def test_a_static_member_stopped_cleanly_leaves_at_once(
    broker: BrokerHandle, topic_prefix: str, eventually: Eventually
) -> None:
    ctx = await _context(broker, topic_prefix)
    survivor, leaving = _member(ctx, None), _member(ctx, "scheduler-0")
    for consumer in (survivor, leaving):
        await consumer.start()
        consumer.subscribe([ctx.topics.executions])
    try:
        await eventually(lambda: _joined(survivor, leaving), WAIT_S, message="both joined")
        await stop_member(leaving)
        await eventually(lambda: _owns(survivor, 4), WAIT_S, message="the survivor owns all")
    finally:
        await survivor.stop()
