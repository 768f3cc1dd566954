"""Exactly-once cycles of the executor, without a broker: a fake broker keeps transactions as a
read-committed consumer sees them (a record is visible once its transaction commits; taking a
transactional id again aborts its open transaction and fences the older producer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.errors import ProducerFenced
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, RecordMetadata

from kestream.executor import codec
from kestream.executor import events as ev
from kestream.runtime import processing_guarantee, records, worker_groups
from kestream.runtime.changelog_restorer import PartitionRead, RecoveryFailed
from kestream.runtime.executor_outbox import CommandRecord, Outbox, PartitionOutboxes
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.executor_transactions import (
    MAX_LOSSES,
    Lost,
    PartitionTransactions,
    TxnWrite,
    _transient,
)
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.producer_internals import sender_failure
from kestream.settings import Settings
from kestream.tasks.worker_group import WorkerGroup
from tests.unit.runtime.test_executor_commits import _Consumer
from tests.unit.runtime.test_executor_faults import PAUSED, _Producer, _service

GROUP = "kestream.executor"


class TxnBroker:
    """Transactions as a read-committed consumer sees them."""

    def __init__(self) -> None:
        self.visible: list[CommandRecord] = []
        self.offsets: dict[TopicPartition, int] = {}
        self.epochs: dict[str, int] = {}
        self.pending: dict[str, tuple[list[CommandRecord], dict[TopicPartition, int]]] = {}
        self.next_offset: dict[tuple[str, int], int] = {}
        #: Transactional ids whose next commit the process dies in (before EndTxn).
        self.die_at_commit: set[str] = set()
        #: Transactional ids whose sends the broker refuses (the producer lives on).
        self.refuse_sends: set[str] = set()
        #: Transactional ids whose producer's sender dies in its next offsets commit, as
        #: aiokafka's does when the broker restarts under its coordinator lookup.
        self.die_in_offsets: set[str] = set()
        #: What the next takings of an id fail with, in turn (the broker away, say).
        self.init_errors: list[BaseException] = []
        #: (topic, key) of records the broker refuses once for what they are (too large for
        #: the topic, say): a record fault, the transaction must abort.
        self.refuse_once: set[tuple[str, str]] = set()

    def take(self, transactional_id: str) -> int:
        """InitProducerId: a new epoch; the id's open transaction is aborted."""
        if self.init_errors:
            raise self.init_errors.pop(0)
        self.pending.pop(transactional_id, None)
        epoch = self.epochs[transactional_id] = self.epochs.get(transactional_id, -1) + 1
        return epoch

    def visible_of(self, execution_id: str) -> list[CommandRecord]:
        """The committed records of an execution: its commands and its changelog records."""
        return [r for r in self.visible if codec.execution_of(r[1]) == execution_id]


def _dropped_lookup() -> kafka_errors.KafkaError:
    """What aiokafka's sender dies of when the broker drops the connection under its
    coordinator lookup: the lookup's error, wrapped twice."""
    dropped = kafka_errors.KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
    lookup = kafka_errors.KafkaError(repr(dropped))
    lookup.__cause__ = dropped
    died = kafka_errors.KafkaError("Unexpected error during batch delivery")
    died.__cause__ = lookup
    return died


class TxnProducer:
    def __init__(self, broker: TxnBroker, transactional_id: str) -> None:
        self.broker, self.id = broker, transactional_id
        self.epoch: int | None = None
        self.stopped = False
        #: Killed in a commit (``die_at_commit``): nothing it does reaches the broker any more.
        self.dead = False
        self.calls: list[str] = []
        #: Where aiokafka keeps its background sender's task (``_sender.sender_task``), which
        #: ends with the error that killed it (``die_in_offsets``).
        self._sender = SimpleNamespace(sender_task=asyncio.get_running_loop().create_future())
        #: Where aiokafka adds a partition to the open transaction without a record.
        self._txn_manager = SimpleNamespace(maybe_add_partition_to_txn=self._add)

    def _add(self, tp: TopicPartition) -> None:
        self.calls.append(f"add {tp.topic}[{tp.partition}]")

    def _check(self) -> None:
        died = self._sender.sender_task
        if died.done():  # as aiokafka's fatal transaction state: every call fails
            raise AssertionError("Invalid state transition TransactionState.FATAL_ERROR")
        if self.broker.epochs.get(self.id) != self.epoch:
            raise ProducerFenced()

    def _die(self, died: BaseException) -> None:
        """The sender ends with ``died``, which every call awaiting it then raises."""
        self._sender.sender_task.set_exception(died)
        raise died

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.stopped = True

    async def begin_transaction(self) -> None:
        if self.epoch is None:
            self.epoch = self.broker.take(self.id)
        self._check()
        self.calls.append("begin")
        self.broker.pending[self.id] = ([], {})

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, partition: int | None
    ) -> asyncio.Future[Any]:
        self._check()
        if self.id in self.broker.refuse_sends:
            raise RuntimeError("the broker refuses the record")
        assert key is not None
        if (topic, key.decode()) in self.broker.refuse_once:
            self.broker.refuse_once.discard((topic, key.decode()))
            raise kafka_errors.MessageSizeTooLargeError("larger than the topic's max.message.bytes")
        self.broker.pending[self.id][0].append((topic, key.decode(), value, partition))
        where = (topic, partition or 0)
        offset = self.broker.next_offset[where] = self.broker.next_offset.get(where, -1) + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        tp = TopicPartition(topic, partition or 0)
        future.set_result(RecordMetadata(topic, partition or 0, tp, offset, 0, 0, 0))
        return future

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata], group_id: str
    ) -> None:
        self._check()
        assert group_id == GROUP
        if self.id in self.broker.die_in_offsets:
            self.broker.die_in_offsets.discard(self.id)
            self._die(_dropped_lookup())
        self.broker.pending[self.id][1].update({tp: m.offset for tp, m in offsets.items()})

    async def commit_transaction(self) -> None:
        self._check()
        if self.id in self.broker.die_at_commit:
            self.dead = True
            raise RuntimeError("killed between produce and commit")
        recs, offsets = self.broker.pending.pop(self.id)
        self.broker.visible.extend(recs)
        self.broker.offsets.update(offsets)
        self.calls.append("commit")

    async def abort_transaction(self) -> None:
        if self.dead:
            raise RuntimeError("the process is gone")
        if self._sender.sender_task.done():
            raise AssertionError("Invalid state transition TransactionState.FATAL_ERROR")
        self.broker.pending.pop(self.id, None)
        self.calls.append("abort")


