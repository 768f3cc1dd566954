"""Each core task's behaviour, through the driver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kestream.models.state import StateType
from kestream.testing import Driver, run

S = StateType
HEAD = "id: t\nnamespace: test.tasks\n"


def _run(body: str, **kwargs: object) -> tuple[object, list[tuple[str | None, str, str]]]:
    with Driver() as driver:
        flow = driver.deploy(HEAD + body)
        execution = driver.start(flow.namespace, flow.id, **kwargs)  # type: ignore[arg-type]
        logs = [(line.taskId, line.level, line.message) for line in driver.logs(execution.id)]
    return execution, logs


def test_log_levels_and_message_lists() -> None:
    execution, logs = _run(
        """tasks:
  - id: one
    type: io.kestra.plugin.core.log.Log
    message: "hello {{ task.id }}"
    level: WARN
  - id: many
    type: io.kestra.core.tasks.log.Log
    message: ["a", "b {{ flow.id }}"]
  - id: quiet
    type: io.kestra.plugin.core.log.Log
    message: dropped
    level: DEBUG
    logLevel: INFO
"""
    )
    assert execution.state.current is S.SUCCESS  # type: ignore[attr-defined]
    assert logs == [("one", "WARN", "hello one"), ("many", "INFO", "a"), ("many", "INFO", "b t")]


def test_return_echo_and_output_values() -> None:
    execution, logs = _run(
        """tasks:
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: "{{ 1 + 2 }}"
  - id: echo
    type: io.kestra.plugin.core.debug.Echo
    format: "echo {{ outputs.ret.value }}"
  - id: values
    type: io.kestra.plugin.core.output.OutputValues
    values:
      n: 3
      text: "{{ outputs.ret.value }}!"
      nested: {a: ["{{ task.id }}"]}
"""
    )
    runs = {t.taskId: t for t in execution.taskRunList}  # type: ignore[attr-defined]
    assert runs["ret"].outputs == {"value": "3"}
    assert runs["values"].outputs == {"values": {"n": 3, "text": "3!", "nested": {"a": ["values"]}}}
    assert ("echo", "INFO", "echo 3") in logs


@pytest.mark.parametrize(
    ("condition", "state"), [("'yes'", S.FAILED), ("false", S.SUCCESS), ("0", S.SUCCESS)]
)
def test_fail_with_condition(condition: str, state: StateType) -> None:
    execution, logs = _run(
        f"""tasks:
  - id: fail
    type: io.kestra.plugin.core.execution.Fail
    condition: "{{{{ {condition} }}}}"
    errorMessage: "stopped by {{{{ task.id }}}}"
"""
    )
    assert execution.state.current is state  # type: ignore[attr-defined]
    if state is S.FAILED:
        assert ("fail", "ERROR", "stopped by fail") in logs


def test_fail_default_message() -> None:
    _, logs = _run("tasks:\n  - id: f\n    type: io.kestra.plugin.core.execution.Fail\n")
    assert ("f", "ERROR", "Task failure") in logs


def test_sleep_really_waits_and_holds_no_thread() -> None:
    started = datetime.now(UTC)
    execution = run(
        HEAD
        + """tasks:
  - id: p
    type: io.kestra.plugin.core.flow.Parallel
    tasks:
      - {id: s1, type: io.kestra.plugin.core.flow.Sleep, duration: PT0.3S}
      - {id: s2, type: io.kestra.plugin.core.flow.Sleep, duration: PT0.3S}
      - {id: s3, type: io.kestra.plugin.core.flow.Sleep, duration: PT0.3S}
"""
    )
    elapsed = datetime.now(UTC) - started
    assert execution.state.current is S.SUCCESS
    assert timedelta(seconds=0.3) <= elapsed < timedelta(seconds=3)


def test_task_timeout_fails_the_attempt() -> None:
    execution, logs = _run(
        """tasks:
  - id: slow
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT10S
    timeout: PT0.2S
"""
    )
    assert execution.state.current is S.FAILED  # type: ignore[attr-defined]
    assert any(t == "slow" and lvl == "ERROR" and "timed out" in m for t, lvl, m in logs)


def test_switch_if_and_parallel_concurrency() -> None:
    execution, _ = _run(
        """inputs:
  - id: kind
    type: STRING
tasks:
  - id: sw
    type: io.kestra.plugin.core.flow.Switch
    value: "{{ inputs.kind }}"
    cases:
      a: [{id: in-a, type: io.kestra.plugin.core.debug.Return, format: "A"}]
    defaults: [{id: in-default, type: io.kestra.plugin.core.debug.Return, format: "D"}]
  - id: cond
    type: io.kestra.plugin.core.flow.If
    condition: "{{ outputs.sw.defaults }}"
    then: [{id: yes, type: io.kestra.plugin.core.debug.Return, format: "y"}]
    else: [{id: no, type: io.kestra.plugin.core.debug.Return, format: "n"}]
""",
        inputs={"kind": "zzz"},
    )
    ids = [t.taskId for t in execution.taskRunList]  # type: ignore[attr-defined]
    assert ids == ["sw", "in-default", "cond", "yes"]
    sw = execution.taskRunList[0]  # type: ignore[attr-defined]
    assert sw.outputs == {"value": "zzz", "defaults": True}


def test_foreach_concurrency_limit_runs_lanes_in_waves() -> None:
    execution, _ = _run(
        """tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: '["a", "b", "a", "c"]'
    concurrencyLimit: 2
    tasks:
      - {id: one, type: io.kestra.plugin.core.debug.Return, format: "{{ taskrun.value }}1"}
      - {id: two, type: io.kestra.plugin.core.debug.Return, format: "{{ taskrun.value }}2"}
"""
    )
    runs = execution.taskRunList  # type: ignore[attr-defined]
    assert [(t.taskId, t.value) for t in runs][1:] == [
        ("one", "a"), ("one", "b"), ("two", "a"), ("two", "b"), ("one", "c"), ("two", "c"),
    ]  # fmt: skip


def test_subflow_without_wait_succeeds_at_once() -> None:
    child = (
        "id: child\nnamespace: test.tasks\n"
        "tasks:\n  - id: p\n    type: io.kestra.plugin.core.flow.Pause\n"
    )
    with Driver() as driver:
        driver.deploy(child)
        flow = driver.deploy(
            HEAD
            + """tasks:
  - id: go
    type: io.kestra.plugin.core.flow.Subflow
    namespace: test.tasks
    flowId: child
    wait: false
"""
        )
        execution = driver.start(flow.namespace, flow.id)
        children = driver.children(execution.id)
    assert execution.state.current is S.SUCCESS
    assert execution.taskRunList[0].outputs == {"executionId": children[0].id}
    assert children[0].state.current is S.PAUSED
