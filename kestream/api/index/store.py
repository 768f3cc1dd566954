"""The execution index's store: what the feed writes and what the API reads.

The feed hands the store *batches* of decoded records from the ``execution-updates`` and
``logs`` topics, each with its Kafka ``(topic, partition, offset)``. :meth:`Store.apply` writes a
batch and the partitions' next offsets in **one transaction**, and skips records below the
offsets already stored. So the feed resumes from the database's own offsets
(:meth:`Store.offsets`), a crash between a write and a commit loses nothing, and a replay never
counts anything twice. Updates are upserts keyed by execution id, so even a duplicate produced
upstream (at-least-once) leaves one row.

Updates are merged with :func:`kestream.runtime.execution_updates.merge_update`'s rules, first
within the batch (several updates of one execution become one write) and then into what is
stored: a ``full`` update replaces the execution's task runs, a partial one upserts the task
runs it carries by id.
Log lines are appended, each once: offsets make the feed's own replays harmless, and a line
the index already holds is recognised by its identity (:meth:`Store._new_lines`), so a log
record produced twice upstream shows once. Each line gets a sequence number that only grows: a
live follow reads the lines after the last one it sent (:meth:`Store.logs_after`), one index
range per poll.

Text the database refuses (PostgreSQL and NUL) is escaped in one place, :mod:`.nul`: documents
through :meth:`Store._doc` and :meth:`Store._load`, the other user text through
:meth:`Dialect.text`. A record the database still refuses is the feed's to isolate and set
aside (:func:`kestream.api.index.feed.apply_isolating`).

The API is **synchronous**: sqlite3 and psycopg's sync connections block, so async callers
(the feed in its own thread, the HTTP API with ``asyncio.to_thread``) run them off the loop. One
writer at a time (a lock); readers never wait for it (SQLite's WAL, PostgreSQL's MVCC), and a
search's page and count are read from one snapshot.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson

from kestream.api.index import nul
from kestream.api.index.purges import PurgeRecord, apply_purge, is_purge_value
from kestream.api.index.query import LabelFilter, SearchQuery
from kestream.api.index.sql import (
    TEXT_DENSE,
    Dialect,
    TextWindow,
    label_probes,
    marks,
    matching_namespaces,
    needs_namespaces,
    search_sql,
    text_probe,
    text_window,
    undated_probe,
)
from kestream.runtime.execution_updates import MergedExecution, merge_update
from kestream.runtime.records import RecordError, loads

__all__ = [
    "LOG_LEVELS",
    "LOG_SEARCH_COUNT_MAX",
    "LOG_SEARCH_SCAN_MAX",
    "SEARCH_COUNT_MAX",
    "SEARCH_SCAN_MAX",
    "ApplyResult",
    "Batch",
    "FeedRecord",
    "Listing",
    "LogPage",
    "LogSearch",
    "RecordKind",
    "Store",
    "log_level_rank",
    "upgrades_in_place",
]

#: Version of the tables' layout, kept in ``index_meta`` by both backends. 2: the logs'
#: ``(execution_id, seq)`` index, and NUL escaped in PostgreSQL's text (:mod:`.nul`).
SCHEMA_VERSION = 2
#: Versions upgraded in place where text is stored as it is (SQLite): what 2 adds to 1 is an
#: index the schema statements create. Not where NUL is escaped (PostgreSQL): a version-1 index
#: holds U+FDD0 unescaped, which version 2 would read back as an escape, silently changing
#: the text (:func:`upgrades_in_place`).
UPGRADED_IN_PLACE = frozenset({1})
#: Rows a :meth:`Store.logs_after` reads at most: what a follow holds per poll.
LOG_PAGE = 1_000
#: The logs search counts its matching lines up to this many (a bounded scan), and its pages
#: end within them.
LOG_SEARCH_COUNT_MAX = 10_000
#: An executions search whose filters are checked row by row counts its matches up to this many:
#: a text (``q``; no index answers a substring of an id, namespace or flow), or a label beside
#: the range an index gives (another label, a namespace, a state). Unbounded, such a count read
#: every candidate: at a million, 0.5 s and more for a text, 1 s for two labels, when the page
#: itself needs only the newest 25 matches.
SEARCH_COUNT_MAX = 10_000
#: A filtered logs search (text, namespace, flow or level) reads at most about this many of
#: the newest lines of its time window: a filter that matches little would otherwise read
#: every line of the index. Older matches are found by narrowing the window (``endDate``).
LOG_SEARCH_SCAN_MAX = 50_000
#: An executions search whose text no index answers (one or two characters) reads at most this
#: many of the listing's first rows (the newest, by default), as the logs search reads its
#: newest :data:`LOG_SEARCH_SCAN_MAX` lines: such a text that matches little would otherwise
#: read every row. Fewer than the logs' lines: each row is read from the table through the
#: listing's index (about 2.5 us on SQLite), and 20 000 of them fit the list pages' 100 ms.
#: Older matches are found by narrowing the search (a date range, a namespace, a flow).
SEARCH_SCAN_MAX = 20_000
#: ``str.lower`` for ASCII letters only, as SQLite's ``lower()`` (and PostgreSQL's under the C
#: collation) lowers a message: "É" stays "É" on both sides of the comparison.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
#: Kestra's log levels, lowest first; ``min_level`` keeps this level and the ones after it.
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
_LEVEL_ALIASES = {"WARNING": "WARN"}
#: Ids per ``IN (...)`` list: far below SQLite's and PostgreSQL's parameter limits.
_ID_CHUNK = 500
#: ``SELECT``\ s joined by ``UNION ALL`` in one statement: one round trip for many executions'
#: lookups, below SQLite's limit of 500 terms in a compound select.
_UNION_TERMS = 100


def upgrades_in_place(version: int, dialect: Dialect) -> bool:
    """Whether an index of schema ``version`` is upgraded where it is rather than refused (the
    feed then rebuilds a dropped one from Kafka): only where the new version reads the old text
    unchanged (:data:`UPGRADED_IN_PLACE`)."""
    return version in UPGRADED_IN_PLACE and not dialect.escapes_nul


def log_level_rank(level: str) -> int:
    """The position of ``level`` in :data:`LOG_LEVELS`; :class:`ValueError` if unknown."""
    name = level.strip().upper()
    name = _LEVEL_ALIASES.get(name, name)
    try:
        return LOG_LEVELS.index(name)
    except ValueError:
        raise ValueError(f"unknown log level '{level}'; levels: {', '.join(LOG_LEVELS)}") from None


class RecordKind(StrEnum):
    UPDATE = "update"
    LOGS = "logs"
    #: A purge record on the logs topic (:mod:`kestream.api.index.purges`).
    PURGE = "purge"


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """One decoded record with its position in Kafka.

    ``value`` is an execution update (``execution_updates.update_values``) for
    :attr:`RecordKind.UPDATE`, a list of Kestra LogEntry dicts for :attr:`RecordKind.LOGS`.
    """

    topic: str
    partition: int
    offset: int
    kind: RecordKind
    execution_id: str
    value: Any

    @classmethod
    def decode(
        cls,
        kind: RecordKind,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        data: bytes | None,
    ) -> FeedRecord:
        """Decode and check a raw record; :class:`RecordError` says what is wrong with it.

        Checked here, before the store sees it, so one malformed record goes to the dead-letter
        topic instead of failing (and endlessly retrying) a whole batch's transaction.
        """
        value = loads(data)
        if kind is RecordKind.UPDATE:
            execution_id = _check_update(value)
        elif is_purge_value(value):
            if key is None:
                raise RecordError("a purge record needs the execution id as its key")
            purge = PurgeRecord.from_value(value)
            return cls(topic, partition, offset, RecordKind.PURGE, key.decode(), purge)
        else:
            execution_id = _check_logs(value, key)
        return cls(topic, partition, offset, kind, execution_id, value)


def _check_update(value: Any) -> str:
    if not isinstance(value, dict):
        raise RecordError("an execution update must be a JSON object")
    header = value.get("execution")
    if not isinstance(header, dict) or not isinstance(header.get("id"), str):
        raise RecordError("an execution update needs execution.id")
    for name in ("namespace", "flowId"):
        if not isinstance(header.get(name), str):
            raise RecordError(f"an execution update needs execution.{name}")
    if not isinstance(header.get("state"), dict):
        raise RecordError("an execution update needs execution.state")
    runs = header.get("taskRunList") if value.get("full") else value.get("taskRuns")
    if runs is not None and (
        not isinstance(runs, list)
        or not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in runs)
    ):
        raise RecordError("task runs must be objects with an id")
    return str(header["id"])


def _check_logs(value: Any, key: bytes | None) -> str:
    if not isinstance(value, list) or not all(isinstance(line, dict) for line in value):
        raise RecordError("a log record must be a JSON list of log entries")
    for line in value:
        if not isinstance(line.get("timestamp"), str) or not isinstance(line.get("level"), str):
            raise RecordError("a log entry needs a timestamp and a level")
    if key is not None:
        return key.decode("utf-8", "replace")
    ids = {line.get("executionId") for line in value}
    if len(ids) != 1 or not isinstance(next(iter(ids)), str):
        raise RecordError("a log record without a key must name one executionId")
    return str(next(iter(ids)))


@dataclass(slots=True)
class Batch:
    """Records to apply together, and the next offset of every partition they advance.

    :meth:`advance` alone moves a partition past a record that is not applied (undecodable,
    dead-lettered), so it is not read again either.
    """

    records: list[FeedRecord] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)

    def add(self, record: FeedRecord) -> None:
        self.records.append(record)
        self.advance(record.topic, record.partition, record.offset)

    def advance(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self.positions[key] = max(self.positions.get(key, 0), offset + 1)

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one :meth:`Store.apply` wrote."""

    #: Update records applied, and the distinct executions they touched.
    updates: int = 0
    executions: int = 0
    log_lines: int = 0
    #: Records at offsets the store had already applied (a replay).
    skipped: int = 0

    def __add__(self, other: ApplyResult) -> ApplyResult:
        return ApplyResult(
            self.updates + other.updates,
            self.executions + other.executions,
            self.log_lines + other.log_lines,
            self.skipped + other.skipped,
        )