def _transactions(
    broker: TxnBroker, **retries: float
) -> tuple[PartitionTransactions, dict[str, TxnProducer]]:
    """The transactions, and the last producer made for each id."""
    made: dict[str, TxnProducer] = {}

    def make(transactional_id: str) -> TxnProducer:
        made[transactional_id] = TxnProducer(broker, transactional_id)
        return made[transactional_id]

    return PartitionTransactions(make, f"{GROUP}-", GROUP, **retries), made


def _eos_service(broker: TxnBroker, partitions: set[int]) -> ExecutorService:
    service = _service(PAUSED)
    service.owned = set(partitions)
    service.writer.producer = _Producer(refused=b"")
    service.writer.transactions, _ = _transactions(broker)
    asyncio.run(service.writer.transactions.own(partitions))
    return service


def _created(
    service: ExecutorService, partition: int, offset: int, execution_id: str, flow: str = "paused"
) -> tuple[TopicPartition, ConsumerRecord[Any, Any]]:
    tp = TopicPartition(service.topics.executions, partition)
    value = records.encode_event(ev.ExecutionCreated(execution_id, "test.faults", flow))
    return tp, ConsumerRecord(tp.topic, partition, offset, 0, 0, b"", value, None, 0, 0, [])


def _batch(*recs: tuple[TopicPartition, ConsumerRecord[Any, Any]]) -> dict[Any, list[Any]]:
    batch: dict[Any, list[Any]] = {}
    for tp, rec in recs:
        batch.setdefault(tp, []).append(rec)
    return batch


def _shape(recs: list[CommandRecord]) -> list[tuple[str, str, int | None]]:
    """The records' topics, keys and partitions, in their order."""
    return [(topic, key, partition) for topic, key, _, partition in recs]


def _loop(service: ExecutorService, consumer: _Consumer) -> None:
    service._consumer = consumer
    asyncio.run(service._loop())


# -- the partitions' producers ---------------------------------------------------------------


def test_owning_a_partition_takes_its_transactional_id_and_fences_the_former_owner() -> None:
    broker = TxnBroker()
    old, _ = _transactions(broker)
    asyncio.run(old.own({0, 1}))
    asyncio.run(old.commit({0: TxnWrite([("t", "k", b"1", 0)])}))
    new, made = _transactions(broker)
    asyncio.run(new.own({0}))
    assert sorted(made) == [f"{GROUP}-0"]
    assert made[f"{GROUP}-0"].calls == ["start", "begin", "commit"]  # the id taken at once
    writes = {0: TxnWrite([("t", "k", b"2", 0)]), 1: TxnWrite([("t", "k", b"3", 1)])}
    committed = asyncio.run(old.commit(writes))
    assert committed.fenced == {0}  # partition 1 is still its
    assert [rec for rec, _ in committed.acked] == [("t", "k", b"3", 1)]
    assert [r[2] for r in broker.visible] == [b"1", b"3"]


def test_taking_an_id_aborts_the_transaction_its_former_owner_left_open() -> None:
    broker = TxnBroker()
    old, _ = _transactions(broker)
    asyncio.run(old.own({0}))
    broker.die_at_commit.add(f"{GROUP}-0")
    with pytest.raises(RuntimeError, match="killed"):
        asyncio.run(old.commit({0: TxnWrite([("t", "k", b"1", 0)])}))
    assert broker.pending[f"{GROUP}-0"][0] == [("t", "k", b"1", 0)]  # left open by the kill
    broker.die_at_commit.clear()
    new, _ = _transactions(broker)
    asyncio.run(new.own({0}))
    assert broker.pending == {} and broker.visible == []


