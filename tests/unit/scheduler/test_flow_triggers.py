"""Flow triggers: states, each condition type, no self-trigger, and the created execution."""

from __future__ import annotations

from typing import Any

import pytest
from scheduler_helpers import flow_with, utc

from kestream.models.ids import derived_id
from kestream.models.state import StateType
from kestream.scheduler import EndedExecution, FlowTriggerBook

S = StateType
FLOW_TRIGGER = "io.kestra.plugin.core.trigger.Flow"
COND = "io.kestra.plugin.core.condition."


def listener(body: str = "", *, flow_id: str = "downstream", **extra: Any):  # type: ignore[no-untyped-def]
    text = f"  - id: on-upstream\n    type: {FLOW_TRIGGER}\n" + body
    return flow_with(text, flow_id=flow_id, **extra)


def ended(
    state: StateType = S.SUCCESS,
    *,
    namespace: str = "company.team",
    flow_id: str = "upstream",
    labels: dict[str, str] | None = None,
    outputs: dict[str, Any] | None = None,
    attempt: int = 1,
    execution_id: str = "exec-1",
) -> EndedExecution:
    return EndedExecution(
        execution_id=execution_id,
        namespace=namespace,
        flow_id=flow_id,
        state=state,
        labels=labels or {},
        outputs=outputs,
        attempt=attempt,
        flow_revision=2,
        end_date=utc(2025, 1, 1, 12),
    )


def fired(body: str, execution: EndedExecution, **extra: Any) -> bool:
    book = FlowTriggerBook()
    book.sync_flow(listener(body, **extra))
    return bool(book.on_execution_end(execution).events)


def test_the_created_execution() -> None:
    book = FlowTriggerBook()
    flow = listener("    inputs:\n      date: '{{ trigger.outputs.date }}'\n", revision=3)
    book.sync_flow(flow)
    source = ended(
        labels={"system.correlationId": "root-1", "team.name": "data"},
        outputs={"date": "2025-01-01"},
        attempt=2,
    )
    (event,) = book.on_execution_end(source).events
    assert event.execution_id == derived_id(
        "flow-trigger", "company.team", "downstream", "on-upstream", "exec-1", 2, "SUCCESS"
    )
    assert (event.namespace, event.flow_id, event.revision) == ("company.team", "downstream", 3)
    assert event.inputs == {"date": "{{ trigger.outputs.date }}"} and event.validate_inputs
    assert event.labels == {"system.correlationId": "root-1"}
    assert event.trigger == {
        "id": "on-upstream",
        "type": FLOW_TRIGGER,
        "variables": {
            "executionId": "exec-1",
            "namespace": "company.team",
            "flowId": "upstream",
            "flowRevision": 2,
            "state": "SUCCESS",
            "executionLabels": {"team": {"name": "data"}},
            "outputs": {"date": "2025-01-01"},
        },
    }
    # the same ended attempt again: the same execution id (the executor drops the repeat)
    (again,) = book.on_execution_end(source).events
    assert again.execution_id == event.execution_id


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (S.SUCCESS, True),
        (S.WARNING, True),
        (S.FAILED, True),
        (S.KILLED, True),
        (S.CANCELLED, True),
        (S.PAUSED, True),
        (S.RUNNING, False),
        (S.CREATED, False),
    ],
)
def test_default_states_are_the_terminal_ones_and_paused(state: StateType, expected: bool) -> None:
    assert fired("", ended(state)) is expected


def test_states_restrict_the_states_listened_to() -> None:
    body = "    states: [FAILED, WARNING]\n"
    assert fired(body, ended(S.FAILED))
    assert not fired(body, ended(S.SUCCESS))


def test_a_flow_never_triggers_itself() -> None:
    assert not fired("", ended(flow_id="downstream"))
    assert fired("", ended(flow_id="other"))


def test_disabled_flows_and_triggers_do_not_fire() -> None:
    assert not fired("    disabled: true\n", ended())
    assert not fired("", ended(), disabled="true")


def condition(kind: str, props: str) -> str:
    return f"    conditions:\n      - type: {COND}{kind}\n" + props


