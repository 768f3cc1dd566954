"""A revoked partition is parked at its changelog checkpoint; when it comes back, recovery reads
only what the changelog got after the checkpoint. Without a broker: the changelog read is
replaced by what the broker would answer."""

from __future__ import annotations

import asyncio
from typing import Any

from kestream.executor import codec
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.step import Executor
from kestream.models.flow import parse_flow
from kestream.runtime.changelog_restorer import PartitionRead
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_outbox import Outbox
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.metrics import Metrics
from kestream.runtime.topics import Topics
from kestream.settings import Settings

PAUSED = """
id: paused
namespace: test.checkpoint
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    delay: PT1H
"""

Reads = list[tuple[set[int], dict[int, int]]]


def _service() -> tuple[ExecutorService, Reads]:
    settings = Settings(broker="unused:9092", executor_inline_tasks=True)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow(PAUSED))
    service = ExecutorService(ctx, registry, metrics=Metrics())
    service.owned = {0, 1}
    return service, []


def _answer(service: ExecutorService, reads: Reads, latest: dict[int, Any], end: int) -> None:
    """Make the changelog read answer ``latest`` (by partition) and ``end`` for each one."""

    async def read(partitions: set[int], start: dict[int, int]) -> Any:
        reads.append((set(partitions), dict(start)))
        answer = {p: PartitionRead(latest.get(p, {}), tombstones=True) for p in partitions}
        return answer, dict.fromkeys(partitions, end)

    async def read_table(topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}  # no flow-concurrency slots

    service.recovery.restorer._read = read  # type: ignore[method-assign]
    service.recovery.restorer._read_table = read_table  # type: ignore[method-assign]


def _start(service: ExecutorService, execution_id: str, partition: int = 0) -> None:
    created = ev.ExecutionCreated(execution_id, "test.checkpoint", "paused")
    service._apply(partition, created, Outbox(), ("executions", 0))


def test_a_partition_that_comes_back_is_read_from_its_checkpoint_only() -> None:
    service, reads = _service()
    _start(service, "e1")
    st = service.states["e1"]
    service.recovery.offsets[0] = 42  # the changelog offsets this processor wrote up to
    asyncio.run(service.revoked({0, 1}))
    assert service.states == {} and len(service.recovery.parked) == 1
    _answer(service, reads, {}, end=42)  # nobody wrote to it meanwhile
    asyncio.run(service.assigned({0}))
    assert reads == [({0}, {0: 42})]
    assert service.states["e1"] is st  # the same state: nothing rebuilt
    assert [t for e, t in service.timers.pending() if e == "e1"] == list(st.timers)
    assert "e1" in service.mirror and service.recovery.offsets[0] == 42


def test_records_written_meanwhile_are_applied_to_the_parked_partition() -> None:
    service, reads = _service()
    _start(service, "e1")
    _start(service, "e2")
    service.recovery.offsets[0] = 10
    asyncio.run(service.revoked({0}))
    # Meanwhile another member ended e1 and started e3 on partition 0.
    ended: dict[str, Any] = {key: None for key, _ in codec.tombstones(_parked(service, "e1"))}
    ended[codec.header_key("e1", codec.ENDED)] = {"state": "KILLED", "attempt": 1,
                                                  "at": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    other = Executor(service.registry)
    e3 = other.step(None, ev.ExecutionCreated("e3", "test.checkpoint", "paused")).state
    assert e3 is not None
    created = dict(codec.encode_changes(e3, list(e3.task_runs), created=True, new_groups={""}))
    _answer(service, reads, {0: {"e1": ended, "e3": created}}, end=17)
    asyncio.run(service.assigned({0}))
    assert reads == [({0}, {0: 10})]
    assert sorted(service.states) == ["e2", "e3"]
    marker = service.ended.get("e1")
    assert marker is not None and marker.attempt == 1
    assert service.recovery.offsets[0] == 17


def _parked(service: ExecutorService, execution_id: str) -> Any:
    return service.recovery.parked._parked[0].states[execution_id]


def test_a_partition_parked_too_long_is_read_whole() -> None:
    service, reads = _service()
    _start(service, "e1")
    service.recovery.offsets[0] = 42
    asyncio.run(service.revoked({0}))
    service.recovery.parked.max_age_s = 0.0  # older than allowed by the time it comes back
    _answer(service, reads, {}, end=50)
    asyncio.run(service.assigned({0}))
    assert reads == [({0}, {})]  # from the beginning
    assert service.states == {}  # what the changelog held (nothing, here), not what was parked


def test_a_partition_never_checkpointed_is_not_parked() -> None:
    service, reads = _service()
    _start(service, "e1", partition=1)
    asyncio.run(service.revoked({1}))
    assert len(service.recovery.parked) == 0
    _answer(service, reads, {}, end=0)
    asyncio.run(service.assigned({1}))
    assert reads == [({1}, {})]
