"""Read a topic to its end: how every table kestream keeps in a compacted topic is loaded.

The flows table, the members board, the scheduler's trigger state, the executor's changelog
recovery and the client's log reader all do the same thing: assign partitions with a group-less
consumer, take each partition's end from a Fetch (``end_offsets()`` is wrong on the embedded
broker: :func:`~kestream.runtime.tansu_compat.fetch_highwaters`), then apply records until the
consumer's *position* reaches that end. The position, not the last record's offset: compaction
leaves gaps, and a partition whose last records were compacted away returns nothing more yet
has been read whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.runtime.fetch_pacing import wake
from kestream.runtime.tansu_compat import fetch_highwaters

__all__ = [
    "METADATA_TIMEOUT_S",
    "RecordSink",
    "assign_from_start",
    "reached",
    "read_partitions",
    "read_to_end",
    "seek_starts",
    "topic_partitions",
]

METADATA_TIMEOUT_S = 30.0
_FETCH_TIMEOUT_MS = 200

RecordSink = Callable[[ConsumerRecord[Any, Any]], None]


async def topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = METADATA_TIMEOUT_S
) -> list[TopicPartition]:
    """Every partition of ``topic``, waiting until the broker's metadata lists it.

    A topic created a moment ago (``ensure_topics``) may not be in a Kafka broker's metadata
    yet. Also lets the event loop run once after ``consumer.start()`` (an aiokafka 0.14 quirk
    when a group-less consumer is stopped right away).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if loop.time() >= deadline:
            raise RuntimeError(f"topic {topic} is not in the broker's metadata after {timeout}s")
        await asyncio.sleep(0.1)


async def assign_from_start(
    consumer: AIOKafkaConsumer, topic: str, apply: RecordSink | None = None
) -> dict[TopicPartition, int]:
    """Assign every partition of ``topic`` at its first offset (a table read whole) and, given
    ``apply``, read them to their ends; returns each partition's high watermark when the read
    started, taken from a Fetch: the end of "whole"."""
    return await read_partitions(consumer, await topic_partitions(consumer, topic), apply)


async def read_partitions(
    consumer: AIOKafkaConsumer,
    partitions: Iterable[TopicPartition],
    apply: RecordSink | None,
    *,
    start: Mapping[TopicPartition, int] | None = None,
    max_records: int | None = None,
) -> dict[TopicPartition, int]:
    """Assign ``partitions``, each from ``start[tp]`` (default: its beginning), take their ends
    and, given ``apply``, read them to those ends (:func:`read_to_end`). Returns the ends."""
    tps = list(partitions)
    consumer.assign(tps)
    await seek_starts(consumer, tps, start or {})
    ends = await fetch_highwaters(consumer, tps)
    if apply is not None:
        await read_to_end(consumer, ends, apply, max_records=max_records)
    return ends


async def seek_starts(
    consumer: AIOKafkaConsumer,
    partitions: Iterable[TopicPartition],
    start: Mapping[TopicPartition, int | None],
) -> None:
    """Seek each of ``partitions`` to ``start[tp]``, those without one (absent or None) to
    their beginning in one call: each ``seek_to_beginning`` waits for a round of the fetcher's
    offset lookup (12 ms on the embedded broker), and a new reader may have 32 partitions."""
    from_beginning = []
    for tp in partitions:
        offset = start.get(tp)
        if offset is None:
            from_beginning.append(tp)
        else:
            consumer.seek(tp, offset)
    if from_beginning:
        await consumer.seek_to_beginning(*from_beginning)


async def read_to_end(
    consumer: AIOKafkaConsumer,
    ends: Mapping[TopicPartition, int],
    apply: RecordSink,
    *,
    max_records: int | None = None,
) -> None:
    """Apply each record of the assigned partitions until every position reaches its end."""
    pending = set(ends)
    got = False
    while True:
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        if not pending:
            return
        if not got:  # records are waiting: a paced consumer fetches them at once, until the end
            wake(consumer)
        batch = await consumer.getmany(
            *pending, timeout_ms=_FETCH_TIMEOUT_MS, max_records=max_records
        )
        got = any(batch.values())
        for recs in batch.values():
            for rec in recs:
                apply(rec)


async def reached(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> bool:
    """Whether ``consumer`` has read every partition up to its end (a table following a topic
    in the background uses it to say when it is loaded)."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True