def test_execution_flow_condition() -> None:
    body = condition("ExecutionFlow", "        namespace: company.team\n        flowId: upstream\n")
    assert fired(body, ended())
    assert not fired(body, ended(flow_id="other"))
    assert not fired(body, ended(namespace="company.other"))


@pytest.mark.parametrize(
    ("props", "namespace", "expected"),
    [
        ("namespace: company.team", "company.team", True),
        ("namespace: company", "company.team", False),
        ("namespace: company\n        comparison: PREFIX", "company.team", True),
        ("namespace: company\n        prefix: true", "company.team", True),
        ("namespace: team\n        comparison: SUFFIX", "company.team", True),
        ("namespace: company\n        comparison: SUFFIX", "company.team", False),
        # comparison wins over the older prefix flag
        (
            "namespace: company\n        comparison: EQUALS\n        prefix: true",
            "company.team",
            False,
        ),
    ],
)
def test_execution_namespace_condition(props: str, namespace: str, expected: bool) -> None:
    body = condition("ExecutionNamespace", f"        {props}\n")
    assert fired(body, ended(namespace=namespace)) is expected


@pytest.mark.parametrize(
    ("props", "state", "expected"),
    [
        ("in: [SUCCESS]", S.SUCCESS, True),
        ("in: [SUCCESS]", S.FAILED, False),
        ("notIn: [SUCCESS]", S.FAILED, True),
        ("notIn: [SUCCESS]", S.SUCCESS, False),
        ("in: [FAILED, KILLED]\n        notIn: [KILLED]", S.KILLED, False),
    ],
)
def test_execution_status_condition(props: str, state: StateType, expected: bool) -> None:
    body = condition("ExecutionStatus", f"        {props}\n")
    assert fired(body, ended(state)) is expected


def test_execution_status_condition_is_checked_after_states() -> None:
    body = "    states: [SUCCESS]\n" + condition("ExecutionStatus", "        in: [FAILED]\n")
    assert not fired(body, ended(S.FAILED))


@pytest.mark.parametrize(
    "labels",
    [
        "        labels:\n          env: prod\n          owner: jane\n",
        "        labels:\n          - key: env\n            value: prod\n"
        "          - key: owner\n            value: jane\n",
    ],
)
def test_execution_labels_condition_needs_every_label(labels: str) -> None:
    body = condition("ExecutionLabels", labels)
    assert fired(body, ended(labels={"env": "prod", "owner": "jane", "x": "y"}))
    assert not fired(body, ended(labels={"env": "prod"}))
    assert not fired(body, ended(labels={"env": "dev", "owner": "jane"}))


def test_legacy_condition_names_work() -> None:
    body = (
        "    conditions:\n"
        "      - type: io.kestra.core.models.conditions.types.ExecutionStatusCondition\n"
        "        in: [FAILED]\n"
    )
    assert fired(body, ended(S.FAILED)) and not fired(body, ended(S.SUCCESS))


def test_every_condition_must_hold() -> None:
    body = (
        "    conditions:\n"
        f"      - type: {COND}ExecutionStatus\n        in: [SUCCESS]\n"
        f"      - type: {COND}ExecutionFlow\n"
        "        namespace: company.team\n        flowId: upstream\n"
    )
    assert fired(body, ended(S.SUCCESS))
    assert not fired(body, ended(S.FAILED))
    assert not fired(body, ended(S.SUCCESS, flow_id="other"))


def test_removed_flows_stop_listening() -> None:
    book = FlowTriggerBook()
    book.sync_flow(listener())
    assert len(book) == 1
    book.remove_flow("company.team", "downstream")
    assert book.on_execution_end(ended()).events == [] and len(book) == 0


def test_a_pause_and_the_later_end_of_one_attempt_each_fire_once() -> None:
    book = FlowTriggerBook()
    book.sync_flow(listener())
    (paused,) = book.on_execution_end(ended(S.PAUSED)).events
    (succeeded,) = book.on_execution_end(ended(S.SUCCESS)).events
    (again,) = book.on_execution_end(ended(S.SUCCESS)).events  # a redelivered update
    assert paused.execution_id != succeeded.execution_id
    assert again.execution_id == succeeded.execution_id
