"""The executor commits its input offsets at most every ``commit_every_s``, and at a revocation
and a stop: never past what it flushed, never past a held event. The processor runs here
without a broker: a consumer that hands out batches, a producer that acks everything."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.executor import events as ev
from kestream.runtime import records
from kestream.runtime.executor_service import ExecutorService
from tests.unit.runtime.test_executor_faults import PAUSED, _Producer, _service


class _Consumer:
    """Hands out ``batches`` one per fetch, then stops the processor; records its commits.
    ``on_fetch`` runs before the fetch of the batch with that index (a rebalance, say)."""

    def __init__(self, service: ExecutorService, batches: list[dict[TopicPartition, list[Any]]]):
        self.service, self.batches = service, list(batches)
        self.commits: list[dict[TopicPartition, int]] = []
        self.fetches = 0
        self.on_fetch: dict[int, Any] = {}
        self.refuse_commits = False

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        if (hook := self.on_fetch.get(self.fetches)) is not None:
            await hook()
        self.fetches += 1
        if not self.batches:
            self.service._stopping = True
            return {}
        return self.batches.pop(0)

    async def commit(self, offsets: Any) -> None:
        if self.refuse_commits:
            raise RuntimeError("the group has moved on")
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})

    def highwater(self, tp: TopicPartition) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return set()


def _batch(
    service: ExecutorService, partition: int, offset: int, execution_id: str
) -> dict[TopicPartition, list[Any]]:
    tp = TopicPartition(service.topics.executions, partition)
    value = records.encode_event(ev.ExecutionCreated(execution_id, "test.faults", "paused"))
    rec = ConsumerRecord(tp.topic, partition, offset, 0, 0, b"", value, None, 0, 0, [])
    return {tp: [rec]}


def _run(service: ExecutorService, consumer: _Consumer) -> None:
    service._consumer = consumer  # type: ignore[assignment]
    service.writer.producer = _Producer(refused=b"")  # type: ignore[assignment]
    asyncio.run(service._loop())


def test_batches_within_the_interval_are_committed_once_at_the_stop() -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    tp0 = TopicPartition(service.topics.executions, 0)
    tp1 = TopicPartition(service.topics.executions, 1)
    batches = [_batch(service, 0, 5, "a"), _batch(service, 1, 9, "b"), _batch(service, 0, 6, "c")]
    consumer = _Consumer(service, batches)
    _run(service, consumer)
    assert {"a", "b", "c"} <= service.states.keys()  # all three stepped
    assert consumer.commits == [{tp0: 7, tp1: 10}]  # one commit, after each partition's last


def test_with_no_interval_every_batch_is_committed() -> None:
    service = _service(PAUSED)
    service.commit_every_s = 0.0
    tp0 = TopicPartition(service.topics.executions, 0)
    consumer = _Consumer(service, [_batch(service, 0, 5, "a"), _batch(service, 0, 6, "b")])
    _run(service, consumer)
    assert consumer.commits == [{tp0: 6}, {tp0: 7}]


def test_a_held_event_bounds_the_deferred_commit() -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    tp0 = TopicPartition(service.topics.executions, 0)
    unknown = records.encode_event(ev.ExecutionCreated("h", "test.faults", "not-deployed"))
    held = {tp0: [ConsumerRecord(tp0.topic, 0, 3, 0, 0, b"", unknown, None, 0, 0, [])]}
    consumer = _Consumer(service, [held, _batch(service, 0, 4, "a")])
    _run(service, consumer)
    assert "h" in service.held
    assert consumer.commits == [{tp0: 3}]  # a crash must replay the held creation


def test_a_revocation_commits_what_was_flushed_of_its_partitions() -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    tp0 = TopicPartition(service.topics.executions, 0)
    tp1 = TopicPartition(service.topics.executions, 1)
    batches = [_batch(service, 0, 5, "a"), _batch(service, 0, 6, "b"), _batch(service, 1, 8, "c")]
    consumer = _Consumer(service, batches)

    async def revoke_partition_0() -> None:
        await service.revoked({0})

    consumer.on_fetch[3] = revoke_partition_0
    _run(service, consumer)
    assert consumer.commits == [{tp0: 7}, {tp1: 9}]  # partition 0 as it left, 1 at the stop


def test_a_commit_refused_at_a_revocation_is_left_to_the_next_owner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    consumer = _Consumer(service, [_batch(service, 0, 5, "a")])

    async def revoke_all() -> None:
        consumer.refuse_commits = True
        await service.revoked({0, 1})
        consumer.refuse_commits = False

    consumer.on_fetch[1] = revoke_all
    with caplog.at_level(logging.WARNING, logger="kestream.executor"):
        _run(service, consumer)
    assert consumer.commits == []  # nothing left of partition 0 to commit at the stop
    assert "could not commit partitions [0, 1] at their revocation" in caplog.text
    assert service.owned == set()
