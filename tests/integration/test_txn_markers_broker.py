"""A transaction Apache Kafka completed without its markers, closed by its producer
(kestream.runtime.txn_markers), on a real broker restarted until one is left so.

A single node restarting has a moment with no partition leader while its transaction coordinator
still completes transactions, and it skips their markers there (KAFKA-20734, docs/brokers.md):
the records stay open, and a read-committed reader stops at them. That takes luck to hit, so
the test restarts the broker (SIGTERM, as the broker-restart chaos test does) while 16
producers, one per partition, commit a record each in a loop, and stop one after the other over
the broker's stop. A partition whose last stable offset then stays behind its high watermark
is hung. After each
restart the executor's healer, as the executor wires it
(:class:`~kestream.runtime.executor_transactions.PartitionTransactions`' ledger,
:class:`~kestream.runtime.txn_markers.ListedEnds`), must bring every hung partition its
producer noted (its last transaction there committed) level within :data:`HEAL_WITHIN_S`. Each
restart prints what it saw (``txn_markers: restart n: h hung, k noted, k closed in s``). A
run whose restarts leave no noted partition hung is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from aiokafka import TopicPartition
from chaos_harness import LONG
from executor_harness import Harness, wait_for

from kestream.executor import events as ev
from kestream.runtime.context import connect
from kestream.runtime.executor_transactions import PartitionTransactions, TxnWrite
from kestream.runtime.kafka import make_producer
from kestream.runtime.txn_markers import ListedEnds, MarkerHealer
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

Record = Callable[[str, object], None]
PARTITIONS = 16
#: From the look that finds a partition behind to every noted one level.
HEAL_WITHIN_S = 20.0
#: How long a partition must stay behind, nothing written, before it counts as hung: markers of
#: transactions the restart interrupted are still written for a moment after the start.
SETTLE_S = 4.0
#: Over how long after the broker's SIGTERM the producers stop beginning transactions.
STOP_SPREAD_S = 1.5
#: How long the writers get to end their transactions once the broker is back.
WRITERS_END_S = 90.0


async def _write(
    txns: PartitionTransactions, topic: str, partition: int, stop: asyncio.Event
) -> None:
    """Commit a record to ``partition`` in a transaction of its producer until ``stop``,
    through the restart: a dead producer is replaced (as the executor does), a failed
    transaction tried again."""
    n = 0
    while not stop.is_set():
        n += 1
        write = TxnWrite([(topic, f"p{partition}-{n}", b"{}", partition)])
        try:
            committed = await txns.commit({partition: write})
        except Exception:  # aborted (the broker away), or lost too often: again
            committed = None
            await asyncio.sleep(0.2)
        if committed is None or committed.lost:
            with contextlib.suppress(Exception):
                await txns.leave({partition})
                await txns.own({partition})


async def _behind(
    ends: ListedEnds, tps: set[TopicPartition]
) -> dict[TopicPartition, tuple[int, int]]:
    stable, high = await ends.of(tps)
    return {tp: (stable[tp], high[tp]) for tp in tps if stable[tp] < high[tp]}


async def _restarts(
    broker: BrokerHandle, prefix: str, rounds: int, record_property: Record
) -> None:
    from kestream.runtime.apache_kafka import ApacheKafka

    kafka = broker.process
    assert isinstance(kafka, ApacheKafka)
    settings = Settings(broker=broker.bootstrap, topic_prefix=prefix, partitions=PARTITIONS)
    ctx = await connect(settings)
    topic = ctx.topics.updates
    txns = PartitionTransactions(
        lambda tid: make_producer(settings, ctx.bootstrap, ctx.kind, transactional_id=tid),
        f"{prefix}heal-",
        f"{prefix}heal",
    )
    txns.ledger.quiet_s = 1.0
    ends = ListedEnds(settings, ctx.bootstrap, ctx.kind)

    async def close(closings: dict[int, set[TopicPartition]]) -> None:
        owned = {p: TxnWrite(markers=tps) for p, tps in closings.items() if p in txns.producers}
        await txns.commit(owned)

    healer = MarkerHealer(txns.ledger, ends, close)
    every = set(range(PARTITIONS))
    tps = {TopicPartition(topic, p) for p in every}
    seen: list[str] = []
    failures: list[str] = []
    closed = 0
    try:
        await txns.own(every)
        for round_ in range(1, rounds + 1):
            stops = {p: asyncio.Event() for p in every}
            writers = [asyncio.create_task(_write(txns, topic, p, stops[p])) for p in every]
            await asyncio.sleep(1.0)
            # The producers stop beginning transactions one after the other over the broker's
            # stop: the last transaction of some then commits while the partitions have no
            # leader, the moment that leaves markers out (a later transaction would close them,
            # as a busy executor partition's next cycle does).
            loop = asyncio.get_running_loop()
            for p in every:
                loop.call_later(p * STOP_SPREAD_S / PARTITIONS, stops[p].set)
            await kafka.restart()
            _, stuck = await asyncio.wait(writers, timeout=WRITERS_END_S)
            for writer in stuck:  # (a commit that never ends would fail the test below)
                writer.cancel()
            assert not stuck, f"{len(stuck)} writers still committing {WRITERS_END_S} s after"
            await asyncio.sleep(SETTLE_S)
            first = await _behind(ends, tps)
            await asyncio.sleep(SETTLE_S)
            hung = {tp: at for tp, at in (await _behind(ends, tps)).items() if tp in first}
            noted = {tp for notes in txns.ledger.notes.values() for tp in notes if tp in hung}
            line = f"restart {round_}: {len(hung)} hung, {len(noted)} noted"
            if noted:
                started = time.monotonic()
                left = set(noted)
                while left and time.monotonic() - started < HEAL_WITHIN_S:
                    await healer.check()
                    left = set(await _behind(ends, noted))
                    if left:
                        await asyncio.sleep(0.5)
                took = time.monotonic() - started
                closed += len(noted) - len(left)
                line += f", {len(noted) - len(left)} closed in {took:.1f} s"
                if left:
                    failures.append(f"restart {round_}: {sorted(left)} still behind")
            seen.append(line)
            print(f"txn_markers: {line}; hung {sorted(hung.items())}", flush=True)
        record_property("txn_markers", "; ".join(seen))
        assert not failures, f"not closed within {HEAL_WITHIN_S} s: {failures} ({seen})"
        if not closed:
            pytest.skip(f"no noted transaction left without its markers: {seen}")
    finally:
        await healer.stop()
        await txns.stop()


@pytest.mark.brokers("apache")
async def test_an_empty_transaction_that_adds_a_partition_writes_its_commit_marker_there(
    broker: BrokerHandle, topic_prefix: str
) -> None:
    """What a closing rests on: aiokafka's ``AddPartitionsToTxn`` and ``EndTxn`` for a partition
    added without a record, and Kafka writing the commit marker there all the same (a control
    record: the high watermark moves by one, the last stable offset with it, no record read)."""
    settings = Settings(broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=2)
    ctx = await connect(settings)
    tp = TopicPartition(ctx.topics.updates, 1)
    txns = PartitionTransactions(
        lambda tid: make_producer(settings, ctx.bootstrap, ctx.kind, transactional_id=tid),
        f"{topic_prefix}marker-",
        f"{topic_prefix}marker",
    )
    ends = ListedEnds(settings, ctx.bootstrap, ctx.kind)
    try:
        await txns.own({0})
        await txns.commit({0: TxnWrite([(tp.topic, "k", b"{}", tp.partition)])})
        before = await ends.of({tp})
        committed = await txns.commit({0: TxnWrite(markers={tp})})
        assert not committed.acked and not committed.lost and not committed.fenced
        assert before == ({tp: 2}, {tp: 2})  # the record and its marker
        seen = []
        for _ in range(40):  # the coordinator writes markers after it answers EndTxn
            stable, high = await ends.of({tp})
            seen.append((stable[tp], high[tp]))
            if seen[-1] == (3, 3):
                break
            await asyncio.sleep(0.25)
        print("marker:", seen, flush=True)
        assert seen[-1] == (3, 3), seen  # the closing's marker alone
    finally:
        await ends.stop()
        await txns.stop()


@pytest.mark.parametrize(
    "rounds", [pytest.param(3, id="short"), pytest.param(10, id="long", marks=LONG)]
)
@pytest.mark.brokers("apache")
async def test_a_partition_left_without_markers_by_a_restart_is_closed_by_its_producer(
    broker: BrokerHandle, topic_prefix: str, record_property: Record, rounds: int
) -> None:
    await _restarts(broker, topic_prefix, rounds, record_property)


W1 = """
id: w1
namespace: test.markers
tasks:
  - id: hello
    type: io.kestra.plugin.core.output.OutputValues
    values:
      message: "Hello"
