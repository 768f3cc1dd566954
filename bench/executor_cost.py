"""The executor's CPU per W1 execution, without a broker: decode, step, route and encode.

Drives one :class:`~kestream.runtime.executor_service.ExecutorService` the way its loop does
(``_step_batch`` on batches of records), with W1's flow (``config/bench/w1.yaml``): the
creations first, then, with tasks on workers, each job's result as a worker would send it. What
is measured is the process CPU of the steps and of making their records (execution updates,
changelog records, jobs, logs, metrics); producing, fetching and committing are the broker
client's and are not. Prints microseconds per execution (the best of ``--repeat`` runs) and the
records each execution makes.

    python -m bench.executor_cost [--no-inline] [--executions 3000] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from bench.workloads import FLOWS_DIR
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


def _service(inline: bool) -> ExecutorService:
    settings = Settings(broker="unused:9092", executor_inline_tasks=inline)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow((FLOWS_DIR / "w1.yaml").read_text()))
    service = ExecutorService(ctx, registry, metrics=Metrics())
    service.owned = set(range(settings.partitions))
    return service


def _record(topic: str, offset: int, value: bytes) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic, 0, offset, 0, 0, None, value, None, 0, len(value), ())


def drive(
    service: ExecutorService, executions: int, profile: cProfile.Profile | None = None
) -> tuple[float, int, int, int]:
    """Run ``executions`` W1 executions to their end; return (CPU seconds, events, command
    records, changelog records)."""
    created_tp = TopicPartition(service.topics.executions, 0)
    results_tp = TopicPartition(service.topics.results, 0)
    pending: list[tuple[TopicPartition, ConsumerRecord[Any, Any]]] = []
    for offset in range(executions):
        created = ev.ExecutionCreated(
            new_id(), "company.team", "benchmark01", None, inputs={"name": "World"}
        )
        pending.append(
            (created_tp, _record(created_tp.topic, offset, records.encode_event(created)))
        )
    spent, events, commands, changelog = 0.0, 0, 0, 0
    jobs = service.topics.worker_tasks
    while pending:
        chunk, pending = pending[:BATCH], pending[BATCH:]
        batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for tp, rec in chunk:
            batch.setdefault(tp, []).append(rec)
        out = Outbox()
        started = time.process_time()
        if profile is not None:
            profile.enable()
        service._step_batch(batch, out)
        if profile is not None:
            profile.disable()
        spent += time.process_time() - started
        events += len(chunk)
        commands += len(out.commands)
        changelog += len(out.changelog)
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
    return spent, events, commands, changelog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--executions", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one more run")
    args = parser.parse_args()
    tune_gc()
    drive(_service(args.inline), 200)  # warm: templates compiled, code paths hot
    best = float("inf")
    for _ in range(args.repeat):
        gc.collect()
        spent, events, commands, changelog = drive(_service(args.inline), args.executions)
        best = min(best, spent)
    n = args.executions
    print(
        f"W1 executor CPU (inline {'on' if args.inline else 'off'}): "
        f"{best / n * 1e6:.0f} us per execution; per execution {events / n:.0f} events, "
        f"{commands / n:.0f} command records, {changelog / n:.0f} changelog records"
    )
    if args.profile:
        profile = cProfile.Profile()
        drive(_service(args.inline), n, profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
