"""The worker's CPU per job, without a broker: take the job record, run the task, make and hand
over the result and its log lines, mark the offset done.

Drives one :class:`~kestream.runtime.worker_service.WorkerService` the way its loop does
(``_handle`` on the records of a fetch), with W1's two jobs (``config/bench/w1.yaml``:
OutputValues, then Log) as the executor sends them, over a producer that acknowledges at once.
What is measured is the process CPU from the fetched records to every result acknowledged;
the broker client's own work (building and sending requests, fetching) is not. Prints
microseconds per job (the best of ``--repeat`` runs).

    python -m bench.worker_cost [--jobs 4000] [--batch 20] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord, RecordMetadata

from bench.workloads import FLOWS_DIR
from kestream.executor import commands as cmd
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import Flow, parse_flow
from kestream.models.ids import new_id
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.metrics import Metrics
from kestream.runtime.process import tune_gc
from kestream.runtime.topics import Topics
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings
from kestream.tasks.base import RunnableTask

#: W1's jobs and the properties the executor renders for them.
JOBS = (
    ("concatenate", {"values": {"message": "Hello World"}}),
    ("log", {"message": "Hello World"}),
)


class _Acking:
    """Acknowledges every record at once, with where it went (partition 0)."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        self.sent += 1
        ack = asyncio.get_running_loop().create_future()
        ack.set_result(RecordMetadata(topic, 0, None, self.sent, -1, None, 0))
        return ack


def _service() -> tuple[WorkerService, Flow]:
    settings = Settings(broker="unused:9092", partitions=1)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    flow = registry.put(parse_flow((FLOWS_DIR / "w1.yaml").read_text()))
    service = WorkerService(ctx, registry, threads=1, metrics=Metrics())
    service._producer = _Acking()
    service._on_assigned({TopicPartition(service.topic, 0)})
    return service, flow


def _records(service: WorkerService, flow: Flow, jobs: int) -> list[ConsumerRecord[Any, Any]]:
    made = []
    for offset in range(jobs):
        task_id, props = JOBS[offset % 2]
        task = flow.task_index()[task_id]
        assert isinstance(task, RunnableTask)
        execution_id = new_id()
        job = cmd.RunTask(execution_id, new_id(), 1, flow.namespace, flow.id, 1, task, props)
        value, key = records.encode_job(job), execution_id.encode()
        made.append(
            ConsumerRecord(
                service.topic, 0, offset, 0, 0, key, value, None, len(key), len(value), []
            )
        )
    return made


async def drive(jobs: int, batch: int, profile: cProfile.Profile | None = None) -> float:
    """Run ``jobs`` W1 jobs, ``batch`` records per fetch; return the CPU seconds spent."""
    service, flow = _service()
    fetched = _records(service, flow, jobs)
    gc.collect()
    started = time.process_time()
    if profile is not None:
        profile.enable()
    for first in range(0, jobs, batch):
        for record in fetched[first : first + batch]:
            service._handle(record)
        running = [job.task for job in service._jobs.values() if job.task is not None]
        await asyncio.gather(*running)
    if profile is not None:
        profile.disable()
    spent = time.process_time() - started
    if service.stats["finished"] != jobs:
        raise SystemExit(f"{jobs - service.stats['finished']} jobs did not finish")
    service._runner.close()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=20, help="records per fetch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one more run")
    args = parser.parse_args()
    tune_gc()
    asyncio.run(drive(200, args.batch))  # warm: templates compiled, code paths hot
    best = min(asyncio.run(drive(args.jobs, args.batch)) for _ in range(args.repeat))
    print(f"W1 worker CPU: {best / args.jobs * 1e6:.0f} us per job ({args.batch} per fetch)")
    if args.profile:
        profile = cProfile.Profile()
        asyncio.run(drive(args.jobs, args.batch, profile))
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