def test_a_failed_partition_aborts_alone_and_the_commit_raises() -> None:
    broker = TxnBroker()
    txns, made = _transactions(broker)
    asyncio.run(txns.own({0, 1}))
    tp = TopicPartition("executions", 1)
    broker.refuse_sends.add(f"{GROUP}-0")
    writes = {
        0: TxnWrite([("t", "a", b"0", 0)]),
        1: TxnWrite([("t", "b", b"1", 1)], {tp: OffsetAndMetadata(7, "")}),
    }
    with pytest.raises(RuntimeError, match="refuses"):
        asyncio.run(txns.commit(writes))
    assert made[f"{GROUP}-0"].calls[-1] == "abort" and broker.pending == {}
    assert broker.visible == [("t", "b", b"1", 1)] and broker.offsets == {tp: 7}


def _died_in_offsets() -> tuple[TxnBroker, PartitionTransactions, dict[str, TxnProducer]]:
    """Partitions 0 and 1 owned; partition 0's sender dies in this cycle's offsets commit."""
    broker = TxnBroker()
    txns, made = _transactions(broker)
    asyncio.run(txns.own({0, 1}))
    broker.die_in_offsets.add(f"{GROUP}-0")
    return broker, txns, made


def _cycle(partition: int, value: bytes, offset: int) -> TxnWrite:
    tp = TopicPartition("executions", partition)
    return TxnWrite([("t", "k", value, partition)], {tp: OffsetAndMetadata(offset, "")})


def test_a_producer_whose_sender_died_is_lost_and_its_id_taken_again_aborts_its_transaction(
) -> None:  # fmt: skip
    """A broker restart under a transaction's offsets commit kills aiokafka's sender: the
    producer can neither commit nor abort. The partition is reported lost (not fenced, not a
    failure), the others commit; a fresh producer of the same id aborts what it left open."""
    broker, txns, made = _died_in_offsets()
    dead = made[f"{GROUP}-0"]
    committed = asyncio.run(txns.commit({0: _cycle(0, b"0", 5), 1: _cycle(1, b"1", 9)}))
    assert set(committed.lost) == {0} and committed.fenced == set()
    assert "KafkaConnectionError('Connection at 127.0.0.1:9092 closed')" in committed.lost[0].why
    assert [rec for rec, _ in committed.acked] == [("t", "k", b"1", 1)]
    assert "abort" not in dead.calls  # nothing to abort through a dead sender
    assert broker.pending[f"{GROUP}-0"][0] == [("t", "k", b"0", 0)]  # open on the broker

    asyncio.run(txns.leave({0}))
    asyncio.run(txns.own({0}))
    assert dead.stopped and made[f"{GROUP}-0"] is not dead
    assert broker.pending == {}  # aborted by the fresh producer's taking of the id
    again = asyncio.run(txns.commit({0: _cycle(0, b"0", 5)}))
    assert again.lost == {} and again.fenced == set()
    assert [r[2] for r in broker.visible] == [b"1", b"0"]
    assert broker.offsets == {TopicPartition("executions", 0): 5,
                              TopicPartition("executions", 1): 9}  # fmt: skip


def test_a_sender_that_died_fenced_is_a_fence() -> None:
    """The sender dies of ProducerFenced (a newer epoch refused its request) while the call
    awaited fails otherwise: the partition is another member's, not lost."""
    _, txns, made = _died_in_offsets()

    async def fenced_in_offsets(offsets: Any, group_id: str) -> None:
        made[f"{GROUP}-0"]._die(ProducerFenced())

    made[f"{GROUP}-0"].send_offsets_to_transaction = fenced_in_offsets  # type: ignore[method-assign]
    committed = asyncio.run(txns.commit({0: _cycle(0, b"0", 5)}))
    assert committed.fenced == {0} and committed.lost == {}


def test_a_dead_sender_of_aiokafkas_own_producer_is_found_and_the_partition_lost() -> None:
    """``sender_failure`` reads a private attribute of aiokafka's producer: against a real
    ``AIOKafkaProducer`` (no broker: its sender is started with the id taken, then dies as a
    broker restart kills it), so a rename in aiokafka fails here instead of turning every
    dead sender into a stop of the processor."""

    async def run() -> Any:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t-0")
        sender = producer._sender
        gone = asyncio.Event()

        async def id_taken() -> None:
            producer._txn_manager.set_pid_and_epoch(1, 0)

        async def routine() -> None:
            await gone.wait()
            raise _dropped_lookup()

        sender._maybe_wait_for_pid = id_taken
        sender._sender_routine = routine
        assert sender_failure(producer) is None  # not started
        await sender.start()
        assert sender_failure(producer) is None  # running
        await producer.begin_transaction()
        gone.set()
        await asyncio.wait([sender.sender_task])
        txns, _ = _transactions(TxnBroker())
        txns.producers[0] = producer
        try:
            return sender_failure(producer), await txns.commit({0: _cycle(0, b"0", 5)})
        finally:
            with contextlib.suppress(Exception):
                await producer._txn_manager._transaction_waiter
            await producer.stop()

    died, committed = asyncio.run(run())
    assert str(died) == "KafkaError: Unexpected error during batch delivery"
    assert set(committed.lost) == {0} and committed.lost[0].cause is died


