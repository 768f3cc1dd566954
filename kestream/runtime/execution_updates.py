"""The execution-updates topic's format: how the executor writes an execution's changes, and
how every reader (the client, the API's index, tests) merges them back into the execution.

One update is one step's change: the execution's own fields plus the task runs that changed
(readers merge them by id, so a step costs what it changed). When the execution stops (ends or
pauses) every task run is sent, so a reader that joins late still gets the whole picture; the
first record then has ``full`` (replace what you know). An update larger than a record is
split by encoded size: every record carries the execution's fields, every record but the last
has ``more``, and only the last carries ``terminal``, so readers act on an update only once it
is whole.

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
from kestream.runtime.records import DEFAULT_VALUE_BYTES, RecordError, dumps, loads, pack

__all__ = [
    "KeptUpdate",
    "MergedExecution",
    "coalesce_updates",
    "merge_update",
    "update_records",
    "update_values",
]

log = logging.getLogger("kestream.records")


# -- writing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeptUpdate:
    """What :func:`coalesce_updates` needs of one record :func:`update_records` wrote, kept by
    the record's ``id`` so that it need not decode the record.

    An ``id`` is only unique among live objects: an entry counts only for the very record it
    was made for (:attr:`value`, compared by identity), so a record dropped or replaced before
    the coalescing, its id then reused, is decoded rather than taken for another.
    """

    value: bytes
    #: The record starts a full update (replace what you know).
    full: bool
    #: More records of the same update follow.
    more: bool
    #: The body of a single-record partial update, the only kind a merge reads; None for the
    #: others (full and split updates pass as they are: their task runs are not kept alive).
    body: dict[str, Any] | None = None


def update_records(
    st: ExecutionState,
    changed: list[str],
    *,
    terminal: bool,
    full: bool,
    max_bytes: int,
    bodies: dict[int, KeptUpdate] | None = None,
) -> list[bytes]:
    """An execution update as records of at most ``max_bytes``: the execution's own fields
    plus task runs.

    Usually the task runs that changed in the step (consumers merge them by id, so a step costs
    what it changed). When the execution stops (ends or pauses) every task run is sent, so a
    reader that joins late still gets the whole picture; the first record then has ``full``
    (replace what you know). Task runs are split across records by their encoded size: every
    record carries the execution's fields, every record but the last has ``more``, and only the
    last carries ``terminal``, so readers act on an update only once it is whole.

    A task run that cannot share a record with the execution's fields (both large; outputs
    alone never pass the limit, :mod:`kestream.executor.sizes`) travels without its outputs,
    its id listed in the record's ``outputsLeftOut``; the changelog keeps them.

    ``bodies``: where what :func:`coalesce_updates` needs of each record is kept (by the
    record's ``id``, :class:`KeptUpdate`), so that it need not decode the record again.
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
        if bodies is not None:
            bodies[id(whole)] = KeptUpdate(whole, send_all, False, None if send_all else body)
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
        if bodies is not None:
            bodies[id(value)] = KeptUpdate(value, send_all and index == 0, bool(body["more"]))
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


_UPDATE_KEYS = frozenset(("more", "terminal", "execution", "full"))


def coalesce_updates(
    values: list[bytes], max_bytes: int, bodies: Mapping[int, KeptUpdate] | None = None
) -> list[bytes]:
    """One execution's update records of one cycle, in their order, as fewer records that
    leave every reader (:func:`merge_update`) where all of them would, and let every reader
    see each pause and end.

    An execution stepped several times in a cycle (a ForEach's results fetched together) makes
    an update per step. Single-record partial updates that follow each other are merged into
    one (the last one's execution fields, their task runs by id, the latest of each, in the
    order they first appeared) while the merged record stays within ``max_bytes`` (it is never
    larger than its parts together). A full update (a pause or an end) is a barrier: it
    replaces what a reader knows, so the partial records before it (back to the previous full
    update) go, but every full update stays, each a state readers act on (a Flow trigger
    listening to PAUSED, :meth:`Client.wait`, a follower). A split update (``more``) passes as
    it is, as does a record with ``outputsLeftOut``. Records that are not all updates (never
    written by :func:`update_records`) are left as they are. ``bodies``: what
    :func:`update_records` kept of the records (the others are decoded).
    """
    if len(values) < 2 or (shapes := _shapes_of(values, bodies or {})) is None:
        return values
    out: list[bytes] = []
    barrier = 0  # out[:barrier] are full updates' records, which stay
    group: list[tuple[bytes, dict[str, Any]]] = []
    size = 0
    chained = False  # the record continues a split update
    in_full = False  # the record belongs to a full update
    for value, (full, more, body) in zip(values, shapes, strict=True):
        if not chained:
            in_full = full
            if full:  # what a reader knew since the last full update is replaced
                del out[barrier:]
                group = []
        if body is None or chained:
            out.extend(_merged(group))
            group = []
            out.append(value)
            chained = more
            if in_full and not more:
                barrier = len(out)
            continue
        if group and size + len(value) > max_bytes:
            out.extend(_merged(group))
            group = []
        if not group:
            size = 0
        group.append((value, body))
        size += len(value)
    out.extend(_merged(group))
    return out


_Shape = tuple[bool, bool, dict[str, Any] | None]
"""``(full, more, the body if a merge may read it)`` of one update record."""


def _shapes_of(values: list[bytes], bodies: Mapping[int, KeptUpdate]) -> list[_Shape] | None:
    """``values``' shapes (kept in ``bodies``, else decoded), or None unless all are updates."""
    shapes: list[_Shape] = []
    for value in values:
        kept = bodies.get(id(value))
        if kept is not None and kept.value is value:
            shapes.append((kept.full, kept.more, kept.body))
            continue
        try:
            body = loads(value)
        except RecordError:
            return None
        if type(body) is not dict or not body.keys() >= _UPDATE_KEYS:
            return None
        full, more = bool(body["full"]), bool(body["more"])
        mergeable = (
            not (full or more)
            and type(body.get("taskRuns")) is list
            and "outputsLeftOut" not in body
        )
        shapes.append((full, more, body if mergeable else None))
    return shapes


def _merged(group: list[tuple[bytes, dict[str, Any]]]) -> list[bytes]:
    """Partial updates that follow each other as one record: the last one's fields, their task
    runs by id (the latest of each, in the order they first appeared)."""
    if len(group) < 2:
        return [value for value, _ in group]
    runs: dict[str, Any] = {}
    for _, body in group:
        for run in body["taskRuns"]:
            runs[run["id"]] = run
    return [dumps({**group[-1][1], "taskRuns": list(runs.values())})]


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
