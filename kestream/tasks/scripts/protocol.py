"""Kestra's script output protocol: ``::{json}::`` lines on stdout or stderr.

A script talks back to the engine by printing one line that is exactly ``::`` + a JSON object +
``::`` (what the ``kestra`` Python package's ``Kestra.outputs``, ``Kestra.counter`` and
``Kestra.logger()`` print). The object may hold:

- ``outputs``: a map merged into the task's ``vars`` output (later lines override earlier keys);
- ``metrics``: a list of ``{name, type, value, tags}``;
- ``logs``: a list of ``{level, message}``, logged at that level.

Such lines are not logged as text. A line that looks like the protocol but holds invalid JSON is
logged as a warning and otherwise ignored, as Kestra does. Other keys (``assets``) are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from kestream.tasks.base import LogLevel

_LINE = re.compile(r"^::(\{.*\})::$", re.DOTALL)
_LEVELS = {level.value: level for level in LogLevel} | {"WARNING": LogLevel.WARN}


@dataclass(slots=True)
class Metric:
    """One ``metrics`` item (``counter``, ``timer`` or ``gauge``)."""

    name: str
    type: str
    value: Any
    tags: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        tags = f" {orjson.dumps(self.tags).decode()}" if self.tags else ""
        return f"Metric {self.type} '{self.name}' = {self.value}{tags}"


@dataclass(slots=True)
class Message:
    """What one protocol line said."""

    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    logs: list[tuple[LogLevel, str]] = field(default_factory=list)


class ProtocolError(ValueError):
    """A protocol line whose body is not the JSON object the protocol needs."""


def parse_line(line: str) -> Message | None:
    """The message of a protocol line; ``None`` for an ordinary line.

    Raises :class:`ProtocolError` for a line shaped like the protocol whose content is not.
    """
    match = _LINE.match(line.strip())
    if match is None:
        return None
    try:
        body = orjson.loads(match.group(1))
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"Invalid outputs '{exc}'") from None
    if not isinstance(body, dict):
        raise ProtocolError("Invalid outputs: the line does not hold a JSON object")
    message = Message()
    outputs = body.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            raise ProtocolError("Invalid outputs: 'outputs' must be a JSON object")
        message.outputs = outputs
    message.metrics = [_metric(item) for item in _items(body, "metrics")]
    message.logs = [_log(item) for item in _items(body, "logs")]
    return message


def _items(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ProtocolError(f"Invalid outputs: '{key}' must be a list of JSON objects")
    return value


def _metric(item: dict[str, Any]) -> Metric:
    name, kind = item.get("name"), item.get("type")
    if not isinstance(name, str) or not isinstance(kind, str):
        raise ProtocolError("Invalid outputs: a metric needs a 'name' and a 'type'")
    tags = item.get("tags")
    return Metric(name, kind, item.get("value"), tags if isinstance(tags, dict) else {})


def _log(item: dict[str, Any]) -> tuple[LogLevel, str]:
    level = _LEVELS.get(str(item.get("level", "INFO")).upper(), LogLevel.INFO)
    return level, str(item.get("message", ""))


@dataclass(slots=True)
class Capture:
    """Everything a script said through the protocol, plus what its streams looked like."""

    vars: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    stdout_lines: int = 0
    stderr_lines: int = 0

    def take(self, message: Message) -> None:
        self.vars.update(message.outputs)
        self.metrics.extend(message.metrics)
