"""The execution index on PostgreSQL: the same behaviours as the SQLite store.

A throwaway server (``postgres_fixture.py``) per test session; a fresh database per test. No
broker is involved: these tests need only the PostgreSQL binaries (the test fails, with what to
install, where there are none).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_fixture import PostgresServer, postgres  # noqa: F401 - the session fixture

from kestream.api.index import open_index
from kestream.api.index.postgres import PostgresStore
from kestream.api.index.store import Store
from kestream.settings import Settings
from tests.unit.api.index_behaviours import *  # noqa: F403
from tests.unit.api.index_behaviours import MakeStore


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
