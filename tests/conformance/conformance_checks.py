"""The assertion logic of the conformance suite, independent of the engine.

Every check takes a part of an ``expect`` object from ``expected.json`` (format: the corpus's
``README.md``) and the observed :class:`~kestream.models.execution.Execution` (plus its logs), and
returns a list of failure lines: empty means the check passed. Nothing here raises on a mismatch,
so one run reports every difference at once.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from kestream.models.execution import Execution, LogEntry, TaskRun

Failures = list[str]

# Fields that document an expectation but assert nothing.
IGNORED_FIELDS = frozenset({"notes", "inferred", "inferredFields"})

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
_LEVEL_ALIASES = {"WARNING": "WARN"}

_MISSING: Any = object()


@dataclass(frozen=True)
class Observed:
    """What a check looks at: one execution at one stop, with what surrounds it."""

    execution: Execution
    logs: Sequence[LogEntry] = ()
    # Every execution of the same flow (needed by ``executionStates`` only).
    flow_executions: Sequence[Execution] | None = None
    # ``<parent execution id>`` style placeholders in expected labels/trigger variables.
    placeholders: Mapping[str, str] = field(default_factory=dict)


# --- small helpers ------------------------------------------------------------------------------


def state_name(value: Any) -> str:
    """A state as its plain name (``StateType.SUCCESS`` -> ``"SUCCESS"``)."""
    return str(value.value) if isinstance(value, Enum) else str(value)


def show(value: Any, limit: int = 300) -> str:
    """Compact JSON-ish rendering for messages, truncated to ``limit`` characters."""
    if value is _MISSING:
        return "<missing>"
    try:
        text = json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_default(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def strict_equal(expected: Any, actual: Any) -> bool:
    """JSON equality: ``True`` is not ``1``, maps need the same keys, lists the same order."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if isinstance(expected, Mapping):
        return (
            isinstance(actual, Mapping)
            and set(expected) == set(actual)
            and all(strict_equal(expected[key], actual[key]) for key in expected)
        )
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(expected) == len(actual)
            and all(strict_equal(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, Enum) or isinstance(actual, Enum):
        return state_name(expected) == state_name(actual)
    return bool(expected == actual)


def subset_diff(expected: Any, actual: Any, path: str) -> Failures:
    """Differences where ``expected`` is not contained in ``actual`` (maps match as subsets)."""
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{path}: expected a map containing {show(expected)}, got {show(actual)}"]
        failures: Failures = []
        for key, value in expected.items():
            if key not in actual:
                failures.append(f"{path}[{key!r}]: missing (present keys: {sorted(actual)})")
            else:
                failures.extend(subset_diff(value, actual[key], f"{path}[{key!r}]"))
        return failures
    if strict_equal(expected, actual):
        return []
    return [f"{path}: expected {show(expected)}, got {show(actual)}"]


def lookup(mapping: Any, key: str) -> Any:
    """``mapping[key]``; a dotted key (``outputs.extracted``) reaches into nested maps, and a
    ``['...']`` segment names a key holding dots (``uris['input.txt']``)."""
    if isinstance(mapping, Mapping) and key in mapping:
        return mapping[key]
    current = mapping
    for quoted, plain in _KEY_SEGMENT.findall(key):
        part = quoted or plain
        if not isinstance(current, Mapping) or part not in current:
            return _MISSING
        current = current[part]
    return current


#: One segment of a dotted key: ``['with.dots']`` or a plain name.
_KEY_SEGMENT = re.compile(r"\['([^']*)'\]|([^.\[\]]+)")


def substitute(value: Any, placeholders: Mapping[str, str]) -> Any:
    """Replace placeholders (``<parent execution id>``...) inside strings of a JSON value."""
    if isinstance(value, str):
        for placeholder, replacement in placeholders.items():
            value = value.replace(placeholder, replacement)
        return value
    if isinstance(value, Mapping):
        return {key: substitute(item, placeholders) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, placeholders) for item in value]
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else show(value, limit=10**9)


