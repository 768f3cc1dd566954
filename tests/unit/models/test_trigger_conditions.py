"""Trigger conditions and preconditions: parsed into typed models, refused when kestream
would not evaluate them, with a message naming the flow, the trigger and the place."""

from __future__ import annotations

import pytest

from kestream.models.flow import (
    ExecutionLabelsCondition,
    ExecutionNamespaceCondition,
    ExecutionStatusCondition,
    FlowTrigger,
    check_flow,
    parse_flow,
)
from kestream.models.state import StateType

HEAD = (
    "id: f\nnamespace: company.team\n"  # 1-2
    "tasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"  # 3-6
    "triggers:\n"  # 7
    "  - id: up\n"  # 8
    "    type: io.kestra.plugin.core.trigger.Flow\n"  # 9
)
COND = "io.kestra.plugin.core.condition."


def test_conditions_stay_raw_and_have_a_typed_form() -> None:
    flow = parse_flow(
        HEAD
        + "    conditions:\n"
        + f"      - type: {COND}ExecutionStatus\n        in: [SUCCESS]\n        notIn: [FAILED]\n"
        + f"      - type: {COND}ExecutionNamespace\n        namespace: company\n"
        + "        prefix: true\n"
        + f"      - type: {COND}ExecutionLabels\n        labels:\n          - key: env\n"
        + "            value: prod\n"
    )
    trigger = flow.triggers[0]
    assert isinstance(trigger, FlowTrigger)
    assert trigger.conditions[0] == {
        "type": f"{COND}ExecutionStatus",
        "in": ["SUCCESS"],
        "notIn": ["FAILED"],
    }
    status, namespace, labels = trigger.condition_models
    assert isinstance(status, ExecutionStatusCondition)
    assert status.in_ == [StateType.SUCCESS] and status.notIn == [StateType.FAILED]
    assert isinstance(namespace, ExecutionNamespaceCondition)
    assert namespace.effective_comparison == "PREFIX"
    assert isinstance(labels, ExecutionLabelsCondition) and labels.labels == {"env": "prod"}
    assert type(flow).model_validate(flow.model_dump()) == flow


def test_preconditions_stay_raw_and_have_a_typed_form() -> None:
    flow = parse_flow(
        HEAD
        + "    preconditions:\n      id: both\n      flows:\n"
        + "        - namespace: company.team\n          flowId: a\n"
        + "      where:\n        - id: w\n          filters:\n"
        + "            - field: NAMESPACE\n              type: STARTS_WITH\n"
        + "              value: company\n"
        + "      timeWindow:\n        type: SLIDING_WINDOW\n        window: PT2H\n"
    )
    trigger = flow.triggers[0]
    assert isinstance(trigger, FlowTrigger)
    model = trigger.precondition_model
    assert model is not None and model.resetOnSuccess
    assert model.condition_ids() == ["condition_1", "condition_2_w"]
    assert model.timeWindow.window == "PT2H"
    assert type(flow).model_validate(flow.model_dump()) == flow


@pytest.mark.parametrize(
    ("block", "line", "path", "needle"),
    [
        (
            f"    conditions:\n      - type: {COND}Nope\n",
            11,
            "triggers[0].conditions[0]",
            "trigger 'up': unknown condition type 'io.kestra.plugin.core.condition.Nope'",
        ),
        (
            f"    conditions:\n      - type: {COND}ExecutionFlows\n",
            11,
            "triggers[0].conditions[0]",
            f"did you mean '{COND}ExecutionFlow'",
        ),
        (
            f"    conditions:\n      - type: {COND}Weekend\n",
            11,
            "triggers[0].conditions[0]",
            "trigger 'up': condition type 'io.kestra.plugin.core.condition.Weekend' applies to"
            " Schedule and Webhook triggers only",
        ),
        (
            "    conditions:\n      - in: [SUCCESS]\n",
            11,
            "triggers[0].conditions[0]",
            "a condition needs a 'type'",
        ),
        (
            f"    conditions:\n      - type: {COND}ExecutionStatus\n        in: [SUCCES]\n",
            11,
            "triggers[0].conditions[0]",
            "'in' should be",
        ),
        (
            f"    conditions:\n      - type: {COND}ExecutionFlow\n        namespace: a\n",
            11,
            "triggers[0].conditions[0]",
            "missing required property 'flowId'",
        ),
        (
            "    preconditions:\n      flows:\n        - namespace: a\n",
            10,
            "triggers[0].preconditions",
            "trigger 'up': preconditions: missing required property 'id'",
        ),
        (
            "    preconditions:\n      id: p\n",
            10,
            "triggers[0].preconditions",
            "preconditions need 'flows' or 'where'",
        ),
        (
            "    preconditions:\n      id: p\n      where:\n        - id: w\n          filters:\n"
            "            - field: EXPRESSION\n              type: IS_TRUE\n"
            "              value: x\n",
            10,
            "triggers[0].preconditions",
            "where[0].filters[0]: EXPRESSION filters are not supported by kestream yet",
        ),
        (
            "    preconditions:\n      id: p\n      where:\n        - id: w\n          filters:\n"
            "            - field: STATE\n              type: IN\n",
            10,
            "triggers[0].preconditions",
            "a IN filter needs 'values'",
        ),
        (
            "    preconditions:\n      id: p\n      flows:\n        - namespace: a\n"
            "      timeWindow:\n        type: DAILY_TIME_DEADLINE\n        window: PT1H\n",
            10,
            "triggers[0].preconditions",
            "'window' does not apply to a DAILY_TIME_DEADLINE time window",
        ),
        (
            "    preconditions:\n      id: p\n      flows:\n        - namespace: a\n"
            "      timeWindow:\n        window: soon\n",
            10,
            "triggers[0].preconditions",
            "is not an ISO-8601 duration",
        ),
    ],
)
def test_refused_conditions_name_the_flow_trigger_and_place(
    block: str, line: int, path: str, needle: str
) -> None:
    (problem,) = check_flow(HEAD + block)
    assert (problem.line, problem.path) == (line, path)
    assert needle in problem.message
    assert str(problem).startswith("flow company.team.f (")


@pytest.mark.parametrize(
    ("trigger", "needle"),
    [
        (
            "  - id: h\n    type: io.kestra.plugin.core.trigger.Webhook\n    key: k\n"
            f"    conditions:\n      - type: {COND}ExecutionStatus\n        in: [FAILED]\n",
            "trigger 'h': condition type 'io.kestra.plugin.core.condition.ExecutionStatus'"
            " does not apply to Schedule and Webhook triggers",
        ),
        (
            "  - id: s\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: '@daily'\n"
            f"    conditions:\n      - type: {COND}MultipleCondition\n",
            "trigger 's': condition type 'io.kestra.plugin.core.condition.MultipleCondition'"
            " does not apply",
        ),
        (
            "  - id: s\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: '@daily'\n"
            "    backfill:\n      start: 2024-01-01T00:00:00Z\n",
            "trigger 's': 'backfill' is not supported by kestream",
        ),
    ],
)
def test_conditions_on_other_triggers_are_refused(trigger: str, needle: str) -> None:
    text = HEAD.split("triggers:\n")[0] + "triggers:\n" + trigger
    (problem,) = check_flow(text)
    assert needle in problem.message
