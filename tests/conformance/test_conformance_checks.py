"""Unit tests of the conformance checker itself, on hand-built executions (no engine involved)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from conformance_checks import (
    Observed,
    check_children,
    check_expect,
    check_log,
    check_relation,
    check_task_run,
    count_logs_at_least_info,
    dump_execution,
    iso_datetime_within_10s_of_now,
    lookup,
    outputs_variable,
    strict_equal,
    subset_diff,
    value_path,
)
from conformance_corpus import _flow_needs_real_time, parse_duration, short_inputs

from kestream.models.execution import (
    Execution,
    ExecutionMetadata,
    ExecutionTrigger,
    Label,
    LogEntry,
    State,
    StateHistory,
    TaskRun,
    TaskRunAttempt,
)
from kestream.models.state import StateType

NOW = datetime.now(UTC)
_ids = count()


def make_state(*history: str) -> State:
    """A state whose current value is the last of ``history``."""
    items = [
        StateHistory(state=StateType(name), date=NOW + timedelta(milliseconds=i))
        for i, name in enumerate(history)
    ]
    return State(current=StateType(history[-1]), histories=items)


def make_run(
    task_id: str,
    state: str = "SUCCESS",
    *,
    run_id: str | None = None,
    parent: str | None = None,
    value: str | None = None,
    attempts: list[str] | None = None,
    outputs: dict[str, Any] | None = None,
    history: list[str] | None = None,
) -> TaskRun:
    attempt_states = [state] if attempts is None else attempts
    return TaskRun(
        id=run_id or f"tr{next(_ids)}",
        executionId="ex1",
        namespace="io.kestra.tests",
        flowId="flow",
        taskId=task_id,
        parentTaskRunId=parent,
        value=value,
        attempts=[TaskRunAttempt(state=make_state("RUNNING", s)) for s in attempt_states],
        outputs=outputs,
        state=make_state(*(history or ["CREATED", "RUNNING", state])),
    )


def make_execution(
    *runs: TaskRun,
    state: str = "SUCCESS",
    execution_id: str = "ex1",
    flow: str = "io.kestra.tests.flow",
    outputs: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    trigger: ExecutionTrigger | None = None,
    history: list[str] | None = None,
) -> Execution:
    namespace, flow_id = flow.rsplit(".", 1)
    return Execution(
        id=execution_id,
        namespace=namespace,
        flowId=flow_id,
        flowRevision=1,
        originalId=execution_id,
        labels=[Label(key=k, value=v) for k, v in (labels or {}).items()],
        outputs=outputs,
        trigger=trigger,
        metadata=ExecutionMetadata(originalCreatedDate=NOW),
        state=make_state(*(history or ["CREATED", "RUNNING", state])),
        taskRunList=list(runs),
    )


def make_log(task_id: str | None, level: str, message: str) -> LogEntry:
    return LogEntry(
        executionId="ex1",
        namespace="io.kestra.tests",
        flowId="flow",
        taskId=task_id,
        level=level,
        message=message,
        timestamp=NOW,
    )


def nested_loops() -> Execution:
    """each(v1, v2) > switch (no value) > return, plus a top-level return."""
    return make_execution(
        make_run("each", run_id="each"),
        make_run("switch", run_id="sw1", parent="each", value="v1", outputs={"value": "v1"}),
        make_run("ret", run_id="r1", parent="sw1", outputs={"value": "a"}),
        make_run("switch", run_id="sw2", parent="each", value="v2", outputs={"value": "v2"}),
        make_run("ret", run_id="r2", parent="sw2", outputs={"value": "b"}),
        make_run("last", outputs={"value": "get a!"}),
    )


# --- helpers -----------------------------------------------------------------------------------


def test_strict_equal_distinguishes_booleans_from_numbers() -> None:
    assert strict_equal({"a": [1, "x"]}, {"a": [1, "x"]})
    assert not strict_equal(True, 1)
    assert not strict_equal({"a": 1}, {"a": 1, "b": 2})
    assert not strict_equal([1, 2], [2, 1])
    assert strict_equal("SUCCESS", StateType.SUCCESS)


def test_subset_diff_reports_missing_and_different_keys() -> None:
    assert subset_diff({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3}, "x") == []
    failures = subset_diff({"a": {"b": 1}, "z": 0}, {"a": {"b": 2}}, "x")
    assert len(failures) == 2
    assert "x['a']['b']: expected 1, got 2" in failures
    assert any("x['z']: missing" in line for line in failures)


def test_lookup_reaches_into_nested_maps() -> None:
    outputs = {"outputs": {"extracted": "yes"}, "a.b": 1}
    assert lookup(outputs, "outputs.extracted") == "yes"
    assert lookup(outputs, "a.b") == 1
    assert lookup(outputs, "outputs.nope") is not None  # the missing marker, not None
    assert lookup(outputs, "outputs.nope") != "yes"


def test_value_path_skips_task_runs_without_value() -> None:
    execution = nested_loops()
    index = {run.id: run for run in execution.taskRunList}
    assert value_path(index["r2"], index) == ["v2"]
    assert value_path(index["each"], index) == []


def test_outputs_variable_keys_by_task_id_then_loop_values() -> None:
    variable = outputs_variable(nested_loops())
    assert variable["ret"] == {"v1": {"value": "a"}, "v2": {"value": "b"}}
    assert variable["switch"]["v2"] == {"value": "v2"}
    assert variable["last"] == {"value": "get a!"}
    assert "each" not in variable


# --- task runs ---------------------------------------------------------------------------------


def test_task_run_state_pass_and_fail() -> None:
    execution = make_execution(make_run("a"), make_run("b", "FAILED"))
    assert check_task_run({"taskId": "a", "state": "SUCCESS"}, execution) == []
    [failure] = check_task_run({"taskId": "b", "state": "SUCCESS"}, execution)
    assert "state: expected SUCCESS, got FAILED" in failure


def test_task_run_selection_by_index_and_values() -> None:
    execution = nested_loops()
    assert check_task_run({"index": 2, "taskId": "ret", "outputs": {"value": "a"}}, execution) == []
    assert (
        check_task_run({"taskId": "ret", "values": ["v2"], "outputs": {"value": "b"}}, execution)
        == []
    )
    [failure] = check_task_run({"index": 1, "taskId": "ret"}, execution)
    assert "is 'switch', not 'ret'" in failure
    [failure] = check_task_run({"index": 9, "state": "SUCCESS"}, execution)
    assert "out of range" in failure
    [failure] = check_task_run({"taskId": "ret", "values": ["v3"], "state": "SUCCESS"}, execution)
    assert "no task run matches" in failure


def test_task_run_assertions_apply_to_every_selected_run() -> None:
    execution = make_execution(make_run("a"), make_run("a", "FAILED"))
    [failure] = check_task_run({"taskId": "a", "state": "SUCCESS"}, execution)
    assert "task run #1" in failure


def test_task_run_attempts() -> None:
    run = make_run("a", "FAILED", attempts=["FAILED", "FAILED", "FAILED"])
    execution = make_execution(run, state="FAILED")
    assert check_task_run({"taskId": "a", "attempts": 3, "attemptsAtLeast": 2}, execution) == []
    failures = check_task_run({"taskId": "a", "attempts": 2, "attemptsAtLeast": 4}, execution)
    assert len(failures) == 2
    [failure] = check_task_run({"taskId": "a", "attemptState": "FAILED"}, execution)
    assert "single attempt" in failure
    single = make_execution(make_run("b", "FAILED"))
    assert check_task_run({"taskId": "b", "attemptState": "FAILED"}, single) == []
    assert check_task_run({"taskId": "b", "attemptState": "SUCCESS"}, single) != []


def test_task_run_outputs_exact_contain_regex() -> None:
    outputs = {"state": "SUCCESS", "outputs": {"extracted": "default > amazing"}, "n": 1}
    execution = make_execution(make_run("launch", outputs=outputs))
    ok = {
        "taskId": "launch",
        "outputs": {"state": "SUCCESS", "outputs.extracted": "default > amazing"},
        "outputsContain": {"outputs.extracted": "amazing"},
        "outputsRegex": {"state": "SUCC[A-Z]+"},
    }
    assert check_task_run(ok, execution) == []
    bad = {
        "taskId": "launch",
        "outputs": {"n": True, "missing": 1},
        "outputsContain": {"outputs.extracted": "boring"},
        "outputsRegex": {"state": "SUCC"},  # full match required
    }
    assert len(check_task_run(bad, execution)) == 4


def test_task_run_outputs_map_values_match_as_subsets() -> None:
    outputs = {"values": {"output1": "xyz", "output2": "abc", "taskInfo": "return > now"}}
    execution = make_execution(make_run("return", outputs=outputs))
    check = {"taskId": "return", "outputs": {"values": {"output1": "xyz", "output2": "abc"}}}
    assert check_task_run(check, execution) == []
    check = {"taskId": "return", "outputs": {"values": {"output1": "xyz", "other": "abc"}}}
    [failure] = check_task_run(check, execution)
    assert "outputs['values']['other']: missing" in failure


def test_task_run_outputs_match_iso_datetime() -> None:
    recent = make_run("date", outputs={"value": datetime.now(UTC).isoformat()})
    old = make_run("old", outputs={"value": "2020-01-01T00:00:00.000Z"})
    execution = make_execution(recent, old)
    matcher = {"value": "iso-datetime-within-10s-of-now"}
    assert check_task_run({"taskId": "date", "outputsMatch": matcher}, execution) == []
    assert check_task_run({"taskId": "old", "outputsMatch": matcher}, execution) != []
    [failure] = check_task_run({"taskId": "date", "outputsMatch": {"value": "nope"}}, execution)
    assert "unknown matcher" in failure


def test_iso_datetime_matcher_accepts_zulu_and_nanoseconds() -> None:
    now = datetime(2024, 12, 20, 10, 11, 12, tzinfo=UTC)
    assert iso_datetime_within_10s_of_now("2024-12-20T10:11:15.123456789Z", now) is None
    assert iso_datetime_within_10s_of_now("2024-12-20T10:11:30Z", now) is not None
    assert iso_datetime_within_10s_of_now("yesterday", now) is not None
    assert iso_datetime_within_10s_of_now(12, now) is not None


def test_task_run_history() -> None:
    run = make_run("pause", history=["CREATED", "RUNNING", "PAUSED", "RUNNING", "SUCCESS"])
    execution = make_execution(run)
    check = {"taskId": "pause", "historyCounts": {"PAUSED": 1, "RUNNING": 2}}
    assert check_task_run(check, execution) == []
    check = {"taskId": "pause", "historyCounts": {"PAUSED": 1, "RUNNING": 1, "FAILED": 1}}
    [failure] = check_task_run(check, execution)
    assert "historyCounts" in failure
    assert check_task_run({"taskId": "pause", "historyIncludes": ["PAUSED"]}, execution) == []
    assert check_task_run({"taskId": "pause", "historyIncludes": ["FAILED"]}, execution) != []


def test_task_run_count_and_absent() -> None:
    execution = make_execution(make_run("a"), make_run("a"))
    assert check_task_run({"taskId": "a", "count": 2}, execution) == []
    assert check_task_run({"taskId": "b", "count": 0}, execution) == []
    assert check_task_run({"taskId": "a", "count": 1}, execution) != []
    assert check_task_run({"taskId": "b", "absent": True}, execution) == []
    [failure] = check_task_run({"taskId": "a", "absent": True}, execution)
    assert "found 2" in failure


def test_task_run_selector_only_requires_a_match() -> None:
    execution = make_execution(make_run("a"), make_run("t1"))
    assert check_task_run({"index": 1, "taskId": "t1"}, execution) == []
    assert check_task_run({"index": 0, "taskId": "t1"}, execution) != []


def test_task_run_unknown_field_fails() -> None:
    execution = make_execution(make_run("a"))
    [failure] = check_task_run({"taskId": "a", "colour": "blue"}, execution)
    assert "unknown field 'colour'" in failure


# --- logs and relations ------------------------------------------------------------------------


LOGS = [
    make_log("t2", "WARN", "second io.kestra.plugin.core.log.Log"),
    make_log("t3", "ERROR", "third logs"),
    make_log("t5", "INFO", "five first"),
    make_log("t5", "INFO", "five second"),
    make_log("t6", "DEBUG", "debug"),
    make_log("t1", "TRACE", "first t1"),
]


def test_log_checks() -> None:
    assert check_log({"taskId": "t1", "level": "TRACE", "message": "first t1"}, LOGS) == []
    assert check_log({"taskId": "t1", "level": "INFO", "message": "first t1"}, LOGS) != []
    assert check_log({"taskId": "t1", "message": "first"}, LOGS) != []  # exact
    assert check_log({"contains": "five sec"}, LOGS) == []
    assert check_log({"contains": "nowhere"}, LOGS) != []
    assert check_log({"taskId": "t4", "absent": True}, LOGS) == []
    assert check_log({"taskId": "t5", "absent": True}, LOGS) != []


def test_log_count_at_least_info_is_exact() -> None:
    assert count_logs_at_least_info(LOGS) == 4
    obs = Observed(make_execution(), logs=LOGS)
    assert check_expect({"logCountAtLeastInfo": 4}, obs) == []
    assert check_expect({"logCountAtLeastInfo": 3}, obs) != []


def test_relations() -> None:
    execution = nested_loops()
    contains = {"taskRun": {"taskId": "last", "values": []}, "op": "contains"}
    assert (
        check_relation({**contains, "outputOf": {"taskId": "ret", "values": ["v1"]}}, execution)
        == []
    )
    with_prefix = {**contains, "prefix": "get ", "outputOf": {"taskId": "ret", "values": ["v1"]}}
    assert check_relation(with_prefix, execution) == []
    assert (
        check_relation({**contains, "outputOf": {"taskId": "ret", "values": ["v2"]}}, execution)
        != []
    )
    [failure] = check_relation({**contains, "outputOf": {"taskId": "ret"}}, execution)
    assert "selects 2 task runs" in failure


# --- execution level ---------------------------------------------------------------------------


def test_execution_state_and_counts() -> None:
    execution = make_execution(make_run("a", "FAILED"), make_run("b"), state="FAILED")
    obs = Observed(execution)
    expect = {"state": "FAILED", "taskRunCount": 2, "failedTaskRunsAtLeast": 1, "notes": "x"}
    assert check_expect(expect, obs) == []
    assert check_expect({"state": "FAILED", "taskRunCount": None, "inferred": True}, obs) == []
    failures = check_expect(
        {"state": "SUCCESS", "taskRunCount": 3, "failedTaskRunsAtLeast": 2}, obs
    )
    assert len(failures) == 3


def test_outputs_variable_subset() -> None:
    obs = Observed(nested_loops())
    assert check_expect({"outputs": {"ret": {"v2": {"value": "b"}}}}, obs) == []
    assert check_expect({"outputs": {"ret": {"v2": {"value": "a"}}}}, obs) != []


def test_flow_outputs() -> None:
    assert check_expect({"flowOutputs": None}, Observed(make_execution())) == []
    assert check_expect({"flowOutputs": None}, Observed(make_execution(outputs={}))) == []
    assert check_expect({"flowOutputs": None}, Observed(make_execution(outputs={"k": 1}))) != []
    stored = Observed(make_execution(outputs={"myout": ["1", "2"]}))
    assert check_expect({"flowOutputs": {"myout": ["1", "2"]}}, stored) == []
    assert check_expect({"flowOutputs": {"myout": ["2", "1"]}}, stored) != []
    assert check_expect({"flowOutputs": {"myout": ["1"]}}, Observed(make_execution())) != []


def test_execution_states_any_order() -> None:
    executions = [make_execution(state=s) for s in ("FAILED", "RETRIED", "RETRIED")]
    obs = Observed(executions[1], flow_executions=executions)
    assert check_expect({"executionStates": ["RETRIED", "RETRIED", "FAILED"]}, obs) == []
    assert check_expect({"executionStates": ["RETRIED", "FAILED"]}, obs) != []
    [failure] = check_expect({"executionStates": ["FAILED"]}, Observed(executions[0]))
    assert "did not collect" in failure


def test_all_task_runs_state_and_history() -> None:
    history = ["CREATED", "RUNNING", "FAILED", "RESTARTED", "RUNNING", "SUCCESS"]
    execution = make_execution(make_run("a"), make_run("b"), history=history)
    obs = Observed(execution)
    expect = {"allTaskRunsState": "SUCCESS", "executionHistoryIncludes": ["RESTARTED"]}
    assert check_expect(expect, obs) == []
    mixed = Observed(make_execution(make_run("a"), make_run("b", "WARNING")))
    [failure] = check_expect({"allTaskRunsState": "SUCCESS"}, mixed)
    assert "#1 b=WARNING" in failure
    assert check_expect({"executionHistoryIncludes": ["PAUSED"]}, obs) != []


def test_unknown_expectation_field_fails() -> None:
    [failure] = check_expect({"colour": "blue"}, Observed(make_execution()))
    assert "unknown expectation field 'colour'" in failure


# --- children ----------------------------------------------------------------------------------


def child_execution(labels: dict[str, str]) -> Execution:
    trigger = ExecutionTrigger(
        id="launch",
        type="io.kestra.plugin.core.flow.Subflow",
        variables={"executionId": "parent1", "flowId": "task-flow", "namespace": "io.kestra.tests"},
    )
    return make_execution(
        make_run("a"),
        execution_id="child1",
        flow="io.kestra.tests.switch",
        labels=labels,
        trigger=trigger,
    )


def test_children_labels_trigger_and_placeholders() -> None:
    child = child_execution({"system.correlationId": "parent1", "k": "v"})
    spec = {
        "flow": "io.kestra.tests.switch",
        "expect": {
            "state": "SUCCESS",
            "taskRunCount": 1,
            "labels": {"system.correlationId": "<parent execution id>"},
            "labelCount": 2,
            "trigger": {
                "type": "io.kestra.plugin.core.flow.Subflow",
                "variables": {"executionId": "<parent execution id>", "flowId": "task-flow"},
            },
        },
    }
    assert check_children([spec], [child], {}, "parent1") == []
    failures = check_children([spec], [child], {}, "other-parent")
    assert len(failures) == 2  # the label and the trigger's executionId
    assert all("children[0] io.kestra.tests.switch" in line for line in failures)


def test_children_label_count_and_missing_child() -> None:
    child = child_execution({"system.correlationId": "parent1"})
    spec = {"flow": "io.kestra.tests.switch", "expect": {"labelCount": 5}}
    [failure] = check_children([spec], [child], {}, "parent1")
    assert "labelCount: expected 5, got 1" in failure
    missing = {"flow": "io.kestra.tests.other", "expect": {"state": "SUCCESS"}}
    [failure] = check_children([missing], [child], {}, "parent1")
    assert "no child execution of this flow" in failure


# --- dump and corpus helpers -------------------------------------------------------------------


def test_dump_execution_shows_task_runs_and_logs() -> None:
    text = dump_execution(nested_loops(), LOGS[:1])
    assert "ret value=" not in text  # children of a Switch carry no value
    assert "switch value='v2' state=SUCCESS attempts=1[SUCCESS]" in text
    assert 'WARN  t2: "second io.kestra.plugin.core.log.Log"' in text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1S", 1),
        ("PT0.250S", 0.25),
        ("PT15M", 900),
        ("P1DT1H", 90000),
        ("1s", None),
        ("PT", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    duration = parse_duration(text)
    assert (duration.total_seconds() if duration else None) == seconds


def test_real_time_detection() -> None:
    pause = {"tasks": [{"id": "p", "type": "io.kestra.plugin.core.flow.Pause", "delay": "PT1S"}]}
    fast_retry = {"retry": {"type": "constant", "interval": "PT0.25S"}, "tasks": []}
    slow_retry = {"tasks": [{"id": "t", "retry": {"interval": "PT1S"}}]}
    assert _flow_needs_real_time(pause)
    assert not _flow_needs_real_time(fast_retry)
    assert _flow_needs_real_time(slow_retry)
    assert not _flow_needs_real_time({"tasks": [{"type": "io.kestra.plugin.core.flow.Pause"}]})


def test_short_inputs() -> None:
    assert short_inputs({}) == ""
    assert short_inputs({"param": True, "s": "true", "n": 0}) == "param=true,s='true',n=0"
    assert short_inputs({"k": "a b"}) == "k='a_b'"
