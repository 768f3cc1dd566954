"""Replay: a new execution that keeps what ran before a task run and runs again from it."""

from __future__ import annotations

import pytest

from kestream.executor import events as ev
from kestream.executor.codec import encode_changes, rebuild
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.replay import ReplayError, replay_event, replay_state
from kestream.executor.restore import RestoreError
from kestream.models.execution import Execution, TaskRun
from kestream.models.flow import parse_flow
from kestream.models.inputs import InputValidationError
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.testing import Driver

S = StateType
NS = "test.replay"

SEQUENTIAL = f"""
id: seq
namespace: {NS}
inputs:
  - id: ok
    type: BOOLEAN
    defaults: false
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: "first {{{{ inputs.ok }}}}"
  - id: check
    type: io.kestra.plugin.core.execution.Assert
    conditions:
      - "{{{{ inputs.ok }}}}"
  - id: last
    type: io.kestra.plugin.core.debug.Return
    format: "after {{{{ outputs.first.value }}}}"
errors:
  - id: on_error
    type: io.kestra.plugin.core.log.Log
    message: failed
"""


def _run(execution: Execution, task_id: str) -> TaskRun:
    (run,) = [run for run in execution.taskRunList if run.taskId == task_id]
    return run


def _history(execution: Execution) -> list[StateType]:
    return [h.state for h in execution.state.histories]


def test_replay_from_a_task_run_keeps_what_ran_before_it() -> None:
    with Driver() as driver:
        driver.deploy(SEQUENTIAL)
        failed = driver.start(NS, "seq")
        check = _run(failed, "check")
        replayed = driver.replay(failed.id, task_run_id=check.id, inputs={"ok": True})
        original = driver.get(failed.id)
    assert failed.state.current is S.FAILED
    assert replayed.state.current is S.SUCCESS
    assert replayed.id != failed.id
    assert replayed.parentId == failed.id and replayed.originalId == failed.originalId
    assert replayed.metadata.attemptNumber == 2
    created = failed.metadata.originalCreatedDate  # kept, at the JSON's millisecond precision
    assert replayed.metadata.originalCreatedDate == created.replace(
        microsecond=created.microsecond // 1000 * 1000
    )
    assert replayed.label_map()["system.replay"] == "true"
    assert replayed.inputs == {"ok": True}
    # the history goes on from the replayed execution's
    assert _history(replayed) == [*_history(failed), S.RESTARTED, S.RUNNING, S.SUCCESS]
    first = _run(replayed, "first")  # kept as it ran (with the old inputs), under a new id
    assert first.id != _run(failed, "first").id
    assert first.outputs == {"value": "first false"}
    assert [h.state for h in first.state.histories] == [S.CREATED, S.RUNNING, S.SUCCESS]
    again = _run(replayed, "check")
    assert [h.state for h in again.state.histories][-3:] == [S.RESTARTED, S.RUNNING, S.SUCCESS]
    assert _run(replayed, "last").outputs == {"value": "after first false"}
    assert [run.taskId for run in replayed.taskRunList] == ["first", "check", "last"]
    assert original.state.current is S.FAILED  # the replayed execution is left as it was
    assert [run.taskId for run in original.taskRunList] == ["first", "check", "on_error"]


def test_replay_without_a_task_run_runs_the_flow_again_from_its_start() -> None:
    with Driver() as driver:
        driver.deploy(SEQUENTIAL)
        failed = driver.start(NS, "seq")
        again = driver.replay(failed.id)
        with_inputs = driver.replay(failed.id, inputs={"ok": True})
    assert again.state.current is S.FAILED
    assert _history(again) == [S.CREATED, S.RUNNING, S.FAILED]
    assert again.parentId == failed.id and again.label_map()["system.replay"] == "true"
    assert again.inputs == {"ok": False}
    assert with_inputs.state.current is S.SUCCESS
    assert _run(with_inputs, "first").outputs == {"value": "first true"}


def test_replay_from_the_first_task_of_a_successful_execution() -> None:
    with Driver() as driver:
        driver.deploy(SEQUENTIAL)
        done = driver.start(NS, "seq", {"ok": True})
        first = _run(done, "first")
        replayed = driver.replay(done.id, task_run_id=first.id, inputs={"ok": False})
    assert done.state.current is S.SUCCESS
    assert replayed.state.current is S.FAILED  # every task ran again, with the new inputs
    assert _run(replayed, "first").outputs == {"value": "first false"}
    assert [run.taskId for run in replayed.taskRunList] == ["first", "check", "on_error"]


PARALLEL = f"""
id: par
namespace: {NS}
inputs:
  - id: ok
    type: BOOLEAN
    defaults: false
tasks:
  - id: both
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: left
        type: io.kestra.plugin.core.debug.Return
        format: left
      - id: right
        type: io.kestra.plugin.core.execution.Assert
        conditions:
          - "{{{{ inputs.ok }}}}"
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: after
"""


