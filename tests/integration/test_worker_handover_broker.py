"""A worker joining under load takes partitions from a live worker and runs no attempt twice
(kestream.runtime.worker_handover), on each broker.

One worker runs 2 s Sleeps submitted at a steady rate, so some end at every moment; a second
worker joins. The rebalance revokes every partition of the first worker, whose Sleeps go on, and
some end before the new assignment: their results go out but their offsets can no longer be
committed. The partitions that move to the new worker are handed over: the new worker runs none
of the jobs the first one finished. Each Sleep appends one line per run (``chaos.tasks.Effect``),
so a job run twice shows as a doubled effect in the tally.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from chaos_harness import (
    DRAIN_S,
    STUCK_BOUND_S,
    Cluster,
    UpdatesWatch,
    drain,
    read_effects,
    report,
    tally_executions,
)

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

SLEEP_S = 2.0
RATE_PER_S = 10.0
LOAD_S = 9.0
JOIN_AT_S = 3.0

FLOW = """
id: handover_sleep
namespace: chaos
tasks:
  - id: nap
    type: chaos.tasks.Effect
    path: {path}
    seconds: {seconds}
"""


async def test_a_worker_joining_under_load_runs_no_attempt_twice(
    broker: BrokerHandle,
    topic_prefix: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    effects = tmp_path / "effects.jsonl"
    async with Cluster(broker.bootstrap, topic_prefix, tmp_path, effects) as cluster:
        client = cluster.require_client()
        flow = await client.deploy(FLOW.format(path=effects, seconds=SLEEP_S))
        await cluster.start(executor=1, worker=1)
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            submitted: dict[str, float] = {}

            async def submit() -> None:
                execution_id = await client.submit(flow.namespace, flow.id)
                submitted[execution_id] = time.time()

            async def load() -> None:
                start, pending = time.monotonic(), []
                for index in range(int(LOAD_S * RATE_PER_S)):
                    await asyncio.sleep(max(0.0, start + index / RATE_PER_S - time.monotonic()))
                    pending.append(asyncio.create_task(submit()))
                await asyncio.gather(*pending)

            feeding = asyncio.create_task(load())
            await asyncio.sleep(JOIN_AT_S)
            joined = cluster.spawn("worker", 1)
            cluster.roles.append(joined)
            await cluster.ready([joined])
            await feeding
            await drain(watch, lambda: list(submitted), DRAIN_S)
            tally = tally_executions(
                "worker-join", broker.backend, submitted, watch, read_effects(effects), [],
                partitions=cluster.settings.partitions,
                bound_s=STUCK_BOUND_S[broker.kind] + SLEEP_S,
            )  # fmt: skip
            tally.details.extend(cluster.errors())
    report(tally, record_property)
    tally.assert_clean()
    first = (tmp_path / "worker-0.0.log").read_text(errors="replace")
    second = joined.log_path.read_text(errors="replace")
    # The partitions moved from a live worker, and went through a hand-over.
    assert "handed over to its next owner" in first, first[-3000:]
    assert "taken over from member" in second, second[-3000:]
