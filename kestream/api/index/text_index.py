"""The executions search's text box (``q``) answered from an index instead of a scan.

``q`` is a case-insensitive substring of an execution's id, namespace or flow id
(:meth:`kestream.api.index.sql._Where.q`). No B-tree answers a substring, so without help a
search reads every row: about 5 s at a million executions when nothing matches. Both stores
keep a trigram index instead, and the search asks it for candidates, then checks each one with
the very predicate of the scan, so the results are the scan's, index or not:

- **SQLite**: ``executions_text``, an FTS5 index with the ``trigram`` tokenizer (SQLite 3.34 or
  later, with FTS5 compiled in: :func:`trigram_available`) whose content is ``executions``
  itself (an external-content table: no copy of the text), keyed by the executions' rowid.
  Triggers on ``executions`` keep it, so every write of a row (the feed's upserts, a purge's
  tombstone, a bulk load, a reset) updates it in the same transaction. A search reads only the
  index's rowids and the rows they name (no index of ids between): 10 000 candidates cost
  tens of milliseconds. The needle is matched as one FTS5 phrase: a phrase of trigrams is a
  substring, with case folded as Unicode folds it, a superset of SQL's ASCII ``lower()``. A
  needle shorter than three characters has no trigram: it is checked row by row, as before.
  Where the trigram tokenizer is missing, the store says so in its log and every search is a
  scan. SQLite's documentation allows ``VACUUM`` to renumber the rowids of a table without an
  ``INTEGER PRIMARY KEY`` (3.40 keeps them); should a tool ever do so, deleting the
  ``text_index`` row of ``index_meta`` makes the next open rebuild the index.
- **PostgreSQL**: GIN indexes of ``pg_trgm`` on the lowered columns (:data:`PG_TRGM_INDEXES`),
  used by ``lower(column) LIKE '%needle%'``, which PostgreSQL re-checks itself. Where the
  extension cannot be created (not installed, or not allowed), the store says so in its log;
  the same ``LIKE`` is then a scan.

An index made before this one gains the table (SQLite) or the indexes (PostgreSQL) when it is
opened: SQLite's is filled from the rows already there (``index_meta`` records that it is
complete, and in which layout), and rebuilt when a build without the tokenizer wrote rows it
missed or when it was made in an earlier layout.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the store imports this module's helpers through the SQL it builds
    from kestream.api.index.store import Cursor

__all__ = [
    "PG_TRGM_INDEXES",
    "TEXT_TABLE",
    "fts_phrase",
    "like_pattern",
    "pg_text_index",
    "sqlite_text_index",
    "trigram_available",
]

log = logging.getLogger(__name__)

#: The FTS5 table of SQLite's text index.
TEXT_TABLE = "executions_text"
#: ``index_meta`` key holding the layout of a complete ``executions_text`` (:data:`_LAYOUT`).
_COMPLETE = "text_index"
_LAYOUT = "fts5-trigram-external"
_TRIGGERS = ("executions_text_insert", "executions_text_update", "executions_text_delete")
#: FTS5's own command to forget a row of an external-content table: it needs the row's
#: indexed values as they were indexed, which a trigger's ``old`` has.
_FORGET = (
    f"INSERT INTO {TEXT_TABLE} ({TEXT_TABLE}, rowid, id, namespace, flow_id) "
    "VALUES ('delete', old.rowid, old.id, old.namespace, old.flow_id);"
)
_INDEX = (
    f"INSERT INTO {TEXT_TABLE} (rowid, id, namespace, flow_id) "
    "VALUES (new.rowid, new.id, new.namespace, new.flow_id);"
)
_SQLITE_SCHEMA = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {TEXT_TABLE} USING fts5(id, namespace, flow_id, "
    "content = 'executions', content_rowid = 'rowid', tokenize = 'trigram')",
    f"CREATE TRIGGER IF NOT EXISTS executions_text_insert AFTER INSERT ON executions "
    f"BEGIN {_INDEX} END",
    "CREATE TRIGGER IF NOT EXISTS executions_text_update "
    "AFTER UPDATE OF namespace, flow_id ON executions "
    "WHEN new.namespace IS NOT old.namespace OR new.flow_id IS NOT old.flow_id "
    f"BEGIN {_FORGET} {_INDEX} END",
    f"CREATE TRIGGER IF NOT EXISTS executions_text_delete AFTER DELETE ON executions "
    f"BEGIN {_FORGET} END",
)
#: Fewest characters a needle needs for a trigram index to answer it.
MIN_NEEDLE = 3
#: The GIN indexes of PostgreSQL's text index, one per column ``q`` looks at.
PG_TRGM_INDEXES = tuple(
    f"CREATE INDEX IF NOT EXISTS executions_{column}_trgm ON executions "
    f"USING gin (lower({column}) gin_trgm_ops) WHERE NOT deleted"
    for column in ("id", "namespace", "flow_id")
)


@functools.cache
def trigram_available() -> bool:
    """Whether this process's SQLite has FTS5 and its ``trigram`` tokenizer (3.34+)."""
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute("CREATE VIRTUAL TABLE probe USING fts5(x, tokenize = 'trigram')")
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()
    return True