"""


@pytest.mark.brokers("apache")
async def test_the_executor_looks_at_its_quiet_partitions_and_closes_those_held_back(
    broker: BrokerHandle, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The executor's own healer, as ``start()`` wires it under exactly-once: the partitions its
    transactions wrote are looked at once quiet and forgotten, level. A note made to claim a
    record past a partition's end (as a hang looks to it) is closed with empty transactions of
    the partition's producer, through the cycle's path (a commit marker each: the high
    watermark moves, no record), then given up as another producer's."""
    harness = await Harness.open(
        broker.bootstrap, topic_prefix, processing_guarantee="exactly_once"
    )
    try:
        harness.deploy(W1)
        service = await harness.start_executor()
        await asyncio.wait_for(service.ready.wait(), 60)
        assert service.healer is not None and service.writer.transactions is not None
        ledger = service.writer.transactions.ledger
        ledger.quiet_s = 5.0
        service.healer.check_every_s = 0.2
        await harness.send(ev.ExecutionCreated("mk-1", "test.markers", "w1"))
        await wait_for(lambda: harness.state_of("mk-1") == "SUCCESS", 60)
        assert ledger.notes  # the last cycle's partitions, noted (not quiet yet)
        await wait_for(lambda: not ledger.notes, 20)  # looked at, level: forgotten
        ledger.quiet_s = 1.0

        tp = TopicPartition(harness.ctx.topics.updates, 0)
        ends = ListedEnds(harness.ctx.settings, harness.ctx.bootstrap, harness.ctx.kind)
        try:
            _, high = await ends.of({tp})
            owner = min(service.owned)
            with caplog.at_level(logging.WARNING, logger="kestream.executor"):
                ledger.committed(owner, {tp: high[tp] + 100}, time.monotonic() - 5)
                await wait_for(lambda: "still held back after 3 closings" in caplog.text, 30)
            stable, after = await ends.of({tp})
        finally:
            await ends.stop()
        assert (stable[tp], after[tp]) == (high[tp] + 3, high[tp] + 3)  # three markers
        assert "closing them with empty transactions of executor partitions" in caplog.text
        assert service.failure is None
    finally:
        await harness.close()
