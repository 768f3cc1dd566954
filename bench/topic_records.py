"""Records written per execution, topic by topic, on a real broker.

The broker's CPU follows the records and requests it takes, so the count per topic says where
a cut pays. It is read from the topics themselves: the high watermark of every partition of the
run's topics (:func:`~kestream.runtime.tansu_compat.fetch_highwaters`, exact on Tansu too)
before and after ``--executions`` executions of the workload, run in waves of ``--wave``
(submitted together, each waited for to its end), then ``--settle`` seconds for the records a
step writes after the end its client saw (the changelog goes after the update). Topics that
also move while nothing runs (the members' keep-alives) are measured idle for ``--settle``
seconds first; their idle records are shown, not subtracted (they are not the execution's).

    python -m bench.topic_records [--no-inline] [--executions 300] [--workload W1] [--kafka]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import workloads
from bench.stack import Stack, StackConfig
from kestream.runtime.kafka import make_consumer
from kestream.runtime.tansu_compat import fetch_highwaters


async def _highwaters(consumer: AIOKafkaConsumer, prefix: str) -> dict[str, int]:
    """Records ever written to each of the run's topics (the sum of its high watermarks)."""
    topics = sorted(t for t in await consumer.topics() if t.startswith(prefix))
    tps = [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    totals = dict.fromkeys(topics, 0)
    for tp, offset in (await fetch_highwaters(consumer, tps)).items():
        totals[tp.topic] += offset
    return totals


def _moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {t: after[t] - before.get(t, 0) for t in after if after[t] != before.get(t, 0)}


async def count(
    workload: workloads.Workload, config: StackConfig, executions: int, wave: int, settle: float
) -> dict[str, object]:
    """Records per topic for ``executions`` executions of ``workload`` (see the module
    docstring); topics are named without the run's prefix."""
    async with Stack(config, [workload]) as stack:
        settings = stack.settings
        consumer = make_consumer(settings, stack.bootstrap, stack.kind, group_id=None)
        await consumer.start()
        try:
            await consumer.topics()  # metadata of every topic, for partitions_for_topic
            flow = stack.deployed[workload.flow_file]
            await stack.run_many(flow, wave)  # a last warm-up wave, left out of the counts
            await asyncio.sleep(settle)
            quiet = await _highwaters(consumer, stack.prefix)
            idle_from = time.monotonic()
            await asyncio.sleep(settle)
            before = await _highwaters(consumer, stack.prefix)
            idle, idle_s = _moved(quiet, before), time.monotonic() - idle_from
            started = time.monotonic()
            for done in range(0, executions, wave):
                await stack.run_many(flow, min(wave, executions - done))
            await asyncio.sleep(settle)
            after = await _highwaters(consumer, stack.prefix)
            run_s = time.monotonic() - started
        finally:
            await consumer.stop()
        prefix = len(stack.prefix)
        moved = _moved(before, after)
        return {
            "workload": workload.name,
            "inline": config.inline,
            "executions": executions,
            "run_s": round(run_s, 1),
            "per_execution": {t[prefix:]: round(n / executions, 3) for t, n in moved.items()},
            "records": {t[prefix:]: n for t, n in moved.items()},
            "idle_per_s": {t[prefix:]: round(n / idle_s, 2) for t, n in idle.items()},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W1", choices=sorted(workloads.WORKLOADS))
    parser.add_argument("--no-inline", dest="inline", action="store_false")
    parser.add_argument("--executions", type=int, default=300)
    parser.add_argument("--wave", type=int, default=20, help="executions submitted together")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the last end")
    parser.add_argument("--kafka", action="store_true", help="fresh Apache Kafka")
    parser.add_argument("--stream-threads", type=int, default=0, help="executors; 0 = cores")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kestream-records-") as run_dir:
        config = StackConfig(
            broker="kafka" if args.kafka else "embedded",
            stream_threads=args.stream_threads,
            inline=args.inline,
            run_dir=Path(run_dir),
        )
        workload = workloads.WORKLOADS[args.workload]
        found = asyncio.run(count(workload, config, args.executions, args.wave, args.settle))
    print(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
