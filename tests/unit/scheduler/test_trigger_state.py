"""Trigger records: keys, JSON round trips, and clear errors for bad records."""

from __future__ import annotations

import pytest
from scheduler_helpers import utc

from kestream.scheduler.trigger_state import TriggerState, split_trigger_key, trigger_key


def test_trigger_key_round_trips() -> None:
    key = trigger_key("company.team", "my-flow", "daily")
    assert key == "company.team/my-flow/daily"
    assert split_trigger_key(key) == ("company.team", "my-flow", "daily")
    with pytest.raises(ValueError, match="namespace/flowId/triggerId"):
        split_trigger_key("a/b")


def test_json_round_trip_keeps_every_field() -> None:
    state = TriggerState(
        "ns",
        "f",
        "t",
        date=utc(2025, 1, 1, 10),
        next_execution_date=utc(2025, 1, 1, 11),
        disabled=True,
        flow_revision=3,
        execution_id="abc",
        schedule="0 * * * *|UTC|m",
    )
    raw = state.to_json()
    assert b'"nextExecutionDate":"2025-01-01T11:00:00+00:00"' in raw
    assert TriggerState.from_json(raw) == state
    assert TriggerState.from_json(TriggerState("ns", "f", "t").to_json()) == TriggerState(
        "ns", "f", "t"
    )


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{nope", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"namespace": "ns", "flowId": "f"}', "needs 'triggerId'"),
        (b'{"namespace": "ns", "flowId": "f", "triggerId": ""}', "'triggerId' must be non-empty"),
        (
            b'{"namespace": "ns", "flowId": "f", "triggerId": "t", "date": "yesterday"}',
            "not an ISO-8601",
        ),
        (
            b'{"namespace": "ns", "flowId": "f", "triggerId": "t", "date": "2025-01-01T10:00"}',
            "UTC offset",
        ),
        (b'{"namespace": "ns", "flowId": "f", "triggerId": "t", "flowRevision": "2"}', "integer"),
    ],
)
def test_bad_records_raise_a_clear_value_error(raw: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        TriggerState.from_json(raw)
