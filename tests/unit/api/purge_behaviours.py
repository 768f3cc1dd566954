"""What the execution index does with purge records, on any backend (SQLite here, PostgreSQL in
``tests/integration/test_index_purges_postgres.py``): the tests take a ``store`` fixture."""

from __future__ import annotations

from datetime import timedelta

from kestream.api.index.purges import (
    PurgeRecord,
    execution_candidates,
    line_counts,
    purgeable_lines,
)
from kestream.api.index.store import Batch, FeedRecord, RecordKind, Store
from kestream.runtime import records
from kestream.tasks.purge import ExecutionPurge, LogPurge
from tests.unit.api.index_behaviours import LOGS, T0, Feed, header, log_line, partial, search


def purge(feed: Feed, execution_id: str, record: PurgeRecord) -> Batch:
    """A purge record at the next offset of the execution's logs partition."""
    partition = hash(execution_id) % feed.partitions
    offset = feed.next.get((LOGS, partition), 0)
    feed.next[(LOGS, partition)] = offset + 1
    wire = records.dumps(record.to_value())
    batch = Batch()
    batch.add(
        FeedRecord.decode(RecordKind.LOGS, LOGS, partition, offset, execution_id.encode(), wire)
    )
    return batch


def messages(store: Store, execution_id: str) -> list[str]:
    return [line["message"] for line in store.logs(execution_id)]


def test_a_purged_execution_is_gone_with_its_lines_and_stays_gone(store: Store) -> None:
    feed = Feed()
    ended = header("e1", state="SUCCESS", end=T0 + timedelta(seconds=5), labels={"team": "a"})
    store.apply(feed.updates(partial(ended), partial(header("e2"))))
    store.apply(
        feed.logs("e1", log_line("e1", T0, "INFO", "one"), log_line("e1", T0, "WARN", "two"))
    )
    store.apply(purge(feed, "e1", PurgeRecord(True, all_logs=True)))
    assert store.get("e1") is None
    gone = store.get("e1", include_deleted=True)
    assert gone is not None and gone["deleted"] is True and "labels" not in gone
    assert messages(store, "e1") == []
    assert search(store) == (["e2"], 1)
    assert search(store, labels="team:a") == ([], 0)
    # An update read after the purge (a lagging partition) leaves it deleted.
    store.apply(feed.updates(partial(ended)))
    assert store.get("e1") is None and search(store) == (["e2"], 1)


def test_a_purge_read_before_the_execution_keeps_it_deleted(store: Store) -> None:
    feed = Feed()
    store.apply(purge(feed, "e9", PurgeRecord(True)))
    store.apply(feed.updates(partial(header("e9", state="FAILED"))))
    assert store.get("e9") is None
    assert search(store) == ([], 0)


def test_a_purge_takes_only_the_lines_before_it(store: Store) -> None:
    feed = Feed()
    store.apply(feed.updates(partial(header("e1", state="SUCCESS"))))
    before = feed.logs("e1", log_line("e1", T0, "INFO", "before"))
    gone = purge(feed, "e1", PurgeRecord(False, all_logs=True))
    after = feed.logs("e1", log_line("e1", T0, "INFO", "after"))
    batch = Batch()
    for part in (before, gone, after):  # one batch: the order inside it counts
        for record in part.records:
            batch.add(record)
    store.apply(batch)
    assert messages(store, "e1") == ["after"]
    assert store.get("e1") is not None  # lines only: the execution stays


def test_a_line_purge_keeps_other_levels_and_dates(store: Store) -> None:
    feed = Feed()
    store.apply(feed.updates(partial(header("e1", state="SUCCESS"))))
    store.apply(
        feed.logs(
            "e1",
            log_line("e1", T0, "INFO", "old info"),
            log_line("e1", T0, "ERROR", "old error"),
            log_line("e1", T0 + timedelta(hours=2), "INFO", "new info"),
        )
    )
    query = LogPurge(endDate=T0 + timedelta(hours=1), logLevels=frozenset({"INFO", "WARN"}))
    assert purgeable_lines(store, query, 10) == {"e1": 1}
    store.apply(purge(feed, "e1", PurgeRecord(False, lines=query)))
    assert messages(store, "e1") == ["old error", "new info"]
    assert purgeable_lines(store, query, 10) == {}


