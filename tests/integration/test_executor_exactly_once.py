"""Exactly-once on a real broker (KESTREAM_PROCESSING_GUARANTEE=exactly_once).

On Apache Kafka an executor killed (SIGKILL) between producing a cycle's records and committing
its transaction leaves nothing a read-committed consumer sees: its partitions' next owner takes
their transactional ids (aborting what the killed one left open) and replays the events once.
A producer whose sender died (as a broker restart kills aiokafka's) is replaced in place, for
the same id, and the executor goes on. Tansu has no transactions: the executor keeps the
at-least-once path there.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.client import CoordinationType
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import OffsetAndMetadata
from executor_harness import Harness, wait_for

from kestream.executor import events as ev
from kestream.runtime import records
from kestream.runtime.compacted import read_partitions
from kestream.runtime.executor_transactions import PartitionTransactions, TxnWrite
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.producer_internals import sender_failure

pytestmark = pytest.mark.integration

VICTIM = Path(__file__).resolve().parent / "eos_victim.py"

W1 = """
id: w1
namespace: test.eos
tasks:
  - id: hello
    type: io.kestra.plugin.core.output.OutputValues
    values:
      message: "Hello"
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ outputs.hello.values.message }}"
"""


async def _terminal_updates(harness: Harness, execution_id: str, isolation: str) -> int:
    """How many terminal updates of the execution the updates topic holds, read to its end
    as a consumer of ``isolation`` reads it."""
    ctx = harness.ctx
    consumer = make_consumer(
        ctx.settings, ctx.bootstrap, ctx.kind, group_id=None, isolation_level=isolation
    )
    await consumer.start()
    found: list[dict[str, Any]] = []

    def keep(rec: Any) -> None:
        body = records.loads(rec.value)
        if body["execution"]["id"] == execution_id and body["terminal"]:
            found.append(body)

    try:
        topic = ctx.topics.updates
        parts = consumer.partitions_for_topic(topic) or set(range(ctx.settings.partitions))
        await read_partitions(consumer, [TopicPartition(topic, p) for p in parts], keep)
    finally:
        await consumer.stop()
    return len(found)


@pytest.mark.brokers("apache")  # Tansu has no transactions: test_tansu_keeps_the_at_least_once_path
async def test_a_kill_between_produce_and_commit_leaves_no_visible_duplicate(
    broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    harness = await Harness.open(
        broker.bootstrap, topic_prefix, processing_guarantee="exactly_once"
    )
    try:
        harness.deploy(W1)
        await harness.send(ev.ExecutionCreated("eos-1", "test.eos", "w1"))
        flow = tmp_path / "w1.yaml"
        flow.write_text(W1)
        victim = await asyncio.create_subprocess_exec(
            sys.executable, str(VICTIM), broker.bootstrap, topic_prefix, str(flow),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(victim.communicate(), 120)
        assert victim.returncode == -signal.SIGKILL, err.decode()[-2000:]
        assert b"killed between produce and commit" in out
        # The killed cycle's records are on the broker, in a transaction left open.
        assert await _terminal_updates(harness, "eos-1", "read_uncommitted") == 1
        assert harness.state_of("eos-1") is None

        await harness.start_executor()  # the next owner: aborts it, replays the creation
        await wait_for(lambda: harness.state_of("eos-1") == "SUCCESS", 60)
        assert await _terminal_updates(harness, "eos-1", "read_committed") == 1
        assert await _terminal_updates(harness, "eos-1", "read_uncommitted") == 2  # + aborted
        assert len([u for u in harness.updates["eos-1"] if u["terminal"]]) == 1
    finally:
        await harness.close()


async def _keys_read(harness: Harness, tp: TopicPartition, isolation: str) -> list[str]:
    """The keys of ``tp``'s records, read to its end as a consumer of ``isolation`` reads."""
    ctx = harness.ctx
    consumer = make_consumer(
        ctx.settings, ctx.bootstrap, ctx.kind, group_id=None, isolation_level=isolation
    )
    await consumer.start()
    keys: list[str] = []
    try:
        await read_partitions(consumer, [tp], lambda rec: keys.append(rec.key.decode()))
    finally:
        await consumer.stop()
    return keys


def _drop_the_next_group_lookup(producer: Any, bootstrap: str) -> None:
    """The broker drops the connection under the producer's next group coordinator lookup, as
    a broker that stops while a transaction sends its offsets does: aiokafka's sender does not
    retry that error, and dies of it."""
    client = producer.client
    lookup = client.coordinator_lookup

    async def dropped(coordinator_type: CoordinationType, key: str) -> Any:
        if coordinator_type != CoordinationType.GROUP:
            return await lookup(coordinator_type, key)
        client.coordinator_lookup = lookup
        raise KafkaConnectionError(f"Connection at {bootstrap} closed")

    client.coordinator_lookup = dropped


