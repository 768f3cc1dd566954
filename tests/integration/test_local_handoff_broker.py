"""The executor and the worker in one process, as ``standalone`` hosts them, with the local
hand-off on (:mod:`kestream.runtime.local_handoff`), on a real broker: executions whose tasks run
on the worker end in SUCCESS, jobs and results are handed over in process, and every task run
ran once: one result on the results topic per (task run, attempt), though each handed-over job
was also fetched from the broker, its copy recognised by offset; and the executor skips the
broker copies of the results handed back, recognised by offset too."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from kestream.client import Client
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.runtime import records
from kestream.runtime.compacted import topic_partitions
from kestream.runtime.context import connect
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.kafka import make_consumer
from kestream.runtime.local_handoff import connect as join_handoff
from kestream.runtime.local_handoff import handoff_for
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

FLOW = """
id: handed
namespace: test.handoff
inputs:
  - id: n
    type: INT
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.n }}"
  - id: second
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.first.value }}!"
  - id: third
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.second.value }}?"
"""
EXECUTIONS = 8
TASKS = 3


async def test_tasks_on_the_local_worker_run_once_through_the_hand_off(
    broker: BrokerHandle, topic_prefix: str
) -> None:
    settings = Settings(
        broker=broker.bootstrap,
        topic_prefix=topic_prefix,
        partitions=4,
        executor_inline_tasks=False,
        local_handoff=True,
    )
    ctx = await connect(settings)
    registry = FlowRegistry()
    table = FlowsTable(ctx, registry)
    await table.start()
    await table.loaded.wait()
    executor = ExecutorService(ctx, registry)
    worker = WorkerService(ctx, registry)
    await executor.start()
    await worker.start()
    join_handoff(ctx, "executor", executor)
    join_handoff(ctx, "worker", worker)
    handoff = handoff_for(ctx)  # (the roles leave it when they stop)
    client = await Client.connect(settings)
    try:
        await asyncio.wait_for(worker.assigned.wait(), 60)
        await asyncio.wait_for(executor.ready.wait(), 60)
        await client.deploy(FLOW)
        ids = [await client.submit("test.handoff", "handed", {"n": n}) for n in range(EXECUTIONS)]
        ended = [await client.wait(execution_id, timeout=120) for execution_id in ids]
        await asyncio.wait_for(_copies_fetched(worker), 60)
        await asyncio.wait_for(_results_fetched(executor), 60)
    finally:
        await client.close()
        await worker.stop()
        await executor.stop()
        await table.stop()
    assert [e.state.current.value for e in ended] == ["SUCCESS"] * EXECUTIONS
    outputs = {e.id: e.task_runs("third")[-1].outputs for e in ended}
    assert outputs[ids[3]] == {"value": "3!?"}
    assert handoff is not None and handoff.jobs > 0 and handoff.results > 0
    # Every handed job's broker copy was recognised by the offset its ack gave (Tansu's base
    # offset plus the record's), not run as a new job.
    assert worker.stats["handed_copies"] == handoff.jobs
    # The broker copies of the results handed back were recognised by the offsets their acks
    # gave, and not stepped again (one fetched in the cycle before its result was taken is
    # stepped: a no-op).
    assert 0 < executor.local.skipped <= handoff.results
    # Each task run ran once, though its job's broker copy was fetched too.
    assert worker.stats["started"] == EXECUTIONS * TASKS
    results = await _results(settings, EXECUTIONS * TASKS)
    per_attempt = Counter((r.execution_id, r.task_run_id, r.attempt) for r in results)
    assert len(per_attempt) == EXECUTIONS * TASKS
    assert set(per_attempt.values()) == {1}


async def _copies_fetched(worker: WorkerService) -> None:
    """Until the worker has fetched the broker copy of every job handed to it."""
    while any(partition.handed for partition in worker._partitions.values()):
        await asyncio.sleep(0.05)


async def _results_fetched(executor: ExecutorService) -> None:
    """Until the executor has fetched every record of the results topic written so far."""
    consumer = executor._consumer
    assert consumer is not None
    while True:
        tps = [tp for tp in consumer.assignment() if tp.topic == executor.topics.results]
        ends = await consumer.end_offsets(tps)
        positions = [await consumer.position(tp) for tp in tps]
        if all(at >= ends[tp] for at, tp in zip(positions, tps, strict=True)):
            return
        await asyncio.sleep(0.05)


async def _results(settings: Settings, expected: int) -> list[ev.WorkerResult]:
    """Every record of the results topic (read to its end)."""
    ctx = await connect(settings)
    consumer = make_consumer(settings, ctx.bootstrap, ctx.kind, group_id=None)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, ctx.topics.results)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[ev.WorkerResult] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                for rec in recs:
                    event = records.decode_event(rec.value)
                    assert isinstance(event, ev.WorkerResult)
                    found.append(event)
        assert len(found) >= expected
        return found
    finally:
        await consumer.stop()
