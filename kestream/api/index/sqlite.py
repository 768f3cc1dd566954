"""The embedded execution index: one SQLite file (``<KESTREAM_DATA_DIR>/index.sqlite``).

WAL journal, so readers (the API's threads) never block the feed's writer nor it them, and
``synchronous=NORMAL``: a commit is durable once the WAL is checkpointed, and a power cut may
lose the last commits but never corrupts the file; the feed then re-reads those records, since
their offsets were lost with them. Dates are stored as Kestra's ISO text (``...T10:11:12.345Z``,
fixed width, UTC), which orders as the instants do.

Connections: one writer (used under the store's lock), and one reader per thread, opened on
first use; every connection is closed by :meth:`SQLiteStore.close`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from kestream.api.index.sql import FTS5_TRIGRAM, Dialect
from kestream.api.index.store import Cursor, Store
from kestream.api.index.text_index import sqlite_text_index
from kestream.models.execution import format_instant

__all__ = ["DEFAULT_FILE", "SQLiteStore"]

#: The index file's name under ``KESTREAM_DATA_DIR``.
DEFAULT_FILE = "index.sqlite"
_BUSY_TIMEOUT_S = 30.0
_CACHE_KIB = 65_536
_MMAP_BYTES = 256 * 1024 * 1024
#: Rows ANALYZE samples per index: enough to choose between indexes, fast on 10^6 rows.
_ANALYSIS_LIMIT = 2_000

SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    find="instr",
    doc_cast="",
    date=format_instant,
    no_date="''",
    merge_intersect=True,
)
#: The same, where the text search is answered by ``executions_text`` (:mod:`.text_index`).
SQLITE_TEXT_INDEX = dataclasses.replace(SQLITE, text_index=FTS5_TRIGRAM)

#: The listing indexes (name, columns), shared in spirit with the PostgreSQL store.
_INDEXES = (
    ("start", "start_date, id"),
    ("end", "end_date, id"),
    ("namespace", "namespace, start_date, id"),
    ("namespace_state", "namespace, state, start_date, id"),
    ("flow", "flow_id, namespace, start_date, id"),
    ("state", "state, start_date, id"),
)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS index_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS executions (
        id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        flow_id TEXT NOT NULL,
        state TEXT NOT NULL,
        start_date TEXT,
        end_date TEXT,
        parent_id TEXT,
        deleted INTEGER NOT NULL DEFAULT 0,
        labels TEXT NOT NULL,
        doc TEXT NOT NULL)""",
    # Partial indexes (every search has NOT deleted) that also carry ``deleted``: SQLite reads
    # a column of the WHERE from the table unless the index has it, and counts must be
    # index-only.
    *(
        f"CREATE INDEX IF NOT EXISTS executions_{name} ON executions ({columns}, deleted) "
        "WHERE NOT deleted"
        for name, columns in _INDEXES
    ),
    """CREATE TABLE IF NOT EXISTS task_runs (
        seq INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        doc TEXT NOT NULL,
        UNIQUE (execution_id, run_id))""",
    """CREATE TABLE IF NOT EXISTS labels (
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        start_date TEXT NOT NULL,
        execution_id TEXT NOT NULL,
        PRIMARY KEY (key, value, start_date, execution_id)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS labels_execution ON labels (execution_id)",
    """CREATE TABLE IF NOT EXISTS logs (
        seq INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL,
        task_run_id TEXT,
        level INTEGER NOT NULL,
        timestamp TEXT NOT NULL,
        doc TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS logs_execution ON logs (execution_id, timestamp, seq)",
    # seq is the rowid, which every index carries: this one is (execution_id, seq).
    "CREATE INDEX IF NOT EXISTS logs_follow ON logs (execution_id)",
    # The logs search, newest first (timestamp, then seq: the rowid). Created at every open,
    # so an index made before it gets it too.
    "CREATE INDEX IF NOT EXISTS logs_time ON logs (timestamp)",
    "CREATE TABLE IF NOT EXISTS namespaces (namespace TEXT PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS feed_offsets (
        topic TEXT NOT NULL,
        "partition" INTEGER NOT NULL,
        next_offset INTEGER NOT NULL,
        PRIMARY KEY (topic, "partition"))""",
)


class SQLiteStore(Store):
    """The execution index in one SQLite file (created with its schema if missing).

    Its text search has an FTS5 trigram index where this SQLite has the tokenizer
    (:mod:`kestream.api.index.text_index`); :attr:`dialect` says which.
    """

    dialect = SQLITE

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        try:
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._create_schema()
        except BaseException:
            self._writer.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE for writes, so a
        # writer never fails half-way on a lock upgrade). Used from several threads, one at a
        # time (the writer under the store's lock, each reader by its own thread).
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
        )
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        connection.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        connection.execute("PRAGMA temp_store=MEMORY")
        return connection

    def _create_schema(self) -> None:
        with self._writing() as cur:
            self._create_tables(cur, _SCHEMA, f"delete {self.path}")
            if sqlite_text_index(cur, self.path):
                self.dialect = SQLITE_TEXT_INDEX

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Cursor]:
        if self._closed:
            raise RuntimeError("the execution index is closed")
        cur = self._writer.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Cursor]:
        connection = self._reader()
        cur = connection.cursor()
        cur.execute("BEGIN")  # one snapshot for every statement of the read (page + count)
        try:
            yield cur
        finally:
            cur.execute("COMMIT")
            cur.close()

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the execution index is closed")
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only=ON")
            self._local.connection = connection
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    def _label_date(self, start_date: str | None) -> str:
        return start_date or ""

    def is_transient(self, exc: BaseException) -> bool:
        """Locked, busy, full or unreadable: ``OperationalError``; a value SQLite cannot hold
        is a ``DataError``, an ``IntegrityError`` or Python's ``OverflowError``."""
        return isinstance(exc, sqlite3.OperationalError)

    def maintain(self) -> None:
        """``ANALYZE`` with a sampling limit: lets SQLite pick the most selective index."""
        with self._write_lock:
            self._writer.execute(f"PRAGMA analysis_limit={_ANALYSIS_LIMIT}")
            self._writer.execute("ANALYZE")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for connection in readers:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
        with self._write_lock:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("PRAGMA optimize")  # keeps the planner's statistics fresh
            self._writer.close()
