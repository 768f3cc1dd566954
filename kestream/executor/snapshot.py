"""Build the outward execution JSON (Kestra 1.x shape) from the executor's internal state.

Only called at the edges (the driver, execution updates, the API): O(size of the execution).

Two forms: the pydantic models (:func:`execution_model`, for the API and the driver, which
hand models on), and the JSON itself (:func:`execution_json`, :func:`task_run_json`), built
without a model per task run and state for the execution updates the executor writes on every
step. Both give the same JSON (``model_dump(mode="json", by_alias=True)`` of the model); the
tests compare them on every step of the conformance flows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_core import to_jsonable_python

from kestream.executor.instants import edge_instant
from kestream.executor.state import ExecutionState, StateRecord, TaskRunState
from kestream.models.durations import format_duration
from kestream.models.execution import (
    Execution,
    ExecutionMetadata,
    ExecutionTrigger,
    Label,
    State,
    StateHistory,
    TaskRun,
    TaskRunAttempt,
)
from kestream.models.state import StateType


def state_model(record: StateRecord) -> State:
    return State(
        current=record.current,
        histories=[StateHistory(state=s, date=d) for s, d in record.history],
    )


def task_run_model(st: ExecutionState, tr: TaskRunState) -> TaskRun:
    return TaskRun(
        id=tr.id,
        executionId=st.id,
        namespace=st.namespace,
        flowId=st.flow_id,
        taskId=tr.task.id,
        parentTaskRunId=tr.parent.id if tr.parent else None,
        value=tr.value,
        attempts=[TaskRunAttempt(state=state_model(a)) for a in tr.attempts] or None,
        outputs=tr.outputs,
        state=state_model(tr.state),
    )


def execution_model(st: ExecutionState, *, with_task_runs: bool = True) -> Execution:
    """The execution JSON; without its task runs when only the execution's own fields matter."""
    trigger = ExecutionTrigger.model_validate(st.trigger) if st.trigger else None
    return Execution(
        id=st.id,
        namespace=st.namespace,
        flowId=st.flow_id,
        flowRevision=st.revision,
        originalId=st.original_id,
        parentId=st.parent_id,
        labels=[Label(key=k, value=v) for k, v in st.labels.items()],
        inputs=st.inputs,
        outputs=st.flow_outputs,
        trigger=trigger,
        scheduleDate=st.schedule_date,
        metadata=ExecutionMetadata(
            attemptNumber=st.attempt_number, originalCreatedDate=st.original_created
        ),
        state=state_model(st.state),
        taskRunList=[task_run_model(st, tr) for tr in st.task_runs.values()]
        if with_task_runs
        else [],
    )


# -- the JSON itself --------------------------------------------------------------------------


def _any_json(value: Any) -> Any:
    """A value of an ``Any`` field as pydantic's JSON mode writes it (same serializer)."""
    return None if value is None else to_jsonable_python(value)


#: Each state's name: a dict lookup is several times cheaper than an enum member's ``value``
#: (a descriptor), and every update writes one per state of its task runs' histories.
_STATE_NAMES: dict[StateType, str] = {state: state.value for state in StateType}


def state_json(record: StateRecord) -> dict[str, Any]:
    """``state_model(record)``'s JSON: the history, then the derived start, end and duration."""
    history = record.history
    current = record.current
    names = _STATE_NAMES
    out: dict[str, Any] = {
        "current": names[current],
        "histories": [{"state": names[s], "date": edge_instant(d)} for s, d in history],
    }
    if not history:
        out.update(startDate=None, endDate=None, duration=None)
        return out
    first, last = history[0][1], history[-1][1]
    terminal = current.is_terminal
    out["startDate"] = edge_instant(first)
    out["endDate"] = edge_instant(last) if terminal else None
    end = last if terminal else datetime.now(UTC)
    out["duration"] = format_duration(max(end - first, timedelta(0)))
    return out


def task_run_json(st: ExecutionState, tr: TaskRunState) -> dict[str, Any]:
    """``task_run_model(st, tr)``'s JSON, without the models."""
    return {
        "id": tr.id,
        "executionId": st.id,
        "namespace": st.namespace,
        "flowId": st.flow_id,
        "taskId": tr.task.id,
        "parentTaskRunId": tr.parent.id if tr.parent else None,
        "value": tr.value,
        "attempts": [{"state": state_json(a)} for a in tr.attempts] or None,
        "outputs": _any_json(tr.outputs),
        "state": state_json(tr.state),
    }


def _trigger_json(trigger: dict[str, Any] | None) -> dict[str, Any] | None:
    if not trigger:
        return None
    trigger_id, kind = trigger.get("id"), trigger.get("type")
    variables = trigger.get("variables", {})
    if isinstance(trigger_id, str) and isinstance(kind, str) and isinstance(variables, dict):
        return {"id": trigger_id, "type": kind, "variables": _any_json(variables)}
    # Any other shape: the model's validation decides (and says what is wrong).
    return ExecutionTrigger.model_validate(trigger).model_dump(mode="json", by_alias=True)


def execution_json(st: ExecutionState, *, with_task_runs: bool = True) -> dict[str, Any]:
    """``execution_model(st, with_task_runs=...)``'s JSON, without the models."""
    return {
        "id": st.id,
        "namespace": st.namespace,
        "flowId": st.flow_id,
        "flowRevision": st.revision,
        "originalId": st.original_id,
        "deleted": False,
        "parentId": st.parent_id,
        "labels": [{"key": k, "value": v} for k, v in st.labels.items()],
        "inputs": _any_json(st.inputs),
        "outputs": _any_json(st.flow_outputs),
        "trigger": _trigger_json(st.trigger),
        "scheduleDate": edge_instant(st.schedule_date) if st.schedule_date else None,
        "metadata": {
            "attemptNumber": st.attempt_number,
            "originalCreatedDate": edge_instant(st.original_created),
        },
        "state": state_json(st.state),
        "taskRunList": [task_run_json(st, tr) for tr in st.task_runs.values()]
        if with_task_runs
        else [],
    }