@pytest.mark.brokers("apache")
async def test_a_transactional_producer_whose_sender_died_is_replaced_for_the_same_id(
    broker: Any, topic_prefix: str
) -> None:
    """aiokafka's own sender, killed as a broker restart kills it, is told from a fence and from
    a failed transaction (:class:`Lost`); a fresh producer takes the same id, which aborts the
    dead one's open transaction, and commits: a read-committed consumer sees the record and the
    offsets once."""
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    ctx = harness.ctx
    group = f"{topic_prefix}eos-lost"
    txns = PartitionTransactions(
        lambda tid: make_producer(ctx.settings, ctx.bootstrap, ctx.kind, transactional_id=tid),
        f"{topic_prefix}executor-lost-",
        group,
    )
    out = TopicPartition(ctx.topics.updates, 0)
    source = TopicPartition(ctx.topics.executions, 0)

    def write(key: str, offset: int) -> TxnWrite:
        return TxnWrite([(out.topic, key, b"{}", 0)], {source: OffsetAndMetadata(offset, "")})

    try:
        await txns.own({0})
        dead = txns.producers[0]
        _drop_the_next_group_lookup(dead, ctx.bootstrap)
        committed = await txns.commit({0: write("first", 3)})
        assert set(committed.lost) == {0} and not committed.fenced and not committed.acked
        assert "KafkaConnectionError" in committed.lost[0].why
        assert sender_failure(dead) is committed.lost[0].cause

        await txns.leave({0})
        await txns.own({0})  # the same id, a fresh producer: the open transaction aborts
        assert txns.producers[0] is not dead
        again = await txns.commit({0: write("second", 3)})
        assert not again.lost and not again.fenced and len(again.acked) == 1
        assert await _keys_read(harness, out, "read_committed") == ["second"]
        assert await _keys_read(harness, out, "read_uncommitted") == ["first", "second"]
        reader = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=group)
        await reader.start()
        try:
            assert await reader.committed(source) == 3
        finally:
            await reader.stop()
    finally:
        await txns.stop()
        await harness.close()


@pytest.mark.brokers("apache")
async def test_an_executor_whose_producers_died_in_a_broker_restart_goes_on_in_place(
    broker: Any, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every partition's producer loses its sender at its first offsets commit, as a broker
    restart under it kills it: the processor does not stop. It replaces the producers (same
    ids), reads the partitions' state again and replays their events from the committed
    offsets: each execution ends once, as a read-committed consumer sees it."""
    harness = await Harness.open(
        broker.bootstrap, topic_prefix, processing_guarantee="exactly_once"
    )
    try:
        harness.deploy(W1)
        service = await harness.start_executor()
        await asyncio.wait_for(service.ready.wait(), 60)
        assert service.writer.transactions is not None
        dead = dict(service.writer.transactions.producers)
        for producer in dead.values():
            _drop_the_next_group_lookup(producer, harness.ctx.bootstrap)
        ids = [f"eos-died-{n}" for n in range(4)]
        with caplog.at_level(logging.WARNING, logger="kestream.executor"):
            for execution_id in ids:
                await harness.send(ev.ExecutionCreated(execution_id, "test.eos", "w1"))
            await wait_for(
                lambda: (
                    service.failure is not None
                    or all(harness.state_of(e) == "SUCCESS" for e in ids)
                ),
                90,
            )
        assert "transactional producers of partitions" in caplog.text
        assert service.failure is None and service.owned == set(dead)
        replaced = {
            p for p, old in dead.items() if service.writer.transactions.producers[p] is not old
        }
        assert replaced and all(sender_failure(dead[p]) is not None for p in replaced)
        for execution_id in ids:
            assert await _terminal_updates(harness, execution_id, "read_committed") == 1
    finally:
        await harness.close()


async def test_tansu_keeps_the_at_least_once_path(broker: Any, topic_prefix: str) -> None:
    """Asked for exactly-once, the executor uses transactions where the broker has them and
    the idempotent path on Tansu; a flow runs once either way."""
    harness = await Harness.open(
        broker.bootstrap, topic_prefix, processing_guarantee="exactly_once"
    )
    try:
        harness.deploy(W1)
        service = await harness.start_executor()
        await asyncio.wait_for(service.ready.wait(), 60)
        await harness.send(ev.ExecutionCreated("eos-2", "test.eos", "w1"))
        await harness.send(ev.ExecutionCreated("eos-2", "test.eos", "w1"))  # redelivered
        await wait_for(lambda: harness.state_of("eos-2") == "SUCCESS", 60)
        assert (service.writer.transactions is None) is (broker.kind == "tansu")
        isolation = "read_uncommitted" if broker.kind == "tansu" else "read_committed"
        assert harness._reader._isolation_level == isolation
        assert await _terminal_updates(harness, "eos-2", isolation) == 1
    finally:
        await harness.close()