def test_replay_inside_a_parallel_keeps_the_other_branch() -> None:
    with Driver() as driver:
        driver.deploy(PARALLEL)
        failed = driver.start(NS, "par")
        right = _run(failed, "right")
        replayed = driver.replay(failed.id, task_run_id=right.id, inputs={"ok": True})
    assert failed.state.current is S.FAILED
    assert replayed.state.current is S.SUCCESS
    left = _run(replayed, "left")
    assert left.id != _run(failed, "left").id
    assert [h.state for h in left.state.histories] == [S.CREATED, S.RUNNING, S.SUCCESS]
    both = _run(replayed, "both")  # its parent went back to RUNNING, then ended well
    assert [h.state for h in both.state.histories][-3:] == [S.FAILED, S.RUNNING, S.SUCCESS]
    assert {run.taskId for run in replayed.taskRunList} == {"both", "left", "right", "after"}
    assert left.parentTaskRunId == both.id


DAG = f"""
id: dag
namespace: {NS}
tasks:
  - id: graph
    type: io.kestra.plugin.core.flow.Dag
    tasks:
      - task:
          id: a
          type: io.kestra.plugin.core.debug.Return
          format: a
      - task:
          id: b
          type: io.kestra.plugin.core.debug.Return
          format: b
        dependsOn: [a]
      - task:
          id: c
          type: io.kestra.plugin.core.debug.Return
          format: c
      - task:
          id: d
          type: io.kestra.plugin.core.debug.Return
          format: d
        dependsOn: [b]
"""


def test_replay_in_a_dag_drops_only_the_tasks_that_depend_on_the_chosen_one() -> None:
    with Driver() as driver:
        driver.deploy(DAG)
        done = driver.start(NS, "dag")
        b = _run(done, "b")
        flow = driver.flows.get(NS, "dag")
        assert flow is not None
        snapshot = done.model_dump(mode="json", by_alias=True)
        event = replay_event(snapshot, flow, execution_id="r1", task_run_id=b.id)
        state, chosen = replay_state(event, flow)
        replayed = driver.replay(done.id, task_run_id=b.id)
    kept = {tr.task.id: tr.state.current for tr in state.task_runs.values()}
    assert kept == {"graph": S.RUNNING, "a": S.SUCCESS, "b": S.RESTARTED, "c": S.SUCCESS}
    assert chosen.task.id == "b" and state.state.current is S.RESTARTED
    assert replayed.state.current is S.SUCCESS
    assert {run.taskId for run in replayed.taskRunList} == {"graph", "a", "b", "c", "d"}
    assert len(_run(replayed, "a").state.histories) == 3  # not run again


def test_what_cannot_be_replayed_is_refused() -> None:
    pause = f"""
id: wait
namespace: {NS}
tasks:
  - id: hold
    type: io.kestra.plugin.core.flow.Pause
"""
    with Driver() as driver:
        driver.deploy(SEQUENTIAL)
        driver.deploy(pause)
        failed = driver.start(NS, "seq")
        paused = driver.start(NS, "wait")
        flow = driver.flows.get(NS, "seq")
        assert flow is not None
        snapshot = failed.model_dump(mode="json", by_alias=True)
        with pytest.raises(ReplayError, match="only an ended execution"):
            driver.replay(paused.id)
        with pytest.raises(ReplayError, match="has no task run 'nope'"):
            replay_event(snapshot, flow, execution_id="x", task_run_id="nope")
        with pytest.raises(InputValidationError):
            replay_event(snapshot, flow, execution_id="x", inputs={"ok": "maybe"})
        on_error = _run(failed, "on_error")
        event = replay_event(snapshot, flow, execution_id="x", task_run_id=on_error.id)
        with pytest.raises(ReplayError, match="ran in the flow's errors block: a replay"):
            replay_state(event, flow)


def test_a_task_run_of_a_finally_or_after_execution_block_is_refused_naming_it() -> None:
    """Kestra's docs say a replay starts from "any chosen task run" but not what one started
    inside these blocks keeps: kestream refuses it, naming the block and where to replay from
    instead."""
    source = f"""
id: blocks
namespace: {NS}
tasks:
  - id: group
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: inner
        type: io.kestra.plugin.core.execution.Fail
    finally:
      - id: cleanup
        type: io.kestra.plugin.core.log.Log
        message: cleaning
afterExecution:
  - id: notify
    type: io.kestra.plugin.core.log.Log
    message: done
"""
    with Driver() as driver:
        driver.deploy(source)
        failed = driver.start(NS, "blocks")
        flow = driver.flows.get(NS, "blocks")
    assert flow is not None and failed.state.current is S.FAILED
    snapshot = failed.model_dump(mode="json", by_alias=True)
    for task_id, block in (
        ("cleanup", "the finally block of task 'group'"),
        ("notify", "the flow's afterExecution block"),
    ):
        run = _run(failed, task_id)
        event = replay_event(snapshot, flow, execution_id="x", task_run_id=run.id)
        with pytest.raises(ReplayError) as refused:
            replay_state(event, flow)
        message = str(refused.value)
        assert f"Task run '{run.id}' (task '{task_id}') ran in {block}" in message
        assert "replay from the task run the block followed" in message
    inner = _run(failed, "inner")  # the task run before the blocks replays
    event = replay_event(snapshot, flow, execution_id="y", task_run_id=inner.id)
    _, chosen = replay_state(event, flow)
    assert chosen.task.id == "inner"


