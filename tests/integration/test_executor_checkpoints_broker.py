"""An executor killed with SIGKILL and started again recovers its partitions from the local
checkpoints (kestream/runtime/changelog_checkpoints.py) and the changelog's tail, not from
offset 0, and the executions in flight across the kill still end once each, with one effect.

The roles run as separate processes (tests/integration/chaos_harness.py); the restarted
executor's ``/metrics`` say how many changelog records its recovery read, which must be fewer
than the changelog holds, and how many it took from the checkpoints."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka import TopicPartition
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

from kestream.runtime.changelog_checkpoints import CheckpointStore
from kestream.runtime.kafka import make_consumer
from kestream.runtime.tansu_compat import fetch_highwaters
from kestream.runtime.topics import Topics

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
            tmp_path / "data", Topics.of(cluster.settings).changelog, max_age_s=3600
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
