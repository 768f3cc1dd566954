"""The Flow-trigger index: what each trigger is filed under, and that looking triggers up
decides exactly what checking every trigger decides (randomised triggers and executions)."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
from scheduler_helpers import TASKS, utc

from kestream.models.flow import Flow, FlowTrigger, parse_flow
from kestream.models.state import StateType
from kestream.scheduler import EndedExecution, FlowTriggerBook, FlowTriggerResult
from kestream.scheduler.flow_trigger_index import RouteIndex, trigger_routes

FLOW_TRIGGER = "io.kestra.plugin.core.trigger.Flow"
COND = "io.kestra.plugin.core.condition."
NAMESPACES = ("a", "a.b", "a.bc", "a.b.c", "x", "x.a.b")
FLOW_IDS = ("f1", "f2", "f3", "f4")
LABELS = {"team": ("data", "ops"), "env": ("prod", "dev")}
STATES = ("SUCCESS", "FAILED", "WARNING", "KILLED", "PAUSED", "RUNNING")


def flow_of(triggers: list[dict[str, Any]], namespace: str = "a", flow_id: str = "down") -> Flow:
    head = f"id: {flow_id}\nnamespace: {namespace}\n"
    return parse_flow(head + TASKS + "triggers: " + json.dumps(triggers))


def trigger(**props: Any) -> FlowTrigger:
    found = flow_of([{"id": "t", "type": FLOW_TRIGGER, **props}]).triggers[0]
    assert isinstance(found, FlowTrigger)
    return found


def cond(kind: str, **props: Any) -> dict[str, Any]:
    return {"type": COND + kind, **props}


# -- routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("props", "routes"),
    [
        pytest.param(
            {"conditions": [cond("ExecutionFlow", namespace="a", flowId="f1")]},
            {("flow", "a", "f1")},
            id="flow",
        ),
        pytest.param(
            {
                "conditions": [
                    cond("ExecutionNamespace", namespace="a", comparison="PREFIX"),
                    cond("ExecutionFlow", namespace="a.b", flowId="f1"),
                ]
            },
            {("flow", "a.b", "f1")},
            id="the-most-selective-plain-condition",
        ),
        pytest.param(
            {"conditions": [cond("ExecutionNamespace", namespace="a", prefix=True)]},
            {("prefix", "a")},
            id="prefix-older-spelling",
        ),
        pytest.param(
            {"conditions": [cond("ExecutionLabels", labels={"team": "data"})]},
            {("label", "team", "data")},
            id="label",
        ),
        pytest.param(
            {
                "preconditions": {
                    "id": "p",
                    "flows": [{"namespace": "a", "flowId": "f1"}, {"namespace": "x"}],
                    "where": [
                        {
                            "id": "w",
                            "operand": "OR",
                            "filters": [
                                {"field": "FLOW_ID", "type": "IN", "values": ["f2", "f3"]},
                                {"field": "NAMESPACE", "type": "STARTS_WITH", "value": "a.b"},
                            ],
                        }
                    ],
                }
            },
            {
                ("flow", "a", "f1"),
                ("namespace", "x"),
                ("flow_id", "f2"),
                ("flow_id", "f3"),
                ("prefix", "a.b"),
            },
            id="preconditions-union",
        ),
        pytest.param(
            {
                "conditions": [
                    cond(
                        "MultipleCondition",
                        id="m",
                        conditions={
                            "one": cond("ExecutionFlow", namespace="a", flowId="f1"),
                            "two": cond("ExecutionNamespace", namespace="x"),
                        },
                    )
                ]
            },
            {("flow", "a", "f1"), ("namespace", "x")},
            id="multiple-condition-union",
        ),
    ],
)
def test_routes_of_indexable_triggers(props: dict[str, Any], routes: set[tuple[str, ...]]) -> None:
    assert trigger_routes(trigger(**props)) == routes


@pytest.mark.parametrize(
    "props",
    [
        pytest.param({}, id="no-conditions"),
        pytest.param({"states": ["FAILED"]}, id="states-only"),
        pytest.param({"conditions": [cond("ExecutionStatus", **{"in": ["FAILED"]})]}, id="status"),
        pytest.param(
            {"conditions": [cond("ExecutionNamespace", namespace="b", comparison="SUFFIX")]},
            id="suffix",
        ),
        pytest.param(
            {
                "preconditions": {
                    "id": "p",
                    "flows": [{"namespace": "a", "flowId": "f1"}],
                    "where": [
                        {
                            "id": "w",
                            "filters": [{"field": "STATE", "type": "EQUAL_TO", "value": "FAILED"}],
                        }
                    ],
                }
            },
            id="one-unindexable-precondition",
        ),
    ],
)
def test_triggers_naming_nothing_indexable_are_checked_every_time(props: dict[str, Any]) -> None:
    assert trigger_routes(trigger(**props)) is None


def test_the_index_returns_what_may_match_and_forgets_removed_items() -> None:
    index: RouteIndex[str] = RouteIndex()
    index.add("exact", frozenset({("flow", "a.b", "f1")}))
    index.add("prefix", frozenset({("prefix", "a.")}))
    index.add("label", frozenset({("label", "team", "data")}))
    index.add("never", frozenset())
    index.add("always", None)

    def found(namespace: str, flow_id: str, **labels: str) -> set[str]:
        ended = EndedExecution("e", namespace, flow_id, StateType.SUCCESS, labels=labels)
        return set(index.candidates(ended))

    assert found("a.b", "f1") == {"exact", "prefix", "always"}
    assert found("a", "f1", team="data") == {"label", "always"}
    assert found("x", "f9") == {"always"}
    index.remove("prefix")
    index.remove("always")
    assert found("a.b", "f1") == {"exact"}
    assert (len(index), index.unrouted) == (3, 0)


# -- the index against the full scan -----------------------------------------------------------


def random_condition(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(("flow", "namespace", "status", "labels"))
    if kind == "flow":
        return cond("ExecutionFlow", namespace=rng.choice(NAMESPACES), flowId=rng.choice(FLOW_IDS))
    if kind == "namespace":
        comparison = rng.choice(("EQUALS", "PREFIX", "SUFFIX"))
        return cond("ExecutionNamespace", namespace=rng.choice(NAMESPACES), comparison=comparison)
    if kind == "status":
        return cond("ExecutionStatus", **{"in": rng.sample(STATES[:4], 2)})
    key = rng.choice(sorted(LABELS))
    return cond("ExecutionLabels", labels={key: rng.choice(LABELS[key])})


def random_filter(rng: random.Random) -> dict[str, Any]:
    field = rng.choice(("FLOW_ID", "NAMESPACE", "STATE"))
    pool = {"FLOW_ID": FLOW_IDS, "NAMESPACE": NAMESPACES, "STATE": STATES}[field]
    kind = rng.choice(("EQUAL_TO", "NOT_EQUAL_TO", "IN", "NOT_IN", "STARTS_WITH", "ENDS_WITH"))
    if kind in ("IN", "NOT_IN"):
        return {"field": field, "type": kind, "values": rng.sample(pool, rng.randint(0, 2))}
    value = rng.choice(pool)
    if kind in ("STARTS_WITH", "ENDS_WITH"):
        value = value[: rng.randint(1, len(value))]
    return {"field": field, "type": kind, "value": value}


def random_preconditions(rng: random.Random) -> dict[str, Any]:
    flows = [
        {
            "namespace": rng.choice(NAMESPACES),
            **({"flowId": rng.choice(FLOW_IDS)} if rng.random() < 0.7 else {}),
            **({"states": rng.sample(STATES[:4], 2)} if rng.random() < 0.3 else {}),
        }
        for _ in range(rng.randint(0, 2))
    ]
    where = [
        {
            "id": f"w{n}",
            "operand": rng.choice(("AND", "OR")),
            "filters": [random_filter(rng) for _ in range(rng.randint(1, 3))],
        }
        for n in range(rng.randint(0 if flows else 1, 2))
    ]
    window = rng.choice(
        (
            {},
            {"timeWindow": {"type": "SLIDING_WINDOW", "window": "PT2H"}},
            {"resetOnSuccess": False},
        )
    )
    return {"id": "pre", "flows": flows, "where": where, **window}


def random_trigger(rng: random.Random, trigger_id: str) -> dict[str, Any]:
    props: dict[str, Any] = {"id": trigger_id, "type": FLOW_TRIGGER}
    conditions = [random_condition(rng) for _ in range(rng.choice((0, 0, 1, 2)))]
    if rng.random() < 0.2:
        inner = {f"c{n}": random_condition(rng) for n in range(rng.randint(1, 3))}
        conditions.append(cond("MultipleCondition", id="multi", conditions=inner))
    if conditions:
        props["conditions"] = conditions
    if rng.random() < 0.5:
        props["preconditions"] = random_preconditions(rng)
    if rng.random() < 0.2:
        props["states"] = rng.sample(STATES, 3)
    if rng.random() < 0.05:
        props["disabled"] = True
    return props


def random_flow(rng: random.Random) -> Flow:
    triggers = [random_trigger(rng, f"t{n}") for n in range(rng.randint(1, 3))]
    return flow_of(triggers, rng.choice(NAMESPACES), rng.choice(FLOW_IDS))


def random_ended(rng: random.Random, n: int) -> EndedExecution:
    labels = {k: rng.choice(values) for k, values in LABELS.items() if rng.random() < 0.5}
    return EndedExecution(
        execution_id=f"exec-{n}",
        namespace=rng.choice(NAMESPACES),
        flow_id=rng.choice(FLOW_IDS),
        state=StateType(rng.choice(STATES)),
        labels=labels,
        outputs={"n": n},
        end_date=utc(2025, 1, 1) + timedelta(minutes=7 * n),
    )


def described(result: FlowTriggerResult) -> tuple[Any, ...]:
    return (
        [(e.execution_id, e.namespace, e.flow_id, e.inputs, e.trigger) for e in result.events],
        [w.to_dict() for w in result.windows],
        result.removed_windows,
    )


@pytest.mark.parametrize("seed", range(8))
def test_the_index_decides_what_the_full_scan_decides(seed: int) -> None:
    rng = random.Random(seed)
    indexed, scanning = FlowTriggerBook(), FlowTriggerBook(indexed=False)
    fired = 0
    for _ in range(60):
        flow = random_flow(rng)
        assert indexed.sync_flow(flow) == scanning.sync_flow(flow)
    assert indexed.unindexed < len(indexed) == len(scanning)
    for n in range(400):
        roll = rng.random()
        if roll < 0.05:  # a flow deployed or updated (its windows may start over)
            flow = random_flow(rng)
            assert indexed.sync_flow(flow) == scanning.sync_flow(flow)
        elif roll < 0.08:
            namespace, flow_id = rng.choice(NAMESPACES), rng.choice(FLOW_IDS)
            assert indexed.remove_flow(namespace, flow_id) == scanning.remove_flow(
                namespace, flow_id
            )
        ended = random_ended(rng, n)
        expected = scanning.on_execution_end(ended)
        assert described(indexed.on_execution_end(ended)) == described(expected), ended
        fired += len(expected.events)
    assert sorted(w.to_json() for w in indexed.windows()) == sorted(
        w.to_json() for w in scanning.windows()
    )
    assert fired > 0
