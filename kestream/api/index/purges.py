"""Purges in the execution index: the record that carries one, and what the index does with it.

A purge (the PurgeExecutions and PurgeLogs tasks, through :mod:`kestream.api.purge`) becomes one
**purge record per execution** on the ``logs`` topic, keyed by the execution id: what to delete
of that execution (the execution itself, all its lines, or the lines of some levels within some
dates). Every API process's index feed reads it and applies it, so the deletion reaches every
index, not just the one of the API that chose what to purge.

Why the logs topic: a record there sits in the execution's partition *after* every line produced
before it, so each index deletes exactly the same lines, whatever its lag. For the execution
itself the order does not matter: a purged execution keeps a *tombstone row* (``deleted``, its
task runs and labels gone, a header of ids only), and an update read after it, from a lagging
updates partition, leaves it deleted, as :meth:`Store.delete` always has.

A purge that deletes executions does not come straight from the API: it goes to the executor
as a :class:`~kestream.executor.events.Purge` event, which refuses it for an execution restarted
since the index saw it ended (sending ``{"purge": {"execution": false, "logs": null, "refused":
true}}`` instead) and otherwise sends the record here (:mod:`kestream.runtime.purge_fence`); the
API learns either outcome from its own feed (:meth:`IndexFeed.watch_purges
<kestream.api.index.feed.IndexFeed.watch_purges>`).

The value is ``{"purge": {"execution": bool, "logs": "all" | {"levels", "startDate",
"endDate"} | null}}``: a plain JSON object where log records are JSON lists, so the feed tells
them apart at a glance (:func:`is_purge_value`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kestream.api.index.sql import marks
from kestream.executor.restore import RestoreError, snapshot_attempt
from kestream.models.instants import parse_instant
from kestream.models.state import StateType
from kestream.runtime.records import RecordError
from kestream.tasks.purge import ExecutionPurge, LogPurge

if TYPE_CHECKING:
    from kestream.api.index.store import Cursor, Store

__all__ = [
    "Candidate",
    "PageKey",
    "PurgeRecord",
    "apply_purge",
    "execution_attempt",
    "execution_candidates",
    "is_purge_value",
    "line_counts",
    "purgeable_lines",
]

#: Kestra's levels by the rank the ``logs`` table stores (``store.LOG_LEVELS``' order).
_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


def is_purge_value(value: Any) -> bool:
    """Whether a decoded ``logs`` record is a purge record rather than log lines."""
    return isinstance(value, dict) and "purge" in value


@dataclass(frozen=True, slots=True)
class PurgeRecord:
    """What to delete of one execution (module docs)."""

    execution: bool
    #: Every line of the execution.
    all_logs: bool = False
    #: Only the lines these filters pick (levels, dates); ``None`` with ``all_logs`` false: none.
    lines: LogPurge | None = None
    #: The executor's answer to a purge of the execution it refused (restarted since the index
    #: saw it ended, :mod:`kestream.runtime.purge_fence`): deletes nothing, tells the API.
    refused: bool = False

    def to_value(self) -> dict[str, Any]:
        logs: Any = None
        if self.all_logs:
            logs = "all"
        elif self.lines is not None:
            levels = self.lines.logLevels
            logs = {
                "levels": None if levels is None else sorted(str(level) for level in levels),
                "startDate": _iso(self.lines.startDate),
                "endDate": _iso(self.lines.endDate),
            }
        body: dict[str, Any] = {"execution": self.execution, "logs": logs}
        if self.refused:
            body["refused"] = True
        return {"purge": body}

    @classmethod
    def from_value(cls, value: Any) -> PurgeRecord:
        """Read a purge record; :class:`RecordError` says what is wrong with it."""
        body = value.get("purge") if isinstance(value, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("execution"), bool):
            raise RecordError("a purge record needs purge.execution (true or false)")
        logs = body.get("logs")
        if body.get("refused") is True:
            return cls(False, refused=True)
        if logs is None or logs == "all":
            return cls(body["execution"], all_logs=logs == "all")
        if not isinstance(logs, dict):
            raise RecordError("purge.logs must be null, 'all' or an object")
        try:
            lines = LogPurge.model_validate(
                {
                    "logLevels": logs.get("levels"),
                    "startDate": logs.get("startDate"),
                    "endDate": logs.get("endDate"),
                }
            )
        except ValueError as exc:
            raise RecordError(f"purge.logs: {exc}") from None
        return cls(body["execution"], lines=lines)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _instant(value: str | datetime) -> datetime:
    """A date the index holds: text in SQLite, a datetime from PostgreSQL."""
    if isinstance(value, datetime):
        return value
    return parse_instant(value)


def _tombstone(execution_id: str) -> dict[str, Any]:
    return {"id": execution_id, "deleted": True}


def apply_purge(store: Store, cur: Cursor, execution_id: str, record: PurgeRecord) -> int:
    """Apply one purge record inside the feed's transaction; returns the lines deleted."""
    deleted_lines = 0
    if record.all_logs or record.lines is not None:
        clauses, params = ["execution_id = ?"], [execution_id]
        if not record.all_logs and record.lines is not None:
            filters, filter_params = _line_filter(store, record.lines, "logs")
            clauses += filters
            params += filter_params
        cur.execute(store._sql(f"DELETE FROM logs WHERE {' AND '.join(clauses)}"), params)
        deleted_lines = max(cur.rowcount, 0)
    if record.execution:
        _tombstone_row(store, cur, execution_id)
    return deleted_lines


