"""The embedded SQLite execution index: the shared store behaviours, plus SQLite specifics."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from kestream.api.index import open_index, text_index
from kestream.api.index.feed import apply_isolating
from kestream.api.index.postgres import PostgresStore
from kestream.api.index.purges import PurgeRecord
from kestream.api.index.query import parse_search_params
from kestream.api.index.sql import (
    FTS5_TRIGRAM,
    LABEL_PROBE_MAX,
    label_probes,
    search_sql,
    text_window,
)
from kestream.api.index.sqlite import DEFAULT_FILE, SQLITE, SQLITE_TEXT_INDEX, SQLiteStore
from kestream.api.index.store import SEARCH_SCAN_MAX, Batch, RecordKind, Store
from kestream.api.index.text_index import TEXT_TABLE
from kestream.settings import Settings
from tests.unit.api.index_behaviours import *  # noqa: F403
from tests.unit.api.index_behaviours import (
    LOGS,
    T0,
    Feed,
    MakeStore,
    header,
    log_line,
    partial,
    search,
)
from tests.unit.api.purge_behaviours import purge


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
    opened: list[SecretStr] = []
    monkeypatch.setattr(PostgresStore, "__init__", lambda self, url: opened.append(url))
    assert isinstance(open_index(Settings(index_url="postgresql://u@h/db")), PostgresStore)
    assert [url.get_secret_value() for url in opened] == ["postgresql://u@h/db"]
    with pytest.raises(ValueError, match="KESTREAM_INDEX_URL") as refused:
        open_index(Settings(index_url="mysql://u:s3cret-pw@h/db"))
    assert "'mysql'" in str(refused.value) and "s3cret-pw" not in str(refused.value)


def test_the_index_url_is_masked_wherever_it_is_kept() -> None:
    """It may carry the database password: neither the settings nor the store show it."""
    url = "postgresql://kestream:s3cret-pw@db.internal/index"
    settings = Settings(index_url=url)
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings.model_dump())
    kept: list[PostgresStore] = []

    class Probe(PostgresStore):
        def _connect(self) -> Any:  # no database: what the store keeps is the point
            kept.append(self)
            raise ConnectionRefusedError("no database here")

    with pytest.raises(ConnectionRefusedError):
        Probe(url)
    assert "s3cret-pw" not in repr(vars(kept[0]))  # what a traceback's locals would show
    assert kept[0].url.get_secret_value() == url


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "index.sqlite")
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.get("e1")


def test_a_follow_poll_is_one_index_range_of_the_new_rows(tmp_path: Path) -> None:
    """The cursor's read seeks ``(execution_id, seq)``: its cost is the new rows, printed here
    against reading every line of the execution as the follow did before."""
    with SQLiteStore(tmp_path / "index.sqlite") as store:
        feed = Feed(partitions=1)
        for chunk in range(20):
            lines = [log_line("big", T0, "INFO", f"{chunk}-{i}") for i in range(1_000)]
            store.apply(feed.logs("big", *lines))
        cursor = 0
        while (page := store.logs_after("big", cursor)).full:
            cursor = page.cursor
        store.apply(feed.logs("big", log_line("big", T0, "INFO", "the new one")))
        started = time.perf_counter()
        new = store.logs_after("big", page.cursor)
        after_s = time.perf_counter() - started
        started = time.perf_counter()
        everything = store.logs("big")
        all_s = time.perf_counter() - started
        assert [line["message"] for line in new.lines] == ["the new one"]
        assert len(everything) == 20_001
        print(f"\n20 001 lines: a cursor poll {after_s * 1e3:.2f} ms, all {all_s * 1e3:.1f} ms")
        connection = sqlite3.connect(tmp_path / "index.sqlite")
        try:
            plan = connection.execute(
                "EXPLAIN QUERY PLAN SELECT seq, level, task_run_id, doc FROM logs "
                "WHERE execution_id = ? AND seq > ? ORDER BY seq LIMIT 10",
                ("big", cursor),
            ).fetchall()
        finally:
            connection.close()
        assert plan[0][-1] == "SEARCH logs USING INDEX logs_follow (execution_id=? AND rowid>?)"


def test_a_record_the_database_refuses_is_set_aside_and_the_rest_applied(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "index.sqlite") as store:
        with store._writing() as cur:  # the database itself refuses one line
            cur.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON logs WHEN NEW.doc LIKE '%poison%' "
                "BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
            )
        feed = Feed(partitions=1)
        batch = Batch()
        for i in range(40):
            message = "poison" if i in (7, 31) else f"line {i}"
            batch.add(feed.record(RecordKind.LOGS, "e1", [log_line("e1", T0, "INFO", message)]))
            batch.add(feed.record(RecordKind.UPDATE, f"x{i}", partial(header(f"x{i}"))))
        batch.advance(LOGS, 0, 200)  # a record dead-lettered before the store: stepped over
        result, refused = apply_isolating(store, batch)
        assert [(r.offset, "poison refused" in why) for r, why in refused] == [
            (7, True),
            (31, True),
        ]
        assert (result.log_lines, result.updates) == (38, 40)
        assert len(store.logs("e1")) == 38 and store.count() == 40
        assert store.offsets(LOGS) == {0: 201}  # past the refused records and the stepped over


def test_a_database_that_cannot_write_is_retried_not_blamed_on_a_record(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "index.sqlite")
    with store:
        feed = Feed(partitions=1)
        batch = feed.logs("e1", log_line("e1", T0, "INFO", "kept for the retry"))
        blocker = sqlite3.connect(tmp_path / "index.sqlite", timeout=0)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file
        store._writer.execute("PRAGMA busy_timeout = 50")
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                apply_isolating(store, batch)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        result, refused = apply_isolating(store, batch)
        assert (result.log_lines, refused) == (1, [])


def test_the_logs_search_reads_the_time_index_which_an_older_file_gets(tmp_path: Path) -> None:
    """Newest first from ``logs_time`` (no sort of every line); a file made before the index
    existed gets it when it is opened."""
    path = tmp_path / "index.sqlite"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("DROP INDEX logs_time")
    SQLiteStore(path).close()
    with sqlite3.connect(path) as raw:
        plan = " ".join(
            str(row[-1])
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT l.doc FROM logs l JOIN executions e "
                "ON e.id = l.execution_id WHERE NOT e.deleted "
                "ORDER BY l.timestamp DESC, l.seq DESC LIMIT 25"
            )
        )
    assert "logs_time" in plan and "TEMP B-TREE" not in plan, plan


def _text_index_consistent(path: Path) -> bool:
    """FTS5's own check that ``executions_text`` indexes exactly what ``executions`` holds."""
    with contextlib.closing(sqlite3.connect(path)) as raw:
        try:
            raw.execute(
                f"INSERT INTO {TEXT_TABLE} ({TEXT_TABLE}, rank) VALUES ('integrity-check', 1)"
            )
        except sqlite3.DatabaseError:
            return False
    return True