def _norm_level(level: str) -> str:
    upper = level.upper()
    return _LEVEL_ALIASES.get(upper, upper)


# --- loop values and the `outputs` variable ----------------------------------------------------


def value_path(run: TaskRun, runs_by_id: Mapping[str, TaskRun]) -> list[str]:
    """Loop values from the root to ``run``, outermost first (task runs carrying a value only)."""
    path: list[str] = []
    seen: set[str] = set()
    current: TaskRun | None = run
    while current is not None and current.id not in seen:
        seen.add(current.id)
        if current.value is not None:
            path.append(current.value)
        parent_id = current.parentTaskRunId
        current = runs_by_id.get(parent_id) if parent_id else None
    return path[::-1]


def runs_by_id(execution: Execution) -> dict[str, TaskRun]:
    return {run.id: run for run in execution.taskRunList}


def outputs_variable(execution: Execution) -> dict[str, Any]:
    """The ``outputs`` expression variable: task outputs keyed by task id, then loop values."""
    index = runs_by_id(execution)
    result: dict[str, Any] = {}
    for run in execution.taskRunList:
        if run.outputs is None:
            continue
        keys = [run.taskId, *value_path(run, index)]
        target = result
        for key in keys[:-1]:
            child = target.get(key)
            if not isinstance(child, dict):
                child = target[key] = {}
            target = child
        target[keys[-1]] = run.outputs
    return result


# --- task-run selection ------------------------------------------------------------------------

SELECTOR_KEYS = ("taskId", "index", "values")


def describe_selector(check: Mapping[str, Any]) -> str:
    parts = [f"{key}={show(check[key])}" for key in SELECTOR_KEYS if key in check]
    return "{" + ", ".join(parts) + "}"


def filter_task_runs(execution: Execution, check: Mapping[str, Any]) -> list[tuple[int, TaskRun]]:
    """Task runs (with their position) matching ``taskId`` and ``values`` (ignores ``index``)."""
    index = runs_by_id(execution)
    return [
        (position, run)
        for position, run in enumerate(execution.taskRunList)
        if ("taskId" not in check or run.taskId == check["taskId"])
        and ("values" not in check or value_path(run, index) == list(check["values"]))
    ]


def select_task_runs(
    execution: Execution, check: Mapping[str, Any]
) -> tuple[list[tuple[int, TaskRun]], Failures]:
    """The task runs a check is about; with ``index``, the one at that position must match."""
    if "index" not in check:
        return filter_task_runs(execution, check), []
    position = check["index"]
    runs = execution.taskRunList
    if not 0 <= position < len(runs):
        return [], [f"index {position} is out of range: the execution has {len(runs)} task runs"]
    run = runs[position]
    failures: Failures = []
    if "taskId" in check and run.taskId != check["taskId"]:
        failures.append(f"task run at index {position} is {run.taskId!r}, not {check['taskId']!r}")
    actual_values = value_path(run, runs_by_id(execution))
    if "values" in check and actual_values != list(check["values"]):
        failures.append(
            f"task run at index {position} has values {show(actual_values)}, "
            f"not {show(check['values'])}"
        )
    return ([] if failures else [(position, run)]), failures


# --- task-run assertions -----------------------------------------------------------------------


def _attempts(run: TaskRun) -> list[Any]:
    return list(run.attempts or [])


def _tr_state(expected: str, run: TaskRun) -> Failures:
    actual = state_name(run.state.current)
    return [] if actual == expected else [f"state: expected {expected}, got {actual}"]


def _tr_attempts(expected: int, run: TaskRun) -> Failures:
    actual = len(_attempts(run))
    return [] if actual == expected else [f"attempts: expected {expected}, got {actual}"]


def _tr_attempts_at_least(expected: int, run: TaskRun) -> Failures:
    actual = len(_attempts(run))
    return [] if actual >= expected else [f"attemptsAtLeast: expected >= {expected}, got {actual}"]