def _tombstone_row(store: Store, cur: Cursor, execution_id: str) -> None:
    """The execution's row as a tombstone: deleted, its header reduced to its id, its task
    runs and labels gone. Inserted when the index has not read the execution yet, so that the
    updates it reads later stay deleted."""
    for table in ("task_runs", "labels"):
        cur.execute(
            store._sql(f"DELETE FROM {table} WHERE execution_id = ?"),  # fixed names, no input
            (execution_id,),
        )
    cur.execute(
        store._sql(
            "INSERT INTO executions (id, namespace, flow_id, state, labels, doc, deleted) "
            "VALUES (?, '', '', '', '', ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "deleted = excluded.deleted, doc = excluded.doc"
        ),
        (execution_id, store._doc(_tombstone(execution_id)), True),
    )


#: Where :func:`execution_candidates` goes on: past the ``(end_date, id)`` it last read.
PageKey = tuple[Any, str]


def _scope(query: ExecutionPurge | LogPurge, table: str) -> tuple[list[str], list[Any]]:
    """The namespace and flow filters as SQL on ``table``'s columns: ``namespace`` or a namespace
    under it (by prefix, never ``LIKE``, whose ``_`` would match any character)."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.flowId is not None:
        clauses.append(f"{table}.flow_id = ?")
        params.append(query.flowId)
    if query.namespace is not None:
        if query.flowId is not None:
            clauses.append(f"{table}.namespace = ?")
            params.append(query.namespace)
        else:
            prefix = query.namespace + "."
            clauses.append(f"({table}.namespace = ? OR substr({table}.namespace, 1, ?) = ?)")
            params += [query.namespace, len(prefix), prefix]
    return clauses, params


@dataclass(frozen=True, slots=True)
class Candidate:
    """An execution a purge takes, as the index shows it: its folder in the storage, and the
    attempt that ended (the executor refuses the purge once another one ran, :class:`ev.Purge
    <kestream.executor.events.Purge>`)."""

    id: str
    namespace: str
    flow_id: str
    attempt: int


def execution_candidates(
    store: Store, query: ExecutionPurge, limit: int, after: PageKey | None = None
) -> tuple[list[Candidate], PageKey | None]:
    """The executions ``query`` purges among the next ``limit`` ended executions past ``after``,
    oldest end first, and where the next page starts (None: no page is left).

    The database filters by end date, namespace, flow and state and reads one page by a keyset
    on ``(end_date, id)``, so a purge of a large index holds one page at a time and never reads
    a row twice, whether or not the purged executions stay listed (``purgeExecution: false``).
    The query's own :meth:`ExecutionPurge.matches` then decides on each row: one definition of
    what a purge takes, shared with ``kestream.testing``. (Dates go to the database as its
    dialect writes them; SQLite's text dates have milliseconds, so the text comparison keeps
    every row the exact check may take.)
    """
    clauses = ["NOT e.deleted", "e.end_date IS NOT NULL", "e.end_date <= ?"]
    params: list[Any] = [store.dialect.date(query.endDate)]
    scope, scope_params = _scope(query, "e")
    clauses += scope
    params += scope_params
    states = [s.value for s in (query.states or StateType) if s.is_terminal]
    if not states:
        return [], None
    clauses.append(f"e.state IN ({marks(len(states))})")
    params += states
    if after is not None:
        clauses.append("(e.end_date > ? OR (e.end_date = ? AND e.id > ?))")
        params += [after[0], after[0], after[1]]
    with store._reading() as cur:
        cur.execute(
            store._sql(
                "SELECT e.id, e.namespace, e.flow_id, e.state, e.start_date, e.end_date, "
                f"e.doc{store.dialect.doc_cast} FROM executions e "
                f"WHERE {' AND '.join(clauses)} ORDER BY e.end_date, e.id LIMIT ?"
            ),
            [*params, limit],
        )
        rows = cur.fetchall()
    found: list[Candidate] = []
    for execution_id, namespace, flow_id, state, start, end, doc in rows:
        if query.matches(namespace, flow_id, StateType(state), _maybe(start), _maybe(end)):
            attempt = execution_attempt(store._load(doc))
            found.append(Candidate(str(execution_id), namespace, flow_id, attempt))
    following = (rows[-1][5], str(rows[-1][0])) if len(rows) >= limit else None
    return found, following


def execution_attempt(execution: dict[str, Any]) -> int:
    """The attempt an execution's JSON shows (1 for one written before attempts were kept)."""
    try:
        return snapshot_attempt(execution)
    except RestoreError:
        return 1


