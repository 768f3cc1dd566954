"""Tasks that act on their own execution: Labels, Exit (and Assert, which only checks it).

Labels and Exit change the execution itself (its labels, its state), which only the executor
owns. They are :class:`ExecutionUpdatingTask`: the executor always runs them inside its step,
whatever ``KESTREAM_EXECUTOR_INLINE_TASKS`` says, and applies the :class:`ExecutionUpdate` they
return (:mod:`kestream.executor.step`). Assert is pure rendering and runs inline like Log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, field_validator

from kestream.expressions import is_truthy, to_text
from kestream.models.state import StateType
from kestream.tasks.base import LogLevel, RunInfo, RunnableTask, TaskError, TaskOutcome

#: The label every execution carries, set by the engine: a flow may not change it.
SYSTEM_PREFIX = "system."


@dataclass(slots=True)
class ExecutionUpdate(TaskOutcome):
    """A task outcome that also changes the execution: labels to set, or a state to end in."""

    labels: dict[str, str] | None = None
    exit_state: StateType | None = None


class ExecutionUpdatingTask(RunnableTask):
    """A task whose outcome the executor applies to the execution (run inside the step)."""

    inline: ClassVar[bool] = True


class Labels(ExecutionUpdatingTask):
    """Add or override the execution's labels at run time.

    ``labels`` is a map, a list of ``{key, value}``, or an expression that renders to the JSON
    of either. Values are rendered to text, as Kestra stores labels.
    """

    type_name: ClassVar[str] = "io.kestra.plugin.core.execution.Labels"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.executions.Labels",)
    dynamic: ClassVar[tuple[str, ...]] = ("labels",)

    labels: str | dict[str, Any] | list[dict[str, Any]]

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        labels = label_map(props["labels"])
        reserved = sorted(key for key in labels if key.startswith(SYSTEM_PREFIX))
        if reserved:
            raise TaskError(f"System labels cannot be set by a task: {', '.join(reserved)}")
        return ExecutionUpdate(StateType.SUCCESS, labels=labels)


def label_map(value: Any) -> dict[str, str]:
    """Labels from a rendered map, ``{key, value}`` list, or JSON text of either."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TaskError(
                f"labels must render to a map or a list of key/value pairs, not '{value[:80]}'"
            ) from None
    if isinstance(value, dict):
        return {to_text(key): to_text(item) for key, item in value.items()}
    if isinstance(value, list):
        labels: dict[str, str] = {}
        for item in value:
            if not isinstance(item, dict) or "key" not in item or "value" not in item:
                raise TaskError(f"a label must be a map with 'key' and 'value', not {item!r}")
            labels[to_text(item["key"])] = to_text(item["value"])
        return labels
    raise TaskError(
        f"labels must be a map or a list of key/value pairs, not {type(value).__name__}"
    )


#: Kestra's Exit states (``CANCELED`` is the older spelling of ``CANCELLED``).
_EXIT_STATES = {
    "SUCCESS": StateType.SUCCESS,
    "WARNING": StateType.WARNING,
    "FAILED": StateType.FAILED,
    "KILLED": StateType.KILLED,
    "CANCELLED": StateType.CANCELLED,
    "CANCELED": StateType.CANCELLED,
}


def exit_state(value: Any) -> StateType:
    state = _EXIT_STATES.get(str(value).upper())
    if state is None:
        raise TaskError(f"Exit state must be one of {', '.join(_EXIT_STATES)}, not '{value}'")
    return state


class Exit(ExecutionUpdatingTask):
    """End the execution now, in ``state``.

    The Exit task run and every task run above it end in that state, and so does the execution.
    ``KILLED`` also kills the task runs still running elsewhere (a parallel branch); any other
    state leaves them to finish on their own (their results no longer change the execution).
    """

    type_name: ClassVar[str] = "io.kestra.plugin.core.execution.Exit"
    dynamic: ClassVar[tuple[str, ...]] = ("state",)

    state: str = "SUCCESS"

    @field_validator("state")
    @classmethod
    def _literal_state(cls, value: str) -> str:
        if "{{" not in value and "{%" not in value:  # a literal state is checked at deploy
            try:
                exit_state(value)
            except TaskError as exc:
                raise ValueError(str(exc)) from None
        return value

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        state = exit_state(props.get("state", "SUCCESS"))
        # The task itself succeeded; the executor ends it (and the execution) in ``state``.
        return ExecutionUpdate(StateType.SUCCESS, exit_state=state)


class Assert(RunnableTask):
    """Fail when one of ``conditions`` renders falsy; each failed one is logged at ERROR."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.execution.Assert"
    dynamic: ClassVar[tuple[str, ...]] = ("conditions", "errorMessage")
    inline: ClassVar[bool] = True

    conditions: list[str] = Field(min_length=1)
    errorMessage: str | None = None

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        failed = 0
        for source, rendered in zip(self.conditions, props["conditions"], strict=True):
            if not is_truthy(rendered):
                failed += 1
                run.log(LogLevel.ERROR, f"Assertion `{source}` failed!")
        if failed:
            message = f"{failed} assertions failed!"
            if props.get("errorMessage"):
                message = f"{message} {props['errorMessage']}"
            raise TaskError(message)
        return TaskOutcome(StateType.SUCCESS)