def test_a_partition_whose_producers_keep_dying_stops_the_processor() -> None:
    broker = TxnBroker()
    txns, _ = _transactions(broker)
    asyncio.run(txns.own({0}))
    for round_ in range(1, MAX_LOSSES + 1):
        broker.die_in_offsets.add(f"{GROUP}-0")
        if round_ < MAX_LOSSES:
            assert set(asyncio.run(txns.commit({0: _cycle(0, b"0", 5)})).lost) == {0}
        else:
            with pytest.raises(Lost):
                asyncio.run(txns.commit({0: _cycle(0, b"0", 5)}))
        asyncio.run(txns.leave({0}))
        asyncio.run(txns.own({0}))
    assert asyncio.run(txns.commit({0: _cycle(0, b"0", 5)})).lost == {}
    assert txns.losses == {}  # a commit that went through starts the count again


def _noted(txns: PartitionTransactions) -> dict[int, set[tuple[str, int]]]:
    """Per input partition, the partitions its committed transactions wrote (the ledger's)."""
    return {p: {(tp.topic, tp.partition) for tp in notes} for p, notes in txns.ledger.notes.items()}


def test_committed_transactions_note_where_they_wrote_and_any_other_end_forgets() -> None:
    """Only a partition whose producer's last transaction there committed may be closed with
    a commit marker (kestream.runtime.txn_markers): an abort, a lost producer or a partition
    leaving forgets the input partition's notes."""
    broker = TxnBroker()
    txns, _ = _transactions(broker)
    asyncio.run(txns.own({0, 1, 2}))
    writes = {
        0: TxnWrite([("t", "a", b"0", 0), ("u", "a", b"0", 3)]),
        1: TxnWrite([("t", "b", b"1", 1)]),
        2: TxnWrite([("t", "c", b"2", 2)]),
    }
    asyncio.run(txns.commit(writes))
    assert _noted(txns) == {0: {("t", 0), ("u", 3)}, 1: {("t", 1)}, 2: {("t", 2)}}
    broker.refuse_sends.add(f"{GROUP}-1")
    broker.die_in_offsets.add(f"{GROUP}-2")
    with pytest.raises(RuntimeError, match="refuses"):
        asyncio.run(txns.commit({1: writes[1], 2: _cycle(2, b"2", 4)}))
    assert _noted(txns) == {0: {("t", 0), ("u", 3)}}  # 1 aborted, 2's producer died
    asyncio.run(txns.leave({0}))
    assert _noted(txns) == {}


def test_a_closing_adds_its_partitions_to_an_empty_transaction_and_commits_it() -> None:
    broker = TxnBroker()
    txns, made = _transactions(broker)
    asyncio.run(txns.own({0}))
    asyncio.run(txns.commit({0: TxnWrite([("t", "a", b"0", 0)])}))
    closing = TxnWrite(markers={TopicPartition("t", 0), TopicPartition("u", 2)})
    committed = asyncio.run(txns.commit({0: closing}))
    assert not committed.acked and not committed.lost and not committed.fenced
    assert made[f"{GROUP}-0"].calls[-4:] == ["begin", "add t[0]", "add u[2]", "commit"]
    assert [r[2] for r in broker.visible] == [b"0"]  # no record: the markers alone


def test_the_executor_closes_only_partitions_it_still_owns_between_cycles() -> None:
    broker = TxnBroker()
    service = _eos_service(broker, {0, 1})
    assert service.writer.transactions is not None
    made = service.writer.transactions.producers
    closings = {0: {TopicPartition("t", 0)}, 5: {TopicPartition("t", 5)}}
    asyncio.run(service._close_markers(closings))
    assert made[0].calls[-3:] == ["begin", "add t[0]", "commit"]  # type: ignore[attr-defined]
    assert made[1].calls == ["start", "begin", "commit"]  # type: ignore[attr-defined]
    service._stopping = True
    asyncio.run(service._close_markers(closings))
    assert made[0].calls.count("add t[0]") == 1  # type: ignore[attr-defined]


def test_taking_an_id_is_tried_again_while_the_broker_is_away() -> None:
    broker = TxnBroker()
    txns, made = _transactions(broker, backoff_s=0.001)
    away = kafka_errors.KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")
    broker.init_errors = [away, kafka_errors.NodeNotReadyError("node 1")]
    asyncio.run(txns.own({0}))
    assert broker.epochs == {f"{GROUP}-0": 0} and made[f"{GROUP}-0"].calls[-1] == "commit"


def test_taking_an_id_the_broker_refuses_or_past_the_retry_time_fails() -> None:
    broker = TxnBroker()
    txns, _ = _transactions(broker, backoff_s=0.001)
    broker.init_errors = [kafka_errors.TransactionalIdAuthorizationFailed(f"{GROUP}-0")]
    with pytest.raises(kafka_errors.TransactionalIdAuthorizationFailed):
        asyncio.run(txns.own({0}))  # not the broker away: at once
    txns, _ = _transactions(broker, backoff_s=0.001, retry_for_s=0.0)
    broker.init_errors = [kafka_errors.KafkaConnectionError("away")]
    with pytest.raises(kafka_errors.KafkaConnectionError):
        asyncio.run(txns.own({0}))


