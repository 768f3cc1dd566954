"""What travels on kestream's topics: events, worker jobs, results, updates, logs, flows.

Every value is JSON (one orjson pass each way). Keys are execution ids on every topic the
executor reads, so one execution's records always meet in one stream processor, in order.
A record that cannot be decoded raises :class:`RecordError`, which the processors send to the
dead-letter topic with the reason instead of stopping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.admission import Ask, Release, SlotRequest
from kestream.executor.restore import snapshot_attempt
from kestream.executor.sizes import human_size
from kestream.executor.value_tags import decode_value, encode_value
from kestream.models.execution import format_instant
from kestream.models.state import StateType
from kestream.models.values import find_unportable
from kestream.runtime.record_limit import RecordLimit
from kestream.runtime.record_values import RecordError, dumps, loads
from kestream.settings import Settings
from kestream.storage.offload import fetch_snapshot
from kestream.tasks.base import RunnableTask

log = logging.getLogger("kestream.records")


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
            "parentId": event.parent_id,
            "retryOf": event.retry_of,
            "replay": None
            if event.replay is None
            else {"snapshot": event.replay.snapshot, "taskRunId": event.replay.task_run_id},
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
            "attempt": event.attempt,
        }
    if isinstance(event, ev.Kill):
        return {"type": "kill", "id": event.execution_id, "attempt": event.attempt}
    if isinstance(event, ev.Admission):
        return {
            "type": "admission",
            "id": event.execution_id,
            "namespace": event.namespace,
            "flowId": event.flow_id,
            "attempt": event.attempt,
            "decision": event.decision.value,
            "at": _when(event.at),
        }
    if isinstance(event, ev.Purge):
        return {
            "type": "purge",
            "id": event.execution_id,
            "attempt": event.attempt,
            "record": event.record,
        }
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
    if not isinstance(body.get("id"), str):
        raise RecordError(f"{kind} event without a text id")
    try:
        return _EVENT_DECODERS[kind](body)
    except KeyError as exc:
        if kind not in _EVENT_DECODERS:
            raise RecordError(f"unknown event type {kind!r}") from None
        raise RecordError(f"{kind} event without {exc}") from None
    except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        # Anyone who can write to the topic can write anything: every way a field can be
        # malformed is a dead letter, never a stopped processor.
        raise RecordError(f"bad {kind} event: {exc}") from None
    except RecursionError:
        raise RecordError(f"bad {kind} event: nested too deep") from None


def _carried(value: Any, where: str) -> Any:
    """``value`` if the executor can write it back (its state, its updates), else RecordError."""
    problem = find_unportable(value, where)
    if problem is not None:
        raise RecordError(f"{problem}")
    return value


def _trigger(raw: Any) -> dict[str, Any] | None:
    """A creation's trigger in the shape every execution record gives it, or RecordError."""
    trigger = _carried(decode_value(raw), "trigger")
    if trigger is None:
        return None
    if not (
        isinstance(trigger, dict)
        and isinstance(trigger.get("id"), str)
        and isinstance(trigger.get("type"), str)
        and isinstance(trigger.get("variables", {}), dict)
    ):
        raise RecordError("a trigger needs a text id and type, and a map of variables")
    return trigger


def _outputs(raw: Any) -> dict[str, Any] | None:
    outputs = decode_value(raw)
    if not isinstance(outputs, dict | None):
        raise RecordError("outputs must be a map")
    return outputs


