"""An executor killed with SIGKILL and started again recovers its partitions from the local
checkpoints (kestream/runtime/changelog_checkpoints.py) and the changelog's tail, not from
offset 0, and the executions in flight across the kill still end once each, with one effect.

The roles run as separate processes (tests/integration/chaos_harness.py); the restarted
executor's ``/metrics`` say how many changelog records its recovery read, which must be fewer
than the changelog holds, and how many it took from the checkpoints.

The checkpoint follower, on the same broker, drops its fold and its file when the changelog
it follows is deleted and created again (a memory-only broker restarted under a live
executor, an admin's reset), and recovery refuses a file written before."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from chaos_harness import (
    DRAIN_S,
    STUCK_BOUND_S,
    Cluster,
    Role,
    UpdatesWatch,
    drain,
    read_effects,
    tally_executions,
)

from kestream.executor.flow_registry import FlowRegistry
from kestream.runtime.changelog_checkpoints import (
    CheckpointFollower,
    CheckpointStore,
    RawFold,
    checkpoint_scope,
)
from kestream.runtime.changelog_restorer import ChangelogRestorer
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.kafka_connection import client_options
from kestream.runtime.tansu_compat import fetch_highwaters
from kestream.runtime.topics import Topics
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

FLOW = """
id: checkpointed
namespace: chaos
tasks:
  - id: nap
    type: chaos.tasks.Effect
    path: {path}
    seconds: {seconds}
"""

TOPIC_ALREADY_EXISTS = 36

#: Checkpoints at every turn with anything new, twice a second: the kill finds them written.
ENV = {
    "KESTREAM_EXECUTOR_CHECKPOINT_EVERY_S": "0.5",
    "KESTREAM_EXECUTOR_CHECKPOINT_MIN_RECORDS": "1",
}
_HEALTH = re.compile(r"/metrics and /health on (http://[\w.:\[\]]+)")
_RESTORED = re.compile(r'kestream_changelog_restored_records_total\{source="(\w+)"\} ([\d.e+]+)')


async def _changelog_ends(cluster: Cluster) -> dict[int, int]:
    """Each changelog partition's end offset now."""
    settings = cluster.settings
    kind = cluster.require_client().ctx.kind
    consumer = make_consumer(settings, cluster.bootstrap, kind, group_id=None)
    await consumer.start()
    try:
        topic = Topics.of(settings).changelog
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends = await fetch_highwaters(consumer, tps)
    finally:
        await consumer.stop()
    return {tp.partition: end for tp, end in ends.items()}


async def _grown(cluster: Cluster, records: int) -> None:
    """Until the changelog holds at least ``records`` records."""
    deadline = time.monotonic() + 60
    while sum((await _changelog_ends(cluster)).values()) < records:
        assert time.monotonic() < deadline, "the executions never started"
        await asyncio.sleep(0.1)


async def _checkpointed(store: CheckpointStore, ends: dict[int, int]) -> None:
    """Until every partition with records has a checkpoint at least as far as ``ends``."""
    deadline = time.monotonic() + 60
    while True:
        covered = [
            (cp := store.load(p)) is not None and cp.last_offset + 1 >= end
            for p, end in ends.items()
            if end > 0
        ]
        if all(covered):
            return
        assert time.monotonic() < deadline, f"checkpoints not written: {covered}"
        await asyncio.sleep(0.25)


async def _scope(ctx: BrokerContext) -> str:
    consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
    await consumer.start()
    try:
        return await checkpoint_scope(ctx, consumer)
    finally:
        await asyncio.sleep(0)  # aiokafka 0.14: a group-less consumer stopped at once hangs up
        await consumer.stop()


