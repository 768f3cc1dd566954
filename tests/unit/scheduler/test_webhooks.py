"""Webhook triggers: key matching, the body, headers and parameters, the execution."""

from __future__ import annotations

import pytest
from scheduler_helpers import flow_with

from kestream.scheduler import find_webhook, parse_body, webhook_execution
from kestream.scheduler.webhooks import multi_values

HOOKS = (
    "  - id: hook\n    type: io.kestra.plugin.core.trigger.Webhook\n    key: s3cr3t\n"
    "    inputs:\n      name: '{{ trigger.body.name }}'\n"
    "  - id: off\n    type: io.kestra.plugin.core.trigger.Webhook\n    key: sleepy\n"
    "    disabled: true\n"
)


def test_find_webhook_matches_the_key_exactly() -> None:
    flow = flow_with(HOOKS)
    found = find_webhook(flow, "s3cr3t")
    assert found is not None and found.id == "hook"
    for wrong in ("s3cr3", "s3cr3t ", "S3CR3T", "", "sleepy"):
        assert find_webhook(flow, wrong) is None


def test_a_disabled_flow_is_left_to_the_caller() -> None:
    found = find_webhook(flow_with(HOOKS, disabled="true"), "s3cr3t")
    assert found is not None and found.id == "hook"


def test_a_binary_content_type_gives_base64() -> None:
    assert parse_body(b"abc", "application/octet-stream") == "YWJj"
    assert parse_body(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}
    assert parse_body(b"a,b", "text/csv") == "a,b"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"name": "Ada"}', {"name": "Ada"}),
        ('  [1, 2, {"a": null}]', [1, 2, {"a": None}]),
        (b"42", "42"),
        (b'"text"', '"text"'),
        (b"{not json", "{not json"),
        ("plain text", "plain text"),
        (b"\xff\xfe", "//4="),
        (None, None),
    ],
)
def test_parse_body_as_kestra(body: bytes | str | None, expected: object) -> None:
    assert parse_body(body) == expected


def test_headers_and_parameters_are_maps_of_lists() -> None:
    assert multi_values({"a": "1", "b": ["2", "3"]}) == {"a": ["1"], "b": ["2", "3"]}
    assert multi_values([("a", "1"), ("a", "2")]) == {"a": ["1", "2"]}
    assert multi_values(None) == {}


def test_webhook_execution() -> None:
    flow = flow_with(HOOKS, revision=5)
    trigger = find_webhook(flow, "s3cr3t")
    assert trigger is not None
    event = webhook_execution(
        flow,
        trigger,
        b'{"name": "Ada"}',
        [("Content-Type", "application/json"), ("X-Tag", "a"), ("X-Tag", "b")],
        {"page": "2"},
        "exec-9",
    )
    assert (event.execution_id, event.namespace, event.flow_id, event.revision) == (
        "exec-9",
        "company.team",
        "f",
        5,
    )
    assert event.inputs == {"name": "{{ trigger.body.name }}"} and event.validate_inputs
    assert event.trigger == {
        "id": "hook",
        "type": "io.kestra.plugin.core.trigger.Webhook",
        "variables": {
            "body": {"name": "Ada"},
            "headers": {"Content-Type": ["application/json"], "X-Tag": ["a", "b"]},
            "parameters": {"page": ["2"]},
        },
    }
