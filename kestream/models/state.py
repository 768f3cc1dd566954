"""Execution and task-run states, with the table of legal next states for each.

Like Kafka Streams' ``StreamThread.State``, every state lists where it may go. The executor asks
:func:`check_transition` before it moves anything; an illegal move is a bug in the engine and is
raised, never applied silently. Transitions to the same state are ignored (a redelivered event).

Execution::

    CREATED -> RUNNING -> (PAUSED <-> RUNNING) -> SUCCESS | WARNING | FAILED | RETRIED
        any non-terminal -> KILLING -> KILLED
        SUCCESS | WARNING | FAILED | KILLED -> RESTARTED -> RUNNING      (restart in place)
        CREATED | RESTARTED -> QUEUED -> RUNNING    (a concurrency limit: waits for a slot)
        CREATED | QUEUED | RESTARTED -> FAILED | CANCELLED    (refused at the limit, or a
            MAX_DURATION SLA reached while waiting for a slot)

Task run::

    CREATED -> RUNNING -> SUCCESS | WARNING | FAILED | KILLED
    CREATED -> SKIPPED (runIf false) | FAILED (could not even be rendered)
    RUNNING -> RETRYING -> RUNNING        (a new attempt)
    RUNNING -> PAUSED -> RUNNING | FAILED (Pause task: resumed, or timed out)
    FAILED | KILLED | WARNING -> RESTARTED -> RUNNING | SKIPPED (restart; runIf false now)
"""

from __future__ import annotations

from enum import StrEnum


class StateType(StrEnum):
    """Kestra's state names, shared by executions and task runs."""

    CREATED = "CREATED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    RESTARTED = "RESTARTED"
    KILLING = "KILLING"
    RETRYING = "RETRYING"
    SUCCESS = "SUCCESS"
    WARNING = "WARNING"
    FAILED = "FAILED"
    KILLED = "KILLED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"
    RETRIED = "RETRIED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_failed(self) -> bool:
        return self in (StateType.FAILED, StateType.KILLED)


S = StateType
TERMINAL = frozenset({S.SUCCESS, S.WARNING, S.FAILED, S.KILLED, S.CANCELLED, S.SKIPPED, S.RETRIED})

_RESTARTABLE = {S.RESTARTED}

EXECUTION_TRANSITIONS: dict[StateType, frozenset[StateType]] = {
    S.CREATED: frozenset({S.RUNNING, S.KILLING, S.KILLED, S.FAILED, S.QUEUED, S.CANCELLED}),
    # FAILED, CANCELLED: a MAX_DURATION SLA reached while it waits for a concurrency slot
    S.QUEUED: frozenset({S.RUNNING, S.KILLING, S.KILLED, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset(
        {S.PAUSED, S.KILLING, S.KILLED, S.SUCCESS, S.WARNING, S.FAILED, S.RETRIED, S.CANCELLED}
    ),
    S.PAUSED: frozenset(
        {S.RUNNING, S.KILLING, S.KILLED, S.SUCCESS, S.WARNING, S.FAILED, S.RETRIED, S.CANCELLED}
    ),
    S.RESTARTED: frozenset({S.RUNNING, S.KILLING, S.KILLED, S.QUEUED, S.FAILED, S.CANCELLED}),
    S.KILLING: frozenset({S.KILLED}),
    S.SUCCESS: frozenset(_RESTARTABLE),
    S.WARNING: frozenset(_RESTARTABLE),
    S.FAILED: frozenset(_RESTARTABLE),
    S.KILLED: frozenset(_RESTARTABLE),
    S.CANCELLED: frozenset(),
    S.SKIPPED: frozenset(),
    S.RETRIED: frozenset(),
    S.RETRYING: frozenset(),
}

TASK_RUN_TRANSITIONS: dict[StateType, frozenset[StateType]] = {
    S.CREATED: frozenset({S.RUNNING, S.SKIPPED, S.FAILED, S.KILLED, S.SUCCESS}),
    S.RUNNING: frozenset(
        {
            *(S.SUCCESS, S.WARNING, S.FAILED, S.KILLED, S.KILLING, S.PAUSED),
            *(S.RETRYING, S.RETRIED, S.CANCELLED),
        }
    ),
    S.RETRYING: frozenset({S.RUNNING, S.FAILED, S.KILLED}),
    S.PAUSED: frozenset({S.RUNNING, S.FAILED, S.KILLED, S.SUCCESS, S.WARNING}),
    S.KILLING: frozenset({S.KILLED}),
    S.RESTARTED: frozenset({S.RUNNING, S.KILLED, S.SKIPPED}),
    S.FAILED: frozenset({S.RESTARTED, S.RUNNING}),
    S.KILLED: frozenset({S.RESTARTED, S.RUNNING}),
    S.WARNING: frozenset({S.RESTARTED, S.RUNNING}),
    S.SUCCESS: frozenset(),
    S.SKIPPED: frozenset(),
    S.RETRIED: frozenset(),
    S.QUEUED: frozenset({S.RUNNING, S.KILLED}),
    S.CANCELLED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """An engine bug: a state change that the tables above do not allow."""


def check_transition(
    table: dict[StateType, frozenset[StateType]], what: str, current: StateType, new: StateType
) -> bool:
    """Return True when ``current -> new`` should be applied, False when it is a no-op repeat.

    Raises :class:`IllegalTransition` for a move the table forbids.
    """
    if current is new:
        return False
    if new not in table[current]:
        raise IllegalTransition(f"{what}: illegal state transition {current} -> {new}")
    return True


# Final-state priority (DESIGN.md section 4): the worst child decides.
_PRIORITY = {S.KILLED: 5, S.FAILED: 4, S.WARNING: 3, S.PAUSED: 2, S.SUCCESS: 1, S.SKIPPED: 0}


def worst(a: StateType, b: StateType) -> StateType:
    """The state that wins when two children end differently: KILLED > FAILED > WARNING > ..."""
    return a if _PRIORITY.get(a, 1) >= _PRIORITY.get(b, 1) else b