def sqlite_text_index(cur: Cursor, path: object) -> bool:
    """Create, or catch up, ``executions_text`` in the schema transaction; ``False`` (logged)
    when this SQLite cannot, and then the triggers are dropped so that writes go on without it
    (the table, left behind, is refilled by the next open that can)."""
    if not trigram_available():
        log.warning(
            "execution index %s: SQLite %s has no FTS5 trigram tokenizer (3.34+ with FTS5 "
            "needed): the executions text search reads every row",
            path,
            sqlite3.sqlite_version,
        )
        _drop_triggers(cur)
        cur.execute("DELETE FROM index_meta WHERE key = ?", (_COMPLETE,))
        return False
    cur.execute("SELECT value FROM index_meta WHERE key = ?", (_COMPLETE,))
    row = cur.fetchone()
    if row is not None and row[0] == _LAYOUT:
        for statement in _SQLITE_SCHEMA:  # idempotent: a trigger dropped by hand comes back
            cur.execute(statement)
        return True
    # Missing, incomplete or in another layout: made again from the rows.
    _drop_triggers(cur)
    cur.execute(f"DROP TABLE IF EXISTS {TEXT_TABLE}")
    for statement in _SQLITE_SCHEMA:
        cur.execute(statement)
    cur.execute(f"INSERT INTO {TEXT_TABLE} ({TEXT_TABLE}) VALUES ('rebuild')")
    cur.execute(
        "INSERT INTO index_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (_COMPLETE, _LAYOUT),
    )
    log.info("execution index %s: text index built from the executions", path)
    return True


def _drop_triggers(cur: Cursor) -> None:
    for trigger in _TRIGGERS:
        cur.execute(f"DROP TRIGGER IF EXISTS {trigger}")  # fixed names, no input


def pg_text_index(
    cur: Cursor,
    savepoint: Callable[[], AbstractContextManager[object]],
    refusal: type[BaseException],
) -> bool:
    """Create ``pg_trgm`` and its indexes in the schema transaction; ``False`` (logged) when
    the database refuses the extension (``refusal``: psycopg's error), which ``savepoint`` (a
    nested transaction) keeps from aborting the rest of the schema."""
    try:
        with savepoint():
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except refusal as exc:
        log.warning(
            "execution index: the pg_trgm extension cannot be created (%s): the executions "
            "text search reads every row; CREATE EXTENSION pg_trgm in the index's database "
            "(as a role allowed to) gives it its index at the next start",
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
        )
        return False
    for statement in PG_TRGM_INDEXES:
        cur.execute(statement)
    return True


def fts_phrase(needle: str) -> str | None:
    """``needle`` as one FTS5 phrase (a substring, for the trigram tokenizer), or ``None`` when
    it is too short for a trigram or holds a NUL (which FTS5 would read as its end)."""
    if len(needle) < MIN_NEEDLE or "\x00" in needle:
        return None
    return '"' + needle.replace('"', '""') + '"'


def like_pattern(needle: str) -> str:
    """``%needle%`` for ``LIKE``, with its wildcards and the escape character escaped (``\\``,
    PostgreSQL's default ``ESCAPE``)."""
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
