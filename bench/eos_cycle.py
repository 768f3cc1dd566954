"""What exactly-once adds to one executor cycle's write, on a fresh Apache Kafka.

    python -m bench.eos_cycle [--partitions 1,4,16] [--cycles 150] [--records 4]

Each cycle writes, per input partition it touched, ``--records`` records of ~300 bytes spread
over the output partitions plus one changelog-like record on the partition's own. The
at-least-once write produces them all and waits for the acks (the offset commit is left out:
the executor commits at most once a second). The exactly-once write is the executor's
(:class:`~kestream.runtime.executor_transactions.PartitionTransactions`): a transaction per input
partition, with its offsets, the partitions side by side. Prints p50 and p90 per cycle after
ten warm-up cycles.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from kestream.runtime.apache_kafka import ApacheKafka
from kestream.runtime.executor_outbox import CommandRecord
from kestream.runtime.executor_transactions import (
    PartitionTransactions,
    TransactionalProducer,
    TxnWrite,
)
from kestream.runtime.kafka import make_producer
from kestream.settings import Settings

TOPIC_PARTITIONS = 16
WARM_UP = 10


def _cycle(prefix: str, partitions: int, per: int, cycle: int) -> dict[int, list[CommandRecord]]:
    out, changelog = f"{prefix}out", f"{prefix}changelog"
    written: dict[int, list[CommandRecord]] = {}
    for p in range(partitions):
        recs: list[CommandRecord] = [
            (out, f"k{p}-{cycle}-{i}", b"x" * 300, (p + i) % TOPIC_PARTITIONS) for i in range(per)
        ]
        recs.append((changelog, f"e{p}", b"y" * 300, p))
        written[p] = recs
    return written


def _line(name: str, took: list[float]) -> str:
    kept = sorted(took[WARM_UP:])
    p50, p90 = statistics.median(kept), kept[int(len(kept) * 0.9)]
    return f"{name}: p50 {p50 * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms"


async def measure(bootstrap: str, partitions: int, cycles: int, per: int) -> list[str]:
    prefix = f"eos-{uuid.uuid4().hex[:8]}."
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = (f"{prefix}out", f"{prefix}changelog", f"{prefix}in")
        await admin.create_topics([NewTopic(n, TOPIC_PARTITIONS, 1) for n in names])
    finally:
        await admin.close()
    settings = Settings(broker=bootstrap)
    plain = make_producer(settings, bootstrap, "kafka")
    await plain.start()
    at_least_once = []
    try:
        for cycle in range(cycles):
            started = time.perf_counter()
            acks = [
                await plain.send(topic, value, key=key.encode(), partition=target)
                for recs in _cycle(prefix, partitions, per, cycle).values()
                for topic, key, value, target in recs
            ]
            await asyncio.gather(*acks)
            at_least_once.append(time.perf_counter() - started)
    finally:
        await plain.stop()

    def transactional(transactional_id: str) -> TransactionalProducer:
        return make_producer(settings, bootstrap, "kafka", transactional_id=transactional_id)

    txns = PartitionTransactions(transactional, f"{prefix}executor-", f"{prefix}executor")
    exactly_once = []
    try:
        await txns.own(set(range(partitions)))
        for cycle in range(cycles):
            started = time.perf_counter()
            offsets = {p: TopicPartition(f"{prefix}in", p) for p in range(partitions)}
            await txns.commit({
                p: TxnWrite(recs, {offsets[p]: OffsetAndMetadata(cycle + 1, "")})
                for p, recs in _cycle(prefix, partitions, per, cycle).items()
            })  # fmt: skip
            exactly_once.append(time.perf_counter() - started)
    finally:
        await txns.stop()
    shape = f"{partitions} input partitions x {per + 1} records"
    return [
        _line(f"{shape}: at_least_once (produce, acks)", at_least_once),
        _line(f"{shape}: exactly_once (a transaction per partition)", exactly_once),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", default="1,4,16", help="input partitions per cycle")
    parser.add_argument("--cycles", type=int, default=150)
    parser.add_argument("--records", type=int, default=4, help="output records per partition")
    args = parser.parse_args()
    with ApacheKafka() as kafka:
        for count in (int(p) for p in args.partitions.split(",")):
            for line in asyncio.run(measure(kafka.bootstrap, count, args.cycles, args.records)):
                print(line, flush=True)


if __name__ == "__main__":
    main()
