"""Build the outward execution JSON (Kestra 1.x shape) from the executor's internal state.

Only called at the edges (the driver, execution updates, the API): O(size of the execution).
"""

from __future__ import annotations

from kestream.executor.state import ExecutionState, StateRecord, TaskRunState
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