def line_counts(store: Store, execution_ids: list[str]) -> dict[str, int]:
    """How many lines each of these executions has in the index (those with none are absent)."""
    if not execution_ids:
        return {}
    with store._reading() as cur:
        cur.execute(
            store._sql(
                "SELECT execution_id, COUNT(*) FROM logs "
                f"WHERE execution_id IN ({marks(len(execution_ids))}) GROUP BY execution_id"
            ),
            execution_ids,
        )
        return {str(execution_id): int(count) for execution_id, count in cur.fetchall()}


def _line_filter(store: Store, lines: LogPurge, table: str) -> tuple[list[str], list[Any]]:
    """The level and date filters of a log purge as SQL on ``table``'s columns: the same
    clauses pick the lines counted and the lines deleted."""
    clauses = [f"{table}.timestamp <= ?"]
    params: list[Any] = [store.dialect.date(lines.endDate)]
    if lines.startDate is not None:
        clauses.append(f"{table}.timestamp >= ?")
        params.append(store.dialect.date(lines.startDate))
    if lines.logLevels is not None:
        ranks = [rank for rank, name in enumerate(_LEVELS) if name in lines.logLevels]
        if not ranks:
            return ["1 = 0"], []
        clauses.append(f"{table}.level IN ({marks(len(ranks))})")
        params += ranks
    return clauses, params


def purgeable_lines(
    store: Store, query: LogPurge, limit: int, after: str | None = None
) -> dict[str, int]:
    """``execution id -> lines`` that ``query`` purges, for at most ``limit`` executions past
    the id ``after`` (in id order), as the index holds them now: counted by the database, one
    row per execution, so a purge of millions of lines reads a page of counts at a time."""
    clauses, params = _line_filter(store, query, "l")
    if query.executionId is not None:
        clauses.append("l.execution_id = ?")
        params.append(query.executionId)
    if after is not None:
        clauses.append("l.execution_id > ?")
        params.append(after)
    scope, scope_params = _scope(query, "e")
    join = "JOIN" if scope else "LEFT JOIN"  # lines of an execution the index lacks: no filter
    with store._reading() as cur:
        cur.execute(
            store._sql(
                f"SELECT l.execution_id, COUNT(*) FROM logs l {join} executions e "
                f"ON e.id = l.execution_id WHERE {' AND '.join(clauses + scope)} "
                "GROUP BY l.execution_id ORDER BY l.execution_id LIMIT ?"
            ),
            [*params, *scope_params, limit],
        )
        return {str(execution_id): int(count) for execution_id, count in cur.fetchall()}


def _maybe(value: Any) -> datetime | None:
    return None if not value else _instant(value)
