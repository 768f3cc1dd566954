"""The executor's CPU per W1 execution, without a broker: decode, step, route and encode.

Drives one :class:`~kestream.runtime.executor_service.ExecutorService` the way its loop does
(``_step_batch`` on batches of records), with W1's flow (``config/bench/w1.yaml``): the
creations first, then, with tasks on workers, each job's result as a worker would send it. What
is measured is the process CPU of the steps and of making their records (execution updates,
changelog records, jobs, logs, metrics); producing, fetching and committing are the broker
client's and are not. Prints microseconds per execution (the best of ``--repeat`` runs) and the
records each execution makes, by topic and kind (the changelog's as the writer sends them,
coalesced: :meth:`~kestream.runtime.executor_outbox.Outbox.coalesce`): the broker's cost is
per request and per record.

``--workload w3_10000`` runs W3's ForEach of 10 000 iterations instead (one execution, its
results ``--batch`` per cycle; with tasks on workers, every iteration is a result).

    python -m bench.executor_cost [--no-inline] [--executions 3000] [--repeat 5] [--profile]
    python -m bench.executor_cost --no-inline --workload w3_10000 --executions 1 --batch 500
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
from collections import Counter
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from bench.workloads import FLOWS_DIR
from kestream.executor import codec
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import parse_flow
from kestream.models.ids import new_id
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import ExecutorService, Outbox
from kestream.runtime.metrics import Metrics
from kestream.runtime.process import tune_gc
from kestream.runtime.topics import Topics
from kestream.settings import Settings

#: Records per batch (the loop's batches at 6 000/min are a few dozen at most).
BATCH = 50
#: What W1's first task returns (its second, a Log, returns nothing).
OUTPUTS = {"values": {"message": "Hello World"}}


def _service(inline: bool, workload: str = "w1") -> ExecutorService:
    settings = Settings(broker="unused:9092", executor_inline_tasks=inline)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow((FLOWS_DIR / f"{workload}.yaml").read_text()))
    service = ExecutorService(ctx, registry, metrics=Metrics())
    service.owned = set(range(settings.partitions))
    return service


def _record(topic: str, offset: int, value: bytes) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic, 0, offset, 0, 0, None, value, None, 0, len(value), ())


def _kind(topic: str, key: str, value: bytes | None) -> str:
    """A record's kind for the breakdown: a changelog record's key suffix (header, dynamic or
    whole, plan, task run, ended marker, or a tombstone of one), else its topic."""
    if not topic.endswith("changelog"):
        return topic
    head = codec.execution_of(key)
    rest = key[len(head) :]
    kind = {"": "header", "#": "dynamic", "+": "plan", "!": "ended"}.get(rest)
    if kind == "dynamic" and value is not None and codec.WHOLE_HEADER in records.loads(value):
        kind = "whole"  # the whole execution in its dynamic record
    if kind is None:
        kind = "task run plan" if rest.endswith(codec.PLAN) else "task run"
    return f"changelog {kind}" + (" tombstone" if value is None else "")


def drive(
    service: ExecutorService,
    executions: int,
    profile: cProfile.Profile | None = None,
    batch_size: int = BATCH,
) -> tuple[float, int, Counter[str]]:
    """Run ``executions`` executions of the service's flow to their end; return (CPU
    seconds, events, records by kind)."""
    (flow,) = service.registry.all()
    inputs = {"name": "World"} if flow.inputs else None
    created_tp = TopicPartition(service.topics.executions, 0)
    results_tp = TopicPartition(service.topics.results, 0)
    pending: list[tuple[TopicPartition, ConsumerRecord[Any, Any]]] = []
    for offset in range(executions):
        created = ev.ExecutionCreated(new_id(), flow.namespace, flow.id, None, inputs=inputs)
        pending.append(
            (created_tp, _record(created_tp.topic, offset, records.encode_event(created)))
        )
    spent, events, kinds = 0.0, 0, Counter[str]()
    jobs, changelog = service.topics.worker_tasks, service.topics.changelog
    while pending:
        chunk, pending = pending[:batch_size], pending[batch_size:]
        batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for tp, rec in chunk:
            batch.setdefault(tp, []).append(rec)
        out = Outbox()
        started = time.process_time()
        if profile is not None:
            profile.enable()
        service._step_batch(batch, out)
        service.writer.coalesce(out)  # as the writer does before it writes
        if profile is not None:
            profile.disable()
        spent += time.process_time() - started
        events += len(chunk)
        kinds.update(_kind(topic, key, value) for topic, key, value, _ in out.commands)
        kinds.update(_kind(changelog, key, value) for key, value, _ in out.changelog)
        for topic, _, value, _ in out.commands:
            if topic == jobs or topic.startswith(jobs + "-"):
                job = records.loads(value)
                outputs = OUTPUTS if job["taskId"] == "concatenate" else None
                result = ev.WorkerResult(
                    job["id"], job["run"], job["attempt"], StateType.SUCCESS, outputs
                )
                value = records.encode_event(result)
                pending.append((results_tp, _record(results_tp.topic, 0, value)))
    if service.states:
        raise SystemExit(f"{len(service.states)} executions did not end")
    return spent, events, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--executions", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workload", default="w1", help="a flow of config/bench (w1, w3_10000)")
    parser.add_argument("--batch", type=int, default=BATCH, help="records per cycle")
    parser.add_argument("--profile", action="store_true", help="cProfile one more run")
    args = parser.parse_args()
    tune_gc()
    n, inline, workload = args.executions, args.inline, args.workload
    drive(_service(inline, workload), min(n, 200), batch_size=args.batch)  # warm: code paths hot
    best = float("inf")
    for _ in range(args.repeat):
        gc.collect()
        spent, events, kinds = drive(_service(inline, workload), n, batch_size=args.batch)
        best = min(best, spent)
    changelog = sum(c for kind, c in kinds.items() if kind.startswith("changelog"))
    print(
        f"{workload} executor CPU (inline {'on' if inline else 'off'}): "
        f"{best / n * 1e6:.0f} us per execution; per execution {events / n:.1f} events, "
        f"{(kinds.total() - changelog) / n:.1f} command records, "
        f"{changelog / n:.1f} changelog records"
    )
    for kind, count in sorted(kinds.items()):
        print(f"  {count / n:8.2f}  {kind}")
    if args.profile:
        profile = cProfile.Profile()
        drive(_service(inline, workload), n, profile, args.batch)
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
