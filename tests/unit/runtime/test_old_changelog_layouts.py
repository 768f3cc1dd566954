"""This version recovers a changelog written by the version before the whole-execution record
and the lanes left to recovery (old_changelog/records.json: that version's executor's own
records, made by old_changelog/generate.py), and runs its executions to their end.

Executions in flight of each shape (a sequence, a Parallel, a ForEach, each with its root plan
record ``<id>+``) and one that ended come back through the executor's own recovery (its
assignment, the changelog read stood in for), are stepped on by this version to SUCCESS, and the
changelog then holds none of their old records: a second recovery finds them ended."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime.changelog_fold import PartitionRead
from kestream.runtime.changelog_restorer import ChangelogRestorer
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import EXECUTOR_ASSIGNORS, ExecutorService, Outbox
from kestream.runtime.metrics import Metrics
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from kestream.tasks.base import RunnableTask

HERE = Path(__file__).parent / "old_changelog"

#: What the previous version had done of each execution in flight: task id (with its loop
#: value) to state.
IN_FLIGHT = {
    "seq-0": {"first": StateType.RUNNING},
    "seq-1": {"first": StateType.SUCCESS, "second": StateType.RUNNING},
    "par-1": {
        "both": StateType.RUNNING,
        "left": StateType.SUCCESS,
        "right": StateType.RUNNING,
    },
    "each-2": {
        "loop": StateType.RUNNING,
        "say[a]": StateType.SUCCESS,
        "say[b]": StateType.SUCCESS,
        "say[c]": StateType.RUNNING,
    },
}
#: Every task run each execution has once it ended.
ALL_RUNS = {
    "seq-0": {"first", "second", "third"},
    "seq-1": {"first", "second", "third"},
    "par-1": {"both", "left", "right", "after"},
    "each-2": {"loop", "say[a]", "say[b]", "say[c]", "last"},
}


def _old_records() -> list[tuple[str, bytes | None]]:
    raw = json.loads((HERE / "records.json").read_text())
    assert {r["partition"] for r in raw} == {0}
    return [(r["key"], None if r["value"] is None else base64.b64decode(r["value"])) for r in raw]


class _Changelog:
    """Changelog partition 0 as the restorer reads it (its broker read stood in for)."""

    def __init__(self, recs: list[tuple[str, bytes | None]]) -> None:
        self.recs = list(recs)

    async def read_with(
        self, restorer: ChangelogRestorer, partitions: set[int], start: Mapping[int, int], keep: Any
    ) -> dict[int, int]:
        topic = restorer.ctx.topics.changelog
        for offset, (key, value) in enumerate(self.recs[start.get(0, 0) :], start.get(0, 0)):
            keep(ConsumerRecord(topic, 0, offset, 0, 0, key.encode(), value, None, 0, 0, []))
        return {0: len(self.recs)}


@pytest.fixture
def changelog(monkeypatch: pytest.MonkeyPatch) -> _Changelog:
    log = _Changelog(_old_records())

    async def read_with(self: ChangelogRestorer, *args: Any) -> dict[int, int]:
        return await log.read_with(self, *args)

    async def empty(self: ChangelogRestorer, topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}

    monkeypatch.setattr(ChangelogRestorer, "_read_with", read_with)
    monkeypatch.setattr(ChangelogRestorer, "_read_table", empty)
    return log


def _executor() -> ExecutorService:
    settings = Settings(broker="unused:9092", executor_inline_tasks=False)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    for path in sorted(HERE.glob("*.yaml")):
        registry.put(parse_flow(path.read_text()))
    service = ExecutorService(ctx, registry, metrics=Metrics())
    asyncio.run(service.assigned({0}))  # recovers partition 0 from its changelog
    return service


def _runs(service: ExecutorService, execution_id: str) -> dict[str, StateType]:
    st = service.states[execution_id]
    return {
        tr.task.id + (f"[{tr.value}]" if tr.value is not None else ""): tr.state.current
        for tr in st.task_runs.values()
    }


def _ended_state(changelog: _Changelog, execution_id: str) -> str:
    """The state of ``execution_id``'s last ended marker in the changelog."""
    (value,) = [v for k, v in changelog.recs if k == f"{execution_id}!"][-1:]
    assert value is not None
    return str(json.loads(value)["state"])


def test_the_previous_layouts_are_recovered_and_run_to_their_end(changelog: _Changelog) -> None:
    service = _executor()
    assert set(service.states) == set(IN_FLIGHT)
    for execution_id, runs in IN_FLIGHT.items():
        assert service.states[execution_id].state.current is StateType.RUNNING
        assert _runs(service, execution_id) == runs
    ended = service.ended.get("seq-end")
    assert ended is not None and "seq-end" not in service.states

    for execution_id in IN_FLIGHT:
        seen: set[str] = set()
        for _ in range(10):  # each round ends the running jobs; the flows need at most 4
            st = service.states.get(execution_id)
            if st is None:
                break
            running = [
                tr
                for tr in st.task_runs.values()
                if isinstance(tr.task, RunnableTask) and tr.state.current is StateType.RUNNING
            ]
            seen |= set(_runs(service, execution_id))
            for tr in running:
                out = Outbox()
                result = ev.WorkerResult(execution_id, tr.id, 1, StateType.SUCCESS, {})
                service._apply(0, result, out, ("worker-results", 0))
                out.coalesce()
                changelog.recs += [(key, value) for key, value, _ in out.changelog]
        assert execution_id not in service.states and service.ended.get(execution_id)
        assert _ended_state(changelog, execution_id) == StateType.SUCCESS.value
        assert seen == ALL_RUNS[execution_id]

    again = _executor()  # the old records and this version's, read once more
    assert again.states == {}
    fold = PartitionRead()
    for offset, (key, value) in enumerate(changelog.recs):
        fold.add(ConsumerRecord("changelog", 0, offset, 0, 0, key.encode(), value, None, 0, 0, []))
    for execution_id in [*IN_FLIGHT, "seq-end"]:
        assert again.ended.get(execution_id) is not None
        # the old root plan and task-run records were cleared by this version's end
        assert set(fold.latest[execution_id]) == {f"{execution_id}!"}


def test_the_previous_versions_executors_share_no_group_protocol_with_this_ones() -> None:
    """They offered ``range`` (and before it round robin): one group of both would hand a
    previous version's member partitions whose changelog it cannot read
    (tests/integration/test_executor_layout_guard.py joins them on a broker)."""
    assert {a.name for a in EXECUTOR_ASSIGNORS}.isdisjoint({"range", "roundrobin"})