def _created(body: dict[str, Any]) -> ev.Event:
    parent = body.get("parent")
    labels = body.get("labels") or {}
    inputs = _carried(decode_value(body.get("inputs")), "inputs")
    if not isinstance(labels, dict) or not isinstance(inputs, dict | None):
        raise RecordError("labels and inputs must be maps")
    return ev.ExecutionCreated(
        execution_id=body["id"],
        namespace=str(body["namespace"]),
        flow_id=str(body["flowId"]),
        revision=body.get("revision"),
        inputs=inputs,
        validate_inputs=bool(body.get("validate", True)),
        labels={str(k): str(v) for k, v in labels.items()},
        trigger=_trigger(body.get("trigger")),
        schedule_date=_parse_when(body.get("scheduleDate")),
        original_id=body.get("originalId"),
        attempt_number=int(body.get("attempt") or 1),
        original_created=_parse_when(body.get("originalCreated")),
        parent=ev.SubflowLink(*parent) if parent else None,
        parent_id=_optional_text(body.get("parentId"), "parentId"),
        replay=_replay_from(body.get("replay"), body["id"]),
        retry_of=_optional_text(body.get("retryOf"), "retryOf"),
    )


def _optional_text(raw: Any, name: str) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise ValueError(f"'{name}' must be text")  # -> RecordError
    return raw


def _replay_from(raw: Any, execution_id: str) -> ev.ReplayFrom | None:
    """A replay's snapshot and task run, checked where the record is read (a dead letter).
    A snapshot stored in its place (``snapshotUri``, :mod:`.event_offload`) is read here."""
    if raw is None:
        return None
    if isinstance(raw, dict) and "snapshotUri" in raw and "snapshot" not in raw:
        raw = {**raw, "snapshot": fetch_snapshot(raw["snapshotUri"], execution_id)}
    if not isinstance(raw, dict) or not isinstance(raw.get("snapshot"), dict):
        raise ValueError("a replay needs the replayed execution's JSON as 'snapshot'")
    snapshot_attempt(raw["snapshot"])  # a RestoreError (a ValueError) -> RecordError
    task_run_id = _optional_text(raw.get("taskRunId"), "taskRunId")
    if task_run_id is None:
        raise ValueError("a replay needs the 'taskRunId' it goes on from")
    return ev.ReplayFrom(raw["snapshot"], task_run_id)


