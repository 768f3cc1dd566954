"""The execution index: executions and their logs from Kafka, listed with filters and counts.

- :mod:`~kestream.api.index.query`: Kestra's listing parameters parsed into a
  :class:`~kestream.api.index.query.SearchQuery`;
- :mod:`~kestream.api.index.store`: the store's API (apply batches with their offsets, get,
  search with a separate count, soft delete, logs), shared by both backends;
- :mod:`~kestream.api.index.sqlite` (embedded default) and :mod:`~kestream.api.index.postgres`
  (``KESTREAM_INDEX_URL=postgresql://...``, needs the ``postgres`` extra);
- :mod:`~kestream.api.index.feed`: the asyncio service that keeps a store up to date.

:func:`open_index` picks the backend from the settings.
"""

from __future__ import annotations

from pydantic import SecretStr

from kestream.api.index.query import QueryError, SearchQuery, parse_search_params
from kestream.api.index.store import ApplyResult, Batch, FeedRecord, RecordKind, Store
from kestream.settings import Settings

__all__ = [
    "ApplyResult",
    "Batch",
    "FeedRecord",
    "QueryError",
    "RecordKind",
    "SearchQuery",
    "Store",
    "open_index",
    "parse_search_params",
]

_SQLITE_SCHEME = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_index(settings: Settings) -> Store:
    """The store named by ``KESTREAM_INDEX_URL``.

    Unset: SQLite in ``<KESTREAM_DATA_DIR>/index.sqlite``; ``sqlite:///path`` (relative) or
    ``sqlite:////abs/path``: SQLite there; ``postgresql://...``: PostgreSQL (psycopg 3, the
    ``postgres`` extra). Anything else is a :class:`ValueError`.
    """
    secret = settings.index_url
    url = secret.get_secret_value().strip() if secret is not None else ""
    if not url:
        from kestream.api.index.sqlite import DEFAULT_FILE, SQLiteStore

        return SQLiteStore(settings.data_path / DEFAULT_FILE)
    if url.startswith(_SQLITE_SCHEME):
        from kestream.api.index.sqlite import SQLiteStore

        path = url[len(_SQLITE_SCHEME) :]
        if not path:
            raise ValueError(f"KESTREAM_INDEX_URL={url}: no file path after sqlite:///")
        return SQLiteStore(path)
    if url.startswith(_POSTGRES_SCHEMES):
        from kestream.api.index.postgres import PostgresStore

        return PostgresStore(SecretStr(url))
    # Only the scheme is repeated: the rest may hold a password.
    scheme = url.partition("://")[0][:20] if "://" in url else "(none)"
    raise ValueError(
        f"KESTREAM_INDEX_URL has the scheme {scheme!r}: expected sqlite:///<path> or "
        "postgresql://<...>"
    )
