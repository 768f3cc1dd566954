"""A flow's service-level agreements (``sla``), as the step enforces them (Kestra 0.20+).

- ``MAX_DURATION``: a timer in the execution's state (``sla:<n>``, n its place in the list), set
  when the execution asks to run (at its creation, or its scheduled date), due ``duration``
  later, so the wait for a concurrency slot counts, as it does in Kestra, whose monitor counts
  from the creation; set again by a restart or a replay, from then (Kestra's still counts from
  the first creation, and ends at once a restart of an execution older than the duration). It
  fires only if the execution has not ended by then, one still waiting for its slot included
  (``FAIL`` and ``CANCEL`` end it there; ``NONE`` leaves it waiting). One that asked for its slot
  before the timer was set at the ask gets it when it runs, from then.
- ``EXECUTION_ASSERTION``: the ``assert`` expression is rendered with the execution's variables
  each time the execution changes while it runs (or waits in a pause): when it starts, after each
  step that leaves it running, and once more when its tasks are over, just before it takes its end
  state. A result that is not truthy, or an expression that cannot be rendered, is a violation.

A violation's ``behavior`` says what happens: ``FAIL`` and ``CANCEL`` stop the execution (what
still runs is killed) and end it ``FAILED`` or ``CANCELLED``; ``NONE`` only logs it. Whatever the
behavior, the SLA's ``labels`` are added to the execution. As in Kestra, when several SLAs are
violated at once, the first one acts and the others are only logged.

Nothing here is rendered or parsed for a flow without SLAs: the step asks :func:`has_assertions`
and :func:`max_durations` first, and they read a list that is empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kestream.expressions import RenderError, is_truthy, render
from kestream.models.durations import parse_duration
from kestream.models.flow import Flow, Sla

__all__ = [
    "TIMER_KIND",
    "Violation",
    "assertion_violations",
    "duration_violation",
    "has_assertions",
    "max_durations",
    "timer_id",
]

#: The kind of the executor timers that enforce MAX_DURATION SLAs.
TIMER_KIND = "sla"


@dataclass(frozen=True, slots=True)
class Violation:
    sla: Sla
    reason: str


def timer_id(index: int) -> str:
    return f"{TIMER_KIND}:{index}"


def max_durations(flow: Flow) -> Iterator[tuple[str, str, timedelta]]:
    """``(timer id, SLA id, duration)`` of each MAX_DURATION SLA of the flow."""
    for index, sla in enumerate(flow.sla):
        if sla.type == "MAX_DURATION" and sla.duration is not None:
            yield timer_id(index), sla.id, parse_duration(sla.duration)


def duration_violation(flow: Flow, fired_timer_id: str) -> Violation | None:
    """The violation a fired MAX_DURATION timer stands for (None for a timer the flow's
    revision does not explain, which cannot happen short of a hand-made record)."""
    _, _, index = fired_timer_id.partition(":")
    if not index.isdigit() or int(index) >= len(flow.sla):
        return None
    sla = flow.sla[int(index)]
    if sla.type != "MAX_DURATION":
        return None
    return Violation(sla, f"execution exceeded its maximum duration of {sla.duration}")


def has_assertions(flow: Flow) -> bool:
    return any(sla.type == "EXECUTION_ASSERTION" for sla in flow.sla)


def assertion_violations(flow: Flow, context: dict[str, Any]) -> list[Violation]:
    """The EXECUTION_ASSERTION SLAs that do not hold in ``context``, in the flow's order."""
    violations: list[Violation] = []
    for sla in flow.sla:
        if sla.type != "EXECUTION_ASSERTION" or sla.assertion is None:
            continue
        try:
            held = is_truthy(render(sla.assertion, context))
        except RenderError as exc:
            violations.append(Violation(sla, f"assertion could not be evaluated: {exc}"))
            continue
        if not held:
            violations.append(Violation(sla, f"assertion is false: {sla.assertion}"))
    return violations
