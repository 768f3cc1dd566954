"""The scheduler role on a real broker: a per-second schedule fires each slot once, also across a
restart of the scheduler (the slots missed while it was down are recovered, none is repeated),
and a flow deleted while it was down leaves no trigger record behind."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from kestream.client import Client
from kestream.executor import events as ev
from kestream.runtime import records
from kestream.runtime.compacted import assign_from_start
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.kafka import make_consumer
from kestream.runtime.scheduler_service import SchedulerService
from kestream.scheduler.trigger_state import TriggerState
from kestream.settings import Settings

pytestmark = pytest.mark.integration

FLOW = """
id: ticking
namespace: test.scheduler
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: "{{ trigger.date }}"
triggers:
  - id: every-second
    type: io.kestra.plugin.core.trigger.Schedule
    withSeconds: true
    cron: "* * * * * *"
"""


async def _read_all(ctx: BrokerContext, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of a topic, up to its end now: (key, value)."""
    consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
    await consumer.start()
    out: list[tuple[bytes | None, bytes | None]] = []
    try:
        ends = await assign_from_start(consumer, topic)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                out += [(r.key, r.value) for r in recs]
    finally:
        await consumer.stop()
    return out


async def _slots(ctx: BrokerContext) -> list[tuple[str, datetime]]:
    created = []
    for _, value in await _read_all(ctx, ctx.topics.executions):
        event = records.decode_event(value)
        if isinstance(event, ev.ExecutionCreated) and event.schedule_date is not None:
            created.append((event.execution_id, event.schedule_date))
    return created


async def _scheduler(ctx: BrokerContext) -> tuple[FlowsTable, SchedulerService]:
    from kestream.executor.flow_registry import FlowRegistry

    table = FlowsTable(ctx, FlowRegistry())
    await table.start()
    await table.loaded.wait()
    service = SchedulerService(ctx, table)
    await service.start()
    return table, service


async def _stop(table: FlowsTable, service: SchedulerService) -> None:
    await service.stop()
    await table.stop()


async def test_each_slot_fires_once_across_a_restart(broker: Any, topic_prefix: str) -> None:
    settings = Settings(
        broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=4, scheduler_tick_ms=100
    )
    ctx = await connect(settings)
    async with await Client.connect(settings) as client:
        await client.deploy(FLOW)
        first = await _scheduler(ctx)
        await asyncio.sleep(3.5)
        await _stop(*first)
        fired_before = await _slots(ctx)
        assert len(fired_before) >= 2

        await asyncio.sleep(2.5)  # down: about two slots are missed
        second = await _scheduler(ctx)
        await asyncio.sleep(2.5)
        await _stop(*second)

        await client.flows.delete("test.scheduler", "ticking")
        third = await _scheduler(ctx)  # sees the flow deleted at start: deletes its record
        await _stop(*third)

    slots = await _slots(ctx)
    by_slot = Counter(when for _, when in slots)
    assert max(by_slot.values()) == 1, [w for w, n in by_slot.items() if n > 1]
    times = sorted(by_slot)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert gaps and all(gap == 1.0 for gap in gaps), gaps  # nothing missed, downtime included
    assert len(times) >= len(fired_before) + 4
    assert len({execution_id for execution_id, _ in slots}) == len(slots)

    latest: dict[bytes, bytes | None] = {}
    for key, value in await _read_all(ctx, ctx.topics.triggers):
        if key is not None:
            latest[key] = value
    record = latest[b"test.scheduler/ticking/every-second"]
    assert record is None  # the deleted flow's trigger record is gone
    assert all(
        value is None or TriggerState.from_json(value).flow_id != "ticking"
        for value in latest.values()
    )
