"""The execution index on PostgreSQL (``KESTREAM_INDEX_URL=postgresql://...``), psycopg 3.

Same tables, indexes and statements as the SQLite store (:mod:`kestream.api.index.sql`), with
PostgreSQL types: documents are ``jsonb``, dates ``timestamptz``. Text columns that are compared
by range (namespace prefixes, ``STARTS_WITH``) use the ``"C"`` collation, so they order by code
point whatever the database's locale (and compare faster). PostgreSQL refuses NUL in ``text``
and in ``jsonb`` strings, so this dialect escapes it (:mod:`kestream.api.index.nul`).

Connections: one writer (under the store's lock), one reader per thread; reads run in a
``REPEATABLE READ, READ ONLY`` transaction so a page and its count see one snapshot. psycopg is
an optional dependency (the ``postgres`` extra) imported only when this store is opened.

**Reconnecting.** A restart of the server, or a dropped network, leaves every connection dead.
Each is replaced where it is next used: a connection psycopg knows is lost (``broken``) or that
was closed, and every connection opened before one was found lost (the store's *generation*:
after a restart, the others are dead too, and would otherwise fail one request each). A new
connection is tried :data:`_RECONNECT_ATTEMPTS` times, pausing between tries, each try logged;
past them the error is raised, to the feed (which retries the batch) or to the API's request.
The statement that met the lost connection fails; what follows gets a new one.
"""

from __future__ import annotations

import contextlib
import logging
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

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 30
#: Tries at a new connection before the error is raised, and the pause after each failed one.
_RECONNECT_ATTEMPTS = 4
_RECONNECT_PAUSES_S = (0.25, 1.0, 2.0)
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
        #: Raised when a connection is found lost: every connection of an older one is replaced.
        self._generation = 0
        #: Whether ``pg_trgm``'s indexes exist (:mod:`kestream.api.index.text_index`).
        self.text_indexed = False
        self._writer = self._connect()
        self._writer_generation = 0
        try:
            self._create_schema()
        except BaseException:
            self._writer.close()
            raise

    def _connect(self) -> Any:
        return self._psycopg.connect(
            self.url.get_secret_value(), autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S
        )

    def _stale(self, connection: Any, generation: int) -> bool:
        return bool(connection.closed or connection.broken or generation < self._generation)

    def _reconnect(self, role: str, old: Any) -> Any:
        """A new connection in place of ``old`` (closed here), tried a bounded number of times."""
        with contextlib.suppress(Exception):
            old.close()
        for attempt in range(1, _RECONNECT_ATTEMPTS + 1):
            try:
                connection = self._connect()
            except self._psycopg.OperationalError as exc:
                if attempt == _RECONNECT_ATTEMPTS:
                    log.error(
                        "execution index: PostgreSQL still unreachable for the %s after %d "
                        "tries: %s",
                        role,
                        attempt,
                        _first_line(exc),
                    )
                    raise
                pause = _RECONNECT_PAUSES_S[min(attempt, len(_RECONNECT_PAUSES_S)) - 1]
                log.warning(
                    "execution index: reconnecting the %s to PostgreSQL failed (try %d of %d, "
                    "next in %.2f s): %s",
                    role,
                    attempt,
                    _RECONNECT_ATTEMPTS,
                    pause,
                    _first_line(exc),
                )
                time.sleep(pause)
            else:
                log.info("execution index: the %s reconnected to PostgreSQL", role)
                return connection
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @contextlib.contextmanager
    def _noticing_loss(self, connection: Any) -> Iterator[None]:
        """Raise the generation when ``connection`` is lost under the block: the server went
        away, so every other connection is dead as well."""
        try:
            yield
        except BaseException:
            if connection.broken:
                generation = self._generation
                self._generation = generation + 1
                log.warning(
                    "execution index: the connection to PostgreSQL was lost; every connection "
                    "is replaced at its next use"
                )
            raise

    def _create_schema(self) -> None:
        with self._writing() as cur:
            # Two processes creating the schema at once would race on the catalog.
            cur.execute("SELECT pg_advisory_xact_lock(7051120913)")
            self._create_tables(cur, _SCHEMA, "drop its tables")
            self.text_indexed = pg_text_index(cur, self._writer.transaction, self._psycopg.Error)

    def _live_writer(self) -> Any:
        """The writer connection, replaced first when it is stale (under the write lock)."""
        if self._closed:
            raise RuntimeError("the execution index is closed")
        if self._stale(self._writer, self._writer_generation):
            generation = self._generation
            self._writer = self._reconnect("writer", self._writer)
            self._writer_generation = generation
        return self._writer

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Cursor]:
        writer = self._live_writer()
        with self._noticing_loss(writer), writer.transaction(), writer.cursor() as cur:
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
        with self._noticing_loss(connection), connection.transaction(), connection.cursor() as cur:
            yield cur

    def _reader(self) -> Any:
        if self._closed:
            raise RuntimeError("the execution index is closed")
        connection = getattr(self._local, "connection", None)
        if connection is not None and not self._stale(connection, self._local.generation):
            return connection
        generation = self._generation
        if connection is None:
            connection = self._connect()
        else:  # kept as this thread's until replaced: a failed try leaves it stale
            with self._readers_lock:
                if connection in self._readers:
                    self._readers.remove(connection)
            connection = self._reconnect("reader", connection)
        connection.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ
        connection.read_only = True
        self._local.connection = connection
        self._local.generation = generation
        with self._readers_lock:
            self._readers.append(connection)
        return connection

    def _label_date(self, start_date: str | None) -> str:
        return start_date or NO_DATE

    def maintain(self) -> None:
        """``VACUUM ANALYZE``: fresh statistics, and a visibility map for index-only counts."""
        with self._write_lock:
            writer = self._live_writer()
            with self._noticing_loss(writer):
                self._vacuum()

    def _vacuum(self) -> None:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
