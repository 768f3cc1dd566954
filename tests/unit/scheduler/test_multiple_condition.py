"""MultipleCondition on Flow triggers: Kestra's documentation examples, its window, its reset,
and what is refused. It shares the window machinery of ``preconditions``."""

from __future__ import annotations

from datetime import datetime

import pytest
from scheduler_helpers import TASKS, flow_with, utc

from kestream.models.flow import FlowValidationError, check_flow, parse_flow
from kestream.models.state import StateType
from kestream.scheduler import EndedExecution, FlowTriggerBook

S = StateType

#: The example of Kestra's MultipleCondition page (current names, ``timeWindow``).
DOCS_EXAMPLE = """\
id: schedule_condition_multiplecondition
namespace: company.team

tasks:
  - id: log_message
    type: io.kestra.plugin.core.log.Log
    message: "This flow will execute when `multiplecondition_flow_a` and \\
      `multiplecondition_flow_b` are successfully executed in the last 12 hours."

triggers:
  - id: multiple_listen_flow
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionStatus
        in:
          - SUCCESS
      - id: multiple
        type: io.kestra.plugin.core.condition.MultipleCondition
        timeWindow:
          window: PT12H
        conditions:
          flow_a:
            type: io.kestra.plugin.core.condition.ExecutionFlow
            namespace: company.team
            flowId: multiplecondition_flow_a
          flow_b:
            type: io.kestra.plugin.core.condition.ExecutionFlow
            namespace: company.team
            flowId: multiplecondition_flow_b
"""

#: The older example (``window``/``windowAdvance``, the ``...Condition`` names of 0.x).
OLD_EXAMPLE = """\
id: multiple
namespace: io.kestra.tests
tasks:
  - id: only
    type: io.kestra.core.tasks.log.Log
    message: both ran
triggers:
  - id: multiple-listen-flow
    type: io.kestra.core.models.triggers.types.Flow
    conditions:
      - type: io.kestra.core.models.conditions.types.ExecutionStatusCondition
        in:
          - SUCCESS
      - id: multiple
        type: io.kestra.core.models.conditions.types.MultipleCondition
        window: P1D
        windowAdvance: P0D
        conditions:
          flow-a:
            type: io.kestra.core.models.conditions.types.ExecutionFlowCondition
            namespace: io.kestra.demo
            flowId: multiplecondition-flow-a
          flow-b:
            type: io.kestra.core.models.conditions.types.ExecutionFlowCondition
            namespace: io.kestra.demo
            flowId: multiplecondition-flow-b
"""


def ended(
    namespace: str, flow_id: str, at: datetime, state: StateType = S.SUCCESS
) -> EndedExecution:
    return EndedExecution(
        execution_id=f"{flow_id}-{at.isoformat()}-{state}",
        namespace=namespace,
        flow_id=flow_id,
        state=state,
        end_date=at,
    )


def book_of(source: str) -> FlowTriggerBook:
    book = FlowTriggerBook()
    book.sync_flow(parse_flow(source))
    return book


def test_the_docs_example_fires_once_both_flows_succeeded_within_twelve_hours() -> None:
    book = book_of(DOCS_EXAMPLE)
    ns = "company.team"
    first = book.on_execution_end(ended(ns, "multiplecondition_flow_a", utc(2025, 1, 1, 1)))
    assert first.events == [] and [w.record_key for w in first.windows] == [
        "company.team/schedule_condition_multiplecondition/multiple_listen_flow/multiple"
    ]
    assert set(first.windows[0].met) == {"flow_a"}
    # A failed b is refused by ExecutionStatus before the window sees it.
    failed = book.on_execution_end(
        ended(ns, "multiplecondition_flow_b", utc(2025, 1, 1, 2), S.FAILED)
    )
    assert failed.events == [] and failed.windows == []
    fired = book.on_execution_end(ended(ns, "multiplecondition_flow_b", utc(2025, 1, 1, 3)))
    assert len(fired.events) == 1
    assert fired.events[0].trigger["variables"]["flowId"] == "multiplecondition_flow_b"
    # resetOnSuccess (default): the window starts over, one flow alone fires nothing again.
    (reset,) = fired.windows
    assert fired.removed_windows == [] and reset.record_key == first.windows[0].record_key
    assert reset.met == {} and len(reset.recent) == 2 and list(book.windows()) == [reset]
    again = book.on_execution_end(ended(ns, "multiplecondition_flow_b", utc(2025, 1, 1, 4)))
    assert again.events == []


