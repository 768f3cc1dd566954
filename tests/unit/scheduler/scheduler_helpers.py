"""Helpers for the scheduler tests: flows built from a few trigger lines, times in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kestream.models.flow import Flow, parse_flow

TASKS = "tasks:\n  - id: hello\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n"


def utc(*parts: int) -> datetime:
    """``utc(2025, 1, 1, 10, 0)``: an aware UTC datetime."""
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def flow_with(
    triggers: str, *, flow_id: str = "f", namespace: str = "company.team", **extra: Any
) -> Flow:
    """A valid flow whose ``triggers:`` block is ``triggers`` (YAML, indented by two)."""
    head = f"id: {flow_id}\nnamespace: {namespace}\n"
    for key, value in extra.items():
        head += f"{key}: {value}\n"
    return parse_flow(head + TASKS + "triggers:\n" + triggers)


def schedule(cron: str, *, trigger_id: str = "sched", **props: Any) -> str:
    """One Schedule trigger's YAML lines."""
    text = f"  - id: {trigger_id}\n    type: io.kestra.plugin.core.trigger.Schedule\n"
    text += f"    cron: '{cron}'\n"
    for key, value in props.items():
        text += f"    {key}: {value}\n"
    return text
