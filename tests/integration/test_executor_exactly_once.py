"""Exactly-once on a real broker (KESTREAM_PROCESSING_GUARANTEE=exactly_once).

On Apache Kafka an executor killed (SIGKILL) between producing a cycle's records and committing
its transaction leaves nothing a read-committed consumer sees: its partitions' next owner takes
their transactional ids (aborting what the killed one left open) and replays the events once.
Tansu has no transactions: the executor keeps the at-least-once path there.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from executor_harness import Harness, wait_for

from kestream.executor import events as ev
from kestream.runtime import records
from kestream.runtime.compacted import read_partitions
from kestream.runtime.kafka import make_consumer

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
