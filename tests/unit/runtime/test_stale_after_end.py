"""State records an execution's changelog got after its end (a member woken from a freeze past its
session, in the middle of writing a step from its old state) never bring the execution back: its
ended marker wins, at a recovery from the whole changelog and at one from a parked checkpoint,
and the records are cleared (they would come back as an execution in flight once the marker is
pruned). No broker: the changelog read is replaced by what the broker would answer."""

from __future__ import annotations

import asyncio
from typing import Any

from kestream.executor import codec
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.state import ExecutionState
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
namespace: test.stale
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    delay: PT1H
"""

MARKER = {"state": "KILLED", "attempt": 1, "at": "2026-01-01T00:00:00+00:00"}


def _service() -> ExecutorService:
    settings = Settings(broker="unused:9092", executor_inline_tasks=True)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow(PAUSED))
    service = ExecutorService(ctx, registry, metrics=Metrics())
    service.owned = {0}
    return service


def _created(service: ExecutorService, execution_id: str) -> ExecutionState:
    st = (
        Executor(service.registry)
        .step(None, ev.ExecutionCreated(execution_id, "test.stale", "paused"))
        .state
    )
    assert st is not None
    return st


def _stale(st: ExecutionState) -> dict[str, Any]:
    """The records of the step that created ``st``, as a zombie writes them after its end."""
    return dict(codec.encode_changes(st, list(st.task_runs), created=True, new_groups={""}))


def _answer(service: ExecutorService, latest: dict[str, Any], *, tombstones: bool) -> None:
    async def read(partitions: set[int], start: dict[int, int]) -> Any:
        answer = {p: PartitionRead(latest, tombstones=tombstones) for p in partitions}
        return answer, dict.fromkeys(partitions, 30)

    async def read_table(topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}

    service.recovery.restorer._read = read  # type: ignore[method-assign]
    service.recovery.restorer._read_table = read_table  # type: ignore[method-assign]


def test_a_recovery_from_the_whole_changelog_keeps_the_execution_ended() -> None:
    service = _service()
    st = _created(service, "e1")
    stale = _stale(st)
    latest = {"e1": {**stale, codec.header_key("e1", codec.ENDED): MARKER}}
    found = asyncio.run(service.recovery.restorer.rebuild(0, PartitionRead(latest)))
    assert found.states == [] and [e for e, _ in found.ended] == ["e1"]
    assert sorted(found.repairs) == sorted((key, None) for key in stale)


def test_a_parked_partition_keeps_the_execution_ended_whatever_came_after() -> None:
    """Parked with e1 in flight; meanwhile e1's new owner ended it (its tombstones, its marker)
    and a zombie wrote e1's state again after that: e1 stays ended, and is cleared."""
    service = _service()
    service._apply(0, ev.ExecutionCreated("e1", "test.stale", "paused"), Outbox(), ("x", 0))
    st = service.states["e1"]
    service.recovery.offsets[0] = 10
    asyncio.run(service.revoked({0}))
    assert len(service.recovery.parked) == 1
    stale = _stale(st)
    delta: dict[str, Any] = {key: None for key, _ in codec.tombstones(st)}
    delta.update(stale)  # written after the tombstones: the latest of each key
    delta[codec.header_key("e1", codec.ENDED)] = MARKER
    _answer(service, {"e1": delta}, tombstones=True)
    asyncio.run(service.assigned({0}))
    assert "e1" not in service.states and "e1" not in service.mirror
    marker = service.ended.get("e1")
    assert marker is not None and marker.attempt == 1
    assert sorted((k, v) for k, v, _ in service.recovery.repairs) == sorted(
        (k, None) for k in stale
    )
    assert {p for _, _, p in service.recovery.repairs} == {0}


def test_an_execution_ended_and_restarted_in_the_meantime_comes_back_in_flight() -> None:
    """A restart clears the marker before it writes the state: that state is no stale one."""
    service = _service()
    service._apply(0, ev.ExecutionCreated("e1", "test.stale", "paused"), Outbox(), ("x", 0))
    st = service.states["e1"]
    service.recovery.offsets[0] = 10
    asyncio.run(service.revoked({0}))
    delta: dict[str, Any] = dict(_stale(st))
    delta[codec.header_key("e1", codec.ENDED)] = None  # the restart's unmarking
    _answer(service, {"e1": delta}, tombstones=True)
    asyncio.run(service.assigned({0}))
    assert "e1" in service.states and service.ended.get("e1") is None
    assert service.recovery.repairs == []
