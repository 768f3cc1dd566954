"""Restart of an ended execution on a real broker: the snapshot comes back as the restart event.

An ended execution leaves the executor's state table (only the ``ended`` marker stays); the
restart event carries the execution's last JSON, merged from the execution-updates topic as the
API's index merges it, and the executor rebuilds the state from it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from executor_harness import Harness, wait_for

from kestream.executor import events as ev
from kestream.runtime.execution_updates import MergedExecution, merge_update

pytestmark = pytest.mark.integration

FAILS_ONCE = """
id: fails-once
namespace: test.restore
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: "{{ execution.id }}"
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: flaky
        type: io.kestra.plugin.core.log.Log
        message: "{{ taskrun.attemptsCount == 1 ? 'ok' : ko }}"
      - id: uses
        type: io.kestra.plugin.core.debug.Return
        format: "{{ outputs.first.value }}"
errors:
  - id: handler
    type: io.kestra.plugin.core.log.Log
    message: handled
"""

PAUSES = """
id: pauses
namespace: test.restore
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: resumed
"""


def _merged(harness: Harness, execution_id: str) -> MergedExecution:
    merged: MergedExecution | None = None
    for update in harness.updates.get(execution_id, []):
        merged = merge_update(merged, update)
    assert merged is not None
    return merged


def _snapshot(merged: MergedExecution) -> dict[str, Any]:
    """The execution JSON as the index keeps it (header fields plus the task runs, in order)."""
    return {**merged.header, "taskRunList": list(merged.runs.values())}


def _ends(harness: Harness, execution_id: str) -> list[tuple[int, str]]:
    return [
        (u["execution"]["metadata"]["attemptNumber"], u["execution"]["state"]["current"])
        for u in harness.updates.get(execution_id, [])
        if u["terminal"]
    ]


async def test_restart_from_snapshot_after_the_state_left_the_table(broker, topic_prefix) -> None:  # type: ignore[no-untyped-def]
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    try:
        harness.deploy(FAILS_ONCE)
        service = await harness.start_executor()
        await asyncio.wait_for(service.ready.wait(), 30)
        await harness.send(ev.ExecutionCreated("r-1", "test.restore", "fails-once"))
        await wait_for(lambda: _ends(harness, "r-1") == [(1, "FAILED")])
        assert "r-1" not in service.states and "r-1" in service.ended
        failed = _merged(harness, "r-1")
        first_ids = {run["taskId"]: run["id"] for run in failed.runs.values()}
        assert set(first_ids) == {"first", "seq", "flaky", "handler"}

        await harness.send(ev.Restart("r-1"))  # no state, no snapshot: nothing to restart
        await harness.send(ev.Restart("r-1", _snapshot(failed)))
        await wait_for(lambda: len(_ends(harness, "r-1")) == 2)
        assert _ends(harness, "r-1") == [(1, "FAILED"), (2, "SUCCESS")]
        done = _merged(harness, "r-1").model()
        assert done.metadata.attemptNumber == 2
        runs = {run.taskId: run for run in done.taskRunList}
        assert set(runs) == {"first", "seq", "flaky", "uses"}  # the errors branch was dropped
        for task_id in ("first", "seq", "flaky"):
            assert runs[task_id].id == first_ids[task_id]
        assert [a.state.current.value for a in runs["flaky"].attempts or []] == [
            "FAILED",
            "SUCCESS",
        ]
        assert runs["uses"].outputs == {"value": "r-1"}
        assert "r-1" not in service.states and "r-1" in service.ended

        # a redelivered creation is still a no-op; a restart of a successful end too, and so is
        # a restart replayed with the first attempt's snapshot (it would run attempt 2 again)
        await harness.send(ev.ExecutionCreated("r-1", "test.restore", "fails-once"))
        await harness.send(ev.Restart("r-1", _snapshot(_merged(harness, "r-1"))))
        await harness.send(ev.Restart("r-1", _snapshot(failed)))
        await harness.send(ev.ExecutionCreated("r-2", "test.restore", "fails-once"))
        await wait_for(lambda: len(_ends(harness, "r-2")) == 1)
        await asyncio.sleep(1.0)  # r-2 may sit on another partition: give r-1's events time
        assert _ends(harness, "r-1") == [(1, "FAILED"), (2, "SUCCESS")]
    finally:
        await harness.close()


async def test_restored_execution_survives_an_executor_handover(broker, topic_prefix) -> None:  # type: ignore[no-untyped-def]
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    try:
        harness.deploy(PAUSES)
        first = await harness.start_executor()
        await asyncio.wait_for(first.ready.wait(), 30)
        await harness.send(ev.ExecutionCreated("k-1", "test.restore", "pauses"))
        await wait_for(lambda: harness.state_of("k-1") == "PAUSED")
        await harness.send(ev.Kill("k-1"))
        await wait_for(lambda: _ends(harness, "k-1") == [(1, "KILLED")])
        await harness.send(ev.Restart("k-1", _snapshot(_merged(harness, "k-1"))))
        await wait_for(lambda: harness.state_of("k-1") == "PAUSED")
        assert first.states["k-1"].attempt_number == 2

        # the restored state went to the changelog: the next owner recovers it
        await first.stop()
        harness.services.remove(first)
        second = await harness.start_executor()
        await asyncio.wait_for(second.ready.wait(), 60)
        assert second.states["k-1"].attempt_number == 2
        await harness.send(ev.Resume("k-1"))
        await wait_for(lambda: len(_ends(harness, "k-1")) == 2)
        assert _ends(harness, "k-1") == [(1, "KILLED"), (2, "SUCCESS")]
        done = _merged(harness, "k-1").model()
        assert [run.taskId for run in done.taskRunList] == ["wait", "after"]
        assert done.taskRunList[0].state.current.value == "SUCCESS"
    finally:
        await harness.close()
