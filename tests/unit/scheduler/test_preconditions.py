"""Flow trigger preconditions: upstream flows, filters, time windows, reset, persistence."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from scheduler_helpers import flow_with, utc

from kestream.models.flow import TimeWindow
from kestream.models.state import StateType
from kestream.scheduler import EndedExecution, FlowTriggerBook, PreconditionWindow
from kestream.scheduler.preconditions import window_bounds

S = StateType
KEY = "company.team/downstream/on-upstream"


def book_for(preconditions: str) -> FlowTriggerBook:
    book = FlowTriggerBook()
    book.sync_flow(flow_with(trigger(preconditions), flow_id="downstream"))
    return book


def trigger(preconditions: str) -> str:
    text = "  - id: on-upstream\n    type: io.kestra.plugin.core.trigger.Flow\n"
    return text + "    preconditions:\n" + preconditions


def ended(
    flow_id: str,
    at: datetime,
    state: StateType = S.SUCCESS,
    *,
    namespace: str = "company.team",
    outputs: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> EndedExecution:
    return EndedExecution(
        execution_id=f"{flow_id}-{at.isoformat()}",
        namespace=namespace,
        flow_id=flow_id,
        state=state,
        labels=labels or {},
        outputs=outputs,
        end_date=at,
    )


TWO_FLOWS = """\
      id: both
      flows:
        - namespace: company.team
          flowId: a
          states: [SUCCESS]
        - namespace: company.team
          flowId: b
