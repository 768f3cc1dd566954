"""Labels, Exit and Assert: what the executor does with them, and their changelog records."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kestream.executor import codec
from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor
from kestream.models.flow import FlowValidationError, parse_flow
from kestream.models.state import StateType
from kestream.testing import Driver

S = StateType
HEAD = "id: t\nnamespace: test.execution\n"


def _run(body: str, **kwargs: Any) -> tuple[Any, list[tuple[str | None, str, str]]]:
    with Driver() as driver:
        flow = driver.deploy(HEAD + body)
        execution = driver.start(flow.namespace, flow.id, **kwargs)
        logs = [(line.taskId, line.level, line.message) for line in driver.logs(execution.id)]
    return execution, logs


def _store(records: list[tuple[str, dict[str, Any] | None]], store: dict[str, Any]) -> None:
    for key, value in records:
        if value is None:
            store.pop(key, None)
        else:
            store[key] = orjson.loads(orjson.dumps(value))


def _write(
    state: ExecutionState, commands: list[cmd.Command], store: dict[str, Any]
) -> list[cmd.RunTask]:
    """Write the step's changelog records; return the jobs it sent to workers."""
    for command in commands:
        if isinstance(command, cmd.ExecutionChanged):
            changed = command.changed_task_runs + command.counters_changed
            _store(
                codec.encode_changes(
                    state, changed, created=command.created, new_groups=command.planned
                ),
                store,
            )
    return [c for c in commands if isinstance(c, cmd.RunTask)]


LABELS_FLOW = (
    HEAD
    + """labels:
  team: data
tasks:
  - id: first
    type: io.kestra.plugin.core.log.Log
    message: first
  - id: label
    type: io.kestra.plugin.core.execution.Labels
    labels:
      team: "{{ 'ops' }}"
      customer: acme
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: "{{ labels.customer }}/{{ labels.team }}"
"""
)


def test_labels_survive_the_changelog_and_later_tasks_see_them() -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(LABELS_FLOW))
    executor = Executor(flows, inline_tasks=False)  # Log goes to a worker: a second step
    store: dict[str, Any] = {}
    created = ev.ExecutionCreated("x1", flow.namespace, flow.id, flow.revision, inputs={})
    first = executor.step(None, created)
    assert first.state is not None
    (job,) = _write(first.state, first.commands, store)
    state = codec.rebuild("x1", store, flow)
    result = executor.step(state, ev.WorkerResult("x1", job.task_run_id, 1, S.SUCCESS, None, None))
    assert result.state is not None
    jobs = _write(result.state, result.commands, store)
    assert [job.task.id for job in jobs] == ["after"]
    assert jobs[0].props["message"] == "acme/ops"
    # the header keeps the creation's labels; the per-step record carries the new ones
    assert store[codec.header_key("x1")]["labels"] == {"team": "data", "system.correlationId": "x1"}
    rebuilt = codec.rebuild("x1", store, flow)
    assert rebuilt.labels == {"team": "ops", "customer": "acme", "system.correlationId": "x1"}
    assert rebuilt.labels_changed
    done = ev.WorkerResult("x1", jobs[0].task_run_id, 1, S.SUCCESS, None, None)
    end = executor.step(rebuilt, done)
    assert end.state is not None and end.state.state.current is S.SUCCESS
    _write(end.state, end.commands, store)
    assert codec.rebuild("x1", store, flow).labels == end.state.labels


def test_an_execution_without_label_changes_writes_no_labels_per_step() -> None:
    flows = FlowRegistry()
    flow = flows.put(
        parse_flow(
            HEAD + "tasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"
        )
    )
    result = Executor(flows).step(None, ev.ExecutionCreated("x2", flow.namespace, flow.id, 1))
    assert result.state is not None
    assert "labels" not in codec.encode_dynamic(result.state)


