"""Transactions left without their markers (kestream.runtime.txn_markers): which partitions are
looked at, when, and what a look decides; without a broker (the integration test restarts a
real Kafka until one hangs: tests/integration/test_txn_markers_broker.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.transaction import (
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnRequest_v0,
    EndTxnRequest_v0,
)

from kestream.runtime.producer_internals import add_partitions
from kestream.runtime.txn_markers import Ends, MarkerHealer, MarkerLedger

A, B, C = (TopicPartition("updates", p) for p in range(3))


def _ledger() -> MarkerLedger:
    return MarkerLedger(quiet_s=5.0, closings_max=2)


def test_a_partition_is_looked_at_only_once_its_producer_left_it_alone_for_the_quiet_time() -> None:
    ledger = _ledger()
    ledger.committed(0, {A: 3}, now=0.0)
    ledger.committed(1, {B: 3}, now=3.0)
    assert ledger.due(4.9) == set()
    assert ledger.due(5.0) == {A}
    ledger.committed(0, {A: 4}, now=5.0)  # written again: its markers came with that commit
    assert ledger.due(8.0) == {B} and ledger.due(10.0) == {A, B}


def test_a_record_behind_the_last_stable_offset_is_forgotten_and_one_not_behind_it_closed(
) -> None:  # fmt: skip
    ledger = _ledger()
    ledger.committed(0, {A: 9, B: 5}, now=0.0)
    judged = ledger.judge(6.0, stable={A: 10, B: 4})
    assert judged.close == {0: {B}} and not judged.healed and not judged.given_up
    assert ledger.due(6.0) == set()  # A dropped; B looked at again a quiet time later
    assert ledger.due(11.0) == {B}
    judged = ledger.judge(11.0, stable={B: 8})  # the marker closed it
    assert judged.healed == {B} and not judged.close
    assert ledger.notes == {}


def test_a_lag_past_the_noted_record_is_another_producers_and_asks_nothing() -> None:
    """Another producer's transaction open after this producer's record holds the last stable
    offset behind the high watermark, but not behind the record: nothing to close."""
    ledger = _ledger()
    ledger.committed(0, {A: 5}, now=0.0)
    judged = ledger.judge(5.0, stable={A: 6})  # (the high watermark further on)
    assert not judged.close and not judged.healed and ledger.notes == {}


def test_a_partition_still_held_back_after_its_closings_is_another_producers_and_given_up(
) -> None:  # fmt: skip
    ledger = _ledger()
    ledger.committed(2, {C: 5}, now=0.0)
    held = {C: 3}
    assert ledger.judge(5.0, held).close == {2: {C}}
    assert ledger.judge(10.0, held).close == {2: {C}}
    judged = ledger.judge(15.0, held)
    assert judged.given_up == {C} and not judged.close and ledger.notes == {}


def test_a_partition_written_again_starts_its_count_again() -> None:
    ledger = _ledger()
    ledger.committed(0, {A: 1}, now=0.0)
    assert ledger.judge(5.0, {A: 1}).close == {0: {A}}
    ledger.committed(0, {A: 2}, now=6.0)
    assert ledger.judge(11.0, {A: 4}).healed == set()  # passed: not a closing's doing


def test_partitions_missing_from_a_lookup_wait_and_forgotten_ones_are_not_looked_at() -> None:
    ledger = _ledger()
    ledger.committed(0, {A: 1}, now=0.0)
    ledger.committed(1, {B: 1}, now=0.0)
    assert ledger.judge(5.0, stable={}).close == {}
    assert ledger.due(5.0) == {A, B}
    ledger.forget({1})
    assert ledger.due(5.0) == {A}


class _Ends:
    def __init__(self, stable: Ends, high: Ends, fail: BaseException | None = None) -> None:
        self.stable, self.high, self.fail = stable, high, fail
        self.asked: list[set[TopicPartition]] = []
        self.stopped = False

    async def of(self, partitions: set[TopicPartition]) -> tuple[Ends, Ends]:
        self.asked.append(set(partitions))
        if self.fail is not None:
            raise self.fail
        return self.stable, self.high

    async def stop(self) -> None:
        self.stopped = True


def _healer(ends: _Ends, now: list[float]) -> tuple[MarkerHealer, list[dict[int, Any]]]:
    ledger = _ledger()
    closed: list[dict[int, Any]] = []

    async def close(closings: dict[int, set[TopicPartition]]) -> None:
        closed.append(closings)

    return MarkerHealer(ledger, ends, close, clock=lambda: now[0]), closed


def test_a_look_with_nothing_quiet_asks_the_broker_nothing() -> None:
    ends = _Ends({}, {})
    now = [1.0]
    healer, closed = _healer(ends, now)
    healer.ledger.committed(0, {A: 1}, now=0.0)
    asyncio.run(healer.check())
    assert ends.asked == [] and closed == []


def test_a_look_closes_the_quiet_partitions_behind_with_their_producers() -> None:
    ends = _Ends({A: 5, B: 2, C: 4}, {A: 5, B: 3, C: 9})
    now = [10.0]
    healer, closed = _healer(ends, now)
    healer.ledger.committed(0, {A: 4, B: 2}, now=0.0)
    healer.ledger.committed(1, {C: 8}, now=0.0)
    asyncio.run(healer.check())
    assert ends.asked == [{A, B, C}]
    assert closed == [{0: {B}, 1: {C}}]


def test_a_look_the_broker_cannot_answer_keeps_the_notes() -> None:
    ends = _Ends({}, {}, fail=ConnectionError("away"))
    now = [10.0]
    healer, closed = _healer(ends, now)
    healer.ledger.committed(0, {A: 1}, now=0.0)
    assert not asyncio.run(healer.check()).close
    assert closed == [] and healer.ledger.due(10.0) == {A}


def test_a_stop_waits_for_a_closing_under_way() -> None:
    """Cancelled half-way, a closing would abort after adding its partitions: its abort marker
    would throw away the committed records it came to close."""

    async def run() -> list[str]:
        events: list[str] = []
        release = asyncio.Event()
        ledger = _ledger()
        ledger.committed(0, {A: 1}, now=0.0)

        async def close(closings: dict[int, set[TopicPartition]]) -> None:
            events.append("closing")
            await release.wait()
            events.append("closed")

        ends = _Ends({A: 1}, {A: 2})
        healer = MarkerHealer(ledger, ends, close, check_every_s=0.0, clock=lambda: 10.0)
        healer.start()
        while not events:
            await asyncio.sleep(0)
        asyncio.get_running_loop().call_later(0.05, release.set)
        await healer.stop()
        events.append(f"stopped, ends stopped: {ends.stopped}")
        return events

    assert asyncio.run(run()) == ["closing", "closed", "stopped, ends stopped: True"]


# -- aiokafka's producer: a partition added without a record ------------------------------------


def test_aiokafkas_producer_adds_a_partition_without_a_record_and_commits_it() -> None:
    """Against a real ``AIOKafkaProducer`` (its requests answered here, no broker): the empty
    transaction sends ``AddPartitionsToTxn`` for the partition, then ``EndTxn`` commit, and no
    Produce. Without the partition aiokafka ends an empty transaction without ``EndTxn``: no
    marker would be written."""

    async def run(partitions: set[TopicPartition]) -> list[str]:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t-0")
        sender = producer._sender
        sent: list[str] = []

        async def id_taken() -> None:
            if not producer._txn_manager.has_pid():
                producer._txn_manager.set_pid_and_epoch(7, 2)

        async def coordinator(kind: Any, key: str) -> int:
            return 0

        async def send(node_id: int, request: Any, **_: Any) -> Any:
            if isinstance(request, AddPartitionsToTxnRequest):
                add = request.build(AddPartitionsToTxnRequest_v0)
                sent.append(f"AddPartitionsToTxn {add.topics} epoch {add.producer_epoch}")
                parts = [(topic, [(p, 0) for p in ps]) for topic, ps in add.topics]
                return SimpleNamespace(errors=parts)
            end = request.build(EndTxnRequest_v0)  # anything else fails the test here
            sent.append(f"EndTxn commit={bool(end.transaction_result)}")
            return SimpleNamespace(error_code=0)

        sender._maybe_wait_for_pid = id_taken
        sender._find_coordinator = coordinator
        producer.client.send = send
        await sender.start()
        try:
            await producer.begin_transaction()
            add_partitions(producer, partitions)
            await producer.commit_transaction()
        finally:
            await producer.stop()
        return sent

    assert asyncio.run(run({A})) == [
        "AddPartitionsToTxn [('updates', [0])] epoch 2",
        "EndTxn commit=True",
    ]
    assert asyncio.run(run(set())) == []


def test_a_producer_without_aiokafkas_transaction_manager_cannot_add_a_partition() -> None:
    with pytest.raises(RuntimeError, match="maybe_add_partition_to_txn"):
        add_partitions(SimpleNamespace(), {A})