def test_replay_on_another_revision_runs_the_new_tasks() -> None:
    """Only the task runs kept must fit the revision: one without the tasks after the chosen
    task run replays; one without a task that ran before it is refused."""
    with Driver() as driver:
        driver.deploy(SEQUENTIAL)
        failed = driver.start(NS, "seq")
        check = _run(failed, "check")
        newer = driver.deploy(SEQUENTIAL.replace('"after {{ outputs.first.value }}"', "v2"))
        replayed = driver.replay(
            failed.id, task_run_id=check.id, revision=newer.revision, inputs={"ok": True}
        )
        shorter = driver.deploy(SEQUENTIAL.split("  - id: last")[0] + "errors: []\n")
        short = driver.replay(
            failed.id, task_run_id=check.id, revision=shorter.revision, inputs={"ok": True}
        )
        renamed = driver.deploy(SEQUENTIAL.replace("id: first", "id: renamed"))
        with pytest.raises(RestoreError, match="'first'"):
            driver.replay(failed.id, task_run_id=check.id, revision=renamed.revision)
    assert replayed.flowRevision == newer.revision == 2
    assert _run(replayed, "last").outputs == {"value": "v2"}
    assert short.flowRevision == 3 and short.state.current is S.SUCCESS
    assert [run.taskId for run in short.taskRunList] == ["first", "check"]


def test_a_replayed_state_survives_the_changelog() -> None:
    """The changelog's header keeps ``parentId`` (what the executor restores after a crash)."""
    flows = FlowRegistry()
    flow = flows.put(parse_flow(SEQUENTIAL))
    with Driver() as driver:
        driver.deploy(SEQUENTIAL)
        failed = driver.start(NS, "seq")
    event = replay_event(
        failed.model_dump(mode="json", by_alias=True),
        flow,
        execution_id="r1",
        task_run_id=_run(failed, "check").id,
    )
    state, _ = replay_state(event, flow)
    groups = {"", *(tid for tid, tr in state.task_runs.items() if tr.group is not None)}
    changes = encode_changes(state, list(state.task_runs), created=True, new_groups=groups)
    back = rebuild("r1", {k: v for k, v in changes if v is not None}, flow)
    assert back.parent_id == failed.id
    assert back.labels["system.replay"] == "true"
    assert isinstance(event, ev.ExecutionCreated) and event.replay is not None


def test_a_replay_travels_on_the_executions_topic() -> None:
    """The creation record carries the snapshot, the task run and ``parentId``; a malformed
    replay is refused where the record is read (a dead letter, never the executor)."""
    flow = parse_flow(SEQUENTIAL)
    with Driver() as driver:
        driver.deploy(SEQUENTIAL)
        failed = driver.start(NS, "seq")
    snapshot = failed.model_dump(mode="json", by_alias=True)
    check = _run(failed, "check").id
    event = replay_event(snapshot, flow, execution_id="r1", task_run_id=check)
    back = records.decode_event(records.encode_event(event))
    assert isinstance(back, ev.ExecutionCreated)
    assert back.parent_id == failed.id and back.replay is not None
    assert back.replay.task_run_id == check and back.replay.snapshot["id"] == failed.id
    body = records.event_value(event)
    for bad in ({"snapshot": "x", "taskRunId": check}, {"snapshot": snapshot}, [1]):
        with pytest.raises(records.RecordError, match="bad created event"):
            records.decode_event(records.dumps({**body, "replay": bad}))


CHILD = f"""
id: child
namespace: {NS}
inputs:
  - id: ok
    type: BOOLEAN
tasks:
  - id: check
    type: io.kestra.plugin.core.execution.Assert
    conditions:
      - "{{{{ inputs.ok }}}}"
"""

PARENT = f"""
id: parent
namespace: {NS}
inputs:
  - id: ok
    type: BOOLEAN
    defaults: false
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b"]
    tasks:
      - id: call
        type: io.kestra.plugin.core.flow.Subflow
        namespace: {NS}
        flowId: child
        inputs:
          ok: "{{{{ taskrun.value == 'a' or inputs.ok }}}}"
"""


def test_replay_of_a_subflow_in_a_loop_starts_a_new_child_for_that_value_only() -> None:
    with Driver() as driver:
        driver.deploy(CHILD)
        driver.deploy(PARENT)
        failed = driver.start(NS, "parent")
        calls = {run.value: run for run in failed.taskRunList if run.taskId == "call"}
        replayed = driver.replay(failed.id, task_run_id=calls["b"].id, inputs={"ok": True})
        children = driver.children(replayed.id)
    assert failed.state.current is S.FAILED
    assert replayed.state.current is S.SUCCESS
    again = {run.value: run for run in replayed.taskRunList if run.taskId == "call"}
    assert again["a"].outputs == calls["a"].outputs  # kept: its child is the first one
    new_child, old_child = again["b"].outputs, calls["b"].outputs
    assert new_child is not None and old_child is not None
    assert new_child["executionId"] != old_child["executionId"]
    assert [child.state.current for child in children] == [S.SUCCESS]  # one new child, for b