class _CoordinatorAway(TxnProducer):
    """A producer whose start waits for ever, as aiokafka's does while the broker cannot find
    or load the transaction coordinator (its sender retries FindCoordinator with no deadline);
    the first ``refusals`` starts fail at once, the broker away."""

    refusals = 1

    async def start(self) -> None:
        self.calls.append("start")
        if _CoordinatorAway.refusals:
            _CoordinatorAway.refusals -= 1
            raise kafka_errors.KafkaConnectionError("away")
        await asyncio.Event().wait()


def test_taking_an_id_whose_coordinator_never_answers_fails_within_the_retry_time() -> None:
    """The retry time bounds a start that never returns, a first or a later try's: the taking
    fails (the processor stops) instead of holding the cycle lock for ever; the half-started
    producer is stopped."""
    made: list[TxnProducer] = []

    def make(transactional_id: str) -> TxnProducer:
        made.append(_CoordinatorAway(TxnBroker(), transactional_id))
        return made[-1]

    for refusals in (0, 1):
        _CoordinatorAway.refusals = refusals
        made.clear()
        txns = PartitionTransactions(make, f"{GROUP}-", GROUP, retry_for_s=0.2, backoff_s=0.01)
        with pytest.raises(TimeoutError, match=r"executor partition 3 within 0\.2 s"):
            asyncio.run(txns.own({3}))
        assert len(made) == refusals + 1 and all(p.stopped for p in made)


def test_a_failure_is_told_by_what_it_was_raised_from_each_cause_once() -> None:
    """A retriable Kafka error anywhere down the chain makes a failure transient, and a lost
    producer names the chain; a chain that loops back ends."""
    died = _dropped_lookup()
    assert Lost(0, died).why == (
        "KafkaError('Unexpected error during batch delivery') from KafkaError(\"KafkaConnection"
        "Error('Connection at 127.0.0.1:9092 closed')\") from KafkaConnectionError('Connection "
        "at 127.0.0.1:9092 closed')"
    )
    assert _transient(died)
    first, second = RuntimeError("first"), kafka_errors.TransactionalIdAuthorizationFailed("t")
    first.__cause__, second.__cause__ = second, first
    assert not _transient(first)
    assert Lost(0, first).why == f"{first!r} from {second!r}"


def test_leaving_a_partition_stops_its_producer() -> None:
    txns, made = _transactions(TxnBroker())
    asyncio.run(txns.own({0, 1}))
    asyncio.run(txns.leave({1, 5}))
    assert set(txns.producers) == {0}
    assert made[f"{GROUP}-1"].stopped and not made[f"{GROUP}-0"].stopped


# -- the cycle --------------------------------------------------------------------------------


def test_each_partition_commits_its_records_and_offsets_in_its_own_transaction() -> None:
    broker = TxnBroker()
    service = _eos_service(broker, {0, 1})
    a, b = _created(service, 0, 5, "a"), _created(service, 1, 9, "b")
    consumer = _Consumer(service, [_batch(a, b)])
    _loop(service, consumer)
    assert consumer.commits == []  # no offset commit outside the transactions
    assert broker.offsets == {a[0]: 6, b[0]: 10}
    changelog = service.topics.changelog
    for execution_id, partition in (("a", 0), ("b", 1)):
        logged = [r for r in broker.visible_of(execution_id) if r[0] == changelog]
        assert logged and {r[3] for r in logged} == {partition}
    assert set(service.recovery.offsets) == {0, 1}  # the changelog acks are the checkpoints


def test_a_held_event_bounds_the_offsets_its_transaction_commits() -> None:
    broker = TxnBroker()
    service = _eos_service(broker, {0})
    held = _created(service, 0, 3, "h", flow="not-deployed")
    known = _created(service, 0, 4, "a")
    _loop(service, _Consumer(service, [_batch(held, known)]))
    assert "h" in service.held
    assert broker.offsets == {held[0]: 3}  # a crash must replay the held creation
    assert broker.visible_of("a")


def test_a_kill_between_produce_and_commit_leaves_nothing_seen_twice() -> None:
    """The cycle dies in partition 0's commit: none of its records are visible, and its new
    owner, which takes the id, replays the event once; a fault-free run sees the same."""
    clean = TxnBroker()
    reference = _eos_service(clean, {0})
    _loop(reference, _Consumer(reference, [_batch(_created(reference, 0, 5, "a"))]))

    broker = TxnBroker()
    first = _eos_service(broker, {0, 1})
    acked: list[CommandRecord] = []
    first.writer.on_acked = lambda rec, meta: acked.append(rec)
    broker.die_at_commit.add(f"{GROUP}-0")
    a, b = _created(first, 0, 5, "a"), _created(first, 1, 9, "b")
    with pytest.raises(RuntimeError, match="killed"):
        _loop(first, _Consumer(first, [_batch(a, b)]))
    assert broker.visible_of("a") == []
    assert a[0] not in broker.offsets
    assert all(rec[1] != "a" for rec in acked)  # no local hand-off of an uncommitted job

    broker.die_at_commit.clear()
    second = _eos_service(broker, {0})  # the next owner: fences the first
    _loop(second, _Consumer(second, [_batch(a)]))  # replays from the committed offset
    assert _shape(broker.visible_of("a")) == _shape(clean.visible_of("a"))  # (times differ)
    assert broker.offsets[a[0]] == 6
    assert first.writer.transactions is not None
    stale = asyncio.run(first.writer.transactions.commit({0: TxnWrite([("t", "a", b"x", 0)])}))
    assert stale.fenced == {0}  # the first, were it still running, can no longer commit
    assert _shape(broker.visible_of("a")) == _shape(clean.visible_of("a"))