def _restored(role: Role) -> dict[str, float]:
    """The role's kestream_changelog_restored_records_total, by source."""
    found = _HEALTH.search(role.log_path.read_text(errors="replace"))
    assert found is not None, f"{role.label} logged no metrics address"
    with urllib.request.urlopen(found.group(1) + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {source: float(count) for source, count in _RESTORED.findall(text)}


async def test_a_killed_executor_recovers_from_its_checkpoints_and_the_tail(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.jsonl"
    async with Cluster(broker.bootstrap, topic_prefix, tmp_path, effects, ENV) as cluster:
        client = cluster.require_client()
        flow = await client.deploy(FLOW.format(path=effects, seconds=3))
        await cluster.start(executor=1, worker=1)
        store = CheckpointStore(
            tmp_path / "data",
            Topics.of(cluster.settings).changelog,
            max_age_s=3600,
            scope=await _scope(client.ctx),  # the one the executor's follower takes
        )
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            submitted: dict[str, float] = {}

            async def submit(count: int) -> None:
                for execution_id in await asyncio.gather(
                    *(client.submit(flow.namespace, flow.id) for _ in range(count))
                ):
                    submitted[execution_id] = time.time()

            await submit(40)  # a round that ends before the kill: its records checkpointed
            await drain(watch, lambda: list(submitted), DRAIN_S)
            ends = await _changelog_ends(cluster)
            await _checkpointed(store, ends)
            await submit(40)  # a round in flight across the kill (3 s naps)
            await _grown(cluster, sum(ends.values()) + 40)  # its executions are running
            (executor,) = cluster.live("executor")
            cluster.kill(executor)
            restarted = cluster.restart(executor)
            await cluster.ready([restarted])
            held = sum((await _changelog_ends(cluster)).values())
            restored = _restored(restarted)
            await drain(watch, lambda: list(submitted), DRAIN_S)
            tally = tally_executions(
                "executor-checkpoints", broker.backend, submitted, watch, read_effects(effects),
                cluster.kills, partitions=cluster.settings.partitions,
                bound_s=STUCK_BOUND_S[broker.kind],
            )  # fmt: skip
            tally.details.extend(cluster.errors())
    print(f"\n{tally.table()}\nchangelog records: {held}, recovery took {restored}")
    tally.assert_clean()
    assert len(submitted) == 80
    assert restored.get("checkpoint", 0) > 0, restored
    assert restored.get("changelog", 0) < held, (restored, held)


async def _recreate(ctx: BrokerContext, topic: str) -> None:
    """Delete ``topic`` and create it again, empty, as kestream creates its changelogs. Kafka
    deletes a topic in the background and answers a create meanwhile with an error code (not
    an exception): created again once it is gone, and used once the metadata lists it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=ctx.bootstrap, **client_options(ctx.settings))
    await admin.start()
    try:
        deleted = await admin.delete_topics([topic])
        assert all(code == 0 for _, code, *_ in deleted.topic_error_codes), deleted
        deadline = time.monotonic() + 60
        new = NewTopic(
            topic, ctx.settings.partitions, 1, topic_configs={"cleanup.policy": "compact"}
        )
        while True:
            created = await admin.create_topics([new])
            codes = [code for _, code, *_ in created.topic_errors]
            if codes == [0]:
                break
            assert codes == [TOPIC_ALREADY_EXISTS], created
            assert time.monotonic() < deadline, f"{topic} was not deleted"
            await asyncio.sleep(0.5)
        while True:
            listed = await admin.describe_topics([topic])
            if listed and not listed[0]["error_code"] and listed[0]["partitions"]:
                break
            assert time.monotonic() < deadline, f"{topic} was not created again"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    # A broker applies the deletion after its controller committed it; until then it still
    # serves (and appends to) the old log: records are written once it serves the new one.
    consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        while (await fetch_highwaters(consumer, [tp]))[tp] != 0:
            assert time.monotonic() < deadline, f"the broker still serves the old {topic}"
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def test_the_follower_drops_its_checkpoint_when_the_changelog_is_created_again(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        broker=broker.bootstrap,
        topic_prefix=topic_prefix,
        data_dir=str(tmp_path),
        executor_checkpoint_max_age_h=48,
    )
    ctx = await connect(settings)
    topic = ctx.topics.changelog
    producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
    await producer.start()

    async def produce(name: str, count: int) -> None:
        for i in range(count):
            value = orjson.dumps({"n": i})
            await producer.send_and_wait(topic, value, key=f"{name}{i}#".encode(), partition=0)

    store = CheckpointStore(tmp_path, topic, max_age_s=48 * 3600)
    follower = CheckpointFollower(ctx, store, every_s=1000, min_records=1)
    try:
        await produce("old", 10)
        await follower.start()
        assert store.scope == await _scope(ctx)
        assert store.directory == tmp_path / "executor-checkpoints" / store.scope / topic
        if broker.kind == "kafka":  # its default delete.retention.ms: a day, below the setting
            assert store.max_age_s == 24 * 3600
        follower.follow(0, RawFold())
        await follower.turn(final=True)
        written = store.load(0)
        assert written is not None and written.last_offset == 9 and follower.written == 1
        before = store.path(0).read_bytes()

        await _recreate(ctx, topic)
        await produce("new", 14)  # past the old end: offsets alone cannot tell
        await follower.turn(final=True)
        assert follower.dropped == 1 and follower.following() == set()
        assert not store.path(0).exists() and follower.written == 1

        store.path(0).write_bytes(before)  # a file from before, left by another process
        loaded = await follower.load({0})
        assert set(loaded) == {0}
        restorer = ChangelogRestorer(ctx, FlowRegistry())
        found, ends = await restorer.recover_from({0}, loaded)
    finally:
        await follower.stop()
        await producer.stop()
    assert ends[0] == 14 and found[0].checkpoint_records == 0 and found[0].read_records == 14
    fold = found[0].fold
    assert fold is not None and not fold.from_file
    assert sorted(fold.read.latest) == sorted(f"new{i}" for i in range(14))
