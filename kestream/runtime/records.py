"""What travels on kestream's topics: events, worker jobs, results, updates, logs, flows.

Every value is JSON (one orjson pass each way). Keys are execution ids on every topic the
executor reads, so one execution's records always meet in one stream processor, in order.
A record that cannot be decoded raises :class:`RecordError`, which the processors send to the
dead-letter topic with the reason instead of stopping.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.codec import decode_value, encode_value
from kestream.executor.restore import snapshot_attempt
from kestream.executor.snapshot import execution_model, task_run_model
from kestream.executor.state import ExecutionState
from kestream.models.execution import format_instant
from kestream.models.state import StateType
from kestream.tasks.base import RunnableTask


class RecordError(ValueError):
    """A record that cannot be understood; ``reason`` goes to the dead-letter topic."""


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | None) -> Any:
    if data is None:
        raise RecordError("empty record value")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from None


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# -- events (executions and worker-results topics) --------------------------------------------


def event_value(event: ev.Event) -> dict[str, Any]:
    """The JSON body of an executor event."""
    if isinstance(event, ev.ExecutionCreated):
        link = event.parent
        return {
            "type": "created",
            "id": event.execution_id,
            "namespace": event.namespace,
            "flowId": event.flow_id,
            "revision": event.revision,
            "inputs": encode_value(event.inputs),
            "validate": event.validate_inputs,
            "labels": event.labels,
            "trigger": encode_value(event.trigger),
            "scheduleDate": _when(event.schedule_date),
            "originalId": event.original_id,
            "attempt": event.attempt_number,
            "originalCreated": _when(event.original_created),
            "parent": None
            if link is None
            else [link.execution_id, link.task_run_id, link.attempt, link.outputs, link.wait],
        }
    if isinstance(event, ev.WorkerResult):
        return {
            "type": "result",
            "id": event.execution_id,
            "run": event.task_run_id,
            "attempt": event.attempt,
            "state": event.state.value,
            "outputs": encode_value(event.outputs),
            "error": event.error,
            "errorLogs": event.error_logs,
        }
    if isinstance(event, ev.SubflowFinished):
        return {
            "type": "subflow",
            "id": event.execution_id,
            "run": event.task_run_id,
            "attempt": event.attempt,
            "child": event.child_id,
            "state": event.child_state.value,
            "outputs": encode_value(event.outputs),
            "error": event.error,
        }
    if isinstance(event, ev.Resume):
        return {
            "type": "resume",
            "id": event.execution_id,
            "inputs": encode_value(event.inputs),
            "run": event.task_run_id,
        }
    if isinstance(event, ev.Kill):
        return {"type": "kill", "id": event.execution_id}
    if isinstance(event, ev.Restart):
        body: dict[str, Any] = {"type": "restart", "id": event.execution_id}
        if event.snapshot is not None:
            body["snapshot"] = event.snapshot  # already JSON (the execution's model dump)
        return body
    raise TypeError(f"timers never travel on a topic: {event!r}")


def encode_event(event: ev.Event) -> bytes:
    return dumps(event_value(event))


def decode_event(data: bytes | None) -> ev.Event:
    """Decode an executor event; :class:`RecordError` says what is wrong with it."""
    body = loads(data)
    if not isinstance(body, dict):
        raise RecordError("an event must be a JSON object")
    kind = str(body.get("type"))
    try:
        return _EVENT_DECODERS[kind](body)
    except KeyError as exc:
        if kind not in _EVENT_DECODERS:
            raise RecordError(f"unknown event type {kind!r}") from None
        raise RecordError(f"{kind} event without {exc}") from None
    except (TypeError, ValueError) as exc:
        raise RecordError(f"bad {kind} event: {exc}") from None


def _created(body: dict[str, Any]) -> ev.Event:
    parent = body.get("parent")
    return ev.ExecutionCreated(
        execution_id=body["id"],
        namespace=body["namespace"],
        flow_id=body["flowId"],
        revision=body.get("revision"),
        inputs=decode_value(body.get("inputs")),
        validate_inputs=bool(body.get("validate", True)),
        labels={str(k): str(v) for k, v in (body.get("labels") or {}).items()},
        trigger=decode_value(body.get("trigger")),
        schedule_date=_parse_when(body.get("scheduleDate")),
        original_id=body.get("originalId"),
        attempt_number=int(body.get("attempt") or 1),
        original_created=_parse_when(body.get("originalCreated")),
        parent=ev.SubflowLink(*parent) if parent else None,
    )


def _result(body: dict[str, Any]) -> ev.Event:
    return ev.WorkerResult(
        body["id"],
        body["run"],
        int(body["attempt"]),
        StateType(body["state"]),
        decode_value(body.get("outputs")),
        body.get("error"),
        list(body.get("errorLogs") or []),
    )


def _subflow(body: dict[str, Any]) -> ev.Event:
    return ev.SubflowFinished(
        body["id"],
        body["run"],
        int(body["attempt"]),
        body["child"],
        StateType(body["state"]),
        decode_value(body.get("outputs")),
        body.get("error"),
    )


def _restart(body: dict[str, Any]) -> ev.Event:
    snapshot = body.get("snapshot")
    if snapshot is not None:
        if not isinstance(snapshot, dict):
            raise ValueError("the snapshot must be an execution JSON object")  # -> RecordError
        snapshot_attempt(snapshot)  # a RestoreError (a ValueError) -> RecordError
    return ev.Restart(body["id"], snapshot)


_EVENT_DECODERS = {
    "created": _created,
    "result": _result,
    "subflow": _subflow,
    "resume": lambda b: ev.Resume(b["id"], decode_value(b.get("inputs")), b.get("run")),
    "kill": lambda b: ev.Kill(b["id"]),
    "restart": _restart,
}


# -- worker jobs (worker-tasks topic) ---------------------------------------------------------


def encode_job(job: cmd.RunTask) -> bytes:
    """A task run for a worker: the task is named by flow revision and task id, not copied."""
    return dumps(
        {
            "type": "run",
            "id": job.execution_id,
            "run": job.task_run_id,
            "attempt": job.attempt,
            "namespace": job.namespace,
            "flowId": job.flow_id,
            "revision": job.revision,
            "taskId": job.task.id,
            "props": encode_value(job.props),
            "timeout": job.timeout_s,
        }
    )


def encode_kill_job(kill: cmd.KillTask) -> bytes:
    return dumps({"type": "kill", "id": kill.execution_id, "run": kill.task_run_id})


def decode_job(body: dict[str, Any], task: RunnableTask) -> cmd.RunTask:
    """Build the job once the worker has looked ``task`` up in its flows table."""
    return cmd.RunTask(
        body["id"],
        body["run"],
        int(body["attempt"]),
        body["namespace"],
        body["flowId"],
        int(body["revision"]),
        task,
        decode_value(body.get("props") or {}),
        body.get("timeout"),
    )


# -- logs and execution updates --------------------------------------------------------------


def log_values(namespace: str, flow_id: str, lines: list[cmd.LogLine]) -> list[dict[str, Any]]:
    """Kestra's LogEntry JSON for each line."""
    return [
        {
            "executionId": line.execution_id,
            "namespace": namespace,
            "flowId": flow_id,
            "taskId": line.task_id,
            "taskRunId": line.task_run_id,
            "attemptNumber": line.attempt,
            "level": line.level,
            "message": line.message,
            "timestamp": format_instant(line.timestamp),
        }
        for line in lines
    ]


