"""The admission stream's slot table (flow concurrency): limits, order, and exactness under
repeats and replays from a changelog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kestream.executor.admission import Applied, Ask, Release, SlotRequest, SlotTable
from kestream.models.state import StateType as S

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ask(eid: str, limit: int = 2, behavior: Any = "QUEUE", attempt: int = 1, **kw: Any) -> Ask:
    return Ask("ns", "f", eid, attempt, limit, behavior, **kw)


def release(eid: str, limit: int = 2, attempt: int = 1) -> Release:
    return Release("ns", "f", eid, attempt, limit)


def decisions(applied: Applied) -> list[tuple[str, S]]:
    return [(a.execution_id, a.decision) for a in applied.answers]


def run(table: SlotTable, requests: list[SlotRequest]) -> list[tuple[str, S]]:
    out: list[tuple[str, S]] = []
    for n, request in enumerate(requests):
        out += decisions(table.apply(request, T0 + timedelta(seconds=n)))
    return out


def test_grants_up_to_the_limit_then_queues_and_promotes_in_order() -> None:
    table = SlotTable()
    got = run(table, [ask(f"e{i}") for i in range(5)])
    assert got == [("e0", S.RUNNING), ("e1", S.RUNNING)] + [(f"e{i}", S.QUEUED) for i in (2, 3, 4)]
    assert run(table, [release("e1")]) == [("e2", S.RUNNING)]
    assert run(table, [release("e0"), release("e2")]) == [("e3", S.RUNNING), ("e4", S.RUNNING)]
    assert table.holders("ns", "f") == ["e3", "e4"] and table.queued("ns", "f") == []


def test_answers_of_one_table_are_dated_in_decision_order_a_millisecond_apart() -> None:
    table = SlotTable()
    now = [T0, T0 + timedelta(microseconds=10), T0 + timedelta(microseconds=20)]
    dates = [
        a.at for e, at in zip("abc", now, strict=True) for a in table.apply(ask(e), at).answers
    ]
    assert dates == [T0 + timedelta(milliseconds=n) for n in range(3)]


def test_repeated_requests_change_nothing() -> None:
    table = SlotTable()
    run(table, [ask("a", limit=1), ask("b", limit=1)])
    again = table.apply(ask("b", limit=1), T0)
    assert decisions(again) == [("b", S.QUEUED)] and again.changed == []
    assert decisions(table.apply(ask("a", limit=1), T0)) == [("a", S.RUNNING)]
    assert run(table, [release("zzz", limit=1)]) == []  # never asked
    assert run(table, [release("a", limit=1)]) == [("b", S.RUNNING)]
    assert run(table, [release("a", limit=1)]) == []  # released twice: the second is a no-op
    assert table.holders("ns", "f") == ["b"]


def test_an_older_attempt_neither_releases_nor_asks_over_a_newer_one() -> None:
    table = SlotTable()
    run(table, [ask("a", limit=1, attempt=2)])
    assert run(table, [release("a", limit=1, attempt=1), ask("a", limit=1, attempt=1)]) == []
    assert table.holders("ns", "f") == ["a"]
    assert run(table, [release("a", limit=1, attempt=2)]) == []
    assert table.holders("ns", "f") == []


def test_cancel_and_fail_refuse_at_the_limit_and_keep_nothing() -> None:
    table = SlotTable()
    got = run(table, [ask("a", 1, "CANCEL"), ask("b", 1, "CANCEL"), ask("c", 1, "FAIL")])
    assert got == [("a", S.RUNNING), ("b", S.CANCELLED), ("c", S.FAILED)]
    assert table.queued("ns", "f") == []
    assert run(table, [ask("d", 1, "CANCEL", queue=True)]) == [("d", S.QUEUED)]  # a restart


def test_a_raised_limit_promotes_at_the_next_request() -> None:
    table = SlotTable()
    run(table, [ask("a", 1), ask("b", 1), ask("c", 1)])
    assert run(table, [ask("d", 3)]) == [("b", S.RUNNING), ("c", S.RUNNING), ("d", S.QUEUED)]


def test_no_entries_left_means_no_state() -> None:
    table = SlotTable()
    run(table, [ask("a"), release("a")])
    assert table.record("ns/f", "a") == ("ns/f/a", None)
    assert table._flows == {}


def _records(table: SlotTable, applied: list[Applied]) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for done in applied:
        for key, eid in done.changed:
            record_key, value = table.record(key, eid)
            out[record_key] = value
    return out


def _latest(log: list[tuple[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for key, value in log:
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    return latest


REQUESTS: list[SlotRequest] = [
    *(ask(f"e{i}") for i in range(6)),
    release("e0"),
    release("e3"),  # killed while queued
    release("e1"),
    ask("e6"),
    release("e2"),
]


def test_replay_after_a_partial_changelog_write_makes_the_same_decisions() -> None:
    """Whatever part of a batch's changelog records was written before a crash, restoring
    from it and replaying the batch ends in the same table, and no live execution gets a slot
    it does not hold."""
    whole = SlotTable()
    first, batch = REQUESTS[:6], REQUESTS[6:]
    log: list[tuple[str, dict[str, Any] | None]] = []
    for n, request in enumerate(first):
        done = whole.apply(request, T0 + timedelta(seconds=n))
        log += list(_records(whole, [done]).items())
    applied = [whole.apply(r, T0 + timedelta(seconds=10 + n)) for n, r in enumerate(batch)]
    batch_records = list(_records(whole, applied).items())
    granted = {a.execution_id for done in applied for a in done.answers if a.decision is S.RUNNING}
    released = {r.execution_id for r in batch if isinstance(r, Release)}
    for written in range(len(batch_records) + 1):
        for subset in (batch_records[:written], batch_records[written:]):
            replayed = SlotTable.restore(_latest(log + subset))
            again = [replayed.apply(r, T0 + timedelta(seconds=20 + n)) for n, r in enumerate(batch)]
            assert replayed.holders("ns", "f") == whole.holders("ns", "f")
            assert replayed.queued("ns", "f") == whole.queued("ns", "f")
            regranted = {
                a.execution_id for done in again for a in done.answers if a.decision is S.RUNNING
            }
            # A grant repeated, or one to an execution whose own release comes later in the
            # batch (it ended: its executor gives such a slot back), never a live one's extra.
            assert regranted <= granted | set(whole.holders("ns", "f")) | released
    assert len(whole.holders("ns", "f")) == 2
