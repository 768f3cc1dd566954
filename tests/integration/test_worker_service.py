"""The worker role on a real broker, fed by hand (no executor): jobs in, results and logs out."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import Flow
from kestream.models.ids import new_id
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.compacted import topic_partitions
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings
from kestream.tasks.base import RunnableTask

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

Eventually = Callable[..., Awaitable[Any]]
JOIN_S = 30.0  # a group join takes ~5 s on Tansu

FLOW = """
id: work
namespace: test.worker
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "hi {{ inputs.who }}"
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.who }}"
"""


class Collector:
    """Reads result, log and dead-letter records from the beginning, in the background."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.seen: dict[str, list[ConsumerRecord[Any, Any]]] = defaultdict(list)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ctx = self.ctx
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        await consumer.start()
        self._consumer = consumer
        tps = [
            tp
            for topic in (ctx.topics.results, ctx.topics.logs, ctx.topics.dead_letter)
            for tp in await topic_partitions(consumer, topic)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for tp, recs in batch.items():
                self.seen[tp.topic].extend(recs)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def results(self, task_run_id: str | None = None) -> list[ev.WorkerResult]:
        found = []
        for record in self.seen[self.ctx.topics.results]:
            result = records.decode_event(record.value)
            assert isinstance(result, ev.WorkerResult)
            assert record.key == result.execution_id.encode()
            if task_run_id is None or result.task_run_id == task_run_id:
                found.append(result)
        return found

    def logs(self) -> list[dict[str, Any]]:
        return [line for r in self.seen[self.ctx.topics.logs] for line in orjson.loads(r.value)]

    def dead_letters(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.seen[self.ctx.topics.dead_letter]]


class Harness:
    """A flows table, a producer of worker-task records, a collector of what comes back."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.registry = FlowRegistry()
        self.table = FlowsTable(ctx, self.registry)
        self.collector = Collector(ctx)
        self.producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
        self.workers: list[WorkerService] = []

    async def worker(self, **options: Any) -> WorkerService:
        worker = WorkerService(self.ctx, self.registry, **options)
        await worker.start()
        self.workers.append(worker)
        return worker

    def job(
        self,
        flow: Flow,
        task_id: str,
        props: dict[str, Any],
        *,
        execution_id: str | None = None,
        attempt: int = 1,
        revision: int | None = None,
    ) -> cmd.RunTask:
        task = flow.task_index()[task_id]
        assert isinstance(task, RunnableTask)
        return cmd.RunTask(
            execution_id or new_id(),
            new_id(),
            attempt,
            flow.namespace,
            flow.id,
            revision or flow.revision or 1,
            task,
            props,
        )

    async def send(self, value: bytes, key: str) -> int:
        meta = await self.producer.send_and_wait(
            self.ctx.topics.worker_tasks, value, key=key.encode()
        )
        return int(meta.offset)

    async def send_job(self, job: cmd.RunTask) -> int:
        return await self.send(records.encode_job(job), job.execution_id)

    def partition_of(self, key: str) -> TopicPartition:
        partitions = list(range(self.ctx.settings.partitions))
        part = DefaultPartitioner()(key.encode(), partitions, partitions)
        return TopicPartition(self.ctx.topics.worker_tasks, part)


@pytest.fixture
async def harness(broker: BrokerHandle, topic_prefix: str) -> AsyncIterator[Harness]:
    settings = Settings(
        topic_prefix=topic_prefix,
        broker=broker.bootstrap,
        partitions=4,
        executor_flow_wait_s=3.0,
    )
    ctx = await connect(settings)
    h = Harness(ctx)
    try:
        await h.producer.start()
        await h.table.start()
        await h.collector.start()
        yield h
    finally:
        for worker in h.workers:
            await worker.stop(drain_timeout=1.0)
        await h.producer.stop()
        await h.collector.stop()
        await h.table.stop()


async def test_jobs_run_once_and_report_results_and_logs(
    harness: Harness, eventually: Eventually
) -> None:
    flow = await harness.table.publish(FLOW)
    worker = await harness.worker(threads=2, max_in_flight=3)
    await eventually(worker.assigned.is_set, JOIN_S, message="worker joined its group")
    peak = 0

    async def watch_in_flight() -> None:
        nonlocal peak
        while True:
            peak = max(peak, worker.in_flight)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch_in_flight())

    execution_id = new_id()
    hello = harness.job(flow, "hello", {"message": "hi there"}, execution_id=execution_id)
    nap = harness.job(flow, "nap", {"duration": "PT1S"}, execution_id=execution_id)
    ret = harness.job(flow, "ret", {"format": "x"}, attempt=2)
    for job in (hello, nap, ret):
        await harness.send_job(job)
    await harness.send_job(hello)  # the executor re-sent it (after a crash): never run twice

    def results_for_all() -> bool:
        return all(harness.collector.results(j.task_run_id) for j in (hello, nap, ret))

    await eventually(results_for_all, 15.0, message="three results")

    # Backpressure: never more than max_in_flight jobs at once, and every job still runs.
    naps = [harness.job(flow, "nap", {"duration": "PT0.3S"}) for _ in range(9)]
    for job in naps:
        await harness.send_job(job)
    await eventually(lambda: all(harness.collector.results(j.task_run_id) for j in naps), 15.0)
    watcher.cancel()
    assert peak == 3
    r_hello = harness.collector.results(hello.task_run_id)[0]  # the copy: below
    (r_nap,) = harness.collector.results(nap.task_run_id)
    (r_ret,) = harness.collector.results(ret.task_run_id)
    assert (r_hello.state, r_hello.attempt, r_hello.execution_id) == (
        StateType.SUCCESS,
        1,
        execution_id,
    )
    assert r_nap.state is StateType.SUCCESS
    assert (r_ret.state, r_ret.attempt, r_ret.outputs) == (StateType.SUCCESS, 2, {"value": "x"})

    await eventually(harness.collector.logs, 5.0, message="log records")
    (line,) = harness.collector.logs()
    assert line["executionId"] == execution_id and line["taskRunId"] == hello.task_run_id
    assert (line["message"], line["level"], line["flowId"]) == ("hi there", "INFO", "work")
    assert line["namespace"] == "test.worker" and line["attemptNumber"] == 1

    await asyncio.sleep(0.5)  # give the duplicate every chance to show up
    # Run once (one log line, one start); a copy that came after the end is answered again
    # with the same result, one that came while it ran waits for it.
    answers = harness.collector.results(hello.task_run_id)
    assert len(answers) in (1, 2) and all(answer == r_hello for answer in answers)
    assert worker.stats["duplicates"] == 1 and worker.stats["finished"] == 3 + len(naps)
    assert worker.stats["started"] == 3 + len(naps)

    # A plain rebalance (another worker joins) keeps this member's id: the write gate takes a
    # new one for an expulsion, and stops every running job (WriteGate.note).
    coordinator: Any = getattr(worker._consumer, "_coordinator", None)
    member_id = coordinator.member_id
    generation = coordinator.generation
    second = await harness.worker(threads=1)
    await eventually(second.assigned.is_set, JOIN_S, message="a second worker joined")
    await eventually(lambda: worker.assigned.is_set() and coordinator.generation > generation,
                     JOIN_S, message="the first worker assigned again")  # fmt: skip
    assert coordinator.member_id == member_id


async def test_kill_bad_records_and_unknown_revisions(
    harness: Harness, eventually: Eventually
) -> None:
    flow = await harness.table.publish(FLOW)
    worker = await harness.worker(threads=2)
    await eventually(worker.assigned.is_set, JOIN_S, message="worker joined its group")

    # Kill cancels a running Sleep: its result says KILLED.
    long_nap = harness.job(flow, "nap", {"duration": "PT60S"})
    await harness.send_job(long_nap)
    await eventually(lambda: worker.stats["started"] >= 1, 10.0, message="sleep started")
    kill = records.encode_kill_job(cmd.KillTask(long_nap.execution_id, long_nap.task_run_id))
    await harness.send(kill, long_nap.execution_id)
    await eventually(lambda: harness.collector.results(long_nap.task_run_id), 10.0)
    (killed,) = harness.collector.results(long_nap.task_run_id)
    assert killed.state is StateType.KILLED

    # An undecodable record goes to the dead-letter topic; the worker carries on.
    offset = await harness.send(b"\x00garbage", "some-key")
    after = harness.job(flow, "ret", {"format": "still here"}, execution_id="some-key")
    await harness.send_job(after)
    await eventually(lambda: harness.collector.results(after.task_run_id), 10.0)
    await eventually(harness.collector.dead_letters, 10.0, message="a dead letter")
    (dead,) = harness.collector.dead_letters()
    assert dead["offset"] == offset and dead["key"] == "some-key"
    assert "not JSON" in dead["reason"]

    # A job nested past Python's recursion limit (only a foreign writer makes one): a dead
    # letter, and the partition goes on.
    deep = harness.job(flow, "ret", {"format": "deep"})
    raw = records.encode_job(deep).replace(b'"deep"', b"[" * 900 + b"]" * 900)
    await harness.send(raw, deep.execution_id)
    after_deep = harness.job(flow, "ret", {"format": "after deep"})
    await harness.send_job(after_deep)
    await eventually(lambda: harness.collector.results(after_deep.task_run_id), 10.0)
    await eventually(lambda: len(harness.collector.dead_letters()) == 2, 10.0)
    assert "bad job record" in harness.collector.dead_letters()[1]["reason"]
    assert not harness.collector.results(deep.task_run_id)

    # A revision not (yet) in the flows table is held: run once it is deployed ...
    later = harness.job(flow, "ret", {"format": "v2"}, revision=2)
    await harness.send_job(later)
    await eventually(lambda: worker.stats["held"] >= 1, 10.0, message="job held")
    assert not harness.collector.results(later.task_run_id)
    await harness.table.publish(FLOW.replace("duration: PT1S", "duration: PT2S"))
    await eventually(lambda: harness.collector.results(later.task_run_id), 10.0)
    assert harness.collector.results(later.task_run_id)[0].outputs == {"value": "v2"}

    # ... killed while held: reported KILLED without running ...
    held = harness.job(flow, "ret", {"format": "x"}, revision=7)
    await harness.send_job(held)
    await harness.send(
        records.encode_kill_job(cmd.KillTask(held.execution_id, held.task_run_id)),
        held.execution_id,
    )
    await eventually(lambda: harness.collector.results(held.task_run_id), 10.0)
    assert harness.collector.results(held.task_run_id)[0].state is StateType.KILLED

    # ... or dead-lettered when it stays unknown for KESTREAM_EXECUTOR_FLOW_WAIT_S.
    never = harness.job(flow, "ret", {"format": "x"}, revision=9)
    await harness.send_job(never)
    await eventually(lambda: len(harness.collector.dead_letters()) == 3, 10.0)
    reason = harness.collector.dead_letters()[2]["reason"]
    assert "test.worker.work revision 9" in reason
    assert not harness.collector.results(never.task_run_id)
    assert worker.in_flight == 0


async def _committed(harness: Harness, tp: TopicPartition) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=harness.ctx.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            f"{harness.ctx.settings.topic_prefix}worker", partitions=[tp]
        )
    finally:
        await admin.close()
    meta = offsets.get(tp)
    return None if meta is None or meta.offset < 0 else int(meta.offset)


async def test_a_running_job_is_never_committed_and_runs_again_after_a_crash(
    harness: Harness, eventually: Eventually
) -> None:
    flow = await harness.table.publish(FLOW)
    worker = await harness.worker(threads=2)
    await eventually(worker.assigned.is_set, JOIN_S, message="worker joined its group")

    execution_id = new_id()
    tp = harness.partition_of(execution_id)
    first = harness.job(flow, "ret", {"format": "1"}, execution_id=execution_id)
    nap = harness.job(flow, "nap", {"duration": "PT4S"}, execution_id=execution_id)
    quick = harness.job(flow, "ret", {"format": "q"}, execution_id=execution_id)
    # Same key, same partition: a quick job, the sleep, another quick job.
    await harness.send_job(first)
    nap_offset = await harness.send_job(nap)
    await harness.send_job(quick)
    await eventually(lambda: harness.collector.results(quick.task_run_id), 10.0)
    # Done work before the sleep is committed; the sleep and what follows it are not.
    await eventually(lambda: _committed_is(harness, tp, nap_offset), 5.0, message="commit")
    await asyncio.sleep(0.5)  # several commit intervals later, still not past the sleep
    assert await _committed(harness, tp) == nap_offset

    # The worker dies mid-sleep (its job is abandoned, not reported), another one takes over.
    await worker.stop(drain_timeout=0.0)
    harness.workers.remove(worker)
    assert not harness.collector.results(nap.task_run_id)
    assert await _committed(harness, tp) == nap_offset
    successor = await harness.worker(threads=2)
    await eventually(lambda: harness.collector.results(nap.task_run_id), JOIN_S + 10.0)
    (result,) = harness.collector.results(nap.task_run_id)
    assert result.state is StateType.SUCCESS
    await eventually(
        lambda: _committed_past(harness, tp, nap_offset), 10.0, message="committed after the run"
    )
    assert successor.stats["finished"] >= 1


async def _committed_past(harness: Harness, tp: TopicPartition, offset: int) -> bool:
    committed = await _committed(harness, tp)
    return committed is not None and committed > offset


async def _committed_is(harness: Harness, tp: TopicPartition, offset: int) -> bool:
    return await _committed(harness, tp) == offset