def test_labels_from_a_json_string_and_a_list_and_bad_shapes() -> None:
    execution, _ = _run(
        """tasks:
  - id: json
    type: io.kestra.plugin.core.execution.Labels
    labels: '{{ {"a": 1, "b": true} | json }}'
  - id: list
    type: io.kestra.plugin.core.execution.Labels
    labels:
      - key: c
        value: 2.5
"""
    )
    assert execution.state.current is S.SUCCESS
    assert {k: v for k, v in execution.label_map().items() if not k.startswith("system.")} == {
        "a": "1",
        "b": "true",
        "c": "2.5",
    }
    failed, logs = _run(
        """tasks:
  - id: bad
    type: io.kestra.plugin.core.execution.Labels
    labels: "not json"
"""
    )
    assert failed.state.current is S.FAILED
    assert any("labels must render to a map" in message for _, _, message in logs)


def test_system_labels_cannot_be_set() -> None:
    execution, logs = _run(
        """tasks:
  - id: bad
    type: io.kestra.plugin.core.execution.Labels
    labels:
      system.correlationId: mine
"""
    )
    assert execution.state.current is S.FAILED
    assert execution.label_map()["system.correlationId"] == execution.id
    assert any("system.correlationId" in message for _, _, message in logs)


def test_assert_logs_each_failed_condition_and_counts_them() -> None:
    execution, logs = _run(
        """tasks:
  - id: check
    type: io.kestra.plugin.core.execution.Assert
    errorMessage: "checked {{ flow.id }}"
    conditions:
      - "{{ 1 == 1 }}"
      - "{{ 1 == 2 }}"
      - "{{ '' }}"
"""
    )
    assert execution.state.current is S.FAILED
    errors = [message for task, level, message in logs if task == "check" and level == "ERROR"]
    assert errors == [
        "Assertion `{{ 1 == 2 }}` failed!",
        "Assertion `{{ '' }}` failed!",
        "2 assertions failed! checked t",
    ]


PARALLEL_EXIT = (
    HEAD
    + """tasks:
  - id: both
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - id: slow
        type: io.kestra.plugin.core.flow.Sleep
        duration: PT1H
      - id: stop
        type: io.kestra.plugin.core.execution.Exit
        state: "{{ '%s' }}"
  - id: never
    type: io.kestra.plugin.core.log.Log
    message: never
"""
)


@pytest.mark.parametrize(
    ("state", "killed"),
    [("KILLED", True), ("SUCCESS", False), ("CANCELED", False)],
)
def test_exit_ends_the_execution_and_kills_others_only_when_killed(
    state: str, killed: bool
) -> None:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(PARALLEL_EXIT % state))
    executor = Executor(flows, inline_tasks=False)
    result = executor.step(None, ev.ExecutionCreated("x3", flow.namespace, flow.id, 1))
    st = result.state
    assert st is not None
    expected = S.CANCELLED if state == "CANCELED" else StateType(state)
    assert st.state.current is expected
    runs = {tr.task.id: tr for tr in st.task_runs.values()}
    assert "never" not in runs
    assert runs["stop"].state.current is expected
    assert runs["both"].state.current is expected
    assert [a.current for a in runs["both"].attempts] == [expected]
    kills = [c for c in result.commands if isinstance(c, cmd.KillTask)]
    assert bool(kills) is killed
    assert (runs["slow"].state.current is S.KILLED) is killed
    # a late result of the branch left running changes nothing
    late = ev.WorkerResult("x3", runs["slow"].id, 1, S.SUCCESS, None, None)
    assert executor.step(st, late).state.state.current is expected  # type: ignore[union-attr]


def test_exit_refuses_an_unknown_literal_state_at_deploy() -> None:
    with pytest.raises(FlowValidationError, match="Exit state must be one of"):
        parse_flow(
            HEAD
            + "tasks:\n  - id: x\n    type: io.kestra.plugin.core.execution.Exit\n    state: DONE\n"
        )