def _tr_attempt_state(expected: str, run: TaskRun) -> Failures:
    attempts = _attempts(run)
    if len(attempts) != 1:
        return [f"attemptState: expected a single attempt, got {len(attempts)}"]
    actual = state_name(attempts[0].state.current)
    return [] if actual == expected else [f"attemptState: expected {expected}, got {actual}"]


def _tr_outputs(expected: Mapping[str, Any], run: TaskRun) -> Failures:
    # Leaves must be equal; a map value matches as a subset. The corpus relies on this:
    # output-values expects {"values": {"output1", "output2"}} while the task also outputs
    # values.taskInfo (a rendered start date that the Kestra test does not assert).
    failures: Failures = []
    for key, value in expected.items():
        actual = lookup(run.outputs or {}, key)
        if actual is _MISSING:
            failures.append(f"outputs[{key!r}]: expected {show(value)}, got <missing>")
        else:
            failures.extend(subset_diff(value, actual, f"outputs[{key!r}]"))
    return failures


def _tr_outputs_contain(expected: Mapping[str, str], run: TaskRun) -> Failures:
    failures: Failures = []
    for key, needle in expected.items():
        actual = lookup(run.outputs or {}, key)
        if actual is _MISSING or needle not in _as_text(actual):
            failures.append(
                f"outputsContain[{key!r}]: expected to contain {needle!r}, got {show(actual)}"
            )
    return failures


def _tr_outputs_regex(expected: Mapping[str, str], run: TaskRun) -> Failures:
    # Full match, like the Java test's matchesPattern (the corpus's note on execution-start-date);
    # a pattern anchored by hand (``^kestra://``, ``input\.txt$``: Kestra's startsWith and
    # endsWith) is searched, its anchors saying where it applies.
    failures: Failures = []
    for key, pattern in expected.items():
        actual = lookup(run.outputs or {}, key)
        anchored = pattern.startswith("^") or pattern.endswith("$")
        find = re.search if anchored else re.fullmatch
        if actual is _MISSING or find(pattern, _as_text(actual)) is None:
            failures.append(
                f"outputsRegex[{key!r}]: expected to fully match {pattern!r}, got {show(actual)}"
            )
    return failures


def iso_datetime_within_10s_of_now(value: Any, now: datetime | None = None) -> str | None:
    """``None`` when ``value`` is an ISO-8601 date-time within 10 s of now, else the reason."""
    if not isinstance(value, str):
        return f"not a string: {show(value)}"
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return f"not an ISO-8601 date-time: {value!r}"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    drift = abs((now or datetime.now(UTC)) - moment)
    return None if drift <= timedelta(seconds=10) else f"{value!r} is {drift} away from now"


MATCHERS: dict[str, Callable[[Any], str | None]] = {
    "iso-datetime-within-10s-of-now": iso_datetime_within_10s_of_now,
}


def _tr_outputs_match(expected: Mapping[str, str], run: TaskRun) -> Failures:
    failures: Failures = []
    for key, matcher_name in expected.items():
        matcher = MATCHERS.get(matcher_name)
        if matcher is None:
            failures.append(f"outputsMatch[{key!r}]: unknown matcher {matcher_name!r}")
            continue
        actual = lookup(run.outputs or {}, key)
        reason = "missing" if actual is _MISSING else matcher(actual)
        if reason:
            failures.append(f"outputsMatch[{key!r}] {matcher_name}: {reason}")
    return failures


def _history(run: TaskRun) -> list[str]:
    return [state_name(item.state) for item in run.state.histories]


def _tr_history_counts(expected: Mapping[str, int], run: TaskRun) -> Failures:
    counts = Counter(_history(run))
    wrong = {
        state: counts.get(state, 0) for state, n in expected.items() if counts.get(state, 0) != n
    }
    if not wrong:
        return []
    history = _history(run)
    return [
        f"historyCounts: expected {show(dict(expected))}, got {show(wrong)} (history {history})"
    ]