@dataclass(frozen=True, slots=True)
class LogSearch:
    """What the logs search asks for (:meth:`Store.search_logs`): every value already checked."""

    text: str | None = None
    #: The namespace and its children (only the namespace itself when ``exact_namespace``).
    namespace: str | None = None
    exact_namespace: bool = False
    flow_id: str | None = None
    min_level: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    page: int = 1
    size: int = 25


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of a search (:meth:`Store.search`, :meth:`Store.search_logs`) and its total."""

    results: list[dict[str, Any]]
    #: How many match; a lower bound when :attr:`capped`.
    total: int
    #: The count stopped at its bound (:data:`SEARCH_COUNT_MAX`, :data:`LOG_SEARCH_COUNT_MAX`),
    #: or a search read only the newest rows or lines of its window: more may match. The API says
    #: so in a header (:data:`kestream.api.http.TOTAL_CAPPED_HEADER`).
    capped: bool = False


@dataclass(frozen=True, slots=True)
class LogPage:
    """Log lines read after a cursor (:meth:`Store.logs_after`)."""

    lines: list[dict[str, Any]]
    #: The sequence number of the last row read: the cursor of the next read.
    cursor: int
    #: The read stopped at its limit: more rows may follow at once.
    full: bool


class Cursor(Protocol):
    """The DB-API cursor subset both sqlite3 and psycopg provide."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, query: Any, params_seq: Any, /) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


