"""Changes to a trigger asked for from outside the scheduler (the triggers API).

Only the scheduler writes trigger records (it owns the state it fires from). The API sends it a
:class:`TriggerCommand` on the trigger-commands topic; the scheduler applies it to its book
(:meth:`~kestream.scheduler.schedules.ScheduleBook.apply_command`) and writes the record. The
API answers with what the record will be, computed by the same :func:`apply_to_state`.

Every action sets a value, so applying a command twice in a row leaves the record as once; a
new backfill is the exception (it starts again from ``start``), which is why the record keeps
the offset of the last command applied (``commandOffset``) and a command at or before it is
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from kestream.scheduler.backfill import Backfill, BackfillError
from kestream.scheduler.trigger_state import TriggerState, split_trigger_key

__all__ = ["Action", "CommandError", "TriggerCommand", "apply_to_state"]

Action = Literal[
    "disable", "enable", "set-backfill", "pause-backfill", "unpause-backfill", "delete-backfill",
    "unlock", "restart", "delete",
]  # fmt: skip
_ACTIONS: tuple[str, ...] = get_args(Action)


class CommandError(ValueError):
    """A command that does not apply to the trigger as it stands (no backfill to pause, a
    trigger that is not locked): the API answers it as Kestra does."""


@dataclass(frozen=True, slots=True)
class TriggerCommand:
    """``action`` on the trigger ``key`` (``namespace/flowId/triggerId``); ``backfill`` for
    ``set-backfill``; ``recover`` for ``enable``: fire the slots missed since the last one
    fired, as the trigger's ``recoverMissedSchedules`` says (without it an enabled trigger
    starts at its next slot from now)."""

    key: str
    action: Action
    backfill: Backfill | None = None
    recover: bool = False

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"key": self.key, "action": self.action}
        if self.backfill is not None:
            body["backfill"] = self.backfill.to_dict()
        if self.recover:
            body["recoverMissedSchedules"] = True
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes) -> TriggerCommand:
        """Decode a command record; raises ValueError naming what is wrong."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"a trigger command is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("a trigger command must be a JSON object")
        key, action = data.get("key"), data.get("action")
        if not isinstance(key, str):
            raise ValueError("a trigger command needs its trigger 'key'")
        split_trigger_key(key)
        if action not in _ACTIONS:
            raise ValueError(f"unknown trigger command action {action!r}")
        backfill = None
        if action == "set-backfill":
            try:
                backfill = Backfill.from_dict(data.get("backfill"))
            except BackfillError as exc:
                raise ValueError(f"trigger command: {exc}") from None
        recover = action == "enable" and data.get("recoverMissedSchedules") is True
        return cls(key, action, backfill, recover)


def apply_to_state(state: TriggerState, command: TriggerCommand) -> TriggerState:
    """The record once ``command`` is applied (the book then plans its next slots).

    Raises :class:`CommandError` for a backfill action on a trigger without a backfill and for
    unlocking a trigger that holds no execution (Kestra's "not locked"). ``restart`` clears
    the recorded execution whatever it is (it never refuses); ``delete`` drops everything the
    record holds, so the trigger starts again as if new (the book plans it from now).
    """
    action = command.action
    if action == "disable":
        return state.evolve(disabled=True, next_execution_date=None)
    if action == "enable":
        return state.evolve(disabled=False)
    if action == "set-backfill":
        backfill = command.backfill
        if backfill is None:
            raise CommandError("set-backfill needs a backfill")
        return state.evolve(backfill=backfill)
    if action == "restart":
        return state.evolve(execution_id=None)
    if action == "delete":
        return TriggerState(state.namespace, state.flow_id, state.trigger_id)
    if action == "unlock":
        if state.execution_id is None:
            raise CommandError("Trigger is not locked")
        return state.evolve(execution_id=None)
    if state.backfill is None:
        raise CommandError("No backfill found")
    if action == "delete-backfill":
        return state.evolve(backfill=None)
    return state.evolve(backfill=state.backfill.with_paused(action == "pause-backfill"))