def _tr_history_includes(expected: Sequence[str], run: TaskRun) -> Failures:
    history = _history(run)
    missing = [state for state in expected if state not in history]
    return [f"historyIncludes: {missing} not in history {history}"] if missing else []


TASK_RUN_ASSERTIONS: dict[str, Callable[[Any, TaskRun], Failures]] = {
    "state": _tr_state,
    "attempts": _tr_attempts,
    "attemptsAtLeast": _tr_attempts_at_least,
    "attemptState": _tr_attempt_state,
    "outputs": _tr_outputs,
    "outputsContain": _tr_outputs_contain,
    "outputsRegex": _tr_outputs_regex,
    "outputsMatch": _tr_outputs_match,
    "historyCounts": _tr_history_counts,
    "historyIncludes": _tr_history_includes,
}
_TASK_RUN_KEYS = {*SELECTOR_KEYS, *TASK_RUN_ASSERTIONS, "count", "absent", *IGNORED_FIELDS}


def _check_absent(check: Mapping[str, Any], execution: Execution) -> Failures:
    found = filter_task_runs(execution, check)
    if check["absent"] and found:
        positions = [position for position, _ in found]
        return [f"absent: expected no such task run, found {len(found)} (at index {positions})"]
    if not check["absent"] and not found:
        return ["absent=false: expected such a task run, found none"]
    return []


def _check_count(check: Mapping[str, Any], execution: Execution) -> Failures:
    actual = len(filter_task_runs(execution, check))
    return [] if actual == check["count"] else [f"count: expected {check['count']}, got {actual}"]


def check_task_run(check: Mapping[str, Any], execution: Execution) -> Failures:
    """One ``taskRuns`` item: select task runs, then assert on every selected one."""
    label = f"taskRuns {describe_selector(check)}"
    failures = [f"{label}: unknown field {key!r}" for key in check if key not in _TASK_RUN_KEYS]
    if "absent" in check:
        failures += [f"{label}: {line}" for line in _check_absent(check, execution)]
    if "count" in check:
        failures += [f"{label}: {line}" for line in _check_count(check, execution)]
    assertions = [key for key in check if key in TASK_RUN_ASSERTIONS]
    if "absent" in check or ("count" in check and not assertions):
        return failures
    selected, selection_failures = select_task_runs(execution, check)
    failures += [f"{label}: {line}" for line in selection_failures]
    if not selected and not selection_failures:
        failures.append(f"{label}: no task run matches")
    for position, run in selected:
        for key in assertions:
            lines = TASK_RUN_ASSERTIONS[key](check[key], run)
            failures += [f"{label} (task run #{position}, {run.taskId}): {line}" for line in lines]
    return failures


# --- logs --------------------------------------------------------------------------------------

_LOG_KEYS = {"taskId", "level", "message", "contains", "absent", *IGNORED_FIELDS}


def _describe_log(line: LogEntry) -> str:
    return f"{line.level} {line.taskId}: {line.message!r}"


def check_log(spec: Mapping[str, Any], logs: Sequence[LogEntry]) -> Failures:
    """One ``logs`` item: a matching line exists (or, with ``absent``, none does)."""
    label = "logs " + show({key: spec[key] for key in ("taskId", "level") if key in spec})
    failures = [f"{label}: unknown field {key!r}" for key in spec if key not in _LOG_KEYS]
    candidates = [
        line
        for line in logs
        if ("taskId" not in spec or line.taskId == spec["taskId"])
        and ("level" not in spec or _norm_level(line.level) == _norm_level(spec["level"]))
    ]
    seen = "; ".join(_describe_log(line) for line in candidates[:10]) or "none"
    if spec.get("absent"):
        if candidates:
            failures.append(f"{label}: expected no log line, found {len(candidates)}: {seen}")
    elif "message" in spec:
        if not any(line.message == spec["message"] for line in candidates):
            failures.append(f"{label}: no line equal to {spec['message']!r}; lines: {seen}")
    elif "contains" in spec:
        if not any(spec["contains"] in line.message for line in candidates):
            failures.append(f"{label}: no line containing {spec['contains']!r}; lines: {seen}")
    elif not candidates:
        failures.append(f"{label}: no log line")
    return failures


