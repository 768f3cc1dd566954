"""The execution index on PostgreSQL (``KESTREAM_INDEX_URL=postgresql://...``), psycopg 3.

Same tables, indexes and statements as the SQLite store (:mod:`kestream.api.index.sql`), with
PostgreSQL types: documents are ``jsonb``, dates ``timestamptz``. Text columns that are compared
by range (namespace prefixes, ``STARTS_WITH``) use the ``"C"`` collation, so they order by code
point whatever the database's locale (and compare faster). PostgreSQL refuses NUL in ``text``
and in ``jsonb`` strings, so this dialect escapes it (:mod:`kestream.api.index.nul`).

Connections: one writer (under the store's lock), one reader per thread; reads run in a
``REPEATABLE READ, READ ONLY`` transaction so a page and its count see one snapshot. psycopg is
an optional dependency (the ``postgres`` extra) imported only when this store is opened.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import SecretStr

from kestream.api.index.sql import PG_TRGM, Dialect
from kestream.api.index.store import Cursor, Store
from kestream.api.index.text_index import pg_text_index

__all__ = ["POSTGRES", "PostgresStore"]

_CONNECT_TIMEOUT_S = 30
_VACUUM_PASSES = 5
_VACUUM_PAUSE_S = 0.5
#: Share of a table's pages that must be all-visible after :meth:`PostgresStore.maintain`.
_VISIBLE_SHARE = 0.95


def _identity(value: datetime) -> datetime:
    return value


#: ``labels.start_date`` of an execution without a start date (the column is never NULL, so
#: the "has this label" check is one index seek).
NO_DATE = "-infinity"
POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    find="strpos",
    doc_cast="::text",
    date=_identity,
    no_date=f"'{NO_DATE}'::timestamptz",
    escapes_nul=True,
    # The C collation, as the text columns: lower() folds ASCII letters only, as SQLite's
    # and as the search lowers its needle, whatever the database's default locale.
    log_message="((l.doc->>'message') COLLATE \"C\")",
    text_index=PG_TRGM,
)

_C = 'COLLATE "C"'
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS index_meta (key text PRIMARY KEY, value text NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS executions (
        id text {_C} PRIMARY KEY,
        namespace text {_C} NOT NULL,
        flow_id text {_C} NOT NULL,
        state text {_C} NOT NULL,
        start_date timestamptz,
        end_date timestamptz,
        parent_id text {_C},
        deleted boolean NOT NULL DEFAULT false,
        labels text NOT NULL,
        doc jsonb NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS executions_start ON executions (start_date, id) WHERE NOT deleted",
    "CREATE INDEX IF NOT EXISTS executions_end ON executions (end_date, id) WHERE NOT deleted",
    "CREATE INDEX IF NOT EXISTS executions_namespace ON executions "
    "(namespace, start_date, id) WHERE NOT deleted",
    "CREATE INDEX IF NOT EXISTS executions_namespace_state ON executions "
    "(namespace, state, start_date, id) WHERE NOT deleted",
    "CREATE INDEX IF NOT EXISTS executions_flow ON executions "
    "(flow_id, namespace, start_date, id) WHERE NOT deleted",
    "CREATE INDEX IF NOT EXISTS executions_state ON executions "
    "(state, start_date, id) WHERE NOT deleted",
    f"""CREATE TABLE IF NOT EXISTS task_runs (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        execution_id text {_C} NOT NULL,
        run_id text {_C} NOT NULL,
        doc jsonb NOT NULL,
        UNIQUE (execution_id, run_id))""",
    f"""CREATE TABLE IF NOT EXISTS labels (
        key text {_C} NOT NULL,
        value text {_C} NOT NULL,
        start_date timestamptz NOT NULL,
        execution_id text {_C} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS labels_search ON labels (key, value, start_date, execution_id)",
    "CREATE INDEX IF NOT EXISTS labels_execution ON labels (execution_id)",
    f"""CREATE TABLE IF NOT EXISTS logs (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        execution_id text {_C} NOT NULL,
        task_run_id text {_C},
        level smallint NOT NULL,
        timestamp timestamptz NOT NULL,
        doc jsonb NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS logs_execution ON logs (execution_id, timestamp, seq)",
    "CREATE INDEX IF NOT EXISTS logs_follow ON logs (execution_id, seq)",
    # The logs search, newest first. Created at every open, so an index made before it gets it
    # too (once, with the table locked for writes while it is built).
    "CREATE INDEX IF NOT EXISTS logs_time ON logs (timestamp, seq)",
    f"CREATE TABLE IF NOT EXISTS namespaces (namespace text {_C} PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS feed_offsets (
        topic text NOT NULL,
        "partition" integer NOT NULL,
        next_offset bigint NOT NULL,
        PRIMARY KEY (topic, "partition"))""",
)
_TABLES = ("executions", "task_runs", "labels", "logs", "namespaces", "feed_offsets")


