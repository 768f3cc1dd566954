"""What every execution-index store must do, whatever its database.

Not a test module by itself: ``test_index_sqlite.py`` (unit) and ``test_index_postgres.py``
(integration) import these tests and provide the ``make_store`` fixture, a factory that opens a
store on that test's own database (called again, it reopens the same database).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from kestream.api.index import sql as sql_module
from kestream.api.index import store as store_module
from kestream.api.index.query import parse_search_params
from kestream.api.index.store import (
    SCHEMA_VERSION,
    Batch,
    FeedRecord,
    LogSearch,
    RecordKind,
    Store,
)
from kestream.executor.snapshot import execution_model
from kestream.models.execution import format_instant
from kestream.runtime import execution_updates, records
from kestream.testing import Driver

MakeStore = Callable[[], Store]
UPDATES = "it.execution-updates"
LOGS = "it.logs"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
TERMINAL = {"SUCCESS", "WARNING", "FAILED", "KILLED"}


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


# -- building records -------------------------------------------------------------------------


def header(
    execution_id: str,
    *,
    namespace: str = "company.team",
    flow_id: str = "hello",
    state: str = "RUNNING",
    start: datetime = T0,
    end: datetime | None = None,
    labels: dict[str, str] | None = None,
    parent: str | None = None,
) -> dict[str, Any]:
    """An execution's own JSON, shaped like ``execution_updates.update_values``' ``execution``."""
    histories = [{"state": "CREATED", "date": format_instant(start)}]
    if state != "CREATED":
        histories.append({"state": state, "date": format_instant(end or start)})
    ended = state in TERMINAL
    return {
        "id": execution_id,
        "namespace": namespace,
        "flowId": flow_id,
        "flowRevision": 1,
        "originalId": execution_id,
        "deleted": False,
        "parentId": parent,
        "labels": [{"key": k, "value": v} for k, v in (labels or {}).items()],
        "inputs": {},
        "outputs": None,
        "trigger": None,
        "scheduleDate": None,
        "metadata": {"attemptNumber": 1, "originalCreatedDate": format_instant(start)},
        "state": {
            "current": state,
            "histories": histories,
            "startDate": format_instant(start),
            "endDate": format_instant(end or start) if ended else None,
            "duration": "PT1S",
        },
    }


def run(execution_id: str, run_id: str, state: str = "SUCCESS") -> dict[str, Any]:
    return {
        "id": run_id,
        "executionId": execution_id,
        "taskId": run_id,
        "state": {"current": state},
    }


def partial(execution: dict[str, Any], *runs: dict[str, Any]) -> dict[str, Any]:
    return {"more": False, "terminal": False, "execution": execution, "taskRuns": list(runs)}


def full(execution: dict[str, Any], *runs: dict[str, Any]) -> dict[str, Any]:
    terminal = execution["state"]["current"] in TERMINAL
    body = {**execution, "taskRunList": list(runs)}
    return {"more": False, "terminal": terminal, "execution": body, "full": True}


def log_line(execution_id: str, at: datetime, level: str, message: str, run_id: str = "r1") -> Any:
    return {
        "executionId": execution_id,
        "namespace": "company.team",
        "flowId": "hello",
        "taskId": run_id,
        "taskRunId": run_id,
        "attemptNumber": 1,
        "level": level,
        "message": message,
        "timestamp": format_instant(at),
    }


@dataclass
class Feed:
    """Hands out Kafka positions as a topic would: per partition, increasing."""

    partitions: int = 3
    next: dict[tuple[str, int], int] = field(default_factory=dict)

    def record(self, kind: RecordKind, execution_id: str, value: Any) -> FeedRecord:
        topic = UPDATES if kind is RecordKind.UPDATE else LOGS
        partition = hash(execution_id) % self.partitions
        offset = self.next.get((topic, partition), 0)
        self.next[(topic, partition)] = offset + 1
        wire = records.dumps(value)  # through JSON, as the feed decodes it
        return FeedRecord.decode(kind, topic, partition, offset, execution_id.encode(), wire)

    def updates(self, *values: dict[str, Any]) -> Batch:
        batch = Batch()
        for value in values:
            batch.add(self.record(RecordKind.UPDATE, value["execution"]["id"], value))
        return batch

    def logs(self, execution_id: str, *lines: Any) -> Batch:
        batch = Batch()
        batch.add(self.record(RecordKind.LOGS, execution_id, list(lines)))
        return batch


def ids(results: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in results]


def search(store: Store, **params: Any) -> tuple[list[str], int]:
    listing = store.search(parse_search_params(params, now=T0 + timedelta(days=400)))
    assert all("taskRunList" not in r for r in listing.results)
    return ids(listing.results), listing.total


def capped(store: Store, **params: Any) -> bool:
    """Whether the search's total is capped (a lower bound)."""
    return store.search(parse_search_params(params, now=T0 + timedelta(days=400))).capped


# -- applying -----------------------------------------------------------------------------------


def test_partial_then_full_updates_from_the_executor(store: Store) -> None:
    flow = """
id: three
namespace: test.index
labels:
  team: a
tasks:
  - id: a
    type: io.kestra.plugin.core.debug.Return
    format: one
  - id: b
    type: io.kestra.plugin.core.debug.Return
    format: two
  - id: c
    type: io.kestra.plugin.core.log.Log
    message: three
"""
    feed = Feed()
    with Driver() as driver:
        deployed = driver.deploy(flow)
        done = driver.start(deployed.namespace, deployed.id, labels={"x": "y"})
        st = driver.states[done.id]
        a, b, c = (r.id for r in done.taskRunList)
        for changed in ([b], [a, b]):
            store.apply(
                feed.updates(
                    *execution_updates.update_values(st, changed, terminal=False, full=False)
                )
            )
        got = store.get(done.id)
        assert got is not None
        assert [r["id"] for r in got["taskRunList"]] == [b, a]  # order of first appearance
        store.apply(
            feed.updates(*execution_updates.update_values(st, [], terminal=True, full=True))
        )
    got = store.get(done.id)
    want = execution_model(st).model_dump(mode="json", by_alias=True)
    assert got is not None
    assert [r["id"] for r in got["taskRunList"]] == [a, b, c]  # the executor's order
    assert orjson.loads(orjson.dumps(got)) == orjson.loads(orjson.dumps(want))
    assert search(store, **{"filters[labels][EQUALS][x]": "y"}) == ([done.id], 1)