def test_candidates_are_ended_matching_executions(store: Store) -> None:
    feed = Feed()
    end = T0 + timedelta(minutes=1)
    store.apply(
        feed.updates(
            partial(header("ok", state="SUCCESS", end=end)),
            partial(header("bad", state="FAILED", end=end)),
            partial(header("sub", namespace="company.team.sub", state="SUCCESS", end=end)),
            partial(header("near", namespace="company.teams", state="SUCCESS", end=end)),
            partial(header("other", flow_id="other", state="SUCCESS", end=end)),
            partial(header("running")),
            partial(header("late", state="SUCCESS", end=T0 + timedelta(days=2))),
        )
    )
    store.apply(feed.logs("ok", log_line("ok", T0, "INFO", "a"), log_line("ok", T0, "INFO", "b")))
    bound = T0 + timedelta(days=1)

    def picked(**filters: object) -> list[str]:
        query = ExecutionPurge.model_validate({"endDate": bound, **filters})
        found, following = execution_candidates(store, query, 100)
        assert following is None  # fewer rows than a page: none is left
        return sorted(c.id for c in found)

    assert picked() == ["bad", "near", "ok", "other", "sub"]
    assert picked(namespace="company.team") == ["bad", "ok", "other", "sub"]  # a prefix
    assert picked(namespace="company.team", flowId="hello") == ["bad", "ok"]
    assert picked(states=["FAILED"]) == ["bad"]
    assert picked(states=["RUNNING"]) == []  # never a running execution
    assert picked(startDate=T0 + timedelta(seconds=1)) == []
    assert line_counts(store, ["ok", "bad"]) == {"ok": 2}
    assert picked(namespace="company.tea") == []  # a prefix of a name is not a parent


def _walk(store: Store, query: ExecutionPurge, limit: int) -> list[list[str]]:
    """Every page :func:`execution_candidates` gives, following its keyset."""
    pages: list[list[str]] = []
    found, following = execution_candidates(store, query, limit)
    pages.append([c.id for c in found])
    while following is not None:
        found, following = execution_candidates(store, query, limit, following)
        pages.append([c.id for c in found])
    return pages


def test_candidates_come_a_page_at_a_time_filtered_by_the_database(store: Store) -> None:
    feed = Feed()
    others = [
        partial(header(f"o{i:04}", namespace="other.team", state="SUCCESS", end=T0))
        for i in range(300)
    ]  # they end first: a filter applied after reading would fill the first pages with them
    wanted = [
        partial(
            header(f"w{i:04}", state="FAILED", end=T0 + timedelta(seconds=1 + i % 7)),
        )
        for i in range(120)
    ]
    store.apply(feed.updates(*others, *wanted))
    query = ExecutionPurge(
        endDate=T0 + timedelta(days=1), namespace="company.team", purgeExecution=False
    )
    pages = _walk(store, query, 25)
    assert [len(page) for page in pages] == [25, 25, 25, 25, 20]  # full pages of matches
    taken = [execution_id for page in pages for execution_id in page]
    assert sorted(taken) == sorted(f"w{i:04}" for i in range(120))  # each once, none missed
    # Executions in another state are not read: one page holds every success.
    successes = ExecutionPurge(endDate=T0 + timedelta(days=1), states=["SUCCESS"])
    assert [len(page) for page in _walk(store, successes, 500)] == [300]


def test_log_counts_come_a_page_of_executions_at_a_time(store: Store) -> None:
    feed = Feed()
    ids = [f"e{i}" for i in range(5)]
    store.apply(feed.updates(*(partial(header(i, state="SUCCESS", end=T0)) for i in ids)))
    for execution_id in ids:
        store.apply(
            feed.logs(
                execution_id,
                log_line(execution_id, T0, "INFO", "a"),
                log_line(execution_id, T0, "DEBUG", "b"),
                log_line(execution_id, T0 + timedelta(days=3), "INFO", "late"),
            )
        )
    query = LogPurge(endDate=T0 + timedelta(days=1))
    assert purgeable_lines(store, query, 2) == {"e0": 2, "e1": 2}
    assert purgeable_lines(store, query, 2, "e1") == {"e2": 2, "e3": 2}
    assert purgeable_lines(store, query, 2, "e3") == {"e4": 2}
    infos = LogPurge(endDate=T0 + timedelta(days=1), logLevels=frozenset({"INFO"}))
    assert purgeable_lines(store, infos, 10, "e3") == {"e4": 1}
    elsewhere = LogPurge(endDate=T0 + timedelta(days=1), namespace="other")
    assert purgeable_lines(store, elsewhere, 10) == {}


def _attempt(execution: dict[str, object], attempt: int) -> dict[str, object]:
    return {**execution, "metadata": {"attemptNumber": attempt}}


def test_candidates_carry_the_attempt_and_the_folder_of_each_execution(store: Store) -> None:
    feed = Feed()
    end = T0 + timedelta(minutes=1)
    store.apply(
        feed.updates(
            partial(_attempt(header("first", state="FAILED", end=end), 1)),
            partial(_attempt(header("again", state="FAILED", end=end, flow_id="other"), 3)),
        )
    )
    found, _ = execution_candidates(store, ExecutionPurge(endDate=T0 + timedelta(days=1)), 10)
    assert {(c.id, c.attempt, c.namespace, c.flow_id) for c in found} == {
        ("first", 1, "company.team", "hello"),
        ("again", 3, "company.team", "other"),
    }


def test_the_executors_refusal_deletes_nothing(store: Store) -> None:
    feed = Feed()
    store.apply(feed.updates(partial(header("e1", state="FAILED", end=T0))))
    store.apply(feed.logs("e1", log_line("e1", T0, "INFO", "kept")))
    refusal = PurgeRecord(False, refused=True)
    assert PurgeRecord.from_value(refusal.to_value()) == refusal
    store.apply(purge(feed, "e1", refusal))
    assert store.get("e1") is not None and messages(store, "e1") == ["kept"]
