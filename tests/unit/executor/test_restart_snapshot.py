"""Restart of an execution that left the executor's state table, from its last snapshot.

Each scenario runs a flow to its end, takes the execution JSON (what the updates topic and the
index hold) and restarts it twice: in place, in the driver that still has the state, and from the
snapshot alone, in a fresh driver that never saw the execution (as the executor does over Kafka
after the terminal execution's tombstone). Both must give the same execution: task-run ids,
states and their histories, attempts, outputs.

The second run succeeds the way Kestra's own restart tests make it succeed: the same flow revision
(Kestra restarts with it), with a task whose outcome depends on ``taskrun.attemptsCount``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.restore import (
    RestoreError,
    execution_from_snapshot,
    state_from_execution,
)
from kestream.executor.snapshot import execution_model
from kestream.executor.state import ExecutionState, Group
from kestream.executor.step import Executor
from kestream.models.execution import Execution
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.testing import Driver

S = StateType
CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "conformance" / "flows"

#: Fails on its first attempt only.
FIRST_FAILS = "\"{{ taskrun.attemptsCount == 1 ? 'ok' : ko }}\""

TOP_LEVEL = f"""
id: top
namespace: test.restore
tasks:
  - id: a
    type: io.kestra.plugin.core.log.Log
    message: a
  - id: b
    type: io.kestra.plugin.core.log.Log
    message: {FIRST_FAILS}
  - id: c
    type: io.kestra.plugin.core.log.Log
    message: c
"""

SEQUENTIAL = f"""
id: sequential
namespace: test.restore
tasks:
  - id: before
    type: io.kestra.plugin.core.log.Log
    message: before
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: s1
        type: io.kestra.plugin.core.log.Log
        message: s1
      - id: s2
        type: io.kestra.plugin.core.log.Log
        message: {FIRST_FAILS}
      - id: s3
        type: io.kestra.plugin.core.log.Log
        message: s3
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: after
"""

PARALLEL = f"""
id: parallel
namespace: test.restore
tasks:
  - id: par
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: p1
        type: io.kestra.plugin.core.log.Log
        message: p1
      - id: p2
        type: io.kestra.plugin.core.log.Log
        message: {FIRST_FAILS}
      - id: p3
        type: io.kestra.plugin.core.flow.Sequential
        tasks:
          - id: p3a
            type: io.kestra.plugin.core.log.Log
            message: {FIRST_FAILS}
          - id: p3b
            type: io.kestra.plugin.core.log.Log
            message: p3b
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: after
"""


def foreach(limit: int) -> str:
    """Values b and d fail on their first attempt; ``limit`` lanes run at once (0: all)."""
    return f"""
id: foreach{limit}
namespace: test.restore
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b", "c", "d"]
    concurrencyLimit: {limit}
    tasks:
      - id: first
        type: io.kestra.plugin.core.debug.Return
        format: "{{{{ taskrun.value }}}}"
      - id: second
        type: io.kestra.plugin.core.log.Log
        message: "{{{{ taskrun.value in ['b', 'd'] and taskrun.attemptsCount == 0 ? ko : 'ok' }}}}"
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.first.b.value }}}}"
"""


ERRORS = f"""
id: errors
namespace: test.restore
tasks:
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: fails
        type: io.kestra.plugin.core.log.Log
        message: {FIRST_FAILS}
    errors:
      - id: local-handler
        type: io.kestra.plugin.core.log.Log
        message: local
  - id: last
    type: io.kestra.plugin.core.log.Log
    message: last
errors:
  - id: handler
    type: io.kestra.plugin.core.debug.Return
    format: handled
  - id: handler2
    type: io.kestra.plugin.core.debug.Return
    format: handled too
"""

ALLOW_FAILURE = f"""
id: allow-failure
namespace: test.restore
tasks:
  - id: allowed
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ ko }}}}"
    allowFailure: true
  - id: wrapper
    type: io.kestra.plugin.core.flow.AllowFailure
    tasks:
      - id: inner
        type: io.kestra.plugin.core.log.Log
        message: {FIRST_FAILS}
  - id: seq
    type: io.kestra.plugin.core.flow.Sequential
    allowFailure: true
    tasks:
      - id: inner2
        type: io.kestra.plugin.core.log.Log
        message: {FIRST_FAILS}
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: after
"""

OUTPUTS = """
id: outputs
namespace: test.restore
inputs:
  - id: when
    type: DATETIME
    defaults: "2024-01-31T10:00:00Z"
