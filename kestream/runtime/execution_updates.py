"""The execution-updates topic's format: how the executor writes an execution's changes, and
how every reader (the client, the API's index, tests) merges them back into the execution.

One update is what changed in an execution over one executor cycle: its own fields plus the
task runs that changed (readers merge them by id, so an update costs what it changed). The
executor builds it once per cycle, from the state at the write
(:meth:`~kestream.runtime.executor_outbox.Outbox.build_updates`), however many steps the
execution took. When the execution stops (ends or pauses) every task run is sent, at that
step, so a reader that joins late still gets the whole picture and every reader sees each
pause and end; the first record then has ``full`` (replace what you know). An update larger
than a record is split by encoded size: every record carries the execution's fields, every
record but the last has ``more``, and only the last carries ``terminal``, so readers act on an
update only once it is whole.

Writer and readers live together so the format has one home; a reader needs no broker client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kestream.executor.sizes import human_size
from kestream.executor.snapshot import execution_json, task_run_json
from kestream.executor.state import ExecutionState
from kestream.models.execution import Execution
from kestream.models.state import StateType
from kestream.runtime.records import DEFAULT_VALUE_BYTES, dumps, loads, pack

__all__ = [
    "MergedExecution",
    "merge_update",
    "update_records",
    "update_values",
]

log = logging.getLogger("kestream.records")


# -- writing ----------------------------------------------------------------------------------


def update_records(
    st: ExecutionState,
    changed: list[str],
    *,
    terminal: bool,
    full: bool,
    max_bytes: int,
) -> list[bytes]:
    """An execution update as records of at most ``max_bytes``: the execution's own fields
    plus task runs.

    Usually the task runs that changed (consumers merge them by id, so an update costs what
    it changed). When the execution stops (ends or pauses) every task run is sent, so a
    reader that joins late still gets the whole picture; the first record then has ``full``
    (replace what you know). Task runs are split across records by their encoded size: every
    record carries the execution's fields, every record but the last has ``more``, and only the
    last carries ``terminal``, so readers act on an update only once it is whole.

    A task run that cannot share a record with the execution's fields (both large; outputs
    alone never pass the limit, :mod:`kestream.executor.sizes`) travels without its outputs,
    its id listed in the record's ``outputsLeftOut``; the changelog keeps them.
    """
    send_all = full or terminal
    header = execution_json(st, with_task_runs=False)
    header.pop("taskRunList", None)
    task_runs = st.task_runs
    runs = (
        [task_run_json(st, tr) for tr in task_runs.values()]
        if send_all
        else [task_run_json(st, task_runs[r]) for r in changed if r in task_runs]
    )
    body = _update_body(header, runs, first=True, last=True, full=send_all, terminal=terminal)
    whole = dumps(body)
    if len(whole) <= max_bytes:  # the usual case: one encoding, one record
        return [whole]
    envelope = max(  # the longest shape: "more":false,"terminal":false
        len(dumps(_update_body(header, [], first=first, last=True, full=send_all, terminal=False)))
        for first in (True, False)
    )
    room = max_bytes - envelope
    spans = pack((len(dumps(run)) for run in runs), room) or [(0, 0)]
    out: list[bytes] = []
    for index, (i, j) in enumerate(spans):
        chunk = runs[i:j]
        body = _update_body(
            header, chunk, first=index == 0, last=index == len(spans) - 1,
            full=send_all, terminal=terminal,
        )  # fmt: skip
        value = dumps(body)
        if len(value) > max_bytes and len(chunk) == 1:
            body["outputsLeftOut"] = [chunk[0]["id"]]
            _runs_of(body)[0] = {**chunk[0], "outputs": None}
            log.warning(
                "execution %s: task run %s goes in its update without its outputs (%s with "
                "the execution's fields, over the record limit)",
                st.id, chunk[0]["id"], human_size(len(value)),
            )  # fmt: skip
            value = dumps(body)
        out.append(value)
    return out


def _update_body(
    header: dict[str, Any],
    runs: list[dict[str, Any]],
    *,
    first: bool,
    last: bool,
    full: bool,
    terminal: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"more": not last, "terminal": terminal and last}
    if first and full:
        body.update(execution={**header, "taskRunList": runs}, full=True)
    else:
        body.update(execution=header, taskRuns=runs, full=False)
    return body


def _runs_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = (
        body["execution"]["taskRunList"] if body["full"] else body["taskRuns"]
    )
    return runs


def update_values(
    st: ExecutionState,
    changed: list[str],
    *,
    terminal: bool,
    full: bool,
    max_bytes: int = DEFAULT_VALUE_BYTES,
) -> list[dict[str, Any]]:
    """:func:`update_records`, decoded (what a reader gets from the topic)."""
    return [
        loads(value)
        for value in update_records(st, changed, terminal=terminal, full=full, max_bytes=max_bytes)
    ]


# -- reading ----------------------------------------------------------------------------------


@dataclass(slots=True)
class MergedExecution:
    """What one reader knows of an execution: its fields, and its task runs by id (in order)."""

    header: dict[str, Any]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    terminal: bool = False
    #: False while the records of one update are still arriving (``more``).
    complete: bool = True

    @property
    def state(self) -> str:
        return str(self.header.get("state", {}).get("current", ""))

    @property
    def paused(self) -> bool:
        return self.state == StateType.PAUSED.value

    @property
    def stopped(self) -> bool:
        """Ended, or paused (a :meth:`Client.wait` returns here by default), and complete."""
        return self.complete and (self.terminal or self.paused)

    def json(self) -> dict[str, Any]:
        """The execution's JSON as the updates carried it, with its task runs in order."""
        return {**self.header, "taskRunList": list(self.runs.values())}

    def model(self) -> Execution:
        return Execution.model_validate(self.json())


def merge_update(current: MergedExecution | None, update: Mapping[str, Any]) -> MergedExecution:
    """Merge one :func:`update_values` record into what is known of the execution.

    A ``full`` update replaces everything (its ``taskRunList`` is the whole list, in order).
    Otherwise the execution's fields are replaced and the changed task runs are merged by id
    into ``current``, which is updated in place (O(changed), not O(execution)); task runs keep
    the order in which they first appeared. With no ``current``, a partial update starts from
    the task runs it carries.
    """
    header = dict(update["execution"])
    listed = header.pop("taskRunList", None) or []
    terminal = bool(update.get("terminal"))
    complete = not update.get("more")
    if update.get("full") or current is None:
        runs = listed if update.get("full") else update.get("taskRuns") or []
        return MergedExecution(header, {run["id"]: run for run in runs}, terminal, complete)
    current.header = header
    current.terminal = terminal
    current.complete = complete
    for run in update.get("taskRuns") or []:
        current.runs[run["id"]] = run
    return current