class PostgresStore(Store):
    """The execution index in a PostgreSQL database (its tables are created if missing)."""

    dialect = POSTGRES

    def __init__(self, url: str | SecretStr) -> None:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "KESTREAM_INDEX_URL names PostgreSQL but psycopg is not installed: "
                "pip install 'kestream[postgres]'"
            ) from None
        super().__init__()
        self._psycopg = psycopg
        #: Masked: it may carry the database password (repr, logs, tracebacks' locals).
        self.url = url if isinstance(url, SecretStr) else SecretStr(url)
        self._local = threading.local()
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        #: Whether ``pg_trgm``'s indexes exist (:mod:`kestream.api.index.text_index`).
        self.text_indexed = False
        self._writer = self._connect()
        try:
            self._create_schema()
        except BaseException:
            self._writer.close()
            raise

    def _connect(self) -> Any:
        return self._psycopg.connect(
            self.url.get_secret_value(), autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S
        )

    def _create_schema(self) -> None:
        with self._writing() as cur:
            # Two processes creating the schema at once would race on the catalog.
            cur.execute("SELECT pg_advisory_xact_lock(7051120913)")
            self._create_tables(cur, _SCHEMA, "drop its tables")
            self.text_indexed = pg_text_index(cur, self._writer.transaction, self._psycopg.Error)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Cursor]:
        if self._closed:
            raise RuntimeError("the execution index is closed")
        if self._writer.broken:  # the server restarted or the network dropped: the next try
            self._writer.close()  # gets a new connection instead of failing for good
            self._writer = self._connect()
        with self._writer.transaction(), self._writer.cursor() as cur:
            yield cur

    def is_transient(self, exc: BaseException) -> bool:
        """Connection and server trouble; not a limit a value exceeds (an index row too
        large is a ``ProgramLimitExceeded``, an ``OperationalError`` by its class)."""
        errors = self._psycopg.errors
        if isinstance(exc, errors.ProgramLimitExceeded):
            return False
        return isinstance(exc, self._psycopg.OperationalError | self._psycopg.InterfaceError)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Cursor]:
        connection = self._reader()
        with connection.transaction(), connection.cursor() as cur:
            yield cur

    def _reader(self) -> Any:
        if self._closed:
            raise RuntimeError("the execution index is closed")
        connection = getattr(self._local, "connection", None)
        if connection is None:
            psycopg = self._psycopg
            connection = self._connect()
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            connection.read_only = True
            self._local.connection = connection
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    def _label_date(self, start_date: str | None) -> str:
        return start_date or NO_DATE

    def maintain(self) -> None:
        """``VACUUM ANALYZE``: fresh statistics, and a visibility map for index-only counts."""
        with self._write_lock:
            for table in _TABLES:
                self._writer.execute(f"VACUUM (ANALYZE) {table}")
            # Counts are index-only only on pages marked all-visible, and a concurrent snapshot
            # (autovacuum's own ANALYZE after a bulk load) keeps VACUUM from marking the newest
            # ones: go over the listing tables again until nearly all pages are.
            for _attempt in range(_VACUUM_PASSES):
                lagging = [table for table in ("executions", "labels") if not self._visible(table)]
                if not lagging:
                    return
                time.sleep(_VACUUM_PAUSE_S)
                for table in lagging:
                    self._writer.execute(f"VACUUM {table}")

    def _visible(self, table: str) -> bool:
        row = self._writer.execute(
            "SELECT relpages, relallvisible FROM pg_class WHERE relname = %s", (table,)
        ).fetchone()
        return row is None or row[1] >= _VISIBLE_SHARE * row[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for connection in readers:
            with contextlib.suppress(Exception):
                connection.close()
        with self._write_lock:
            self._writer.close()