"""


def test_one_upstream_flow_fires_for_each_matching_execution() -> None:
    book = book_for(
        "      id: one\n      flows:\n        - namespace: company.team\n          flowId: a\n"
        "          states: [SUCCESS]\n          labels:\n            env: prod\n"
    )
    at = utc(2025, 1, 1, 10)
    prod = {"env": "prod"}
    first = book.on_execution_end(ended("a", at, labels=prod))
    assert len(first.events) == 1 and [w.met for w in first.windows] == [{}]
    assert len(book.on_execution_end(ended("a", utc(2025, 1, 1, 11), labels=prod)).events) == 1
    assert book.on_execution_end(ended("a", at, S.FAILED, labels=prod)).events == []
    assert book.on_execution_end(ended("a", at, labels={"env": "dev"})).events == []
    assert book.on_execution_end(ended("b", at, labels=prod)).events == []


def test_several_flows_fire_once_all_have_ended_in_the_window() -> None:
    book = book_for(TWO_FLOWS)
    waiting = book.on_execution_end(ended("a", utc(2025, 1, 1, 9), outputs={"x": 1, "m": {"p": 1}}))
    assert waiting.events == []
    (window,) = waiting.windows
    assert window.record_key == f"{KEY}/both" and set(window.met) == {"condition_1"}
    assert book.on_execution_end(ended("a", utc(2025, 1, 1, 9, 5), S.FAILED)).events == []
    done = book.on_execution_end(ended("b", utc(2025, 1, 1, 10), outputs={"y": 2, "m": {"q": 2}}))
    (event,) = done.events
    assert event.trigger is not None
    variables = event.trigger["variables"]
    assert variables["flowId"] == "b"  # the execution that completed the set
    assert variables["outputs"] == {"x": 1, "y": 2, "m": {"p": 1, "q": 2}}
    (reset,) = done.windows
    assert done.removed_windows == [] and list(book.windows()) == [reset]
    assert reset.met == {} and reset.outputs == {} and reset.counted == {}
    assert set(reset.recent) == {
        ("a-2025-01-01T09:00:00+00:00", 1),
        ("b-2025-01-01T10:00:00+00:00", 1),
    }
    # reset on success: b alone is not enough again
    assert book.on_execution_end(ended("b", utc(2025, 1, 1, 11))).events == []


def test_without_reset_every_new_match_fires_again() -> None:
    book = book_for(TWO_FLOWS + "      resetOnSuccess: false\n")
    book.on_execution_end(ended("a", utc(2025, 1, 1, 9)))
    assert len(book.on_execution_end(ended("b", utc(2025, 1, 1, 10))).events) == 1
    assert len(book.on_execution_end(ended("b", utc(2025, 1, 1, 11))).events) == 1
    assert book.on_execution_end(ended("c", utc(2025, 1, 1, 11))).events == []


def test_a_new_day_starts_a_new_duration_window() -> None:
    book = book_for(TWO_FLOWS)
    book.on_execution_end(ended("a", utc(2025, 1, 1, 23, 59)))
    assert book.on_execution_end(ended("b", utc(2025, 1, 2, 0, 1))).events == []
    assert len(book.on_execution_end(ended("a", utc(2025, 1, 2, 8))).events) == 1


def test_a_sliding_window_forgets_what_is_older_than_the_window() -> None:
    book = book_for(
        TWO_FLOWS + "      timeWindow:\n        type: SLIDING_WINDOW\n        window: PT1H\n"
    )
    book.on_execution_end(ended("a", utc(2025, 1, 1, 10)))
    assert book.on_execution_end(ended("b", utc(2025, 1, 1, 11, 30))).events == []
    assert len(book.on_execution_end(ended("a", utc(2025, 1, 1, 12))).events) == 1


def test_a_daily_deadline_ignores_executions_after_it() -> None:
    book = book_for(
        TWO_FLOWS
        + "      timeWindow:\n        type: DAILY_TIME_DEADLINE\n        deadline: '09:00:00'\n"
    )
    book.on_execution_end(ended("a", utc(2025, 1, 1, 8)))
    assert book.on_execution_end(ended("b", utc(2025, 1, 1, 9, 30))).events == []
    assert len(book.on_execution_end(ended("b", utc(2025, 1, 1, 8, 59))).events) == 1


@pytest.mark.parametrize(
    ("window", "now", "expected"),
    [
        (TimeWindow(), utc(2025, 1, 1, 13), (utc(2025, 1, 1), utc(2025, 1, 2))),
        (
            TimeWindow(window="PT6H", windowAdvance="PT6H"),
            utc(2025, 1, 1, 5),
            (utc(2025, 1, 1, 0), utc(2025, 1, 1, 6)),
        ),
        (
            TimeWindow(window="PT6H", windowAdvance="PT6H"),
            utc(2025, 1, 1, 13),
            (utc(2025, 1, 1, 12), utc(2025, 1, 1, 18)),
        ),
        (
            TimeWindow(type="DAILY_TIME_WINDOW", startTime="06:00:00", endTime="09:00:00"),
            utc(2025, 1, 1, 7),
            (utc(2025, 1, 1, 6), utc(2025, 1, 1, 9)),
        ),
        (
            TimeWindow(type="DAILY_TIME_WINDOW", startTime="06:00:00", endTime="09:00:00"),
            utc(2025, 1, 1, 10),
            None,
        ),
        (
            TimeWindow(type="DAILY_TIME_WINDOW", startTime="22:00:00", endTime="02:00:00"),
            utc(2025, 1, 2, 1),
            (utc(2025, 1, 1, 22), utc(2025, 1, 2, 2)),
        ),
    ],
)
def test_window_bounds(window: TimeWindow, now: datetime, expected: Any) -> None:
    assert window_bounds(window, now) == expected


@pytest.mark.parametrize(
    ("filters", "execution", "expected"),
    [
        ("- field: NAMESPACE\n  type: STARTS_WITH\n  value: company", {}, True),
        ("- field: NAMESPACE\n  type: STARTS_WITH\n  value: other", {}, False),
        ("- field: FLOW_ID\n  type: ENDS_WITH\n  value: load", {"flow_id": "payload"}, True),
        ("- field: FLOW_ID\n  type: CONTAINS\n  value: ylo", {"flow_id": "payload"}, True),
        ("- field: FLOW_ID\n  type: REGEX\n  value: 'pay.*'", {"flow_id": "payload"}, True),
        ("- field: FLOW_ID\n  type: REGEX\n  value: 'pay'", {"flow_id": "payload"}, False),
        ("- field: STATE\n  type: EQUAL_TO\n  value: FAILED", {"state": S.FAILED}, True),
        ("- field: STATE\n  type: NOT_EQUAL_TO\n  value: FAILED", {"state": S.FAILED}, False),
        ("- field: STATE\n  type: IN\n  values: [FAILED, KILLED]", {"state": S.KILLED}, True),
        ("- field: STATE\n  type: NOT_IN\n  values: [FAILED, KILLED]", {"state": S.KILLED}, False),
        ("- field: FLOW_ID\n  type: IS_NOT_NULL", {}, True),
        (
            "- field: FLOW_ID\n  type: EQUAL_TO\n  value: x\n"
            "- field: NAMESPACE\n  type: EQUAL_TO\n  value: company.team",
            {},
            False,
        ),
    ],
)
def test_where_filters(filters: str, execution: dict[str, Any], expected: bool) -> None:
    indented = "".join(f"            {line}\n" for line in filters.splitlines())
    book = book_for("      id: w\n      where:\n        - id: f1\n          filters:\n" + indented)
    source = ended(
        execution.get("flow_id", "up"), utc(2025, 1, 1), execution.get("state", S.SUCCESS)
    )
    assert bool(book.on_execution_end(source).events) is expected


def test_where_filters_joined_by_or() -> None:
    book = book_for(
        "      id: w\n      where:\n        - id: f1\n          operand: OR\n          filters:\n"
        "            - field: FLOW_ID\n              type: EQUAL_TO\n              value: x\n"
        "            - field: FLOW_ID\n              type: EQUAL_TO\n              value: y\n"
    )
    assert book.on_execution_end(ended("y", utc(2025, 1, 1))).events
    assert not book.on_execution_end(ended("z", utc(2025, 1, 1))).events


def test_a_window_record_survives_a_restart() -> None:
    first = book_for(TWO_FLOWS)
    (window,) = first.on_execution_end(ended("a", utc(2025, 1, 1, 9), outputs={"x": 1})).windows
    restored = PreconditionWindow.from_json(window.to_json())
    assert restored == window
    second = book_for(TWO_FLOWS)
    second.load_window(restored)
    (event,) = second.on_execution_end(ended("b", utc(2025, 1, 1, 10))).events
    assert event.trigger is not None and event.trigger["variables"]["outputs"] == {"x": 1}
    with pytest.raises(ValueError, match="not valid JSON"):
        PreconditionWindow.from_json(b"{")
    with pytest.raises(ValueError, match="bad shape"):
        PreconditionWindow.from_json(b'{"key": "k"}')


def test_changed_preconditions_drop_the_window() -> None:
    book = book_for(TWO_FLOWS)
    book.on_execution_end(ended("a", utc(2025, 1, 1, 9)))
    removed = book.sync_flow(
        flow_with(trigger(TWO_FLOWS.replace("flowId: b", "flowId: c")), flow_id="downstream")
    )
    assert removed == [f"{KEY}/both"] and list(book.windows()) == []
    assert book.sync_flow(flow_with(trigger(TWO_FLOWS), flow_id="downstream")) == []


@pytest.mark.parametrize("reset", [True, False])
def test_a_replayed_batch_changes_nothing_and_fires_nothing(reset: bool) -> None:
    """After a crash between the window records and the offsets' commit, the ended executions
    are read again: each (execution, attempt) is counted once, whatever the reset."""
    book = book_for(TWO_FLOWS + f"      resetOnSuccess: {str(reset).lower()}\n")
    batch = [ended("a", utc(2025, 1, 1, 9)), ended("b", utc(2025, 1, 1, 10))]
    assert [len(book.on_execution_end(e).events) for e in batch] == [0, 1]
    before = [w.to_json() for w in book.windows()]
    restarted = book_for(TWO_FLOWS + f"      resetOnSuccess: {str(reset).lower()}\n")
    for window in book.windows():
        restarted.load_window(PreconditionWindow.from_json(window.to_json()))
    for replaying in (book, restarted):
        for e in batch:
            replayed = replaying.on_execution_end(e)
            assert replayed.events == [] and replayed.windows == []
        assert [w.to_json() for w in replaying.windows()] == before
    # A new upstream execution is still counted (and fires at once without the reset).
    fresh = restarted.on_execution_end(ended("b", utc(2025, 1, 1, 11)))
    assert len(fresh.events) == (0 if reset else 1)


def test_a_window_record_without_counted_ids_loads_as_empty() -> None:
    stored = (
        b'{"key": "k", "preconditionsId": "p", "start": null, "end": null,'
        b' "met": {"c": "2025-01-01T09:00:00+00:00"}, "outputs": {}}'
    )
    window = PreconditionWindow.from_json(stored)
    assert window.counted == {} and window.recent == {} and set(window.met) == {"c"}
    assert PreconditionWindow.from_json(window.to_json()) == window


def test_a_batch_that_reset_the_window_twice_is_replayed_without_a_count() -> None:
    """The batch read again after a crash completed the window twice (two resets): the
    executions of the first completion are remembered too, so none of them is counted into
    the window a second time, and the replay fires nothing."""
    book = book_for(TWO_FLOWS + "      resetOnSuccess: true\n")
    batch = [
        ended("a", utc(2025, 1, 1, 9)),
        ended("b", utc(2025, 1, 1, 10)),
        ended("a", utc(2025, 1, 1, 11)),
        ended("b", utc(2025, 1, 1, 12)),
    ]
    assert [len(book.on_execution_end(e).events) for e in batch] == [0, 1, 0, 1]
    (window,) = book.windows()
    assert window.met == {} and window.counted == {}
    restarted = book_for(TWO_FLOWS + "      resetOnSuccess: true\n")
    restarted.load_window(PreconditionWindow.from_json(window.to_json()))
    for replaying in (book, restarted):
        for e in batch:
            replayed = replaying.on_execution_end(e)
            assert replayed.events == [] and replayed.windows == [], e.execution_id
        (again,) = replaying.windows()
        assert again.met == {} and again.counted == {}
    # The next completion needs both upstream flows again.
    assert restarted.on_execution_end(ended("b", utc(2025, 1, 1, 13))).events == []
    assert len(restarted.on_execution_end(ended("a", utc(2025, 1, 1, 14))).events) == 1