def count_logs_at_least_info(logs: Iterable[LogEntry]) -> int:
    threshold = LOG_LEVELS.index("INFO")
    levels = (_norm_level(line.level) for line in logs)
    return sum(
        1 for level in levels if level in LOG_LEVELS and LOG_LEVELS.index(level) >= threshold
    )


# --- relations ---------------------------------------------------------------------------------


def _single_value_output(
    selector: Mapping[str, Any], execution: Execution
) -> tuple[str | None, str]:
    found = filter_task_runs(execution, selector)
    label = describe_selector(selector)
    if len(found) != 1:
        return None, f"{label} selects {len(found)} task runs, expected exactly 1"
    value = lookup(found[0][1].outputs or {}, "value")
    if not isinstance(value, str):
        return None, f"{label} has no string 'value' output (got {show(value)})"
    return value, ""


def check_relation(spec: Mapping[str, Any], execution: Execution) -> Failures:
    """The ``value`` output of ``taskRun`` contains (``prefix`` +) the ``value`` of ``outputOf``."""
    subject_label, reference_label = (
        describe_selector(spec[key]) for key in ("taskRun", "outputOf")
    )
    label = f"relations {subject_label} {spec.get('op')} {reference_label}"
    if spec.get("op", "contains") != "contains":
        return [f"{label}: unknown op {spec.get('op')!r}"]
    subject, subject_error = _single_value_output(spec["taskRun"], execution)
    reference, reference_error = _single_value_output(spec["outputOf"], execution)
    errors = [error for error in (subject_error, reference_error) if error]
    if errors or subject is None or reference is None:
        return [f"{label}: {error}" for error in errors]
    needle = spec.get("prefix", "") + reference
    if needle in subject:
        return []
    return [f"{label}: {subject!r} does not contain {needle!r}"]


# --- execution-level checks --------------------------------------------------------------------


def _ex_state(expected: str, obs: Observed) -> Failures:
    actual = state_name(obs.execution.state.current)
    return [] if actual == expected else [f"state: expected {expected}, got {actual}"]


def _ex_task_run_count(expected: int | None, obs: Observed) -> Failures:
    actual = len(obs.execution.taskRunList)
    if expected is None or actual == expected:
        return []
    return [f"taskRunCount: expected {expected}, got {actual}"]


def _ex_failed_at_least(expected: int, obs: Observed) -> Failures:
    actual = sum(
        1 for run in obs.execution.taskRunList if state_name(run.state.current) == "FAILED"
    )
    return (
        []
        if actual >= expected
        else [f"failedTaskRunsAtLeast: expected >= {expected}, got {actual}"]
    )


def _ex_log_count_info(expected: int, obs: Observed) -> Failures:
    # "at least" is about the level: the exact number of lines at INFO, WARN or ERROR.
    actual = count_logs_at_least_info(obs.logs)
    return [] if actual == expected else [f"logCountAtLeastInfo: expected {expected}, got {actual}"]


def _ex_task_runs(expected: Sequence[Mapping[str, Any]], obs: Observed) -> Failures:
    return [line for check in expected for line in check_task_run(check, obs.execution)]


def _ex_outputs(expected: Mapping[str, Any], obs: Observed) -> Failures:
    return subset_diff(expected, outputs_variable(obs.execution), "outputs")


def _ex_flow_outputs(expected: Mapping[str, Any] | None, obs: Observed) -> Failures:
    actual = obs.execution.outputs
    if expected is None:
        return [] if not actual else [f"flowOutputs: expected none stored, got {show(actual)}"]
    if actual is not None and strict_equal(expected, actual):
        return []
    return [f"flowOutputs: expected {show(expected)}, got {show(actual)}"]