def _result(body: dict[str, Any]) -> ev.Event:
    return ev.WorkerResult(
        body["id"],
        body["run"],
        int(body["attempt"]),
        StateType(body["state"]),
        _outputs(body.get("outputs")),  # what a task returned: the step judges it (fails the run)
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


def _attempt(raw: Any) -> int | None:
    """A kill's or resume's execution attempt: absent (records written before attempts were
    carried, or a sender that does not know it), or a positive integer."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ValueError(f"'attempt' must be a positive integer, not {raw!r}")  # -> RecordError
    return raw


def _restart(body: dict[str, Any]) -> ev.Event:
    snapshot = body.get("snapshot")
    if snapshot is None and "snapshotUri" in body:  # stored in its place (.event_offload)
        snapshot = fetch_snapshot(body["snapshotUri"], body["id"], snapshot_of=body["id"])
    if snapshot is not None:
        if not isinstance(snapshot, dict):
            raise ValueError("the snapshot must be an execution JSON object")  # -> RecordError
        snapshot_attempt(snapshot)  # a RestoreError (a ValueError) -> RecordError
    return ev.Restart(body["id"], snapshot)


def _purge(body: dict[str, Any]) -> ev.Event:
    record = body["record"]
    if not isinstance(record, dict) or not isinstance(record.get("purge"), dict):
        raise ValueError("'record' must be a purge record object")  # -> RecordError
    return ev.Purge(body["id"], _positive(body["attempt"]), record)


def _admission(body: dict[str, Any]) -> ev.Event:
    decision = StateType(body["decision"])
    if decision not in _DECISIONS:
        raise ValueError(f"'decision' must be one of {sorted(d.value for d in _DECISIONS)}")
    at = _parse_when(body["at"])
    if at is None:
        raise ValueError("'at' is missing")
    return ev.Admission(
        body["id"], str(body["namespace"]), str(body["flowId"]), _positive(body["attempt"]),
        decision, at,
    )  # fmt: skip


_DECISIONS = frozenset({StateType.RUNNING, StateType.QUEUED, StateType.CANCELLED, StateType.FAILED})


def _positive(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ValueError(f"expected a positive integer, not {raw!r}")  # -> RecordError
    return raw


_EVENT_DECODERS = {
    "created": _created,
    "admission": _admission,
    "result": _result,
    "subflow": _subflow,
    "resume": lambda b: ev.Resume(
        b["id"], decode_value(b.get("inputs")), b.get("run"), _attempt(b.get("attempt"))
    ),
    "kill": lambda b: ev.Kill(b["id"], _attempt(b.get("attempt"))),
    "restart": _restart,
    "purge": _purge,
}


# -- slot requests (admissions topic, keyed by flow: kestream.executor.admission) --------------


def encode_slot_request(request: SlotRequest) -> bytes:
    body: dict[str, Any] = {
        "type": "ask" if isinstance(request, Ask) else "release",
        "namespace": request.namespace,
        "flowId": request.flow_id,
        "id": request.execution_id,
        "attempt": request.attempt,
        "limit": request.limit,
    }
    if isinstance(request, Ask):
        body["behavior"] = request.behavior
        body["queue"] = request.queue
    return dumps(body)


def decode_slot_request(data: bytes | None) -> SlotRequest:
    """A request of the admissions topic; :class:`RecordError` says what is wrong with it."""
    body = loads(data)
    if not isinstance(body, dict):
        raise RecordError("a slot request must be a JSON object")
    kind = body.get("type")
    try:
        names = (str(body["namespace"]), str(body["flowId"]), str(body["id"]))
        attempt, limit = _positive(body["attempt"]), _positive(body["limit"])
        if kind == "release":
            return Release(*names, attempt, limit)
        if kind != "ask":
            raise RecordError(f"unknown slot request type {kind!r}")
        behavior = body.get("behavior", "QUEUE")
        if behavior not in ("QUEUE", "CANCEL", "FAIL"):
            raise ValueError(f"unknown behavior {behavior!r}")
        return Ask(*names, attempt, limit, behavior, bool(body.get("queue", False)))
    except KeyError as exc:
        raise RecordError(f"{kind} slot request without {exc}") from None
    except (TypeError, ValueError) as exc:
        raise RecordError(f"bad {kind} slot request: {exc}") from None


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
            # So a worker that lacks the type (a plugin it has not) can refuse the job at once.
            "taskType": job.task.type,
            "props": encode_value(job.props),
            "timeout": job.timeout_s,
            **({} if job.workdir is None else {"workdir": _workdir_value(job.workdir)}),
            **({} if job.source is None else {"source": list(job.source)}),
        }
    )


def _workdir_value(shared: cmd.SharedWorkdir) -> dict[str, Any]:
    return {"run": shared.owner_id, "inputFiles": encode_value(shared.input_files)}


def _workdir(raw: Any) -> cmd.SharedWorkdir | None:
    if raw is None:
        return None
    return cmd.SharedWorkdir(str(raw["run"]), decode_value(raw.get("inputFiles") or {}))


def encode_release_job(release: cmd.ReleaseWorkdir) -> bytes:
    """The end of a WorkingDirectory task run: the worker removes the directory it shared."""
    return dumps({"type": "release", "id": release.execution_id, "run": release.owner_id})


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
        _workdir(body.get("workdir")),
        _source(body.get("source")),
    )


def _source(raw: Any) -> tuple[str, str, str] | None:
    if not (isinstance(raw, list) and len(raw) == 3 and all(isinstance(v, str) for v in raw)):
        return None
    return (raw[0], raw[1], raw[2])


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


def log_records(
    namespace: str, flow_id: str, lines: list[cmd.LogLine], *, max_bytes: int
) -> list[bytes]:
    """Log lines as records (JSON lists of :func:`log_values`), each at most ``max_bytes``.

    A line too large for a record on its own is cut, with a marker saying how large it was.
    """
    if not lines:
        return []
    values = log_values(namespace, flow_id, lines)
    whole = dumps(values)
    if len(whole) <= max_bytes:  # the usual case: one encoding, one record
        return [whole]
    encoded = [_fitted_line(value, max_bytes - 2) for value in values]  # 2: the list's []
    return [
        b"[" + b",".join(encoded[i:j]) + b"]" for i, j in pack(map(len, encoded), max_bytes - 2)
    ]


def _fitted_line(value: dict[str, Any], max_bytes: int) -> bytes:
    """One log line's JSON, its message cut (and marked) if the line passes ``max_bytes``."""
    encoded = dumps(value)
    if len(encoded) <= max_bytes:
        return encoded
    raw = str(value["message"]).encode()
    marker = f" [... cut: the line was {human_size(len(encoded))}, over the record limit]"
    return largest_fit(
        lambda keep: dumps({**value, "message": raw[:keep].decode("utf-8", "ignore") + marker}),
        len(raw),
        max_bytes,
    )


def largest_fit(render: Callable[[int], bytes], length: int, max_bytes: int) -> bytes:
    """``render(keep)`` for about the largest ``keep <= length`` whose result fits ``max_bytes``
    (``render(0)`` when none does): the one way records cut a text (a log line, a dead letter's
    copy) to fit.

    ``render(keep)`` encodes the first ``keep`` bytes of the text with everything around it.
    JSON escapes and replaced bytes make the encoding larger than the bytes kept, and not evenly,
    so ``keep`` shrinks in proportion to the overflow until the result fits: a few encodings.
    """
    fixed = len(render(0))
    room = max_bytes - fixed
    keep = max(min(length, room), 0)
    while True:
        encoded = render(keep)
        if len(encoded) <= max_bytes or keep <= 0:
            return encoded
        keep = max(min(keep - 1, keep * room // (len(encoded) - fixed)), 0)


def pack(sizes: Iterable[int], max_bytes: int) -> list[tuple[int, int]]:
    """Split items of ``sizes`` bytes, in order, into ``[start, end)`` runs whose JSON list
    body (items and the commas between them) holds at most ``max_bytes``; an item larger than
    that on its own gets a run of its own. Greedy, so every run but the last is full."""
    runs: list[tuple[int, int]] = []
    start = used = 0
    index = -1
    for index, size in enumerate(sizes):
        cost = size if index == start else size + 1
        if index > start and used + cost > max_bytes:
            runs.append((start, index))
            start, cost = index, size
            used = 0
        used += cost
    if index >= start:
        runs.append((start, index + 1))
    return runs


#: A value of ``KESTREAM_MAX_RECORD_BYTES``' default, for callers without a broker context.
DEFAULT_VALUE_BYTES = RecordLimit.of(Settings.model_construct()).value_bytes


# -- dead letters ----------------------------------------------------------------------------


#: At most this much of a dead letter's reason is kept (it may quote the record).
_REASON_BYTES = 4096


def dead_letter_value(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    *,
    max_bytes: int = DEFAULT_VALUE_BYTES,
) -> bytes:
    """The dead letter of a record: where it was, why, and its key and value as text.

    The record may be as large as the limit (or larger: one refused for its size), so the
    letter keeps as much of its value as fits in ``max_bytes``; ``valueBytes`` says how large
    it was, and ``valueCut`` whether the copy is cut.
    """
    body: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": _cut(key, _REASON_BYTES) if key is not None else None,
        "value": None,
        "valueBytes": len(value) if value is not None else None,
        "valueCut": False,
        "reason": _cut(reason.encode(), _REASON_BYTES),
    }
    if value is None:
        return dumps(body)
    return largest_fit(
        lambda cut: dumps({**body, "value": _cut(value, cut), "valueCut": cut < len(value)}),
        len(value),
        max_bytes,
    )


def _cut(data: bytes, max_bytes: int) -> str:
    """At most ``max_bytes`` of ``data`` as text (invalid UTF-8 replaced)."""
    return data[: max(max_bytes, 0)].decode("utf-8", "replace")