#: Task runs per execution-update record, and log lines per log record: a 10 000-iteration
#: loop ends in one step, and a single record of it would pass the brokers' 1 MB limit.
UPDATE_CHUNK = 200
LOG_CHUNK = 500


def update_values(
    st: ExecutionState, changed: list[str], *, terminal: bool, full: bool
) -> list[dict[str, Any]]:
    """An execution update as records: the execution's own fields plus task runs.

    Usually the task runs that changed in the step (consumers merge them by id, so a step costs
    what it changed). When the execution stops (ends or pauses) every task run is sent, so a
    reader that joins late still gets the whole picture; the first record then has ``full``
    (replace what you know). Task runs go ``UPDATE_CHUNK`` to a record: every record but the
    last has ``more``, and only the last carries ``terminal``.
    """
    send_all = full or terminal
    header = execution_model(st, with_task_runs=False).model_dump(mode="json", by_alias=True)
    header.pop("taskRunList", None)
    ids = list(st.task_runs) if send_all else [r for r in changed if r in st.task_runs]
    runs = [
        task_run_model(st, st.task_runs[run_id]).model_dump(mode="json", by_alias=True)
        for run_id in ids
    ]
    chunks = [runs[i : i + UPDATE_CHUNK] for i in range(0, len(runs), UPDATE_CHUNK)] or [[]]
    out: list[dict[str, Any]] = []
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        body: dict[str, Any] = {"more": not last, "terminal": terminal and last}
        if index == 0 and send_all:
            body.update(execution={**header, "taskRunList": chunk}, full=True)
        else:
            body.update(execution=header, taskRuns=chunk, full=False)
        out.append(body)
    return out


# -- dead letters ----------------------------------------------------------------------------


def dead_letter_value(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str
) -> bytes:
    return dumps(
        {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key.decode("utf-8", "replace") if key is not None else None,
            "value": value.decode("utf-8", "replace") if value is not None else None,
            "reason": reason,
        }
    )