def test_every_write_of_a_row_keeps_the_text_index_exact(tmp_path: Path) -> None:
    """Inserts, updates that change the text, a purge's tombstone (an insert of a row not read
    yet, an update of one that was), a delete, and a reset: after each, FTS5's integrity check
    finds the index as the rows are, and the search answers from it."""
    path = tmp_path / "index.sqlite"
    feed = Feed()
    with SQLiteStore(path) as store:
        store.apply(
            feed.updates(*(partial(header(f"e{i}", flow_id=f"nightly{i}")) for i in range(4)))
        )
        assert _text_index_consistent(path)
        store.apply(feed.updates(partial(header("e1", flow_id="weekly"))))
        assert _text_index_consistent(path)
        assert search(store, q="weekly") == (["e1"], 1)
        assert search(store, q="nightly") == (["e3", "e2", "e0"], 3)
        store.apply(purge(feed, "e2", PurgeRecord(True)))
        store.apply(purge(feed, "e9", PurgeRecord(True)))  # a tombstone before its updates
        store.apply(feed.updates(partial(header("e9", flow_id="nightly9"))))
        assert _text_index_consistent(path)
        assert search(store, q="nightly") == (["e3", "e0"], 2)
        store.delete("e3")
        assert search(store, q="nightly") == (["e0"], 1)
        store.reset()
        assert _text_index_consistent(path)
        assert search(store, q="nightly") == ([], 0)
        store.apply(feed.updates(partial(header("e5", flow_id="nightly5"))))
        assert search(store, q="nightly") == (["e5"], 1)
    assert _text_index_consistent(path)


def test_a_file_made_before_the_text_index_gets_it_filled_when_opened(tmp_path: Path) -> None:
    """An index without ``executions_text`` (made by an earlier kestream), or with one of an
    earlier layout, gains the index, filled from its rows, and its triggers, when opened;
    nothing it held is lost."""
    path = tmp_path / "index.sqlite"
    feed = Feed()
    with SQLiteStore(path) as store:
        store.apply(
            feed.updates(*(partial(header(f"e{i}", flow_id=f"nightly{i}")) for i in range(3)))
        )
        store.apply(feed.logs("e1", log_line("e1", T0, "INFO", "kept")))
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.execute(f"DROP TABLE {TEXT_TABLE}")
        for trigger in ("insert", "update", "delete"):
            raw.execute(f"DROP TRIGGER executions_text_{trigger}")
        raw.execute("DELETE FROM index_meta WHERE key = 'text_index'")
    with SQLiteStore(path) as store:
        assert search(store, q="NIGHTLY1") == (["e1"], 1)
        assert search(store, q="nightly") == (["e2", "e1", "e0"], 3)
        assert [line["message"] for line in store.logs("e1")] == ["kept"]
        store.apply(feed.updates(partial(header("e3", flow_id="nightly3"))))
        assert search(store, q="nightly3") == (["e3"], 1)
    assert _text_index_consistent(path)
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:  # an earlier layout's table
        for trigger in ("insert", "update", "delete"):
            raw.execute(f"DROP TRIGGER executions_text_{trigger}")
        raw.execute(f"DROP TABLE {TEXT_TABLE}")
        raw.execute(f"CREATE VIRTUAL TABLE {TEXT_TABLE} USING fts5(id, tokenize = 'trigram')")
        raw.execute("UPDATE index_meta SET value = 'fts5-trigram' WHERE key = 'text_index'")
    with SQLiteStore(path) as store:
        assert search(store, q="nightly") == (["e3", "e2", "e1", "e0"], 4)
    assert _text_index_consistent(path)