def test_a_fenced_partition_is_dropped_and_the_others_commit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A member that missed a rebalance finds, at its commit, that another took partition 0:
    it drops that partition's state (ahead of its changelog) without parking it, keeps on
    with partition 1, and stays up for the group to assign partitions again at its rejoin."""
    broker = TxnBroker()
    service = _eos_service(broker, {0, 1})
    _eos_service(broker, {0})  # another member took partition 0
    a, b = _created(service, 0, 5, "a"), _created(service, 1, 9, "b")
    c = _created(service, 0, 6, "c")  # fetched after the fencing: not this member's any more
    with caplog.at_level(logging.ERROR, logger="kestream.executor"):
        _loop(service, _Consumer(service, [_batch(a, b), _batch(c)]))
    assert "executor fenced on partitions [0]" in caplog.text
    assert service.owned == {1} and not service.ready.is_set()
    assert "a" not in service.states and "c" not in service.states and "b" in service.states
    assert service.recovery.parked.take(0, 0.0) is None  # ahead of its changelog: never parked
    assert broker.visible_of("a") == [] and broker.visible_of("c") == []
    assert broker.visible_of("b") and broker.offsets == {b[0]: 10}
    assert service.writer.transactions is not None
    assert set(service.writer.transactions.producers) == {1}


class _AssignedConsumer(_Consumer):
    """A consumer the group still assigns ``partitions`` to (no rebalance under way), whose
    committed offsets are the transactions' and whose seeks are recorded."""

    def __init__(self, service: ExecutorService, broker: TxnBroker, batches: list[Any]) -> None:
        super().__init__(service, batches)
        self.broker = broker
        self.seeks: list[tuple[TopicPartition, int | None]] = []
        #: The partitions of each ``seek_to_beginning`` call.
        self.beginnings: list[set[TopicPartition]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(self.service.topics.executions, p) for p in (0, 1)}

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.broker.offsets.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.seeks.extend((tp, None) for tp in tps)
        self.beginnings.append(set(tps))