def test_a_full_update_replaces_the_task_runs(store: Store) -> None:
    feed = Feed()
    running = header("e1")
    store.apply(feed.updates(partial(running, run("e1", "r1"), run("e1", "r2", "RUNNING"))))
    ended = header("e1", state="SUCCESS")
    store.apply(feed.updates(full(ended, run("e1", "r2"), run("e1", "r3"))))
    got = store.get("e1")
    assert got is not None
    assert [(r["id"], r["state"]["current"]) for r in got["taskRunList"]] == [
        ("r2", "SUCCESS"),
        ("r3", "SUCCESS"),
    ]
    assert got["state"]["current"] == "SUCCESS"
    # A partial update after a stop (a restart) merges into the replaced list.
    store.apply(feed.updates(partial(header("e1", state="RUNNING"), run("e1", "r4", "RUNNING"))))
    got = store.get("e1")
    assert got is not None
    assert [r["id"] for r in got["taskRunList"]] == ["r2", "r3", "r4"]


def test_updates_of_one_batch_fold_like_merge_update(store: Store) -> None:
    feed = Feed()
    first = partial(header("e1"), run("e1", "r1", "RUNNING"))
    stop = full(header("e1", state="FAILED"), run("e1", "r1", "FAILED"))
    late = partial(header("e1", state="FAILED"), run("e1", "r2", "SKIPPED"))
    result = store.apply(feed.updates(first, stop, late))
    assert (result.updates, result.executions) == (3, 1)
    got = store.get("e1")
    assert got is not None
    assert [(r["id"], r["state"]["current"]) for r in got["taskRunList"]] == [
        ("r1", "FAILED"),
        ("r2", "SKIPPED"),
    ]


def test_replays_are_skipped_and_duplicates_do_not_count_twice(store: Store) -> None:
    feed = Feed()
    batch = feed.updates(*(partial(header(f"e{i}"), run(f"e{i}", "r1")) for i in range(10)))
    assert store.apply(batch).updates == 10
    again = store.apply(batch)  # the same offsets: a replay after a crash
    assert (again.updates, again.skipped) == (0, 10)
    # An upstream duplicate at new offsets (at-least-once producer) is an upsert.
    store.apply(feed.updates(partial(header("e3"), run("e3", "r1"))))
    assert search(store)[1] == 10
    assert store.count() == 10


def test_offsets_are_stored_per_partition_with_the_data(make_store: MakeStore) -> None:
    store = make_store()
    assert store.offsets(UPDATES) == {}
    feed = Feed(partitions=2)
    batch = Batch()
    batch.add(feed.record(RecordKind.UPDATE, "e1", partial(header("e1"))))
    batch.advance(UPDATES, 7, 41)  # a dead-lettered record: stepped over, not applied
    store.apply(batch)
    expected = {p: o for (t, p), o in feed.next.items() if t == UPDATES}
    assert store.offsets(UPDATES) == {**expected, 7: 42}
    assert store.offsets(LOGS) == {}
    store.close()
    reopened = make_store()  # what a restarted feed reads
    assert reopened.offsets(UPDATES) == {**expected, 7: 42}
    assert reopened.get("e1") is not None


def test_a_batch_that_overlaps_what_was_applied_applies_only_the_new_part(store: Store) -> None:
    feed = Feed(partitions=1)
    first = feed.updates(partial(header("e1")), partial(header("e2")))
    store.apply(first)
    second = feed.updates(partial(header("e3")))
    overlap = Batch()
    for record in [*first.records, *second.records]:
        overlap.add(record)
    result = store.apply(overlap)
    assert (result.updates, result.skipped) == (1, 2)
    assert search(store)[1] == 3


def test_label_changes_follow_the_execution(store: Store) -> None:
    feed = Feed()
    store.apply(feed.updates(partial(header("e1", labels={"team": "a"}))))
    assert search(store, labels="team:a")[1] == 1
    store.apply(feed.updates(partial(header("e1", labels={"team": "b", "env": "prod"}))))
    assert search(store, labels="team:a")[1] == 0
    assert search(store, labels=["team:b", "env:prod"]) == (["e1"], 1)


def test_unknown_and_deleted_executions(store: Store) -> None:
    feed = Feed()
    assert store.get("nope") is None
    assert store.delete("nope") is False
    store.apply(feed.updates(partial(header("e1", labels={"team": "a"})), partial(header("e2"))))
    assert store.delete("e1") is True
    assert store.delete("e1") is False
    assert store.get("e1") is None
    deleted = store.get("e1", include_deleted=True)
    assert deleted is not None and deleted["deleted"] is True
    assert search(store) == (["e2"], 1)
    assert search(store, labels="team:a") == ([], 0)
    # Kestra semantics: a deleted execution stays deleted when updates keep coming.
    store.apply(feed.updates(full(header("e1", state="SUCCESS", labels={"team": "a"}))))
    assert store.get("e1") is None
    assert search(store, labels="team:a") == ([], 0)
    assert store.count() == 1


def test_logs_in_time_order_with_level_and_task_run_filters(store: Store) -> None:
    feed = Feed()
    t = T0
    store.apply(
        feed.logs(
            "e1",
            log_line("e1", t + timedelta(seconds=2), "INFO", "second", "r1"),
            log_line("e1", t, "DEBUG", "first", "r1"),
        )
    )
    store.apply(
        feed.logs(
            "e1",
            log_line("e1", t + timedelta(seconds=3), "WARN", "third", "r2"),
            log_line("e1", t + timedelta(seconds=3), "ERROR", "fourth", "r2"),
        )
    )
    store.apply(feed.logs("e2", log_line("e2", t, "INFO", "other")))
    messages = [line["message"] for line in store.logs("e1")]
    assert messages == ["first", "second", "third", "fourth"]
    assert [line["message"] for line in store.logs("e1", min_level="WARN")] == ["third", "fourth"]
    assert [line["message"] for line in store.logs("e1", min_level="warning")] == [
        "third",
        "fourth",
    ]
    assert [line["message"] for line in store.logs("e1", task_run_id="r1")] == ["first", "second"]
    assert store.logs("nope") == []
    with pytest.raises(ValueError, match="unknown log level"):
        store.logs("e1", min_level="LOUD")


def test_the_logs_search_filters_every_executions_lines_newest_first(store: Store) -> None:
    feed = Feed()
    store.apply(
        feed.updates(
            partial(header("e1")),
            partial(header("e2", namespace="company.team.sub", flow_id="other")),
            partial(header("e3", namespace="company.teamwork")),
            partial(header("e4")),
        )
    )
    t = T0
    store.apply(
        feed.logs(
            "e1",
            log_line("e1", t, "INFO", "Disk FULL on host"),
            log_line("e1", t + timedelta(seconds=1), "DEBUG", "disk check"),
        )
    )
    store.apply(
        feed.logs("e2", log_line("e2", t + timedelta(seconds=2), "ERROR", "disk full, giving up"))
    )
    store.apply(
        feed.logs("e3", log_line("e3", t + timedelta(seconds=3), "INFO", "disk full elsewhere"))
    )
    store.apply(
        feed.logs("e4", log_line("e4", t + timedelta(seconds=4), "INFO", "disk full, deleted"))
    )
    assert store.delete("e4") is True

    def found(**query: Any) -> tuple[list[str], int]:
        listing = store.search_logs(LogSearch(**query))
        return [line["message"] for line in listing.results], listing.total

    everything = ["disk full elsewhere", "disk full, giving up", "disk check", "Disk FULL on host"]
    assert found() == (everything, 4)  # newest first; the deleted execution's line is gone
    assert found(text="DISK full") == (
        ["disk full elsewhere", "disk full, giving up", "Disk FULL on host"],
        3,
    )
    assert found(text="disk full", namespace="company.team") == (
        ["disk full, giving up", "Disk FULL on host"],
        2,
    )  # the namespace and its children, not company.teamwork
    assert found(flow_id="other") == (["disk full, giving up"], 1)
    assert found(min_level="WARN") == (["disk full, giving up"], 1)
    assert found(start=t + timedelta(seconds=1), end=t + timedelta(seconds=2)) == (
        ["disk full, giving up", "disk check"],
        2,
    )
    assert found(size=2, page=2) == (everything[2:], 4)
    assert found(text="nowhere") == ([], 0)


