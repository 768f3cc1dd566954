"""A scheduler that steps down for good stops its process, so that its supervisor starts a new
one: on Apache Kafka, a second scheduler process given the first one's static instance id
(``KESTREAM_GROUP_INSTANCE_ID``) takes its place in the lease's group, which fences the first
(``FENCED_INSTANCE_ID``) and ends its group coordination for good. The first used to stay up,
not live, firing nothing and waiting for a liveness probe ``standalone`` does not have.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from chaos_harness import Cluster

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration


# Static membership, whose fencing this is, exists on Apache Kafka only.
@pytest.mark.brokers("apache")
async def test_a_scheduler_fenced_out_of_its_lease_group_exits(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    async with Cluster(broker.bootstrap, topic_prefix, tmp_path, tmp_path / "effects") as cluster:
        await cluster.start(scheduler=1)
        (first,) = cluster.roles
        second = cluster.spawn("scheduler", 0, generation=1)  # the same instance id
        cluster.roles.append(second)
        code = await asyncio.to_thread(first.proc.wait, 120)
        text = first.log_path.read_text(errors="replace")
        assert code not in (None, 0), text[-3000:]
        assert "stepped down for good" in text, text[-3000:]
        assert "the scheduler role failed; the process stops" in text
        await cluster.ready([second])
        assert second.proc.poll() is None  # the one holding the id goes on