def test_a_duration_window_is_twelve_hours_from_midnight() -> None:
    book = book_of(DOCS_EXAMPLE)
    ns = "company.team"
    book.on_execution_end(ended(ns, "multiplecondition_flow_a", utc(2025, 1, 1, 11)))
    # 13:00 is in the next 12-hour window (12:00-24:00): a is not counted there.
    late = book.on_execution_end(ended(ns, "multiplecondition_flow_b", utc(2025, 1, 1, 13)))
    assert late.events == [] and set(late.windows[0].met) == {"flow_b"}


def test_the_older_window_and_window_advance_and_names() -> None:
    book = book_of(OLD_EXAMPLE)
    ns = "io.kestra.demo"
    book.on_execution_end(ended(ns, "multiplecondition-flow-a", utc(2025, 1, 1, 23)))
    # P1D from midnight (P0D advance): the next day is another window.
    next_day = book.on_execution_end(ended(ns, "multiplecondition-flow-b", utc(2025, 1, 2, 1)))
    assert next_day.events == []
    same_day = book.on_execution_end(ended(ns, "multiplecondition-flow-a", utc(2025, 1, 2, 5)))
    assert len(same_day.events) == 1


def test_window_advance_moves_the_window_start() -> None:
    source = OLD_EXAMPLE.replace("windowAdvance: P0D", "windowAdvance: PT6H")
    book = book_of(source)
    ns = "io.kestra.demo"
    book.on_execution_end(ended(ns, "multiplecondition-flow-a", utc(2025, 1, 1, 23)))
    # The window runs 06:00 to 06:00: 23:00 and 05:00 the next day are in one.
    fired = book.on_execution_end(ended(ns, "multiplecondition-flow-b", utc(2025, 1, 2, 5)))
    assert len(fired.events) == 1


def test_sla_is_the_older_name_of_time_window_and_reset_can_be_off() -> None:
    source = DOCS_EXAMPLE.replace("timeWindow:", "resetOnSuccess: false\n        sla:").replace(
        "window: PT12H", "type: SLIDING_WINDOW\n          window: PT1H"
    )
    book = book_of(source)
    ns = "company.team"
    book.on_execution_end(ended(ns, "multiplecondition_flow_a", utc(2025, 1, 1, 10)))
    assert (
        len(
            book.on_execution_end(
                ended(ns, "multiplecondition_flow_b", utc(2025, 1, 1, 10, 30))
            ).events
        )
        == 1
    )
    # Not reset: a alone fires again while b is within the last hour ...
    assert (
        len(
            book.on_execution_end(ended(ns, "multiplecondition_flow_a", utc(2025, 1, 1, 11))).events
        )
        == 1
    )
    # ... and no longer once b is older than the sliding hour.
    assert (
        book.on_execution_end(ended(ns, "multiplecondition_flow_a", utc(2025, 1, 1, 12))).events
        == []
    )


def test_with_preconditions_both_windows_must_be_complete() -> None:
    status = "    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionStatus"
    source = DOCS_EXAMPLE.replace(
        status,
        "    preconditions:\n      id: upstream\n      flows:\n        - namespace: other\n"
        "          flowId: c\n" + status,
    )
    book = book_of(source)
    ns = "company.team"
    book.on_execution_end(ended(ns, "multiplecondition_flow_a", utc(2025, 1, 1, 1)))
    book.on_execution_end(ended(ns, "multiplecondition_flow_b", utc(2025, 1, 1, 2)))
    assert {w.preconditions_id for w in book.windows()} == {"multiple"}
    fired = book.on_execution_end(ended("other", "c", utc(2025, 1, 1, 3)))
    assert len(fired.events) == 1 and all(w.met == {} for w in book.windows())