def _ex_logs(expected: Sequence[Mapping[str, Any]], obs: Observed) -> Failures:
    return [line for spec in expected for line in check_log(spec, obs.logs)]


def _ex_relations(expected: Sequence[Mapping[str, Any]], obs: Observed) -> Failures:
    return [line for spec in expected for line in check_relation(spec, obs.execution)]


def _ex_execution_states(expected: Sequence[str], obs: Observed) -> Failures:
    if obs.flow_executions is None:
        return ["executionStates: the runner did not collect the executions of this flow"]
    actual = sorted(state_name(execution.state.current) for execution in obs.flow_executions)
    if actual == sorted(expected):
        return []
    return [f"executionStates: expected {sorted(expected)} (any order), got {actual}"]


def _ex_all_task_runs_state(expected: str, obs: Observed) -> Failures:
    wrong = [
        f"#{position} {run.taskId}={state_name(run.state.current)}"
        for position, run in enumerate(obs.execution.taskRunList)
        if state_name(run.state.current) != expected
    ]
    return [f"allTaskRunsState: expected all {expected}, but {', '.join(wrong)}"] if wrong else []


def _ex_history_includes(expected: Sequence[str], obs: Observed) -> Failures:
    history = [state_name(item.state) for item in obs.execution.state.histories]
    missing = [state for state in expected if state not in history]
    return [f"executionHistoryIncludes: {missing} not in history {history}"] if missing else []


def _ex_labels(expected: Mapping[str, str], obs: Observed) -> Failures:
    wanted = substitute(dict(expected), obs.placeholders)
    return subset_diff(wanted, obs.execution.label_map(), "labels")


def _ex_label_count(expected: int, obs: Observed) -> Failures:
    labels = obs.execution.labels
    if len(labels) == expected:
        return []
    shown = show([[label.key, label.value] for label in labels])
    return [f"labelCount: expected {expected}, got {len(labels)}: {shown}"]


def _ex_trigger(expected: Mapping[str, Any], obs: Observed) -> Failures:
    trigger = obs.execution.trigger
    if trigger is None:
        return [f"trigger: expected {show(expected)}, got none"]
    wanted = substitute(dict(expected), obs.placeholders)
    failures: Failures = []
    if "type" in wanted and trigger.type != wanted["type"]:
        failures.append(f"trigger.type: expected {wanted['type']!r}, got {trigger.type!r}")
    if "id" in wanted and trigger.id != wanted["id"]:
        failures.append(f"trigger.id: expected {wanted['id']!r}, got {trigger.id!r}")
    failures += subset_diff(wanted.get("variables", {}), trigger.variables, "trigger.variables")
    return failures


EXPECT_CHECKS: dict[str, Callable[[Any, Observed], Failures]] = {
    "state": _ex_state,
    "taskRunCount": _ex_task_run_count,
    "failedTaskRunsAtLeast": _ex_failed_at_least,
    "logCountAtLeastInfo": _ex_log_count_info,
    "taskRuns": _ex_task_runs,
    "outputs": _ex_outputs,
    "flowOutputs": _ex_flow_outputs,
    "logs": _ex_logs,
    "relations": _ex_relations,
    "executionStates": _ex_execution_states,
    "allTaskRunsState": _ex_all_task_runs_state,
    "executionHistoryIncludes": _ex_history_includes,
    # children items only, but valid on any execution
    "labels": _ex_labels,
    "labelCount": _ex_label_count,
    "trigger": _ex_trigger,
}


def check_expect(expect: Mapping[str, Any], obs: Observed) -> Failures:
    """Every field of one ``expect`` object; an unknown field is a failure, never ignored."""
    failures: Failures = []
    for key, expected in expect.items():
        if key in IGNORED_FIELDS:
            continue
        check = EXPECT_CHECKS.get(key)
        if check is None:
            failures.append(
                f"unknown expectation field {key!r} (the checker does not implement it)"
            )
        else:
            failures.extend(check(expected, obs))
    return failures