tasks:
  - id: gen
    type: io.kestra.plugin.core.output.OutputValues
    values:
      items: '["x", "y"]'
      greeting: "hello {{ inputs.when }}"
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ outputs.gen.values['items'] }}"
    concurrencyLimit: 0
    tasks:
      - id: use
        type: io.kestra.plugin.core.debug.Return
        format: "{{ outputs.gen.values.greeting }} {{ taskrun.value }}"
      - id: check
        type: io.kestra.plugin.core.log.Log
        message: "{{ taskrun.value == 'y' and taskrun.attemptsCount == 0 ? ko : 'ok' }}"
  - id: final
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.when }} | {{ outputs.use.x.value }} | {{ outputs.use.y.value }}"
outputs:
  - id: joined
    type: STRING
    value: "{{ outputs.final.value }}"
"""

KILLED = """
id: killed
namespace: test.restore
tasks:
  - id: before
    type: io.kestra.plugin.core.debug.Return
    format: before
  - id: par
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: wait
        type: io.kestra.plugin.core.flow.Pause
      - id: other
        type: io.kestra.plugin.core.log.Log
        message: other
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.before.value }} after"
"""

CHILD = """
id: child
namespace: test.restore
inputs:
  - id: attempt
    type: INT
tasks:
  - id: check
    type: io.kestra.plugin.core.execution.Fail
    condition: "{{ inputs.attempt < 1 }}"
outputs:
  - id: seen
    type: INT
    value: "{{ inputs.attempt }}"
