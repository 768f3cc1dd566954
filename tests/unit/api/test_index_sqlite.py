"""The embedded SQLite execution index: the shared store behaviours, plus SQLite specifics."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestream.api.index import open_index
from kestream.api.index.postgres import PostgresStore
from kestream.api.index.sqlite import DEFAULT_FILE, SQLiteStore
from kestream.api.index.store import Store
from kestream.settings import Settings
from tests.unit.api.index_behaviours import *  # noqa: F403
from tests.unit.api.index_behaviours import MakeStore


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[MakeStore]:
    opened: list[Store] = []

    def make() -> Store:
        store = SQLiteStore(tmp_path / "index.sqlite")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "index.sqlite"):
        connection = sqlite3.connect(tmp_path / "index.sqlite")
        try:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            connection.close()


def test_open_index_picks_the_backend_from_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = open_index(Settings(data_dir=str(tmp_path / "data")))
    try:
        assert isinstance(default, SQLiteStore)
        assert default.path == tmp_path / "data" / DEFAULT_FILE
    finally:
        default.close()
    named = open_index(Settings(index_url=f"sqlite:///{tmp_path}/other.sqlite"))
    try:
        assert isinstance(named, SQLiteStore) and named.path == tmp_path / "other.sqlite"
    finally:
        named.close()
    opened: list[str] = []
    monkeypatch.setattr(PostgresStore, "__init__", lambda self, url: opened.append(url))
    assert isinstance(open_index(Settings(index_url="postgresql://u@h/db")), PostgresStore)
    assert opened == ["postgresql://u@h/db"]
    with pytest.raises(ValueError, match="KESTREAM_INDEX_URL"):
        open_index(Settings(index_url="mysql://h/db"))


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "index.sqlite")
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.get("e1")