def test_a_fenced_partition_still_assigned_is_taken_back_in_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker timed partition 0's transaction out (a fence with no other owner): the group
    never moves, so the member takes the partition back itself, its id again, its state from
    the committed changelog and its records from the committed offset, instead of leaving it
    unserved until some other member joins or leaves."""
    broker = TxnBroker()
    service = _eos_service(broker, {0, 1})
    service.settings = service.settings.model_copy(update={"heartbeat_interval_ms": 1})

    async def nothing(partitions: set[int], start: dict[int, int]) -> Any:
        return {p: PartitionRead() for p in partitions}, dict.fromkeys(partitions, 0)

    async def no_table(topic: str, partitions: set[int]) -> dict[int, dict[str, Any]]:
        return {p: {} for p in partitions}

    service.recovery.restorer._read = nothing  # type: ignore[method-assign]
    service.recovery.restorer._read_table = no_table  # type: ignore[method-assign]
    broker.take(f"{GROUP}-0")  # the transaction timed out: the producer's epoch is stale
    a, b = _created(service, 0, 5, "a"), _created(service, 1, 9, "b")
    consumer = _AssignedConsumer(service, broker, [_batch(a, b), _batch(a)])  # a, read again
    with caplog.at_level(logging.WARNING, logger="kestream.executor"):
        _loop(service, consumer)
    assert "took fenced partitions [0] back" in caplog.text
    assert service.owned == {0, 1} and service.ready.is_set() and service.failure is None
    assert consumer.seeks == [(a[0], None)]  # nothing committed of 0 yet: from its start
    assert broker.visible_of("a") and broker.offsets == {a[0]: 6, b[0]: 10}
    assert service.writer.transactions is not None
    assert set(service.writer.transactions.producers) == {0, 1}


def test_partitions_taken_back_with_nothing_committed_are_sought_in_one_call() -> None:
    """Each ``seek_to_beginning`` waits for a round of the fetcher's offset lookup: the
    partitions reclaimed together go back to their beginning together."""
    broker = TxnBroker()
    service = _eos_service(broker, {0, 1})
    service.settings = service.settings.model_copy(update={"heartbeat_interval_ms": 1})
    _nothing_to_recover(service)
    broker.take(f"{GROUP}-0")  # both transactions timed out: both ids are taken back
    broker.take(f"{GROUP}-1")
    a, b = _created(service, 0, 5, "a"), _created(service, 1, 9, "b")
    consumer = _AssignedConsumer(service, broker, [_batch(a, b), _batch(a, b)])
    _loop(service, consumer)
    assert service.owned == {0, 1} and service.failure is None
    assert consumer.beginnings == [{a[0], b[0]}]
    assert broker.offsets == {a[0]: 6, b[0]: 10}


def _nothing_to_recover(service: ExecutorService) -> None:
    """Recovery reads empty changelogs (the unit tests' broker keeps none)."""

    async def nothing(partitions: set[int], start: dict[int, int]) -> Any:
        return {p: PartitionRead() for p in partitions}, dict.fromkeys(partitions, 0)

    async def no_table(topic: str, partitions: set[int]) -> dict[int, dict[str, Any]]:
        return {p: {} for p in partitions}

    service.recovery.restorer._read = nothing  # type: ignore[method-assign]
    service.recovery.restorer._read_table = no_table  # type: ignore[method-assign]


def test_a_producer_killed_by_a_broker_restart_is_replaced_in_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Partition 0's sender dies in the cycle's offsets commit (a broker restart): the processor
    does not stop. It drops the partition's state (its transaction's outcome is the broker's),
    takes the id with a fresh producer (which aborts the open transaction), reads the state
    again and the events from the committed offset, and commits the replay once; a fault-free
    run commits the same records."""
    clean = TxnBroker()
    reference = _eos_service(clean, {0})
    _loop(reference, _Consumer(reference, [_batch(_created(reference, 0, 5, "a"))]))

    broker = TxnBroker()
    service = _eos_service(broker, {0, 1})
    service.settings = service.settings.model_copy(update={"heartbeat_interval_ms": 1})
    _nothing_to_recover(service)
    assert service.writer.transactions is not None
    dead = service.writer.transactions.producers[0]
    broker.die_in_offsets.add(f"{GROUP}-0")
    a, b = _created(service, 0, 5, "a"), _created(service, 1, 9, "b")
    consumer = _AssignedConsumer(service, broker, [_batch(a, b), _batch(a)])  # a, read again
    with caplog.at_level(logging.WARNING, logger="kestream.executor"):
        _loop(service, consumer)
    assert "transactional producers of partitions [0] died" in caplog.text
    assert "KafkaConnectionError" in caplog.text
    assert "fenced on partitions" not in caplog.text
    assert service.failure is None and service.owned == {0, 1} and service.ready.is_set()
    fresh = service.writer.transactions.producers[0]
    assert isinstance(dead, TxnProducer) and dead.stopped and fresh is not dead
    assert broker.epochs[f"{GROUP}-0"] == 1  # the id taken again, by this member
    assert consumer.seeks == [(a[0], None)]  # nothing committed of 0 yet: from its start
    assert _shape(broker.visible_of("a")) == _shape(clean.visible_of("a"))  # once
    assert broker.offsets == {a[0]: 6, b[0]: 10} and broker.pending == {}


def test_a_fenced_partition_that_cannot_be_recovered_stops_the_processor() -> None:
    broker = TxnBroker()
    service = _eos_service(broker, {0, 1})
    service.settings = service.settings.model_copy(update={"heartbeat_interval_ms": 1})

    async def unreadable(partitions: set[int], start: dict[int, int]) -> Any:
        raise RecoveryFailed("the changelog cannot be read")

    service.recovery.restorer._read = unreadable  # type: ignore[method-assign]
    broker.take(f"{GROUP}-0")
    consumer = _AssignedConsumer(service, broker, [_batch(_created(service, 0, 5, "a"))])
    with pytest.raises(RecoveryFailed):
        _loop(service, consumer)
    assert 0 not in service.owned


def test_a_worker_groups_topic_is_created_before_the_transaction_that_first_uses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a flush does: without it the job would go to a topic the broker auto-creates with
    its defaults, or (auto-creation off) to none, and the transaction would fail."""
    broker = TxnBroker()
    service = _eos_service(broker, {0})
    created: list[tuple[list[str], int]] = []

    async def ensure(settings: Any, bootstrap: str, kind: str, names: list[str]) -> None:
        created.append((names, len(broker.visible)))

    monkeypatch.setattr(worker_groups, "ensure_group_topics", ensure)
    topic = service.groups.topic_for(WorkerGroup(key="gpu"))  # a step routed a job to "gpu"
    _loop(service, _Consumer(service, [_batch(_created(service, 0, 5, "a"))]))
    assert created == [([topic], 0)]  # before anything of the cycle was committed
    assert broker.visible_of("a")


def test_a_record_the_broker_refuses_is_dead_lettered_and_the_cycle_moves_on() -> None:
    """Refused inside a transaction (a topic whose max.message.bytes is below the setting, say),
    a record aborts its partition's transaction; the partition is committed again with the
    record's dead letter, which says why, instead of stopping the processor (whose next owner
    would replay the same event into the same refusal)."""
    broker = TxnBroker()
    service = _eos_service(broker, {0, 1})
    broker.refuse_once.add((service.topics.updates, "a"))
    a, b = _created(service, 0, 5, "a"), _created(service, 1, 9, "b")
    _loop(service, _Consumer(service, [_batch(a, b)]))
    assert service.failure is None
    assert broker.offsets == {a[0]: 6, b[0]: 10}  # both partitions' events are done
    letters = [r for r in broker.visible if r[0] == service.topics.dead_letter]
    (letter,) = [records.loads(r[2]) for r in letters]
    assert "MessageSizeTooLargeError" in str(letter)
    assert not [r for r in broker.visible_of("a") if r[0] == service.topics.updates]
    assert [r for r in broker.visible_of("a") if r[0] == service.topics.changelog]
    assert service.writer.transactions is not None
    assert "abort" in _calls(service, 0) and "abort" not in _calls(service, 1)


def _calls(service: ExecutorService, partition: int) -> list[str]:
    assert service.writer.transactions is not None
    producer = service.writer.transactions.producers[partition]
    assert isinstance(producer, TxnProducer)
    return producer.calls


def test_a_revocation_leaves_the_partitions_producers() -> None:
    broker = TxnBroker()
    service = _eos_service(broker, {0, 1})
    _loop(service, _Consumer(service, [_batch(_created(service, 0, 5, "a"))]))
    asyncio.run(service.revoked({1}))
    assert service.writer.transactions is not None
    assert set(service.writer.transactions.producers) == {0}


def test_an_oversized_record_is_dead_lettered_before_the_transaction() -> None:
    service = _service(PAUSED)
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("e1", "test.faults", "paused"), out, None)
    out.send(service.topics.updates, "e1", b"x" * (service.limit.value_bytes + 1))
    kept = service._sized(out)
    assert all(len(v or b"") <= service.limit.value_bytes for _, _, v, _ in kept)
    assert any(t == service.topics.dead_letter for t, *_ in kept)