# --- children ----------------------------------------------------------------------------------


def child_placeholders(subject_id: str) -> dict[str, str]:
    """Both placeholders stand for the id of the execution under test."""
    return {"<parent execution id>": subject_id, "<root execution id>": subject_id}


def check_child(
    position: int,
    spec: Mapping[str, Any],
    children: Sequence[Execution],
    child_logs: Mapping[str, Sequence[LogEntry]],
    subject_id: str,
) -> Failures:
    """One ``children`` item: some child of that flow exists; every such child passes ``expect``."""
    label = f"children[{position}] {spec['flow']}"
    namespace, flow_id = spec["flow"].rsplit(".", 1)
    matching = [c for c in children if c.namespace == namespace and c.flowId == flow_id]
    if not matching:
        flows = sorted(f"{child.namespace}.{child.flowId}" for child in children)
        return [f"{label}: no child execution of this flow (children: {flows})"]
    failures: Failures = []
    for child in matching:
        obs = Observed(
            execution=child,
            logs=child_logs.get(child.id, ()),
            placeholders=child_placeholders(subject_id),
        )
        lines = check_expect(spec.get("expect", {}), obs)
        if "inputs" in spec:
            lines += subset_diff(spec["inputs"], child.inputs or {}, "inputs")
        failures += [f"{label} (execution {child.id}): {line}" for line in lines]
    return failures


def check_children(
    specs: Sequence[Mapping[str, Any]],
    children: Sequence[Execution],
    child_logs: Mapping[str, Sequence[LogEntry]],
    subject_id: str,
) -> Failures:
    return [
        line
        for position, spec in enumerate(specs)
        for line in check_child(position, spec, children, child_logs, subject_id)
    ]


# --- dumps for failure messages -----------------------------------------------------------------


def _depth(run: TaskRun, index: Mapping[str, TaskRun]) -> int:
    depth, parent_id = 0, run.parentTaskRunId
    seen: set[str] = set()
    while parent_id and parent_id in index and parent_id not in seen:
        seen.add(parent_id)
        depth += 1
        parent_id = index[parent_id].parentTaskRunId
    return depth


def _task_run_line(position: int, run: TaskRun, index: Mapping[str, TaskRun]) -> str:
    attempts = _attempts(run)
    attempt_states = ",".join(state_name(attempt.state.current) for attempt in attempts)
    parts = [
        f"  [{position:>2}] {'  ' * _depth(run, index)}{run.taskId}",
        f"value={run.value!r}" if run.value is not None else "",
        f"state={state_name(run.state.current)}",
        f"attempts={len(attempts)}[{attempt_states}]",
        f"outputs={show(run.outputs, 160)}" if run.outputs is not None else "",
    ]
    return " ".join(part for part in parts if part)


def dump_execution(execution: Execution, logs: Sequence[LogEntry] = (), max_logs: int = 60) -> str:
    """A compact, human-readable picture of an execution: header, task runs, logs."""
    history = ">".join(state_name(item.state) for item in execution.state.histories)
    header = (
        f"execution {execution.id} {execution.namespace}.{execution.flowId}: "
        f"state={state_name(execution.state.current)} history={history} "
        f"labels={show(execution.label_map(), 200)}"
    )
    if execution.outputs:
        header += f" flowOutputs={show(execution.outputs, 200)}"
    index = runs_by_id(execution)
    lines = [header, f" task runs ({len(execution.taskRunList)}):"]
    lines += [_task_run_line(i, run, index) for i, run in enumerate(execution.taskRunList)]
    lines.append(f" logs ({len(logs)}):")
    lines += [
        f"  {line.level:<5} {line.taskId}: {show(line.message, 200)}" for line in logs[:max_logs]
    ]
    if len(logs) > max_logs:
        lines.append(f"  ... {len(logs) - max_logs} more")
    return "\n".join(lines)