def test_a_changed_multiple_condition_starts_its_window_over() -> None:
    book = book_of(DOCS_EXAMPLE)
    book.on_execution_end(ended("company.team", "multiplecondition_flow_a", utc(2025, 1, 1, 1)))
    assert book.sync_flow(parse_flow(DOCS_EXAMPLE)) == []  # unchanged: kept
    assert len(list(book.windows())) == 1
    changed = DOCS_EXAMPLE.replace("PT12H", "PT6H")
    assert len(book.sync_flow(parse_flow(changed))) == 1
    assert list(book.windows()) == []


def _trigger(conditions: str, trigger_type: str = "io.kestra.plugin.core.trigger.Flow") -> str:
    return f"  - id: t\n    type: {trigger_type}\n    conditions:\n" + conditions


MC = "      - id: m\n        type: io.kestra.plugin.core.condition.MultipleCondition\n"
INNER = (
    "        conditions:\n          a:\n            type: io.kestra.plugin.core.condition."
    "ExecutionFlow\n            namespace: n\n            flowId: a\n"
)


@pytest.mark.parametrize(
    ("trigger", "needle"),
    [
        (
            _trigger(MC + INNER, "io.kestra.plugin.core.trigger.Webhook\n    key: k"),
            "does not apply",
        ),
        (_trigger(MC), "conditions"),
        (
            _trigger(
                MC + "        window: P1D\n        timeWindow:\n          window: P1D\n" + INNER
            ),
            "not both",
        ),
        (
            _trigger(MC + "        conditions:\n          a:\n            type: nope\n"),
            "conditions.a: unknown condition type",
        ),
        (
            _trigger(
                MC + "        conditions:\n          a:\n            type: "
                "io.kestra.plugin.core.condition.ExecutionFlow\n"
            ),
            "conditions.a",
        ),
        (
            _trigger(
                MC + "        conditions:\n          a:\n            type: "
                "io.kestra.plugin.core.condition.MultipleCondition\n"
            ),
            "cannot nest",
        ),
        (
            "  - id: t\n    type: io.kestra.plugin.core.trigger.Flow\n    preconditions:\n"
            "      id: m\n      flows:\n        - namespace: n\n    conditions:\n" + MC + INNER,
            "id 'm' names two windows",
        ),
    ],
)
def test_what_is_refused_at_deploy(trigger: str, needle: str) -> None:
    text = "id: f\nnamespace: company.team\n" + TASKS + "triggers:\n" + trigger
    problems = check_flow(text)
    assert problems and needle in problems[0].message, problems
    with pytest.raises(FlowValidationError):
        flow_with(trigger)


@pytest.mark.parametrize("reset", [True, False])
def test_a_replayed_batch_counts_each_upstream_once(reset: bool) -> None:
    """Replayed ended executions (a crash before the offsets' commit) neither change the
    MultipleCondition's window nor start another execution, with or without the reset."""
    source = (
        DOCS_EXAMPLE
        if reset
        else DOCS_EXAMPLE.replace("timeWindow:", "resetOnSuccess: false\n        timeWindow:")
    )
    book = book_of(source)
    ns = "company.team"
    batch = [
        ended(ns, "multiplecondition_flow_a", utc(2025, 1, 1, 1)),
        ended(ns, "multiplecondition_flow_b", utc(2025, 1, 1, 2)),
    ]
    assert [len(book.on_execution_end(e).events) for e in batch] == [0, 1]
    before = [w.to_json() for w in book.windows()]
    for e in batch:
        replayed = book.on_execution_end(e)
        assert replayed.events == [] and replayed.windows == []
    assert [w.to_json() for w in book.windows()] == before
    later = book.on_execution_end(ended(ns, "multiplecondition_flow_b", utc(2025, 1, 1, 3)))
    assert len(later.events) == (0 if reset else 1)