def test_partition_outboxes_keep_each_partitions_records_apart() -> None:
    outs = PartitionOutboxes()
    outs.of(0).send("t", "a", b"0")
    outs.of(1).send("t", "b", b"1")
    outs.of(0).send("t", "c", b"2")
    assert [k for _, k, _, _ in outs.parts[0].commands] == ["a", "c"]
    assert [k for _, k, _, _ in outs.parts[1].commands] == ["b"]
    single = Outbox()
    assert single.of(0) is single and single.of(3) is single


# -- the setting ------------------------------------------------------------------------------


def test_exactly_once_holds_on_kafka_and_falls_back_on_tansu_with_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processing_guarantee, "_warned", False)
    settings = Settings(broker="unused:9092", processing_guarantee="exactly_once")
    assert processing_guarantee.exactly_once(settings, "kafka")
    with caplog.at_level(logging.WARNING, logger="kestream.guarantee"):
        assert not processing_guarantee.exactly_once(settings, "tansu")
    assert "Tansu has none" in caplog.text
    assert not processing_guarantee.exactly_once(Settings(broker="unused:9092"), "kafka")


def test_clients_read_committed_on_kafka_whatever_their_own_guarantee() -> None:
    """A process started without exactly-once (a worker, the API) still reads committed
    records on Kafka: the executors writing its topics may use transactions."""
    eos = Settings(broker="unused:9092", processing_guarantee="exactly_once")
    alo = Settings(broker="unused:9092")

    async def made() -> tuple[list[str], str | None]:
        levels = [
            make_consumer(settings, "unused:9092", kind, group_id=None)._isolation_level
            for settings, kind in ((eos, "kafka"), (alo, "kafka"), (eos, "tansu"))
        ]
        producer = make_producer(eos, "unused:9092", "kafka", transactional_id="x-0")
        return levels, producer._txn_manager.transactional_id

    levels, transactional_id = asyncio.run(made())
    assert levels == ["read_committed", "read_committed", "read_uncommitted"]
    assert transactional_id == "x-0"


def test_a_transaction_holds_its_partitions_coalesced_records_in_their_order() -> None:
    """A creation and a resume in one cycle step the execution twice (paused, then ended):
    the partition's transaction holds exactly what coalescing left of its outbox (the pause's
    and the end's full updates both, the dynamic record once), in the outbox's order."""
    broker = TxnBroker()
    service = _eos_service(broker, {0})
    made: list[list[CommandRecord]] = []
    records_of = service.writer.records_of

    def spied(out: Outbox) -> list[CommandRecord]:
        before = out.commands + [(service.topics.changelog, *r) for r in out.changelog]
        made.append(before)
        after = records_of(out)
        made.append(after)
        return after

    service.writer.records_of = spied  # type: ignore[method-assign]
    tp, created = _created(service, 0, 5, "a")
    resume = records.encode_event(ev.Resume("a"))
    resumed = ConsumerRecord(tp.topic, 0, 6, 0, 0, b"", resume, None, 0, 0, [])
    _loop(service, _Consumer(service, [_batch((tp, created), (tp, resumed))]))
    before, after = made
    assert broker.visible == after and broker.offsets == {tp: 7}
    assert len(after) < len(before)
    kept = iter(before)  # what stayed is in the outbox's order (merged updates aside)
    updates = service.topics.updates
    assert all(any(rec == r for r in kept) for rec in after if rec[0] != updates)
    states = [
        (body["full"], body["execution"]["state"]["current"])
        for topic, _, value, _ in after
        if topic == updates and value is not None
        for body in [records.loads(value)]
    ]
    assert states == [(True, "PAUSED"), (True, "SUCCESS")]
    logged = [key for topic, key, _, _ in after if topic == service.topics.changelog]
    assert (
        len(logged)
        == len(set(logged))
        < len([r for r in before if r[0] == service.topics.changelog])
    )
