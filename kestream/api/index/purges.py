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

The value is ``{"purge": {"execution": bool, "logs": "all" | {"levels", "startDate",
"endDate"} | null}}``: a plain JSON object where log records are JSON lists, so the feed tells
them apart at a glance (:func:`is_purge_value`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kestream.api.index.sql import marks
from kestream.models.state import StateType
from kestream.runtime.records import RecordError
from kestream.tasks.base import LogLevel
from kestream.tasks.purge import ExecutionPurge, LogPurge

if TYPE_CHECKING:
    from kestream.api.index.store import Cursor, Store

__all__ = [
    "PurgeRecord",
    "apply_purge",
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
        return {"purge": {"execution": self.execution, "logs": logs}}

    @classmethod
    def from_value(cls, value: Any) -> PurgeRecord:
        """Read a purge record; :class:`RecordError` says what is wrong with it."""
        body = value.get("purge") if isinstance(value, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("execution"), bool):
            raise RecordError("a purge record needs purge.execution (true or false)")
        logs = body.get("logs")
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

    def deletes_line(self, level_rank: int, timestamp: str | datetime) -> bool:
        if self.all_logs:
            return True
        if self.lines is None:
            return False
        return self.lines.line_matches(_level(level_rank), _instant(timestamp))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _level(rank: int) -> LogLevel:
    return LogLevel(_LEVELS[rank] if 0 <= rank < len(_LEVELS) else "INFO")


def _instant(value: str | datetime) -> datetime:
    """A date the index holds: text in SQLite, a datetime from PostgreSQL."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _tombstone(execution_id: str) -> dict[str, Any]:
    return {"id": execution_id, "deleted": True}


def apply_purge(store: Store, cur: Cursor, execution_id: str, record: PurgeRecord) -> int:
    """Apply one purge record inside the feed's transaction; returns the lines deleted."""
    deleted_lines = 0
    if record.all_logs or record.lines is not None:
        cur.execute(
            store._sql("SELECT seq, level, timestamp FROM logs WHERE execution_id = ?"),
            (execution_id,),
        )
        gone = [(seq,) for seq, level, ts in cur.fetchall() if record.deletes_line(level, ts)]
        if gone:
            cur.executemany(store._sql("DELETE FROM logs WHERE seq = ?"), gone)
        deleted_lines = len(gone)
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


def execution_candidates(store: Store, query: ExecutionPurge, limit: int) -> list[str]:
    """Up to ``limit`` ids of the executions ``query`` purges, oldest end first.

    The database narrows by end date (and flow), the query's own :meth:`ExecutionPurge.matches`
    decides: one definition of what a purge takes, shared with ``kestream.testing``. (Dates
    go to the database as its dialect writes them; SQLite's text dates have milliseconds, so
    the text comparison keeps every row the exact check may take.)
    """
    clauses = ["NOT deleted", "end_date IS NOT NULL", "end_date <= ?"]
    params: list[Any] = [store.dialect.date(query.endDate)]
    if query.flowId is not None:
        clauses.append("flow_id = ?")
        params.append(query.flowId)
    found: list[str] = []
    with store._reading() as cur:
        cur.execute(
            store._sql(
                "SELECT id, namespace, flow_id, state, start_date, end_date FROM executions "
                f"WHERE {' AND '.join(clauses)} ORDER BY end_date, id"
            ),
            params,
        )
        rows = cur.fetchall()
    for execution_id, namespace, flow_id, state, start, end in rows:
        try:
            kind = StateType(state)
        except ValueError:
            continue
        if query.matches(namespace, flow_id, kind, _maybe(start), _maybe(end)):
            found.append(str(execution_id))
            if len(found) >= limit:
                break
    return found


def line_counts(store: Store, execution_ids: list[str]) -> int:
    """How many lines these executions have in the index."""
    if not execution_ids:
        return 0
    with store._reading() as cur:
        cur.execute(
            store._sql(
                f"SELECT COUNT(*) FROM logs WHERE execution_id IN ({marks(len(execution_ids))})"
            ),
            execution_ids,
        )
        return int(cur.fetchone()[0])


def purgeable_lines(store: Store, query: LogPurge) -> dict[str, int]:
    """``execution id -> lines`` that ``query`` purges, as the index holds them now."""
    clauses = ["l.timestamp <= ?"]
    params: list[Any] = [store.dialect.date(query.endDate)]
    if query.startDate is not None:
        clauses.append("l.timestamp >= ?")
        params.append(store.dialect.date(query.startDate))
    if query.executionId is not None:
        clauses.append("l.execution_id = ?")
        params.append(query.executionId)
    with store._reading() as cur:
        cur.execute(
            store._sql(
                "SELECT l.execution_id, e.namespace, e.flow_id, l.level, l.timestamp FROM logs l "
                f"LEFT JOIN executions e ON e.id = l.execution_id WHERE {' AND '.join(clauses)}"
            ),
            params,
        )
        rows = cur.fetchall()
    counts: dict[str, int] = defaultdict(int)
    for execution_id, namespace, flow_id, level, timestamp in rows:
        if not query.execution_matches(str(execution_id), namespace or "", flow_id or ""):
            continue
        if query.line_matches(_level(level), _instant(timestamp)):
            counts[str(execution_id)] += 1
    return dict(counts)


def _maybe(value: Any) -> datetime | None:
    return None if not value else _instant(value)
