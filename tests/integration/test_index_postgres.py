"""The execution index on PostgreSQL: the same behaviours as the SQLite store.

A throwaway server (``postgres_fixture.py``) per test session; a fresh database per test. No
broker is involved: these tests need only the PostgreSQL binaries (the test fails, with what to
install, where there are none).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import psycopg
import pytest
from postgres_fixture import (  # noqa: F401 - postgres: the session fixture
    HOW_TO_GET_POSTGRES,
    PostgresServer,
    find_postgres_bin,
    postgres,
    postgres_server,
)

from kestream.api.index import open_index, text_index
from kestream.api.index import postgres as postgres_module
from kestream.api.index.feed import apply_isolating
from kestream.api.index.postgres import PostgresStore
from kestream.api.index.query import parse_search_params
from kestream.api.index.sql import search_sql
from kestream.api.index.store import SEARCH_COUNT_MAX, Batch, RecordKind, Store
from kestream.settings import Settings
from tests.unit.api.index_behaviours import *  # noqa: F403
from tests.unit.api.index_behaviours import (
    T0,
    UPDATES,
    Feed,
    MakeStore,
    header,
    log_line,
    partial,
    search,
)


@pytest.fixture
def make_store(postgres: PostgresServer) -> Iterator[MakeStore]:  # noqa: F811
    url = postgres.create_database()
    opened: list[Store] = []

    def make() -> Store:
        store = PostgresStore(url)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def test_open_index_opens_postgres(postgres: PostgresServer) -> None:  # noqa: F811
    store = open_index(Settings(index_url=postgres.create_database()))
    try:
        assert isinstance(store, PostgresStore)
        assert store.count() == 0
    finally:
        store.close()


def test_two_stores_may_create_the_schema_on_one_database(
    postgres: PostgresServer,  # noqa: F811
) -> None:
    url = postgres.create_database()
    first, second = PostgresStore(url), PostgresStore(url)
    first.close()
    second.close()


def test_a_record_postgres_refuses_is_set_aside_and_the_rest_applied(
    make_store: MakeStore,
) -> None:
    """A label value past PostgreSQL's B-tree row limit (about 2.7 kB compressed; random bytes
    do not compress) cannot be indexed: its record is found and returned with the reason, and
    the others of the batch are applied."""
    store = make_store()
    feed = Feed(partitions=1)
    batch = Batch()
    for i in range(12):
        labels = {"big": random.randbytes(6_000).hex()} if i == 5 else {"team": "a"}
        batch.add(feed.record(RecordKind.UPDATE, f"e{i}", partial(header(f"e{i}", labels=labels))))
    batch.add(feed.record(RecordKind.LOGS, "e1", [log_line("e1", T0, "INFO", "nul \x00 kept")]))
    result, refused = apply_isolating(store, batch)
    assert [(r.execution_id, "ProgramLimitExceeded" in why) for r, why in refused] == [("e5", True)]
    assert (result.updates, result.log_lines) == (11, 1)
    assert store.count() == 11 and store.get("e5") is None
    assert [line["message"] for line in store.logs("e1")] == ["nul \x00 kept"]
    assert store.offsets(UPDATES) == {0: 12}


def test_the_store_reconnects_after_the_database_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restart cuts every connection: the statement that meets the loss fails (the feed takes
    it as transient and retries), and the store replaces every connection at its next use, the
    ones not yet seen to fail as well. While the server is down, a new connection is tried a
    bounded number of times, each failure logged, then the error is raised; once it is back,
    the store works again without being reopened."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.fail(HOW_TO_GET_POSTGRES, pytrace=False)
    with postgres_server(bin_dir) as server:
        store = PostgresStore(server.create_database())
        try:
            feed = Feed(partitions=1)
            store.apply(feed.updates(partial(header("e1"))))
            assert search(store) == (["e1"], 1)  # this thread's reader is open

            server.stop()
            server.start()
            with pytest.raises(psycopg.OperationalError) as lost:
                store.apply(feed.updates(partial(header("e2"))))
            assert store.is_transient(lost.value)
            assert "connection to PostgreSQL was lost" in caplog.text
            # The reader, never used since, is replaced rather than failing once.
            assert search(store) == (["e1"], 1)
            store.apply(feed.updates(partial(header("e2"))))
            assert search(store) == (["e2", "e1"], 2)

            server.stop()
            caplog.clear()
            with caplog.at_level(logging.INFO, logger=postgres_module.__name__):
                with pytest.raises(psycopg.OperationalError):
                    search(store)  # meets the loss
                with pytest.raises(psycopg.OperationalError):
                    search(store)  # a new connection, tried and refused
                tries = [m for m in caplog.messages if "reconnecting the reader" in m]
                assert len(tries) == postgres_module._RECONNECT_ATTEMPTS - 1, tries
                assert "still unreachable for the reader after 4 tries" in caplog.text
                caplog.clear()
                with pytest.raises(psycopg.OperationalError):
                    search(store)  # still down: tried again, never given up for good
                assert "still unreachable for the reader" in caplog.text
                server.start()
                assert search(store) == (["e2", "e1"], 2)
                assert "the reader reconnected" in caplog.text
            store.apply(feed.updates(partial(header("e3"))))
            assert search(store) == (["e3", "e2", "e1"], 3)
        finally:
            store.close()


def _trgm_indexes(url: str) -> set[str]:
    with psycopg.connect(url) as raw:
        rows = raw.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%_trgm'")
        return {str(row[0]) for row in rows.fetchall()}


def test_the_text_search_uses_pg_trgm_indexes(postgres: PostgresServer) -> None:  # noqa: F811
    """As a role allowed to create the extension (here the superuser), the store creates
    ``pg_trgm`` and one GIN index per column the text looks at, and the planner answers the
    search's page and count from them (one bitmap scan per column)."""
    url = postgres.create_database()
    with psycopg.connect(url) as raw:
        available = raw.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"
        ).fetchone()
    if available is None:
        pytest.fail(f"this PostgreSQL has no pg_trgm: {HOW_TO_GET_POSTGRES}", pytrace=False)
    store = PostgresStore(url)
    try:
        assert store.text_indexed
        assert _trgm_indexes(url) == {
            "executions_id_trgm",
            "executions_namespace_trgm",
            "executions_flow_id_trgm",
        }
        feed = Feed(partitions=1)
        many = (
            partial(header(f"e{i:05}", namespace=f"ns{i % 13}.team", flow_id=f"flow{i % 97}"))
            for i in range(3_000)
        )
        store.apply(feed.updates(partial(header("e1", flow_id="Nightly_Report")), *many))
        store.maintain()  # the statistics the planner weighs the indexes with
        assert search(store, q="HTLY_r") == (["e1"], 1)
        assert search(store, q="flow42")[1] == 31
        statements = search_sql(
            parse_search_params({"q": "flow42"}), store.dialect, count_max=SEARCH_COUNT_MAX
        )
        assert statements is not None
        with psycopg.connect(url) as raw:
            explained = [(statements.count, statements.count_params)]
            explained.append((statements.page, statements.page_params))
            for statement, params in explained:
                plan = " ".join(
                    str(row[0]) for row in raw.execute(f"EXPLAIN {statement}", params).fetchall()
                )
                assert all(
                    f"Bitmap Index Scan on executions_{c}_trgm" in plan
                    for c in ("id", "namespace", "flow_id")
                ), plan
    finally:
        store.close()


def test_without_pg_trgm_the_text_search_scans_and_says_so(
    postgres: PostgresServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A role that may not create the extension (no CREATE on the database) opens the store
    all the same: the refusal is logged, no trigram index exists, and the text search answers
    as it does with them, by reading the rows."""
    url = postgres.create_database()
    database = url.rsplit("/", 1)[1]
    role = f"r_{database}"
    with psycopg.connect(url, autocommit=True) as raw:
        raw.execute(f'CREATE ROLE "{role}" LOGIN')
        raw.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    limited = f"postgresql://{role}@127.0.0.1:{postgres.port}/{database}"
    with caplog.at_level(logging.WARNING, logger=text_index.__name__):
        store = PostgresStore(limited)
    try:
        assert not store.text_indexed
        assert "pg_trgm extension cannot be created" in caplog.text
        assert _trgm_indexes(url) == set()
        feed = Feed(partitions=1)
        store.apply(feed.updates(partial(header("e1", flow_id="Nightly_Report"))))
        assert search(store, q="HTLY_r") == (["e1"], 1)
        assert search(store, q="y%r") == ([], 0)
    finally:
        store.close()