@dataclass(slots=True)
class _Pending:
    """One execution's updates of a batch, folded with ``merge_update``."""

    merged: MergedExecution
    #: A full update was among them: the stored task runs are replaced, not merged into.
    replace: bool


def _fold(records: Iterable[FeedRecord]) -> dict[str, _Pending]:
    pending: dict[str, _Pending] = {}
    for record in records:
        update = record.value
        known = pending.get(record.execution_id)
        full = bool(update.get("full"))
        if known is None:
            pending[record.execution_id] = _Pending(merge_update(None, update), full)
        else:
            known.merged = merge_update(known.merged, update)
            known.replace = known.replace or full
    return pending


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _labels_of(header: dict[str, Any]) -> list[tuple[str, str]]:
    pairs: dict[tuple[str, str], None] = {}
    for label in header.get("labels") or []:
        if isinstance(label, dict) and "key" in label:
            pairs[(str(label["key"]), str(label.get("value", "")))] = None
    return list(pairs)


@dataclass(frozen=True, slots=True)
class _Row:
    """The columns of one execution, taken from its merged header."""

    id: str
    namespace: str
    flow_id: str
    state: str
    start_date: str | None
    end_date: str | None
    parent_id: str | None
    labels: list[tuple[str, str]]
    #: What the labels rows depend on (start date and pairs): rewritten only when it changes.
    signature: str
    doc: str

    @classmethod
    def of(cls, execution_id: str, header: dict[str, Any], doc: Callable[[Any], str]) -> _Row:
        state = header.get("state") or {}
        trigger = header.get("trigger") or {}
        variables = trigger.get("variables") if isinstance(trigger, dict) else None
        parent = header.get("parentId") or (
            variables.get("executionId") if isinstance(variables, dict) else None
        )
        labels = _labels_of(header)
        start = state.get("startDate")
        return cls(
            id=execution_id,
            namespace=str(header.get("namespace")),
            flow_id=str(header.get("flowId")),
            state=str(state.get("current") or ""),
            start_date=start,
            end_date=state.get("endDate"),
            parent_id=str(parent) if parent else None,
            labels=labels,
            signature=_dumps([start, labels]),
            doc=doc(header),
        )

    def columns(self) -> tuple[str | None, ...]:
        """The values of its ``executions`` row, in the order the INSERTs name the columns."""
        return (
            self.id,
            self.namespace,
            self.flow_id,
            self.state,
            self.start_date,
            self.end_date,
            self.parent_id,
            self.signature,
            self.doc,
        )


