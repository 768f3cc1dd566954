"""Purge records in the SQLite execution index (the behaviours are in ``purge_behaviours``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kestream.api.index.sqlite import SQLiteStore
from kestream.api.index.store import Store
from tests.unit.api.index_behaviours import MakeStore, store  # noqa: F401 - the fixture
from tests.unit.api.purge_behaviours import *  # noqa: F403


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[Store] = []

    def make() -> Store:
        opened.append(SQLiteStore(tmp_path / "index.sqlite"))
        return opened[-1]

    yield make
    for one in opened:
        one.close()
