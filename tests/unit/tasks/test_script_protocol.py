"""Kestra's ``::{json}::`` script output protocol, line by line."""

from __future__ import annotations

import pytest

from kestream.tasks.base import LogLevel
from kestream.tasks.scripts.protocol import Capture, Metric, ProtocolError, parse_line


def test_ordinary_lines_are_not_protocol() -> None:
    for line in ["hello", "", "::not json", '::{"outputs": {}}', '{"outputs": {}}::', "::::"]:
        assert parse_line(line) is None


def test_outputs_metrics_and_logs() -> None:
    message = parse_line('::{"outputs": {"extract": "hello world", "n": 2, "none": null}}::')
    assert message is not None
    assert message.outputs == {"extract": "hello world", "n": 2, "none": None}
    assert message.metrics == [] and message.logs == []

    metrics = parse_line(
        '::{"metrics": [{"name": "count", "type": "counter", "value": 1, "tags": {"a": "b"}}, '
        '{"name": "t", "type": "timer", "value": 2.5}]}::'
    )
    assert metrics is not None
    assert metrics.metrics == [
        Metric("count", "counter", 1, {"a": "b"}),
        Metric("t", "timer", 2.5, {}),
    ]
    assert metrics.metrics[0].describe() == 'Metric counter \'count\' = 1 {"a":"b"}'

    logs = parse_line(
        '::{"logs": [{"level": "WARNING", "message": "careful"}, {"level": "ERROR", "message": '
        '"bad"}, {"level": "odd", "message": "plain"}, {"level": "DEBUG", "message": "fine"}]}::'
    )
    assert logs is not None
    assert logs.logs == [
        (LogLevel.WARN, "careful"),
        (LogLevel.ERROR, "bad"),
        (LogLevel.INFO, "plain"),
        (LogLevel.DEBUG, "fine"),
    ]


def test_surrounding_whitespace_is_allowed_and_unknown_keys_are_ignored() -> None:
    message = parse_line('  ::{"outputs": {"x": 1}, "assets": {"id": "t"}}::\r\n')
    assert message is not None and message.outputs == {"x": 1}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('::{"outputs": {"x": }}::', "Invalid outputs"),
        ('::{"outputs": [1, 2]}::', "'outputs' must be a JSON object"),
        ('::{"metrics": {"name": "x"}}::', "'metrics' must be a list"),
        ('::{"metrics": [{"value": 1}]}::', "needs a 'name' and a 'type'"),
        ('::{"logs": ["text"]}::', "'logs' must be a list of JSON objects"),
    ],
)
def test_malformed_protocol_lines_say_why(line: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_line(line)


def test_capture_merges_outputs_later_keys_winning() -> None:
    capture = Capture()
    for line in [
        '::{"outputs": {"a": 1, "b": {"deep": 1}}}::',
        '::{"outputs": {"b": {"other": 2}, "c": 3}}::',
        '::{"metrics": [{"name": "m", "type": "gauge", "value": 0.5}]}::',
    ]:
        message = parse_line(line)
        assert message is not None
        capture.take(message)
    assert capture.vars == {"a": 1, "b": {"other": 2}, "c": 3}
    assert [metric.name for metric in capture.metrics] == ["m"]
