"""Executor recovery time: a changelog read from offset 0 against one read from local checkpoints.

A fresh embedded broker gets the changelog W1 (``config/bench/w1.yaml``, tasks on workers) leaves
after ``--executions`` executions: the records of one execution, as the executor's own step
writes them (creation, two worker results, the end's tombstones and marker), repeated under
fresh ids over the changelog's partitions. Then, each measured ``--repeat`` times:

1. **full**: :meth:`ChangelogRestorer.recover` of every partition, from offset 0 (what a start
   did before checkpoints);
2. **checkpoint**: checkpoint files are written from the fold that read gave (their size and
   write time are printed), ``--tail`` more executions are written to the changelog, and a
   recovery loads the files and reads the tail only (:meth:`ChangelogRestorer.recover_from`);
   the full read of the same, longer changelog is timed beside it.

    python -m bench.recovery [--executions 100000] [--tail 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import parse_flow
from kestream.models.ids import new_id
from kestream.models.state import StateType
from kestream.runtime.changelog_checkpoints import CheckpointStore
from kestream.runtime.changelog_restorer import ChangelogRestorer
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.embedded_broker import EmbeddedBroker
from kestream.runtime.executor_outbox import Outbox
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.kafka import make_producer
from kestream.runtime.metrics import Metrics
from kestream.settings import Settings

FLOW = Path(__file__).resolve().parents[1] / "config" / "bench" / "w1.yaml"
Records = list[tuple[str, bytes | None]]


def template(ctx: BrokerContext, registry: FlowRegistry) -> tuple[str, Records]:
    """One W1 execution's changelog records, as the executor writes them, and its id."""
    service = ExecutorService(ctx, registry, metrics=Metrics())
    service.owned = {0}
    execution_id = new_id()
    events: list[ev.Event] = [ev.ExecutionCreated(execution_id, "company.team", "benchmark01")]
    written: Records = []
    for offset, event in enumerate(events):
        out = Outbox()
        service._apply(0, event, out, ("executions", offset))
        written += [(key, value) for key, value, _ in out.changelog]
        for topic, _, value, _ in out.commands:
            if (job := service._job_of(topic, value)) is not None:
                events.append(ev.WorkerResult(*job, StateType.SUCCESS))
    return execution_id, written


async def produce(ctx: BrokerContext, pattern: tuple[str, Records], count: int) -> int:
    """Write ``count`` executions' records (``pattern`` under fresh ids); the records written."""
    template_id, recs = pattern
    old = template_id.encode()
    producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
    await producer.start()
    written = 0
    try:
        for index in range(count):
            fresh = new_id()
            partition = index % ctx.settings.partitions
            for key, value in recs:
                new_value = value.replace(old, fresh.encode()) if value is not None else None
                await producer.send(
                    ctx.topics.changelog,
                    new_value,
                    key=key.replace(template_id, fresh).encode(),
                    partition=partition,
                )
                written += 1
        await producer.flush()
    finally:
        await producer.stop()
    return written


async def run(executions: int, tail: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kestream-recovery-") as tmp:
        broker = EmbeddedBroker(work_dir=Path(tmp) / "broker")
        await broker.astart()
        try:
            settings = Settings(
                broker=broker.bootstrap, topic_prefix="bench-recovery.", executor_inline_tasks=False
            )
            ctx = await connect(settings)
            registry = FlowRegistry()
            registry.put(parse_flow(FLOW.read_text()))
            pattern = template(ctx, registry)
            restorer = ChangelogRestorer(ctx, registry)
            partitions = set(range(settings.partitions))
            started = time.perf_counter()
            total = await produce(ctx, pattern, executions)
            print(f"changelog: {executions} W1 executions, {len(pattern[1])} records each, "
                  f"{total} records in {time.perf_counter() - started:.1f} s")  # fmt: skip
            full = []
            for _ in range(repeat):
                started = time.perf_counter()
                found, _ = await restorer.recover_from(partitions, {})
                full.append(time.perf_counter() - started)
            store = CheckpointStore(Path(tmp) / "data", ctx.topics.changelog, 3600)
            started = time.perf_counter()
            size = 0
            for partition, got in found.items():
                assert got.fold is not None
                size += await asyncio.to_thread(store.write, partition, got.fold)
            wrote = time.perf_counter() - started
            total += await produce(ctx, pattern, tail)
            with_tail, from_checkpoint, loads, tail_read = [], [], [], 0
            for _ in range(repeat):
                started = time.perf_counter()
                await restorer.recover_from(partitions, {})
                with_tail.append(time.perf_counter() - started)
                started = time.perf_counter()
                loaded = {p: cp for p in partitions if (cp := store.load(p)) is not None}
                loads.append(time.perf_counter() - started)
                back, _ = await restorer.recover_from(partitions, loaded)
                from_checkpoint.append(time.perf_counter() - started)
                tail_read = sum(r.read_records for r in back.values())
            print(f"full read, {executions} executions: {statistics.median(full):.2f} s "
                  f"(median of {repeat})")  # fmt: skip
            print(f"checkpoints: {size / 1e6:.1f} MB over {len(found)} partitions, written in "
                  f"{wrote:.2f} s")  # fmt: skip
            print(f"after {tail} more executions ({total} records): full read "
                  f"{statistics.median(with_tail):.2f} s, from the checkpoints "
                  f"{statistics.median(from_checkpoint):.2f} s, of which "
                  f"{statistics.median(loads):.2f} s loading the files "
                  f"({tail_read} records read)")  # fmt: skip
        finally:
            await broker.astop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--tail", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.executions, args.tail, args.repeat))


if __name__ == "__main__":
    main()