class Store(ABC):
    """The execution index (see the module docs). Backends: SQLite, PostgreSQL.

    A backend provides connections (:meth:`_writing`, :meth:`_reading`), its schema and
    :meth:`maintain`; the statements are shared (:mod:`kestream.api.index.sql`).
    """

    dialect: Dialect

    def __init__(self) -> None:
        self._write_lock = threading.Lock()

    # -- backend hooks ---------------------------------------------------------------------------

    @abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[Cursor]:
        """A cursor in a write transaction, committed on exit (rolled back on an exception)."""

    @abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[Cursor]:
        """A cursor in a read-only transaction: every statement sees one snapshot."""

    @abstractmethod
    def maintain(self) -> None:
        """Refresh the planner's statistics: after a bulk load, and once the feed caught up."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards."""

    def _sql(self, text: str) -> str:
        return self.dialect.sql(text)

    def _doc(self, value: Any) -> str:
        """A JSON document as this database stores it (NUL escaped where it must be)."""
        return nul.dumps_doc(value, escaped=self.dialect.escapes_nul)

    def _load(self, text: str | bytes) -> Any:
        """A document as :meth:`_doc` stored it."""
        return nul.loads_doc(text, escaped=self.dialect.escapes_nul)

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the database cannot work now (down, locked, full), rather than
        that it refuses what it was given: the feed retries the first, and isolates the records
        behind the second (:func:`kestream.api.index.feed.apply_isolating`)."""
        return False

    def ping(self) -> None:
        """Open and commit a write transaction that writes nothing: raises when the database
        cannot take writes now, whatever the data."""
        with self._write_lock, self._writing() as cur:
            cur.execute("SELECT 1")

    def _create_tables(self, cur: Cursor, statements: Sequence[str], remedy: str) -> None:
        """Create the schema (idempotent) and check the version it was made with; ``remedy``
        says what to drop when it is another one (the feed rebuilds everything from Kafka)."""
        for statement in statements:
            cur.execute(statement)
        cur.execute("SELECT value FROM index_meta WHERE key = 'schema'")
        row = cur.fetchone()
        if row is None:
            cur.execute(
                self._sql("INSERT INTO index_meta (key, value) VALUES ('schema', ?)"),
                (str(SCHEMA_VERSION),),
            )
        elif upgrades_in_place(int(row[0]), self.dialect):
            cur.execute(
                self._sql("UPDATE index_meta SET value = ? WHERE key = 'schema'"),
                (str(SCHEMA_VERSION),),
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"the index has schema {row[0]}, this kestream needs {SCHEMA_VERSION}: "
                f"{remedy} (the feed rebuilds it from Kafka)"
            )

    # -- writing ---------------------------------------------------------------------------------

    #: Every table the feed fills, emptied by :meth:`reset`.
    _TABLES: tuple[str, ...] = (
        "logs",
        "labels",
        "task_runs",
        "executions",
        "namespaces",
        "feed_offsets",
    )

    def reset(self) -> None:
        """Forget everything: the topics this index followed are gone (see the feed)."""
        with self._write_lock, self._writing() as cur:
            for table in self._TABLES:
                cur.execute(f"DELETE FROM {table}")  # fixed names, no input

    def apply(self, batch: Batch) -> ApplyResult:
        """Apply ``batch`` and its partitions' next offsets in one transaction (module docs)."""
        if not batch.positions:
            return ApplyResult()
        with self._write_lock, self._writing() as cur:
            stored = self._stored_offsets(cur, batch.positions)
            fresh = [r for r in batch.records if r.offset >= stored.get((r.topic, r.partition), 0)]
            updates = [r for r in fresh if r.kind is RecordKind.UPDATE]
            pending = _fold(updates)
            if pending:
                self._write_executions(cur, pending)
            lines = self._write_logs_and_purges(
                cur, [r for r in fresh if r.kind is not RecordKind.UPDATE]
            )
            moved = [
                (topic, partition, offset)
                for (topic, partition), offset in batch.positions.items()
                if offset > stored.get((topic, partition), 0)
            ]
            if moved:
                cur.executemany(
                    self._sql(
                        'INSERT INTO feed_offsets (topic, "partition", next_offset) '
                        'VALUES (?, ?, ?) ON CONFLICT (topic, "partition") '
                        "DO UPDATE SET next_offset = excluded.next_offset"
                    ),
                    moved,
                )
        return ApplyResult(
            updates=len(updates),
            executions=len(pending),
            log_lines=lines,
            skipped=len(batch.records) - len(fresh),
        )

    def _stored_offsets(
        self, cur: Cursor, positions: dict[tuple[str, int], int]
    ) -> dict[tuple[str, int], int]:
        topics = sorted({topic for topic, _ in positions})
        cur.execute(
            self._sql(
                f'SELECT topic, "partition", next_offset FROM feed_offsets '
                f"WHERE topic IN ({marks(len(topics))})"
            ),
            topics,
        )
        return {(str(t), int(p)): int(o) for t, p, o in cur.fetchall()}

    def _existing(self, cur: Cursor, ids: Sequence[str]) -> dict[str, tuple[str, bool]]:
        """``id -> (labels signature, deleted)`` of the executions already stored."""
        found: dict[str, tuple[str, bool]] = {}
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            cur.execute(
                self._sql(
                    f"SELECT id, labels, deleted FROM executions WHERE id IN ({marks(len(chunk))})"
                ),
                chunk,
            )
            for execution_id, signature, deleted in cur.fetchall():
                found[str(execution_id)] = (str(signature), bool(deleted))
        return found

    def _write_executions(self, cur: Cursor, pending: dict[str, _Pending]) -> None:
        rows = [
            _Row.of(execution_id, p.merged.header, self._doc) for execution_id, p in pending.items()
        ]
        existing = self._existing(cur, [row.id for row in rows])
        cur.executemany(
            self._sql(
                "INSERT INTO executions (id, namespace, flow_id, state, start_date, end_date, "
                "parent_id, labels, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, "
                "flow_id = excluded.flow_id, state = excluded.state, "
                "start_date = excluded.start_date, end_date = excluded.end_date, "
                "parent_id = excluded.parent_id, labels = excluded.labels, doc = excluded.doc"
            ),
            [row.columns() for row in rows],
        )
        cur.executemany(
            self._sql(
                "INSERT INTO namespaces (namespace) VALUES (?) ON CONFLICT (namespace) DO NOTHING"
            ),
            [(namespace,) for namespace in sorted({row.namespace for row in rows})],
        )
        replaced = [(i,) for i, p in pending.items() if p.replace and i in existing]
        if replaced:
            cur.executemany(self._sql("DELETE FROM task_runs WHERE execution_id = ?"), replaced)
        runs = [
            (execution_id, run_id, self._doc(run))
            for execution_id, p in pending.items()
            for run_id, run in p.merged.runs.items()
        ]
        if runs:
            cur.executemany(
                self._sql(
                    "INSERT INTO task_runs (execution_id, run_id, doc) VALUES (?, ?, ?) "
                    "ON CONFLICT (execution_id, run_id) DO UPDATE SET doc = excluded.doc"
                ),
                runs,
            )
        self._write_labels(cur, rows, existing)

    def _write_labels(
        self, cur: Cursor, rows: list[_Row], existing: dict[str, tuple[str, bool]]
    ) -> None:
        changed = [
            row
            for row in rows
            if row.id not in existing
            or (not existing[row.id][1] and existing[row.id][0] != row.signature)
        ]
        stale = [(row.id,) for row in changed if row.id in existing]
        if stale:
            cur.executemany(self._sql("DELETE FROM labels WHERE execution_id = ?"), stale)
        text = self.dialect.text
        pairs = [
            (text(key), text(value), self._label_date(row.start_date), row.id)
            for row in changed
            for key, value in row.labels
        ]
        if pairs:
            cur.executemany(
                self._sql(
                    "INSERT INTO labels (key, value, start_date, execution_id) VALUES (?, ?, ?, ?)"
                ),
                pairs,
            )

    def _label_date(self, start_date: str | None) -> Any:
        """The start date as stored in ``labels`` (SQLite's primary key wants no NULL)."""
        return start_date

    def _write_logs_and_purges(self, cur: Cursor, records: list[FeedRecord]) -> int:
        """Append the lines of log records and apply purge records where they come, in order:
        a purge deletes the lines its execution had before it, never the ones after."""
        written = 0
        start = 0
        for n, record in enumerate(records):
            if record.kind is RecordKind.PURGE:
                written += self._write_logs(cur, records[start:n])
                apply_purge(self, cur, record.execution_id, record.value)
                start = n + 1
        return written + self._write_logs(cur, records[start:])

    def _write_logs(self, cur: Cursor, records: list[FeedRecord]) -> int:
        rows = [
            (
                execution_id,
                line.get("taskRunId"),
                _rank_or_info(line.get("level")),
                line["timestamp"],
                self._doc(line),
            )
            for execution_id, line in self._new_lines(cur, records)
        ]
        if rows:
            cur.executemany(
                self._sql(
                    "INSERT INTO logs (execution_id, task_run_id, level, timestamp, doc) "
                    "VALUES (?, ?, ?, ?, ?)"
                ),
                rows,
            )
        return len(rows)

    def _new_lines(
        self, cur: Cursor, records: list[FeedRecord]
    ) -> list[tuple[str, dict[str, Any]]]:
        """The lines of ``records`` that the index does not hold yet, by their identity.

        A record produced twice upstream (a worker's retried send, a producer retry without
        idempotence, a step replayed after a crash) has other offsets but the same lines, so
        offsets alone would show them twice. A line is identified by :func:`_line_identity`
        and its rank among the identical lines of its own record (a task may log one text twice
        in one microsecond); it is new when the index holds fewer lines of that identity than
        its rank, counting the lines this batch already took. The stored lines compared are
        the execution's lines at the batch's timestamps: one range of the
        ``(execution_id, timestamp)`` index per execution, many executions per statement
        (:func:`_union_lookups`) since a batch holds the lines of hundreds of executions and
        each statement is a round trip to PostgreSQL.
        """
        wanted: dict[str, list[tuple[tuple[Any, ...], int, dict[str, Any]]]] = {}
        for record in records:
            ranks: Counter[tuple[Any, ...]] = Counter()
            for line in record.value:
                identity = _line_identity(line)
                wanted.setdefault(record.execution_id, []).append((identity, ranks[identity], line))
                ranks[identity] += 1
        lookups = [
            (execution_id, stamps[start : start + _ID_CHUNK])
            for execution_id, lines in wanted.items()
            for stamps in [sorted({str(line["timestamp"]) for _, _, line in lines})]
            for start in range(0, len(stamps), _ID_CHUNK)
        ]
        held_by: dict[str, Counter[tuple[Any, ...]]] = {}
        doc = f"doc{self.dialect.doc_cast}"
        for statement, params in _union_lookups(lookups, doc):
            cur.execute(self._sql(statement), params)
            for execution_id, text in cur.fetchall():
                held_by.setdefault(str(execution_id), Counter())[
                    _line_identity(self._load(text))
                ] += 1
        fresh: list[tuple[str, dict[str, Any]]] = []
        for execution_id, lines in wanted.items():
            held = held_by.get(execution_id, Counter())
            for identity, rank, line in lines:
                if rank >= held[identity]:
                    held[identity] = rank + 1
                    fresh.append((execution_id, line))
        return fresh

    def delete(self, execution_id: str) -> bool:
        """Mark an execution deleted (Kestra's soft delete): gone from search and :meth:`get`.

        Later updates of it keep it deleted. ``False`` when it is unknown or already deleted.
        """
        with self._write_lock, self._writing() as cur:
            cur.execute(self._sql("SELECT deleted FROM executions WHERE id = ?"), (execution_id,))
            row = cur.fetchone()
            if row is None or bool(row[0]):
                return False
            cur.execute(
                self._sql("UPDATE executions SET deleted = ? WHERE id = ?"), (True, execution_id)
            )
            cur.execute(self._sql("DELETE FROM labels WHERE execution_id = ?"), (execution_id,))
        return True

    # -- reading ---------------------------------------------------------------------------------

    def offsets(self, topic: str) -> dict[int, int]:
        """``partition -> next offset`` the store has applied for ``topic`` (empty: none)."""
        with self._reading() as cur:
            cur.execute(
                self._sql('SELECT "partition", next_offset FROM feed_offsets WHERE topic = ?'),
                (topic,),
            )
            return {int(p): int(o) for p, o in cur.fetchall()}

    def get(self, execution_id: str, *, include_deleted: bool = False) -> dict[str, Any] | None:
        """The execution's Kestra JSON with its ``taskRunList`` (first-appearance order).

        ``None`` when unknown, or deleted (unless ``include_deleted``: then ``deleted`` is true).
        """
        doc = f"doc{self.dialect.doc_cast}"
        with self._reading() as cur:
            cur.execute(
                self._sql(f"SELECT {doc}, deleted FROM executions WHERE id = ?"), (execution_id,)
            )
            row = cur.fetchone()
            if row is None or (bool(row[1]) and not include_deleted):
                return None
            execution: dict[str, Any] = self._load(row[0])
            cur.execute(
                self._sql(f"SELECT {doc} FROM task_runs WHERE execution_id = ? ORDER BY seq"),
                (execution_id,),
            )
            execution["taskRunList"] = [self._load(r[0]) for r in cur.fetchall()]
        execution["deleted"] = bool(row[1])
        return execution

    def state(self, execution_id: str) -> str | None:
        """The execution's current state, from its column (``None`` when unknown): what a
        poll that only asks "has it ended?" reads, instead of the whole execution."""
        with self._reading() as cur:
            cur.execute(self._sql("SELECT state FROM executions WHERE id = ?"), (execution_id,))
            row = cur.fetchone()
        return str(row[0]) if row is not None else None

    def search(self, query: SearchQuery) -> Listing:
        """One page of executions (without task runs) and the total that match.

        The total comes from its own ``COUNT(*)`` over the same filters, never from fetching
        rows (BENCHMARKS.md W6), in the same read snapshot as the page. A count checked row by
        row stops past :data:`SEARCH_COUNT_MAX`: the total is then that bound, and capped.
        """
        if query.nothing:
            return Listing([], 0)
        with self._reading() as cur:
            namespaces = None
            if needs_namespaces(query):
                cur.execute("SELECT namespace FROM namespaces")
                namespaces = matching_namespaces(query, (row[0] for row in cur.fetchall()))
            dense = False
            probe = text_probe(query, self.dialect)
            if probe is not None:
                cur.execute(self._sql(probe[0]), probe[1])
                dense = int(cur.fetchone()[0]) >= TEXT_DENSE
            window = text_window(query, self.dialect, namespaces)
            if window is not None:
                return self._search_window(cur, query, namespaces, window)
            label_rows: dict[LabelFilter, int] = {}
            for label, statement, params in label_probes(query, self.dialect):
                cur.execute(statement, params)
                label_rows[label] = int(cur.fetchone()[0])
            undated = True
            probe_dates = undated_probe(query, self.dialect)
            if probe_dates is not None:
                cur.execute(probe_dates)
                undated = cur.fetchone() is not None
            statements = search_sql(
                query,
                self.dialect,
                namespaces,
                SEARCH_COUNT_MAX,
                text_dense=dense,
                label_rows=label_rows,
                undated=undated,
            )
            if statements is None:
                return Listing([], 0)
            cur.execute(statements.page, statements.page_params)
            page = [self._load(row[0]) for row in cur.fetchall()]
            cur.execute(statements.count, statements.count_params)
            total = int(cur.fetchone()[0])
        bound = statements.count_max
        if bound is not None and total > bound:
            return Listing(page, bound, capped=True)
        return Listing(page, total)

    def _search_window(
        self,
        cur: Cursor,
        query: SearchQuery,
        namespaces: list[str] | None,
        window: TextWindow,
    ) -> Listing:
        """A text no index answers, checked on the first rows of the listing (the newest, as
        it sorts by default; :func:`text_window`): its :data:`TEXT_WINDOW` rows first, whose
        page is the answer when full; else its :data:`SEARCH_SCAN_MAX` rows, as the logs
        search reads its newest :data:`LOG_SEARCH_SCAN_MAX` lines. Rows past the window are
        not read, so the page and total are the window's, capped when it was cut."""
        listing = self._read_window(cur, query, window)
        if listing.capped and len(listing.results) < query.size:  # the page needs more rows
            wider = text_window(query, self.dialect, namespaces, rows=SEARCH_SCAN_MAX)
            assert wider is not None  # as the window: the same filters
            listing = self._read_window(cur, query, wider)
        return listing

    def _read_window(self, cur: Cursor, query: SearchQuery, window: TextWindow) -> Listing:
        """The page and matches of ``window``; capped when it is full (rows past it unread)
        or its matches pass :data:`SEARCH_COUNT_MAX`. No page is read past its matches."""
        cur.execute(window.count, window.count_params)
        read, matches = (int(value) for value in cur.fetchone())
        page: list[dict[str, Any]] = []
        if matches > query.offset:
            cur.execute(window.page, window.page_params)
            page = [self._load(row[0]) for row in cur.fetchall()]
        cut = read >= window.rows or matches > SEARCH_COUNT_MAX
        return Listing(page, min(matches, SEARCH_COUNT_MAX), capped=cut)

    def logs(
        self,
        execution_id: str,
        min_level: str | None = None,
        task_run_id: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """The execution's log lines, oldest first (lines of one timestamp in arrival order).

        ``min_level`` (``INFO``, ``WARN``...) keeps that level and above; ``task_run_id`` keeps
        one task run's lines; ``limit`` and ``offset`` take one page of them (what the API
        serves: an execution's lines are unbounded). Raises :class:`ValueError` for an unknown
        level.
        """
        clauses = ["execution_id = ?"]
        params: list[Any] = [execution_id]
        if min_level is not None:
            clauses.append("level >= ?")
            params.append(log_level_rank(min_level))
        if task_run_id is not None:
            clauses.append("task_run_id = ?")
            params.append(task_run_id)
        page = ""
        if limit is not None:
            page = " LIMIT ? OFFSET ?"
            params += [limit, offset]
        doc = f"doc{self.dialect.doc_cast}"
        with self._reading() as cur:
            cur.execute(
                self._sql(
                    f"SELECT {doc} FROM logs WHERE {' AND '.join(clauses)} "
                    f"ORDER BY timestamp, seq{page}"
                ),
                params,
            )
            return [self._load(row[0]) for row in cur.fetchall()]

    def logs_after(
        self,
        execution_id: str,
        cursor: int = 0,
        *,
        min_level: str | None = None,
        task_run_id: str | None = None,
        limit: int = LOG_PAGE,
    ) -> LogPage:
        """The execution's lines indexed after ``cursor`` (0: from the first), in the order the
        index received them: what a live follow sends next.

        One range of the ``(execution_id, seq)`` index, at most ``limit`` rows: a poll costs
        the new rows, never the lines already sent. ``min_level`` and ``task_run_id`` filter
        those rows here, so the cursor moves past the rows they leave out as well. Sequence
        numbers only grow while the store is open (rows are only ever appended; :meth:`reset`
        empties the table before any reader exists).
        """
        minimum = log_level_rank(min_level) if min_level is not None else None
        doc = f"doc{self.dialect.doc_cast}"
        with self._reading() as cur:
            cur.execute(
                self._sql(
                    f"SELECT seq, level, task_run_id, {doc} FROM logs "
                    "WHERE execution_id = ? AND seq > ? ORDER BY seq LIMIT ?"
                ),
                (execution_id, cursor, limit),
            )
            rows = cur.fetchall()
        lines = [
            self._load(text)
            for _, level, run_id, text in rows
            if (minimum is None or level >= minimum)
            and (task_run_id is None or run_id == task_run_id)
        ]
        return LogPage(lines, int(rows[-1][0]) if rows else cursor, len(rows) >= limit)

    def search_logs(self, query: LogSearch) -> Listing:
        """One page of the lines of every execution that ``query`` picks, newest first, and
        how many there are (counted up to :data:`LOG_SEARCH_COUNT_MAX`: the count is a scan of
        the matching lines, which must stay bounded on a large index). The total is capped
        when counting stopped at that bound or the window was cut at the newest lines.

        Lines of deleted executions are left out, as the executions are; the text filter is a
        case-insensitive substring of the message (ASCII letters fold, as SQL's ``lower()``).
        A filtered search reads the newest :data:`LOG_SEARCH_SCAN_MAX` lines of its time
        window at most (:meth:`_scan_floor`), so that no search reads the whole table.
        """
        window: list[str] = []
        window_params: list[Any] = []
        if query.start is not None:
            window.append("l.timestamp >= ?")
            window_params.append(self.dialect.date(query.start))
        if query.end is not None:
            window.append("l.timestamp <= ?")
            window_params.append(self.dialect.date(query.end))
        clauses = ["NOT e.deleted"]
        params: list[Any] = []
        if query.namespace is not None and query.exact_namespace:
            clauses.append("e.namespace = ?")
            params.append(query.namespace)
        elif query.namespace is not None:
            clauses.append("(e.namespace = ? OR substr(e.namespace, 1, ?) = ?)")
            params += [query.namespace, len(query.namespace) + 1, query.namespace + "."]
        if query.flow_id is not None:
            clauses.append("e.flow_id = ?")
            params.append(query.flow_id)
        if query.min_level is not None:
            clauses.append("l.level >= ?")
            params.append(log_level_rank(query.min_level))
        if query.text:
            find, message = self.dialect.find, self.dialect.log_message
            clauses.append(f"{find}(lower({message}), ?) > 0")
            params.append(self.dialect.text(query.text.translate(_ASCII_LOWER)))
        filtered = len(clauses) > 1
        doc = f"l.doc{self.dialect.doc_cast}"
        floor = None
        with self._reading() as cur:
            if filtered:
                floor = self._scan_floor(cur, window, window_params)
                if floor is not None:
                    window.append("l.timestamp >= ?")
                    window_params.append(floor)
            where = " AND ".join(window + clauses)
            params = window_params + params
            matching = f"FROM logs l JOIN executions e ON e.id = l.execution_id WHERE {where}"
            cur.execute(
                self._sql(
                    f"SELECT {doc} {matching} "
                    "ORDER BY l.timestamp DESC, l.seq DESC LIMIT ? OFFSET ?"
                ),
                [*params, query.size, (query.page - 1) * query.size],
            )
            lines = [self._load(row[0]) for row in cur.fetchall()]
            offset = (query.page - 1) * query.size
            cut = floor is not None
            if len(lines) < query.size and (lines or not offset):
                # The last page: no second scan to count.
                return Listing(lines, offset + len(lines), capped=cut)
            cur.execute(
                self._sql(f"SELECT COUNT(*) FROM (SELECT 1 {matching} LIMIT ?) AS counted"),
                [*params, LOG_SEARCH_COUNT_MAX + 1],
            )
            total = int(cur.fetchone()[0])
        if total > LOG_SEARCH_COUNT_MAX:
            return Listing(lines, LOG_SEARCH_COUNT_MAX, capped=True)
        return Listing(lines, total, capped=cut)

    def _scan_floor(self, cur: Cursor, window: list[str], params: list[Any]) -> Any:
        """The timestamp of the :data:`LOG_SEARCH_SCAN_MAX`-th newest line of the window, or
        ``None`` when the window holds fewer: read from the ``logs_time`` index alone."""
        where = f"WHERE {' AND '.join(window)} " if window else ""
        cur.execute(
            self._sql(
                f"SELECT l.timestamp FROM logs l {where}"
                "ORDER BY l.timestamp DESC, l.seq DESC LIMIT 1 OFFSET ?"
            ),
            [*params, LOG_SEARCH_SCAN_MAX - 1],
        )
        row = cur.fetchone()
        return None if row is None else row[0]

    def count(self) -> int:
        """Executions that are not deleted (a convenience for tests and the benchmark)."""
        with self._reading() as cur:
            cur.execute("SELECT COUNT(*) FROM executions e WHERE NOT e.deleted")
            return int(cur.fetchone()[0])

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _union_lookups(
    lookups: Sequence[tuple[str, Sequence[str]]], doc: str
) -> Iterator[tuple[str, list[Any]]]:
    """Statements reading the stored lines of ``(execution id, timestamps)`` lookups, as
    ``(execution_id, doc)`` rows: each lookup one ``SELECT`` (one index range), up to
    :data:`_UNION_TERMS` of them and about :data:`_ID_CHUNK` parameters per statement."""
    terms: list[str] = []
    params: list[Any] = []
    for execution_id, stamps in lookups:
        terms.append(
            f"SELECT execution_id, {doc} FROM logs WHERE execution_id = ? "
            f"AND timestamp IN ({marks(len(stamps))})"
        )
        params += [execution_id, *stamps]
        if len(terms) == _UNION_TERMS or len(params) >= _ID_CHUNK:
            yield " UNION ALL ".join(terms), params
            terms, params = [], []
    if terms:
        yield " UNION ALL ".join(terms), params


def _line_identity(line: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two log lines the same line: who logged it (task run and attempt), when, at
    which level, and what it says. The execution is the caller's grouping."""
    return (
        line.get("taskRunId"),
        line.get("attemptNumber"),
        str(line.get("timestamp")),
        line.get("level"),
        line.get("message"),
    )


def _rank_or_info(level: Any) -> int:
    try:
        return log_level_rank(str(level))
    except ValueError:
        return LOG_LEVELS.index("INFO")