def test_without_the_trigram_tokenizer_the_text_search_scans_and_a_later_open_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where SQLite lacks the tokenizer the store says so, keeps writing (without the
    triggers) and answers by scanning; a later open with the tokenizer rebuilds the index, so
    rows written meanwhile are found."""
    path = tmp_path / "index.sqlite"
    feed = Feed()
    with SQLiteStore(path) as store:
        store.apply(feed.updates(partial(header("e1", flow_id="before"))))
    monkeypatch.setattr(text_index, "trigram_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger=text_index.__name__), SQLiteStore(path) as store:
        assert store.dialect.text_index is None
        store.apply(feed.updates(partial(header("e2", flow_id="meanwhile"))))
        assert search(store, q="meanwhile") == (["e2"], 1)
    assert "no FTS5 trigram tokenizer" in caplog.text
    assert not _text_index_consistent(path)  # e2 was written without it
    monkeypatch.undo()
    with SQLiteStore(path) as store:
        assert store.dialect.text_index == FTS5_TRIGRAM
        assert search(store, q="MEANWHILE") == (["e2"], 1)
    assert _text_index_consistent(path)


def _plan_of(store: SQLiteStore, params: dict[str, Any]) -> tuple[str, str]:
    """The page's and the count's query plans, as the store would choose them."""
    query = parse_search_params(params)
    cur = store._reader().cursor()
    rows = {}
    for label, statement, probe_params in label_probes(query, SQLITE):
        rows[label] = cur.execute(statement, probe_params).fetchone()[0]
    statements = search_sql(query, SQLITE, None, 100, label_rows=rows)
    assert statements is not None
    plans = []
    for sql, sql_params in (
        (statements.page, statements.page_params),
        (statements.count, statements.count_params),
    ):
        plan = cur.execute(f"EXPLAIN QUERY PLAN {sql}", sql_params).fetchall()
        plans.append("\n".join(str(row[3]) for row in plan))
    return plans[0], plans[1]


def test_several_labels_merge_their_ranges_instead_of_seeking_per_row(tmp_path: Path) -> None:
    """Labels alone: the page and its count merge the labels' sorted ranges (one pass each),
    a negative label's range too; no correlated seek per row of the driving range."""
    store = SQLiteStore(tmp_path / "index.sqlite")
    try:
        for params in (
            {"filters[labels][EQUALS]": ["team:a", "env:prod"]},
            {"filters[labels][EQUALS]": "team:a", "filters[labels][NOT_EQUALS][env]": "dev"},
        ):
            for plan in _plan_of(store, params):
                assert "MERGE (" in plan, plan
                assert "CORRELATED" not in plan, plan
    finally:
        store.close()


def test_the_rarest_label_drives_even_beside_other_filters(tmp_path: Path) -> None:
    """Counted under the probe's bound, a label drives a search with a state: its range is
    read, and each of its rows reads its execution; a common one leaves the state's index to
    drive, with a seek of the label per row."""
    store = SQLiteStore(tmp_path / "index.sqlite")
    feed = Feed()
    try:
        store.apply(
            feed.updates(
                *(
                    partial(header(f"e{i:02}", labels={"team": "a", "env": "prod"}))
                    for i in range(12)
                )
            )
        )
        params = {"filters[labels][EQUALS]": ["team:a", "env:prod"], "state": "RUNNING"}
        page, count = _plan_of(store, params)
        for plan in (page, count):
            first = plan.splitlines()[1]
            assert first.startswith("SEARCH l USING PRIMARY KEY (key=? AND value=?)"), plan
        assert LABEL_PROBE_MAX > 12
    finally:
        store.close()


def test_a_short_text_reads_its_window_by_the_listing_index(tmp_path: Path) -> None:
    """A needle no trigram answers: its window, the narrow one and the widest alike, is a
    range of the listing's index (LIMIT-ed), never a sort of every row."""
    store = SQLiteStore(tmp_path / "index.sqlite")
    cur = store._reader().cursor()
    try:
        query = parse_search_params({"q": ["zq"], "filters[namespace][EQUALS]": ["a"]})
        for rows in (None, SEARCH_SCAN_MAX):
            window = text_window(query, SQLITE, rows=rows)
            assert window is not None
            plan = cur.execute(f"EXPLAIN QUERY PLAN {window.count}", window.count_params)
            assert "USE TEMP B-TREE" not in str(plan.fetchall())
        assert text_window(parse_search_params({"q": ["zqx"]}), SQLITE_TEXT_INDEX) is None
    finally:
        cur.close()
        store.close()