"""

PARENT = """
id: parent
namespace: test.restore
tasks:
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: test.restore
    flowId: child
    inputs:
      attempt: "{{ taskrun.attemptsCount }}"
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.call.outputs.seen }}"
"""

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")

Action = Callable[[Driver, str], Any]


def _mask(value: Any) -> Any:
    """Dates rendered into outputs differ from run to run: compare the rest."""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, str):
        return _DATE.sub("<date>", value)
    return value


def summary(execution: Execution) -> dict[str, Any]:
    return {
        "id": execution.id,
        "state": [h.state for h in execution.state.histories],
        "attempt": execution.metadata.attemptNumber,
        "outputs": _mask(execution.outputs),
        "labels": execution.label_map(),
        "runs": [
            (
                run.id,
                run.taskId,
                run.parentTaskRunId,
                run.value,
                [h.state for h in run.state.histories],
                [a.state.current for a in run.attempts or []],
                _mask(run.outputs),
            )
            for run in execution.taskRunList
        ],
    }


def _wire(snapshot: Execution) -> dict[str, Any]:
    """The snapshot as a restart event carries it on the executions topic."""
    body = snapshot.model_dump(mode="json", by_alias=True)
    event = records.decode_event(records.encode_event(ev.Restart(snapshot.id, body)))
    assert isinstance(event, ev.Restart) and event.snapshot is not None
    return event.snapshot


def restart_both(
    flow: str,
    inputs: dict[str, Any] | None = None,
    *,
    requires: tuple[str, ...] = (),
    before: Action | None = None,
    after: Action | None = None,
    restarts: int = 1,
    inline_tasks: bool = True,
    validate_inputs: bool = True,
) -> tuple[Execution, Execution, Execution, list[Execution], list[Execution]]:
    """Run ``flow`` to its end (``before`` brings it there), then restart it ``restarts`` times
    in place and, in a fresh driver each time, from the previous end's snapshot; ``after`` runs
    after each restart (a resume, say). Returns the first end, both last ends and the children.
    """
    with Driver(inline_tasks=inline_tasks) as live:
        for other in requires:
            live.deploy(other)
        deployed = live.deploy(flow)
        first = live.start(deployed.namespace, deployed.id, inputs, validate_inputs=validate_inputs)
        if before is not None:
            first = before(live, first.id)
        assert first.state.current.is_terminal, first.state.current
        in_place = first
        for _ in range(restarts):
            live.restart(first.id)
            in_place = after(live, first.id) if after is not None else live.get(first.id)
        in_place_children = live.children(first.id)
        restored, restored_children = first, []
        for _ in range(restarts):
            with Driver(inline_tasks=inline_tasks) as fresh:
                for other in requires:
                    fresh.deploy(other)
                fresh.deploy(flow)
                fresh.restart(first.id, snapshot=_wire(restored))
                restored = after(fresh, first.id) if after is not None else fresh.get(first.id)
                restored_children = fresh.children(first.id)
    return first, in_place, restored, in_place_children, restored_children


def _states(execution: Execution) -> dict[str, list[StateType]]:
    out: dict[str, list[StateType]] = {}
    for run in execution.taskRunList:
        out.setdefault(run.taskId, []).append(run.state.current)
    return out


def _resume(driver: Driver, execution_id: str) -> Execution:
    return driver.resume(execution_id)


def _kill(driver: Driver, execution_id: str) -> Execution:
    return driver.kill(execution_id)


# -- scenarios ---------------------------------------------------------------------------------


def test_failed_top_level_task() -> None:
    first, in_place, restored, _, _ = restart_both(TOP_LEVEL)
    assert first.state.current is S.FAILED
    assert summary(restored) == summary(in_place)
    assert restored.state.current is S.SUCCESS
    assert restored.metadata.attemptNumber == 2
    assert [len(r.attempts or []) for r in restored.taskRunList] == [1, 2, 1]


def test_failed_task_inside_a_sequential() -> None:
    first, in_place, restored, _, _ = restart_both(SEQUENTIAL)
    assert _states(first)["seq"] == [S.FAILED]
    assert summary(restored) == summary(in_place)
    assert restored.state.current is S.SUCCESS
    assert list(_states(restored)) == ["before", "seq", "s1", "s2", "s3", "after"]


def test_failed_tasks_inside_a_parallel() -> None:
    first, in_place, restored, _, _ = restart_both(PARALLEL)
    assert _states(first)["p2"] == [S.FAILED] and _states(first)["p3a"] == [S.FAILED]
    assert summary(restored) == summary(in_place)
    assert restored.state.current is S.SUCCESS
    assert _states(restored)["after"] == [S.SUCCESS]


@pytest.mark.parametrize(("limit", "end"), [(0, S.SUCCESS), (1, S.FAILED), (2, S.FAILED)])
def test_failed_iterations_inside_a_foreach(limit: int, end: StateType) -> None:
    # With a limit, the failure of b kept d from starting: the restart starts the lanes left,
    # and d, new in this attempt, fails its first attempt. With no limit both get a second one.
    first, in_place, restored, _, _ = restart_both(foreach(limit))
    assert first.state.current is S.FAILED
    assert summary(restored) == summary(in_place)
    assert restored.state.current is end
    assert sorted(r.value or "" for r in restored.task_runs("second")) == ["a", "b", "c", "d"]
    if end is S.SUCCESS:
        assert restored.task_runs("after")[0].outputs == {"value": "b"}


def test_worker_path() -> None:
    # one lane: what the workers answer, in whatever order, cannot change the task runs created
    _, in_place, restored, _, _ = restart_both(SEQUENTIAL, inline_tasks=False)
    assert summary(restored) == summary(in_place)
    assert restored.state.current is S.SUCCESS


def test_errors_branches_are_dropped_and_run_again() -> None:
    first, in_place, restored, _, _ = restart_both(ERRORS)
    assert _states(first)["handler"] == [S.SUCCESS]
    assert _states(first)["local-handler"] == [S.SUCCESS]
    assert summary(restored) == summary(in_place)
    assert restored.state.current is S.SUCCESS
    assert "handler" not in _states(restored) and "local-handler" not in _states(restored)


def test_always_failing_with_errors_restarted_twice() -> None:
    # The second restart starts from a snapshot whose dropped errors-branch run was the newest
    # task run: the restore must still name new task runs as an in-place restart does.
    flow = (CORPUS / "restart_always_failed.yaml").read_text()
    first, in_place, restored, _, _ = restart_both(flow, restarts=2)
    assert first.state.current is S.FAILED
    assert summary(restored) == summary(in_place)
    assert restored.metadata.attemptNumber == 3
    assert len(restored.task_runs("failStep")[0].attempts or []) == 3


def test_allowed_failures_and_warning() -> None:
    first, in_place, restored, _, _ = restart_both(ALLOW_FAILURE)
    assert first.state.current is S.WARNING
    assert summary(restored) == summary(in_place)
    # the allowed task run (WARNING) stays; failures inside WARNING parents run again and the
    # parents end again, without their lanes starting a second time
    assert _states(restored) == {
        "allowed": [S.WARNING],
        "wrapper": [S.SUCCESS],
        "inner": [S.SUCCESS],
        "seq": [S.SUCCESS],
        "inner2": [S.SUCCESS],
        "after": [S.SUCCESS],
    }
    assert restored.state.current is S.WARNING


def test_warning_with_nothing_failed_ends_again() -> None:
    flow = (CORPUS / "task-allow-failure-flowable.yaml").read_text()
    first, in_place, restored, _, _ = restart_both(flow, restarts=2)
    assert first.state.current is S.WARNING
    assert summary(restored) == summary(in_place)
    assert restored.state.current is S.WARNING
    assert restored.metadata.attemptNumber == 3


def test_killed_execution() -> None:
    first, in_place, restored, _, _ = restart_both(KILLED, before=_kill, after=_resume)
    assert first.state.current is S.KILLED
    assert _states(first)["wait"] == [S.KILLED]
    assert summary(restored) == summary(in_place)
    assert restored.state.current is S.SUCCESS
    assert restored.task_runs("after")[0].outputs == {"value": "before after"}


def test_outputs_used_by_later_tasks() -> None:
    first, in_place, restored, _, _ = restart_both(OUTPUTS)
    assert first.state.current is S.FAILED
    assert summary(restored) == summary(in_place)
    assert restored.state.current is S.SUCCESS
    assert restored.outputs == in_place.outputs
    when = "2024-01-31T10:00:00Z"  # a DATETIME input prints as Java's Instant text
    assert restored.outputs == {"joined": f"{when} | hello {when} x | hello {when} y"}


def test_subflow_runs_a_new_child() -> None:
    first, in_place, restored, kids, restored_kids = restart_both(PARENT, requires=(CHILD,))
    assert first.state.current is S.FAILED
    assert summary(restored) == summary(in_place)
    assert restored.state.current is S.SUCCESS
    assert restored.task_runs("after")[0].outputs == {"value": "1"}
    # in place the driver also holds the first child; the restored driver only the new one
    assert len(kids) == 2 and len(restored_kids) == 1
    assert summary(restored_kids[0]) == summary(kids[1])


CORPUS_CASES = [
    ("restart_last_failed.yaml", None),
    ("restart_local_errors.yaml", None),
    ("restart-each.yaml", {"failed": "FIRST"}),
    ("restart-each.yaml", {"failed": "SECOND"}),
    ("sequential-with-global-errors.yaml", None),
    ("sequential-with-local-errors.yaml", None),
    ("errors.yaml", None),
    ("failed-first.yaml", None),
    ("fail-on-switch.yaml", None),
    ("switch-impossible.yaml", None),
    ("allow-failure.yaml", None),
    ("task-allow-failure-runnable.yaml", None),
    ("each-null.yaml", None),
]


@pytest.mark.parametrize(("name", "inputs"), CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES])
def test_corpus_flows_restart_alike(name: str, inputs: dict[str, Any] | None) -> None:
    flow = (CORPUS / name).read_text()
    first, in_place, restored, _, _ = restart_both(flow, inputs, validate_inputs=False)
    assert first.state.current in (S.FAILED, S.WARNING, S.KILLED)
    assert summary(restored) == summary(in_place)


# -- the rebuilt state itself ------------------------------------------------------------------


def _group_view(group: Group | None, *, counters: bool) -> Any:
    if group is None:
        return None
    view: dict[str, Any] = {
        "lanes": [[(t.id, v) for t, v in lane] for lane in group.lanes],
        "concurrency": group.concurrency,
        "errors": [t.id for t in group.errors],
        "warning": group.failure_is_warning,
        "next": group.next_lane,
    }
    if counters:
        view.update(active=group.active, failed=group.failed, worst=group.worst)
        view.update(errors_pos=group.errors_pos)
    return view


def internal(st: ExecutionState) -> dict[str, Any]:
    """Everything the step reads; counters of the groups a restart recounts are left out
    (a kill leaves them as they were when it struck)."""
    runs = {}
    for tr in st.task_runs.values():
        recounted = tr.state.current in (S.FAILED, S.KILLED)
        runs[tr.id] = {
            "task": tr.task.id,
            "parent": tr.parent.id if tr.parent else None,
            "value": tr.value,
            "path": tr.path,
            "lane": (tr.lane, tr.pos, tr.errors_branch),
            "state": [s for s, _ in tr.state.history],
            "attempts": [[s for s, _ in a.history] for a in tr.attempts],
            "outputs": tr.outputs,
            "child": tr.child_execution_id,
            "group": _group_view(tr.group, counters=not recounted),
        }
    return {
        "header": (st.id, st.namespace, st.flow_id, st.revision, st.original_id),
        "attempt": st.attempt_number,
        "labels": st.labels,
        "inputs": st.inputs,
        "trigger": st.trigger,
        "state": [s for s, _ in st.state.history],
        "root": _group_view(st.root, counters=False),
        "runs": runs,
        "order": list(st.task_runs),
        "outputs": st.outputs,
        "flow_outputs": st.flow_outputs,
        "paused": st.paused_runs,
        "created": st.created_runs,
    }


INTERNAL_CASES = [
    (TOP_LEVEL, None, None),
    (SEQUENTIAL, None, None),
    (PARALLEL, None, None),
    (foreach(1), None, None),
    (foreach(0), None, None),
    (ERRORS, None, None),
    (ALLOW_FAILURE, None, None),
    (OUTPUTS, None, None),
    (KILLED, None, _kill),
    ((CORPUS / "each-switch.yaml").read_text(), None, None),
    ((CORPUS / "flowable-with-parent-fail.yaml").read_text(), None, None),
    ((CORPUS / "each-parallel-nested.yaml").read_text(), None, None),
    ((CORPUS / "sequential-with-global-errors.yaml").read_text(), None, None),
    ((CORPUS / "if-in-flowable.yaml").read_text(), {"param": "x"}, None),
    ((CORPUS / "task-runif.yaml").read_text(), None, None),
]


@pytest.mark.parametrize(("flow", "inputs", "before"), INTERNAL_CASES)
def test_rebuilt_state_is_the_ended_state(
    flow: str, inputs: dict[str, Any] | None, before: Action | None
) -> None:
    with Driver() as driver:
        deployed = driver.deploy(flow)
        execution = driver.start(deployed.namespace, deployed.id, inputs)
        if before is not None:
            before(driver, execution.id)
        st = driver.states[execution.id]
        assert st.terminal
        rebuilt = state_from_execution(
            execution_from_snapshot(_wire(execution_model(st))), deployed
        )
    assert internal(rebuilt) == internal(st)


def test_rebuilt_state_after_a_restart_keeps_creation_numbers() -> None:
    with Driver() as driver:
        deployed = driver.deploy(ERRORS)
        execution = driver.start(deployed.namespace, deployed.id)
        driver.restart(execution.id)  # drops both errors branches, then ends SUCCESS
        driver.restart(execution.id)  # not restartable: nothing changes
        st = driver.states[execution.id]
        rebuilt = state_from_execution(
            execution_from_snapshot(_wire(execution_model(st))), deployed
        )
    assert st.state.current is S.SUCCESS
    assert rebuilt.created_runs == st.created_runs > len(st.task_runs)
    assert internal(rebuilt) == internal(st)


# -- what is not restarted, and what cannot be ---------------------------------------------------


def test_snapshot_of_a_successful_execution_changes_nothing() -> None:
    with Driver() as live:
        deployed = live.deploy(TOP_LEVEL.replace(FIRST_FAILS, "b"))
        done = live.start(deployed.namespace, deployed.id)
        snapshot = live.forget(done.id)
        assert snapshot.state.current is S.SUCCESS
        again = live.restart(done.id, snapshot=snapshot)
        assert done.id not in live.states
    assert summary(again) == summary(done)


def test_forget_then_restart_in_the_same_driver() -> None:
    with Driver() as driver:
        deployed = driver.deploy(SEQUENTIAL)
        first = driver.start(deployed.namespace, deployed.id)
        snapshot = driver.forget(first.id)
        with pytest.raises(KeyError):
            driver.get(first.id)
        restarted = driver.restart(first.id, snapshot=snapshot)
        # a redelivered restart of the same attempt, now that the state is back: stale, no-op
        again = driver.restart(first.id, snapshot=snapshot)
    assert restarted.state.current is S.SUCCESS and restarted.metadata.attemptNumber == 2
    assert summary(again) == summary(restarted)


def test_stale_snapshot_with_the_state_at_hand_is_ignored() -> None:
    with Driver() as driver:
        deployed = driver.deploy((CORPUS / "restart_always_failed.yaml").read_text())
        first = driver.start(deployed.namespace, deployed.id)
        second = driver.restart(first.id)
        assert second.metadata.attemptNumber == 2 and second.state.current is S.FAILED
        stale = driver.restart(first.id, snapshot=first)
        assert summary(stale) == summary(second)
        third = driver.restart(first.id, snapshot=second)
    assert third.metadata.attemptNumber == 3


def test_unknown_revision_raises() -> None:
    with Driver() as live:
        deployed = live.deploy(TOP_LEVEL)
        snapshot = live.start(deployed.namespace, deployed.id).model_dump(
            mode="json", by_alias=True
        )
    snapshot["flowRevision"] = 7
    with Driver() as fresh, pytest.raises(RestoreError, match="revision 7 is unknown"):
        fresh.deploy(TOP_LEVEL)
        fresh.restart(snapshot["id"], snapshot=snapshot)


def test_task_missing_from_the_revision_raises() -> None:
    with Driver() as live:
        deployed = live.deploy(TOP_LEVEL)
        snapshot = live.start(deployed.namespace, deployed.id).model_dump(
            mode="json", by_alias=True
        )
    snapshot["taskRunList"][1]["taskId"] = "gone"
    with Driver() as fresh, pytest.raises(RestoreError, match="'gone'"):
        fresh.deploy(TOP_LEVEL)
        fresh.restart(snapshot["id"], snapshot=snapshot)


def test_child_outside_its_parents_plan_raises() -> None:
    with Driver() as live:
        deployed = live.deploy(foreach(1))
        execution = live.start(deployed.namespace, deployed.id)
    snapshot = execution.model_dump(mode="json", by_alias=True)
    first = next(r for r in snapshot["taskRunList"] if r["taskId"] == "first")
    first["value"] = "z"
    flows = FlowRegistry()
    flow = flows.put(parse_flow(foreach(1)))
    with pytest.raises(RestoreError, match="does not fit the plan of 'each'"):
        state_from_execution(execution_from_snapshot(snapshot), flow)


def test_the_executor_without_state_or_snapshot_ignores_a_restart() -> None:
    flows = FlowRegistry()
    flows.put(parse_flow(TOP_LEVEL))
    assert Executor(flows).step(None, ev.Restart("nobody")).state is None


def test_restart_event_round_trips_with_and_without_snapshot() -> None:
    plain = records.decode_event(records.encode_event(ev.Restart("x")))
    assert plain == ev.Restart("x")
    body = {"id": "x", "taskRunList": [], "nested": {"a": [1, "2"]}}
    assert records.decode_event(records.encode_event(ev.Restart("x", body))) == ev.Restart(
        "x", body
    )
    with pytest.raises(records.RecordError, match="bad restart event"):
        records.decode_event(b'{"type": "restart", "id": "x", "snapshot": [1]}')


def test_snapshot_of_an_execution_that_never_started_changes_nothing() -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(CHILD))
    executor = Executor(flows)
    created = ev.ExecutionCreated("bad", flow.namespace, flow.id, inputs={})  # input missing
    st = executor.step(None, created).state
    assert st is not None and st.state.current is S.FAILED and not st.task_runs
    snapshot = execution_model(st).model_dump(mode="json", by_alias=True)
    assert executor.step(None, ev.Restart("bad", snapshot)) == executor.step(None, ev.Restart("x"))
    with pytest.raises(RestoreError, match="carries a snapshot of bad"):
        executor.step(None, ev.Restart("other", snapshot))


@pytest.mark.parametrize(
    "metadata", [[1], {"attemptNumber": "2"}, {"attemptNumber": 0}, {"attemptNumber": True}]
)
def test_a_restart_with_a_malformed_attempt_is_refused_where_it_is_read(metadata: Any) -> None:
    """Refused when decoded (the runtime dead-letters it), never in the executor's loop."""
    wire = records.encode_event(ev.Restart("x", {"id": "x", "metadata": metadata}))
    with pytest.raises(records.RecordError, match=r"attemptNumber|metadata"):
        records.decode_event(wire)
