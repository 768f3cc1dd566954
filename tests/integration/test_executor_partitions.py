"""The executor's consumer group gives every input's partition ``p`` (executions, worker
results, admissions) to one processor, whatever the number of processors: an execution's events
and its flow's slot table must meet their state. Round robin, aiokafka's default, splits them
as soon as the processors do not divide the partitions (three processors on four here)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from executor_harness import Harness, wait_for

from kestream.runtime.executor_service import ExecutorService

pytestmark = pytest.mark.integration


def _by_topic(service: ExecutorService) -> dict[str, set[int]]:
    assert service._consumer is not None
    found: dict[str, set[int]] = defaultdict(set)
    for tp in service._consumer.assignment():
        found[tp.topic].add(tp.partition)
    return found


async def test_three_processors_own_the_same_partitions_of_every_input(
    broker: Any, topic_prefix: str
) -> None:
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    try:
        services = [await harness.start_executor() for _ in range(3)]
        inputs = {harness.ctx.topics.executions, harness.ctx.topics.results}
        inputs.add(harness.ctx.topics.admissions)

        def settled() -> bool:
            assigned = [_by_topic(s) for s in services]
            numbers = [p for found in assigned for p in found.get(harness.ctx.topics.results, ())]
            return sorted(numbers) == [0, 1, 2, 3] and all(s.ready.is_set() for s in services)

        await wait_for(settled, 60)
        for service in services:
            found = _by_topic(service)
            assert set(found) <= inputs
            assert all(numbers == service.owned for numbers in found.values()), found
        owned = [p for service in services for p in service.owned]
        assert sorted(owned) == [0, 1, 2, 3]
    finally:
        await harness.close()