def test_the_logs_search_bounds_what_it_reads(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filtered search reads the newest LOG_SEARCH_SCAN_MAX lines of its window, and counts
    LOG_SEARCH_COUNT_MAX matches at most; an exact namespace leaves its children out, and
    the text folds ASCII letters only, as SQL's lower() does the message."""
    feed = Feed()
    store.apply(feed.updates(partial(header("e1")), partial(header("e2", namespace="company"))))
    store.apply(
        feed.logs(
            "e1",
            *(log_line("e1", T0 + timedelta(seconds=i), "INFO", f"Éclair n{i}") for i in range(6)),
        )
    )
    store.apply(feed.logs("e2", log_line("e2", T0 + timedelta(seconds=9), "INFO", "top")))

    def found(**query: Any) -> tuple[list[str], int]:
        listing = store.search_logs(LogSearch(**query))
        return [line["message"] for line in listing.results], listing.total

    assert found(text="ÉCLAIR n0") == (["Éclair n0"], 1)
    assert found(namespace="company", exact_namespace=True) == (["top"], 1)
    assert found(namespace="company")[1] == 7
    monkeypatch.setattr(store_module, "LOG_SEARCH_SCAN_MAX", 3)
    monkeypatch.setattr(store_module, "LOG_SEARCH_COUNT_MAX", 4)
    assert found(size=2) == (["top", "Éclair n5"], 4)  # 7 lines, counted up to 4
    assert store.search_logs(LogSearch(size=2)).capped
    assert found(size=2, page=4) == (["Éclair n0"], 7)  # the last page: counted by its lines
    assert not store.search_logs(LogSearch(size=2, page=4)).capped
    assert found(text="Éclair") == (["Éclair n5", "Éclair n4"], 2)  # the newest 3 lines only
    assert store.search_logs(LogSearch(text="Éclair")).capped  # older lines were not read
    monkeypatch.setattr(store_module, "LOG_SEARCH_COUNT_MAX", 7)
    assert found(size=2) == (["top", "Éclair n5"], 7)
    assert not store.search_logs(LogSearch(size=2)).capped  # exactly the bound: exact
    assert found(text="Éclair N0") == ([], 0)
    assert found(text="Éclair n0", end=T0 + timedelta(seconds=2)) == (["Éclair n0"], 1)


def test_logs_by_page_keep_time_order_across_pages(store: Store) -> None:
    feed = Feed()
    lines = [log_line("e1", T0 + timedelta(seconds=9 - i), "INFO", f"m{9 - i}") for i in range(10)]
    store.apply(feed.logs("e1", *lines))
    pages = [store.logs("e1", limit=4, offset=offset) for offset in (0, 4, 8, 12)]
    assert [[line["message"] for line in page] for page in pages] == [
        ["m0", "m1", "m2", "m3"],
        ["m4", "m5", "m6", "m7"],
        ["m8", "m9"],
        [],
    ]
    assert [line["message"] for line in store.logs("e1", min_level="WARN", limit=4)] == []


def test_log_replays_do_not_duplicate_lines(store: Store) -> None:
    feed = Feed()
    batch = feed.logs("e1", log_line("e1", T0, "INFO", "once"))
    store.apply(batch)
    result = store.apply(batch)
    assert (result.log_lines, result.skipped) == (0, 1)
    assert [line["message"] for line in store.logs("e1")] == ["once"]


def test_a_log_record_produced_twice_upstream_shows_its_lines_once(store: Store) -> None:
    """Another offset, the same lines (a retried send): kept once, by each line's identity."""
    feed = Feed()
    lines = [
        log_line("e1", T0, "INFO", "twice in one millisecond"),
        log_line("e1", T0, "INFO", "twice in one millisecond"),
        log_line("e1", T0 + timedelta(seconds=1), "WARN", "later"),
    ]
    first = feed.logs("e1", *lines)
    assert store.apply(first).log_lines == 3
    again = feed.logs("e1", *lines)  # the next offset: not the feed's replay
    also_in_one_batch = feed.logs("e1", *lines[:2])
    also_in_one_batch.add(feed.record(RecordKind.LOGS, "e1", lines[:2]))
    assert store.apply(again).log_lines == 0
    assert store.apply(also_in_one_batch).log_lines == 0
    messages = [line["message"] for line in store.logs("e1")]
    assert messages == ["twice in one millisecond", "twice in one millisecond", "later"]


def test_lines_produced_twice_are_recognised_across_many_executions_of_one_batch(
    store: Store,
) -> None:
    """The stored lines of many executions are read together (several per statement, several
    statements per batch): each execution's lines are told apart from the others'."""
    feed = Feed()
    ids = [f"e{n:03d}" for n in range(250)]  # more executions than one statement reads
    first = Batch()
    for n, execution_id in enumerate(ids):
        at = T0 + timedelta(milliseconds=n % 3)  # lines of other executions at the same times
        first.add(
            feed.record(RecordKind.LOGS, execution_id, [log_line(execution_id, at, "INFO", "a")])
        )
    assert store.apply(first).log_lines == 250
    again = Batch()
    for n, execution_id in enumerate(ids):
        at = T0 + timedelta(milliseconds=n % 3)
        lines = [log_line(execution_id, at, "INFO", "a")]  # a retried send: already held
        if n % 2:
            lines.append(log_line(execution_id, at, "INFO", "b"))  # new
        again.add(feed.record(RecordKind.LOGS, execution_id, lines))
    assert store.apply(again).log_lines == 125
    assert [line["message"] for line in store.logs("e000")] == ["a"]
    assert [line["message"] for line in store.logs("e249")] == ["a", "b"]


def test_log_lines_that_differ_in_identity_are_all_kept(store: Store) -> None:
    """A new attempt, another task run, another level or another time is another line; a
    line of the same identity in another execution is that execution's."""
    feed = Feed()
    base = log_line("e1", T0, "INFO", "same text")
    variants = [
        base,
        {**base, "attemptNumber": 2},
        {**base, "taskRunId": "r2"},
        {**base, "level": "WARN"},
        {**base, "timestamp": format_instant(T0 + timedelta(milliseconds=1))},
    ]
    batch = feed.logs("e1", *variants)
    batch.add(feed.record(RecordKind.LOGS, "e2", [{**base, "executionId": "e2"}]))
    assert store.apply(batch).log_lines == 6
    assert len(store.logs("e1")) == 5 and len(store.logs("e2")) == 1
    one_more = feed.logs("e1", base, base)  # a record holding the line twice: one more
    assert store.apply(one_more).log_lines == 1
    assert len(store.logs("e1")) == 6


def test_bad_records_are_refused_before_the_store() -> None:
    with pytest.raises(records.RecordError):
        FeedRecord.decode(RecordKind.UPDATE, UPDATES, 0, 0, b"e1", b"not json")
    with pytest.raises(records.RecordError, match=r"execution\.id"):
        FeedRecord.decode(RecordKind.UPDATE, UPDATES, 0, 0, b"e1", b'{"execution": {}}')
    with pytest.raises(records.RecordError, match="list"):
        FeedRecord.decode(RecordKind.LOGS, LOGS, 0, 0, b"e1", b'{"a": 1}')
    with pytest.raises(records.RecordError, match="empty"):
        FeedRecord.decode(RecordKind.UPDATE, UPDATES, 0, 0, b"e1", None)


# -- searching ----------------------------------------------------------------------------------

NAMESPACES = ["a", "a.b", "a.b.c", "ab", "b", "system"]
STATES = ["SUCCESS", "SUCCESS", "SUCCESS", "FAILED", "RUNNING", "KILLED", "PAUSED", "WARNING"]


@pytest.fixture
def population(store: Store) -> list[dict[str, Any]]:
    """240 executions over namespaces, flows, states, dates, labels and parents (seeded)."""
    rng = random.Random(20250101)
    feed = Feed(partitions=4)
    headers = []
    for i in range(240):
        namespace = rng.choice(NAMESPACES)
        state = rng.choice(STATES)
        start = T0 + timedelta(hours=rng.randrange(24 * 60), milliseconds=rng.randrange(1000))
        if i % 17 == 0:
            start = T0 + timedelta(days=10)  # ties on the start date: the id decides
        labels = {"team": rng.choice("xyz"), "env": rng.choice("pq")}
        if i % 5 == 0:
            labels["rare"] = "yes"
        headers.append(
            header(
                f"ex{i:03d}{rng.choice('AbC')}",
                namespace=namespace,
                flow_id=f"flow{rng.randrange(4)}",
                state=state,
                start=start,
                end=start + timedelta(minutes=rng.randrange(1, 90)),
                labels=labels,
                parent=f"ex{i - 1:03d}" if i % 7 == 3 else None,
            )
        )
    for start in range(0, len(headers), 50):
        store.apply(feed.updates(*(full(h) for h in headers[start : start + 50])))
    return headers


def _start(h: dict[str, Any]) -> str:
    return str(h["state"]["startDate"])


def _labels(h: dict[str, Any]) -> dict[str, str]:
    return {label["key"]: label["value"] for label in h["labels"]}


Predicate = Callable[[dict[str, Any]], bool]
_MID = format_instant(T0 + timedelta(days=30))
_LATE = format_instant(T0 + timedelta(days=45))

QUERIES: list[tuple[str, dict[str, Any], Predicate]] = [
    ("everything", {}, lambda h: True),
    (
        "namespace equals",
        {"filters[namespace][EQUALS]": "a.b"},
        lambda h: h["namespace"] == "a.b",
    ),
    (
        "namespace prefix",
        {"filters[namespace][PREFIX]": "a"},
        lambda h: h["namespace"] in ("a", "a.b", "a.b.c"),
    ),
    (
        "legacy namespace is a prefix",
        {"namespace": "a.b"},
        lambda h: h["namespace"] in ("a.b", "a.b.c"),
    ),
    (
        "namespace starts with",
        {"filters[namespace][STARTS_WITH]": "a"},
        lambda h: h["namespace"].startswith("a"),
    ),
    (
        "namespace contains",
        {"filters[namespace][CONTAINS]": "b"},
        lambda h: "b" in h["namespace"],
    ),
    (
        "namespace ends with",
        {"filters[namespace][ENDS_WITH]": ".c"},
        lambda h: h["namespace"].endswith(".c"),
    ),
    (
        "namespace in",
        {"filters[namespace][IN]": "ab,b"},
        lambda h: h["namespace"] in ("ab", "b"),
    ),
    (
        "namespace not in",
        {"filters[namespace][NOT_IN]": "ab,b"},
        lambda h: h["namespace"] not in ("ab", "b"),
    ),
    ("user scope", {"filters[scope][EQUALS]": "USER"}, lambda h: h["namespace"] != "system"),
    ("flow", {"filters[flowId][EQUALS]": "flow2"}, lambda h: h["flowId"] == "flow2"),
    (
        "flow starts with",
        {"filters[flowId][STARTS_WITH]": "flow1"},
        lambda h: h["flowId"] == "flow1",
    ),
    (
        "namespace and flow",
        {"filters[namespace][EQUALS]": "a", "flowId": "flow1"},
        lambda h: h["namespace"] == "a" and h["flowId"] == "flow1",
    ),
    (
        "state",
        {"filters[state][EQUALS]": "FAILED"},
        lambda h: h["state"]["current"] == "FAILED",
    ),
    (
        "states in",
        {"filters[state][IN]": "FAILED,KILLED,WARNING"},
        lambda h: h["state"]["current"] in ("FAILED", "KILLED", "WARNING"),
    ),
    (
        "states not in",
        {"filters[state][NOT_IN]": "SUCCESS"},
        lambda h: h["state"]["current"] != "SUCCESS",
    ),
    (
        "prefix and states",
        {"filters[namespace][PREFIX]": "a", "state": ["FAILED", "RUNNING"]},
        lambda h: (
            h["namespace"].split(".")[0] == "a" and h["state"]["current"] in ("FAILED", "RUNNING")
        ),
    ),
    (
        "start range",
        {
            "filters[startDate][GREATER_THAN_OR_EQUAL_TO]": _MID,
            "filters[startDate][LESS_THAN]": _LATE,
        },
        lambda h: _MID <= _start(h) < _LATE,
    ),
    (
        "end before",
        {"filters[endDate][LESS_THAN_OR_EQUAL_TO]": _MID},
        lambda h: h["state"]["endDate"] is not None and h["state"]["endDate"] <= _MID,
    ),
    ("label", {"filters[labels][EQUALS][team]": "x"}, lambda h: _labels(h)["team"] == "x"),
    (
        "two labels",
        {"filters[labels][EQUALS][team]": "y", "labels": "env:p"},
        lambda h: _labels(h)["team"] == "y" and _labels(h)["env"] == "p",
    ),
    (
        "label not equals",
        {"filters[labels][NOT_EQUALS][team]": "x"},
        lambda h: _labels(h)["team"] != "x",
    ),
    (
        "label and namespace",
        {"filters[labels][EQUALS][rare]": "yes", "filters[namespace][PREFIX]": "a"},
        lambda h: _labels(h).get("rare") == "yes" and h["namespace"].split(".")[0] == "a",
    ),
    (
        "label and state",
        {"filters[labels][EQUALS][team]": "z", "filters[state][IN]": "SUCCESS,PAUSED"},
        lambda h: _labels(h)["team"] == "z" and h["state"]["current"] in ("SUCCESS", "PAUSED"),
    ),
    (
        "rare label second",
        {"filters[labels][EQUALS]": ["team:x", "rare:yes"]},
        lambda h: _labels(h)["team"] == "x" and _labels(h).get("rare") == "yes",
    ),
    (
        "three labels",
        {"filters[labels][EQUALS]": ["env:p", "team:y", "rare:yes"]},
        lambda h: _labels(h)["env"] == "p" and _labels(h)["team"] == "y" and "rare" in _labels(h),
    ),
    (
        "labels with a negated one",
        {"filters[labels][EQUALS]": "env:q", "filters[labels][NOT_EQUALS][team]": "x"},
        lambda h: _labels(h)["env"] == "q" and _labels(h)["team"] != "x",
    ),
    (
        "a label nobody has",
        {"filters[labels][EQUALS]": ["env:p", "team:w"]},
        lambda h: False,
    ),
    (
        "labels, namespace, state and range",
        {
            "filters[labels][EQUALS]": ["team:y", "env:p"],
            "filters[namespace][PREFIX]": "a",
            "filters[state][NOT_IN]": "KILLED",
            "filters[startDate][GREATER_THAN_OR_EQUAL_TO]": _MID,
        },
        lambda h: (
            _labels(h)["team"] == "y"
            and _labels(h)["env"] == "p"
            and h["namespace"].split(".")[0] == "a"
            and h["state"]["current"] != "KILLED"
            and _start(h) >= _MID
        ),
    ),
    (
        "label, namespace and state",
        {
            "filters[labels][EQUALS]": "team:x",
            "filters[namespace][EQUALS]": "a.b",
            "filters[state][EQUALS]": "SUCCESS",
        },
        lambda h: (
            _labels(h)["team"] == "x"
            and h["namespace"] == "a.b"
            and h["state"]["current"] == "SUCCESS"
        ),
    ),
    (
        "labels, one negated, and a flow",
        {
            "filters[labels][EQUALS]": "env:p",
            "filters[labels][NOT_EQUALS][team]": "z",
            "filters[flowId][EQUALS]": "flow1",
        },
        lambda h: _labels(h)["env"] == "p" and _labels(h)["team"] != "z" and h["flowId"] == "flow1",
    ),
    (
        "rare label and range",
        {"filters[labels][EQUALS]": "rare:yes", "filters[startDate][LESS_THAN]": _LATE},
        lambda h: "rare" in _labels(h) and _start(h) < _LATE,
    ),
    ("q", {"q": "A.B"}, lambda h: "a.b" in h["namespace"]),
    ("q on ids", {"filters[q][EQUALS]": "x01"}, lambda h: "x01" in h["id"].lower()),
    ("children", {"filters[childFilter][EQUALS]": "CHILD"}, lambda h: h["parentId"] is not None),
    (
        "children of",
        {"filters[triggerExecutionId][EQUALS]": "ex002"},
        lambda h: h["parentId"] == "ex002",
    ),
    ("main only", {"childFilter": "MAIN"}, lambda h: h["parentId"] is None),
    ("nothing", {"filters[namespace][EQUALS]": "zzz"}, lambda h: False),
    ("no such prefix", {"filters[namespace][PREFIX]": "zzz"}, lambda h: False),
    ("kind TEST", {"filters[kind][EQUALS]": "TEST"}, lambda h: False),
]


def _expected(
    population: list[dict[str, Any]], predicate: Predicate, sort: tuple[str, bool]
) -> list[str]:
    column, descending = sort
    keys = {
        "state.startDate": _start,
        "state.endDate": lambda h: h["state"]["endDate"] or "",
        "namespace": lambda h: h["namespace"],
        "state.current": lambda h: h["state"]["current"],
    }
    chosen = [h for h in population if predicate(h)]
    chosen.sort(key=lambda h: (keys[column](h), h["id"]), reverse=descending)
    return ids(chosen)


@pytest.mark.parametrize(("name", "params", "predicate"), QUERIES, ids=[q[0] for q in QUERIES])
@pytest.mark.parametrize("descending", [True, False], ids=["newest", "oldest"])
def test_search_pages_and_counts_match_a_brute_force_scan(
    store: Store,
    population: list[dict[str, Any]],
    name: str,
    params: dict[str, Any],
    predicate: Predicate,
    descending: bool,
) -> None:
    direction = "desc" if descending else "asc"
    expected = _expected(population, predicate, ("state.startDate", descending))
    seen: list[str] = []
    for page in itertools.count(1):
        got, total = search(
            store, **params, page=str(page), size="9", sort=f"state.startDate:{direction}"
        )
        assert total == len(expected), name
        seen.extend(got)
        if len(got) < 9:
            break
    assert seen == expected, name


_LABEL_QUERIES = [q for q in QUERIES if any("labels" in key for key in q[1])]


@pytest.mark.parametrize("probe_max", [1, 1_000_000], ids=["all-common", "all-rare"])
@pytest.mark.parametrize(
    ("name", "params", "predicate"), _LABEL_QUERIES, ids=[q[0] for q in _LABEL_QUERIES]
)
def test_label_searches_match_the_scan_whichever_filter_drives(
    store: Store,
    population: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    params: dict[str, Any],
    predicate: Predicate,
    probe_max: int,
) -> None:
    """The bound of the labels' probe decides whether a label beside other filters drives (it
    is rarer than the bound) or the listing's index does: both plans give the scan's pages."""
    monkeypatch.setattr(sql_module, "LABEL_PROBE_MAX", probe_max)
    expected = _expected(population, predicate, ("state.startDate", True))
    got, total = search(store, **params, size="1000")
    assert (got, total) == (expected, len(expected)), name
    got, _ = search(store, **params, page="2", size="7")
    assert got == expected[7:14], name


def test_labels_beside_other_filters_find_an_execution_without_a_start_date(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An execution without a start date keeps its label rows under the engine's "no date": a
    plan that merges the listing's start dates with the labels' would miss it, so it is not
    used while such an execution exists, whichever label drives."""
    undated = header("u1", labels={"team": "a"})
    undated["state"]["startDate"] = None
    feed = Feed()
    store.apply(
        feed.updates(full(undated), full(header("d1", labels={"team": "a"}, start=T0 + minutes(1))))
    )
    for probe_max in (1, 1_000_000):
        monkeypatch.setattr(sql_module, "LABEL_PROBE_MAX", probe_max)
        got, total = search(store, **{"filters[labels][EQUALS]": "team:a", "state": "RUNNING"})
        assert sorted(got) == ["d1", "u1"] and total == 2


@pytest.mark.parametrize("sort", ["namespace:asc", "state.current:desc", "state.endDate:desc"])
def test_other_sort_orders(store: Store, population: list[dict[str, Any]], sort: str) -> None:
    column, _, direction = sort.partition(":")
    # Ended executions only: engines order the running ones' NULL end dates differently.
    ended = ",".join(sorted(TERMINAL))
    predicate: Predicate = lambda h: h["state"]["current"] in TERMINAL  # noqa: E731
    expected = _expected(population, predicate, (column, direction == "desc"))
    got, total = search(store, **{"filters[state][IN]": ended}, sort=sort, size="1000")
    assert total == len(expected)
    assert got == expected


def test_a_page_past_the_end_still_counts(store: Store, population: list[dict[str, Any]]) -> None:
    got, total = search(store, **{"filters[state][EQUALS]": "FAILED"}, page="100")
    assert got == []
    assert total == sum(1 for h in population if h["state"]["current"] == "FAILED")


def test_a_search_checked_row_by_row_counts_its_matches_up_to_a_bound(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search whose filters are checked row by row (a text ``q``: no index answers a
    substring; a label beside another one) stops counting at SEARCH_COUNT_MAX matches; its
    pages are still the newest matches, and a count an index range answers stays exact."""
    feed = Feed()
    store.apply(
        feed.updates(
            *(
                partial(
                    header(
                        f"e{i:02}",
                        flow_id=f"nightly{i % 2}",
                        start=T0 + timedelta(minutes=i),
                        labels={"team": "a", "env": "prod" if i % 2 else "dev"},
                    )
                )
                for i in range(12)
            )
        )
    )
    monkeypatch.setattr(store_module, "SEARCH_COUNT_MAX", 4)
    newest_first = {"sort": "state.startDate:desc", "size": "3"}
    assert search(store, q="nightly1", **newest_first) == (["e11", "e09", "e07"], 4)
    assert search(store, q="nightly1", page="2", **newest_first) == (["e05", "e03", "e01"], 4)
    assert search(store, q="e0", **newest_first) == (["e09", "e08", "e07"], 4)
    assert search(store, q="e1", **newest_first) == (["e11", "e10"], 2)  # under the bound: exact
    assert capped(store, q="nightly1") and capped(store, q="e0")
    assert not capped(store, q="e1")
    assert search(store, q="nightly", **newest_first)[1] == 4
    two_labels = {"filters[labels][EQUALS]": ["team:a", "env:prod"]}
    assert search(store, **two_labels, **newest_first) == (["e11", "e09", "e07"], 4)
    assert search(store, **{"filters[labels][EQUALS]": "env:prod"}, **newest_first)[1] == 6
    assert search(store, **{"filters[flowId][EQUALS]": "nightly1"}, **newest_first)[1] == 6
    assert not capped(store, **{"filters[flowId][EQUALS]": "nightly1"})  # an index range: exact
    monkeypatch.setattr(store_module, "SEARCH_COUNT_MAX", 6)
    assert search(store, q="nightly1") == (["e11", "e09", "e07", "e05", "e03", "e01"], 6)
    assert not capped(store, q="nightly1")  # exactly the bound: exact, not capped
    assert capped(store, q="nightly")


def minutes(count: int) -> timedelta:
    return timedelta(minutes=count)


def _twelve_nightlies(store: Store) -> None:
    """e00..e11, a minute apart (e11 newest), of flows nightly0 (even) and nightly1 (odd)."""
    feed = Feed()
    store.apply(
        feed.updates(
            *(
                partial(header(f"e{i:02}", flow_id=f"nightly{i % 2}", start=T0 + minutes(i)))
                for i in range(12)
            )
        )
    )


def test_a_short_text_is_checked_on_the_newest_rows_then_on_a_wider_window_for_a_page(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A needle no index answers (shorter than a trigram) is first checked on the newest
    TEXT_WINDOW rows of the listing: a page found there is the answer, with the window's
    matches as a capped total; a page that needs older rows is looked for in the newest
    SEARCH_SCAN_MAX rows, exact when that window holds every row."""
    _twelve_nightlies(store)
    monkeypatch.setattr(sql_module, "TEXT_WINDOW", 4)  # e11, e10, e09, e08
    newest = {"sort": "state.startDate:desc", "size": "3"}
    assert search(store, q="Y1", **newest) == (["e11", "e09", "e07"], 6)  # every row read
    assert not capped(store, q="y1", **newest)
    assert search(store, q="y1", page="2", **newest) == (["e05", "e03", "e01"], 6)
    assert search(store, q="y1", page="3", **newest) == ([], 6)
    assert not capped(store, q="y1", page="3", **newest)
    assert search(store, q="zz", **newest) == ([], 0)  # nothing, every row read: exact
    assert not capped(store, q="zz", **newest)
    assert search(store, q="e", **newest) == (["e11", "e10", "e09"], 4)  # the window's count
    assert capped(store, q="e", **newest)
    oldest = {"sort": "state.startDate:asc", "size": "3"}
    assert search(store, q="y1", **oldest) == (["e01", "e03", "e05"], 6)
    with_flow = {"filters[flowId][EQUALS]": "nightly0", **newest}
    assert search(store, q="0", **with_flow) == (["e10", "e08", "e06"], 4)
    monkeypatch.setattr(sql_module, "TEXT_WINDOW", 100)  # every row in the window: exact
    assert search(store, q="y1", **newest) == (["e11", "e09", "e07"], 6)
    assert not capped(store, q="y1", **newest)


def test_a_short_text_reads_no_more_than_the_newest_search_scan_max_rows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the logs search reads its newest LOG_SEARCH_SCAN_MAX lines, a needle no index
    answers reads the newest SEARCH_SCAN_MAX rows of the listing at most: its pages and total
    are the matches among them, capped when rows past them were left unread. A needle a
    trigram index answers (three characters and more) is not bounded."""
    _twelve_nightlies(store)
    monkeypatch.setattr(sql_module, "TEXT_WINDOW", 2)  # e11, e10
    monkeypatch.setattr(store_module, "SEARCH_SCAN_MAX", 8)  # e11 .. e04
    newest = {"sort": "state.startDate:desc", "size": "3"}
    assert search(store, q="y1", **newest) == (["e11", "e09", "e07"], 4)
    assert capped(store, q="y1", **newest)
    assert search(store, q="y1", page="2", **newest) == (["e05"], 4)  # e03, e01 unread
    assert capped(store, q="y1", page="2", **newest)
    assert search(store, q="y1", page="3", **newest) == ([], 4)
    assert search(store, q="zz", **newest) == ([], 0)  # nothing among the newest 8
    assert capped(store, q="zz", **newest)
    assert search(store, q="02", **newest) == ([], 0)  # e02 is older than the window
    assert capped(store, q="02", **newest)
    with_flow = {"filters[flowId][EQUALS]": "nightly1", **newest}  # e11, e09 .. e01: 6 rows
    assert search(store, q="y1", page="2", **with_flow) == (["e05", "e03", "e01"], 6)
    assert not capped(store, q="y1", page="2", **with_flow)  # every row of the flow read
    assert search(store, q="ghtly1", page="2", **newest) == (["e05", "e03", "e01"], 6)
    assert not capped(store, q="ghtly1", **newest)  # a trigram's text: every row
    monkeypatch.setattr(store_module, "SEARCH_SCAN_MAX", 12)  # every row: exact
    assert search(store, q="y1", page="2", **newest) == (["e05", "e03", "e01"], 6)


_SHORT_NEEDLES = ["b", "x0", "A.", "1", "ow", "zq"]
_SHORT_FILTERS: list[tuple[str, dict[str, Any], Predicate]] = [
    ("none", {}, lambda h: True),
    ("prefix", {"filters[namespace][PREFIX]": "a"}, lambda h: h["namespace"].split(".")[0] == "a"),
    ("flow", {"filters[flowId][EQUALS]": "flow2"}, lambda h: h["flowId"] == "flow2"),
    (
        "states",
        {"filters[state][IN]": "FAILED,KILLED"},
        lambda h: h["state"]["current"] in ("FAILED", "KILLED"),
    ),
    (
        "since",
        {"filters[startDate][GREATER_THAN_OR_EQUAL_TO]": _MID},
        lambda h: _start(h) >= _MID,
    ),
    ("main", {"childFilter": "MAIN"}, lambda h: h["parentId"] is None),
]


def _has_text(h: dict[str, Any], needle: str) -> bool:
    return any(needle.lower() in h[key].lower() for key in ("id", "namespace", "flowId"))


@pytest.mark.parametrize(
    ("name", "filters", "predicate"), _SHORT_FILTERS, ids=[f[0] for f in _SHORT_FILTERS]
)
@pytest.mark.parametrize("descending", [True, False], ids=["newest", "oldest"])
def test_short_texts_page_as_the_scan_whatever_the_window(
    store: Store,
    population: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    filters: dict[str, Any],
    predicate: Predicate,
    descending: bool,
) -> None:
    """With a window of 5 rows, short needles beside other filters page exactly as the scan
    does; a total is exact, or capped and then no more than the scan's."""
    monkeypatch.setattr(sql_module, "TEXT_WINDOW", 5)
    direction = "desc" if descending else "asc"
    for needle in _SHORT_NEEDLES:
        expected = _expected(
            population,
            lambda h, n=needle: predicate(h) and _has_text(h, n),  # type: ignore[misc]
            ("state.startDate", descending),
        )
        seen: list[str] = []
        for page in itertools.count(1):
            params = {
                "q": needle,
                **filters,
                "page": str(page),
                "size": "9",
                "sort": f"state.startDate:{direction}",
            }
            got, total = search(store, **params)
            if capped(store, **params):
                assert len(seen) + len(got) <= total <= len(expected), (needle, name)
            else:
                assert total == len(expected), (needle, name)
            seen.extend(got)
            if len(got) < 9:
                break
        assert seen == expected, (needle, name)


#: Executions whose id, namespace and flow id exercise the text search: case, letters outside
#: ASCII (which SQL's ``lower()`` leaves as they are), FTS5's quote, LIKE's wildcards and escape,
#: and text that exists only across two columns.
TEXT_ROWS = [
    ("t01", "Company.Data", "Ingest_Orders"),
    ("t02", "company.data", "ingest%orders"),
    ("t03", "ÉQUIPE.Ops", "Nightly\\Report"),
    ("t04", "équipe.ops", 'say"hello"'),
    ("t05", "k\u212aelvin.ns", "STRASSE"),
    ("t06", "straße.ns", "flow 1"),
    ("T07-Upper", "company.ml", "train"),
    ("t08", "company.ml", "ingest_orders"),
]
#: Needles that match some of those rows, none, or a row only across its columns.
TEXT_NEEDLES = [
    *'aAé_%\\"ß',
    "da",
    "INGEST_ORDERS",
    "ingest_",
    "st%o",
    "t_o",
    "équipe",
    "ÉQUIPE",
    "Équipe",
    "\\rep",
    'y"h',
    '"',
    'say"hello"',
    "kelvin",
    "\u212aelvin",
    "strasse",
    "straße",
    "w 1",
    "t07-up",
    "mldata",
    "ml.train",
    "datainge",
    "nowhere",
    "%",
    "_o",
]


def _scan_matches(needle: str, row: tuple[str, str, str]) -> bool:
    """What the text search means: the lowered needle in an ASCII-lowered column."""
    lowered = needle.lower()
    return any(lowered in column.translate(_ASCII_LOWER) for column in row)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_the_text_search_answers_as_the_scan_with_and_without_its_index(
    store: Store, monkeypatch: pytest.MonkeyPatch, dense: bool
) -> None:
    """Each needle gives the same page and count through the store's text index as through
    the row-by-row scan (the dialect without it, on the same rows), and both are what the
    search means: an ASCII-case-insensitive substring of one column. ``dense``: every text
    with a candidate counts as dense (its page walks the listing's order)."""
    if dense:
        monkeypatch.setattr(store_module, "TEXT_DENSE", 1)
    feed = Feed()
    store.apply(
        feed.updates(
            *(
                partial(header(i, namespace=ns, flow_id=flow, start=T0 + timedelta(minutes=n)))
                for n, (i, ns, flow) in enumerate(TEXT_ROWS)
            )
        )
    )
    indexed = store.dialect
    assert indexed.text_index is not None
    scanning = dataclasses.replace(indexed, text_index=None)
    newest_first = {"sort": "state.startDate:desc", "size": "50"}
    for needle in TEXT_NEEDLES:
        expected = [i for i, *rest in reversed(TEXT_ROWS) if _scan_matches(needle, (i, *rest))]
        got = search(store, q=needle, **newest_first)
        store.dialect = scanning
        try:
            scanned = search(store, q=needle, **newest_first)
        finally:
            store.dialect = indexed
        assert got == scanned == (expected, len(expected)), needle


def test_the_text_index_follows_later_writes_of_a_row(store: Store) -> None:
    """A row written again (a later update, a purge's tombstone, an update after it) is found
    by its text as it is now, and a deleted one is not listed."""
    feed = Feed()
    store.apply(feed.updates(partial(header("e1", flow_id="first"))))
    store.apply(feed.updates(partial(header("e1", flow_id="second", state="SUCCESS"))))
    store.apply(feed.updates(partial(header("e2", flow_id="second"))))
    assert search(store, q="second") == (["e2", "e1"], 2)
    assert search(store, q="first") == ([], 0)
    store.delete("e2")
    assert search(store, q="second") == (["e1"], 1)


def test_search_results_are_the_executions_without_task_runs(store: Store) -> None:
    feed = Feed()
    store.apply(feed.updates(full(header("e1", state="SUCCESS"), run("e1", "r1"))))
    page, total = (found := store.search(parse_search_params({}))).results, found.total
    assert total == 1
    assert page[0]["id"] == "e1" and page[0]["state"]["current"] == "SUCCESS"
    assert "taskRunList" not in page[0]


# -- the log follow's cursor -------------------------------------------------------------------


def test_logs_after_a_cursor_reads_only_the_new_lines(store: Store) -> None:
    feed = Feed()
    t = T0 + timedelta(seconds=10)
    store.apply(feed.logs("e1", *(log_line("e1", t, "INFO", f"old{i}") for i in range(5))))
    store.apply(feed.logs("e2", log_line("e2", t, "INFO", "other execution")))
    first = store.logs_after("e1")
    assert [line["message"] for line in first.lines] == [f"old{i}" for i in range(5)]
    assert not first.full
    assert store.logs_after("e1", first.cursor).lines == []  # nothing new: nothing read
    # New lines, one of them stamped before every line already sent: it is new all the same.
    store.apply(
        feed.logs(
            "e1",
            log_line("e1", t + timedelta(seconds=1), "INFO", "new1"),
            log_line("e1", T0, "ERROR", "late but new"),
        )
    )
    store.apply(feed.logs("e2", log_line("e2", t, "INFO", "other again")))
    second = store.logs_after("e1", first.cursor)
    assert [line["message"] for line in second.lines] == ["new1", "late but new"]
    assert second.cursor > first.cursor
    assert store.logs_after("e1", second.cursor).lines == []


def test_the_state_column_answers_whether_an_execution_ended(store: Store) -> None:
    feed = Feed()
    assert store.state("e1") is None
    store.apply(feed.updates(partial(header("e1"), run("e1", "r1", "RUNNING"))))
    assert store.state("e1") == "RUNNING"
    store.apply(feed.updates(full(header("e1", state="FAILED"), run("e1", "r1", "FAILED"))))
    assert store.state("e1") == "FAILED"


def test_logs_after_pages_and_filters_move_the_cursor(store: Store) -> None:
    feed = Feed()
    lines = [
        log_line("e1", T0, "DEBUG" if i % 2 else "ERROR", f"m{i}", f"r{i % 3}") for i in range(7)
    ]
    store.apply(feed.logs("e1", *lines))
    pages = []
    cursor = 0
    while True:
        page = store.logs_after("e1", cursor, limit=3)
        pages.append([line["message"] for line in page.lines])
        cursor = page.cursor
        if not page.full:
            break
    assert pages == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]
    errors = store.logs_after("e1", min_level="ERROR", limit=3)
    assert [line["message"] for line in errors.lines] == ["m0", "m2"]
    # The cursor passed the DEBUG row the filter left out: the next read starts after it.
    rest = store.logs_after("e1", errors.cursor, min_level="ERROR", task_run_id="r0")
    assert [line["message"] for line in rest.lines] == ["m6"]
    assert store.logs_after("nope").lines == []
    with pytest.raises(ValueError, match="unknown log level"):
        store.logs_after("e1", min_level="LOUD")


# -- text the database would refuse -------------------------------------------------------------

#: NUL, the escape character kestream uses for it, and both next to each other and to "0".
AWKWARD = ["a\x00b", "\x00", "\ufdd0", "\ufdd00", "\ufdd0\x00\ufdd0\ufdd0", "x\\u0000y", "\x01\x1f"]


def test_text_with_nul_round_trips_through_documents_labels_and_logs(store: Store) -> None:
    feed = Feed()
    running = header("e1", labels={"k\x00ey": "v\x00al", "plain": "\ufdd0"})
    running["outputs"] = {text: [text, {text: text}] for text in AWKWARD}
    runs = [{**run("e1", "r1"), "outputs": {"value": AWKWARD}}]
    store.apply(feed.updates(full(running, *runs)))
    store.apply(feed.logs("e1", *(log_line("e1", T0, "INFO", text) for text in AWKWARD)))
    got = store.get("e1")
    assert got is not None
    assert got["outputs"] == running["outputs"]
    assert got["labels"] == running["labels"]
    assert got["taskRunList"][0]["outputs"] == {"value": AWKWARD}
    assert [line["message"] for line in store.logs("e1")] == AWKWARD
    assert [line["message"] for line in store.logs_after("e1").lines] == AWKWARD
    found = store.search(parse_search_params({"labels": "k\x00ey:v\x00al"}))
    page, total = found.results, found.total
    assert (ids(page), total) == (["e1"], 1)
    assert page[0]["outputs"] == running["outputs"]
    assert search(store, labels="plain:\ufdd0") == (["e1"], 1)
    assert search(store, labels="plain:\ufdd0\ufdd0") == ([], 0)
    assert search(store, q="\x00") == ([], 0)  # a needle with NUL finds nothing, and no error
    assert search(store, **{"filters[namespace][STARTS_WITH]": "\x00"}) == ([], 0)


def test_an_index_of_schema_1_is_upgraded_in_place_unless_it_escapes_nul(
    make_store: MakeStore,
) -> None:
    """Version 2 escapes NUL with U+FDD0; a version-1 index of such a store holds U+FDD0 as it
    is, which version 2 would read as an escape: it is refused (dropped and rebuilt), never
    read differently."""
    store = make_store()
    escapes = store.dialect.escapes_nul
    store.apply(Feed().logs("e1", log_line("e1", T0, "INFO", "kept \ufdd00")))
    with store._writing() as cur:
        cur.execute("UPDATE index_meta SET value = '1' WHERE key = 'schema'")
    store.close()
    if escapes:
        with pytest.raises(RuntimeError, match="schema 1"):
            make_store()
        return
    reopened = make_store()
    with reopened._reading() as cur:
        cur.execute("SELECT value FROM index_meta WHERE key = 'schema'")
        assert cur.fetchone()[0] == str(SCHEMA_VERSION)
    assert [line["message"] for line in reopened.logs_after("e1").lines] == ["kept \ufdd00"]
    with reopened._writing() as cur:
        cur.execute("UPDATE index_meta SET value = '99' WHERE key = 'schema'")
    reopened.close()
    with pytest.raises(RuntimeError, match="schema 99"):
        make_store()
