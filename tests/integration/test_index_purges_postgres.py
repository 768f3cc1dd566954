"""Purge records in the PostgreSQL execution index: the behaviours of ``purge_behaviours``
(dates are ``timestamptz`` there, text in SQLite)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_fixture import PostgresServer, postgres  # noqa: F401 - the session fixture

from kestream.api.index.postgres import PostgresStore
from kestream.api.index.store import Store
from tests.unit.api.index_behaviours import MakeStore, store  # noqa: F401 - the fixture
from tests.unit.api.purge_behaviours import *  # noqa: F403


@pytest.fixture
def make_store(postgres: PostgresServer) -> Iterator[MakeStore]:  # noqa: F811
    url = postgres.create_database()
    opened: list[Store] = []

    def make() -> Store:
        opened.append(PostgresStore(url))
        return opened[-1]

    yield make
    for one in opened:
        one.close()
