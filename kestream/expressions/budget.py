"""The CPU-time budget of one render, checked by counting steps so that the check costs little.

A template is code that a flow author writes, run on data that anyone may send (a webhook body, an
input). Without a budget, a regex such as ``(a|aa)+$`` or two nested loops hold the executor's
event loop for minutes. So the evaluator counts steps (loop iterations, filter and function calls,
items walked by filters, jq evaluations, weighted by size for big values) and every
``CHECK_EVERY`` steps looks at the clock; past the budget it raises :class:`RenderLimitError`.

The budget is CPU time of the rendering thread, but reading that clock is a system call (about
0.5 us, as much as a whole simple render), while the monotonic clock costs a tenth of that. A
thread never uses more CPU time than wall time passes, so the wall clock decides when the CPU clock
must be read: a render that ends within ``CPU_CLOCK_AFTER_S`` of wall time never reads it (the
time before the first reading is charged in full), and a longer one reads it only when wall time
says the budget could be spent. Regex matching, which runs in C, gets the remaining time as its
own timeout (:mod:`.patterns`).

One budget covers one render: :func:`Template.render <kestream.expressions.api.Template.render>`
opens one unless a caller already did (``render_value`` opens one for a whole property), and code
deep in filters finds it with :func:`current_budget`. Renders are synchronous, so "the render in
progress" is a property of the thread.

One executor step may render many things (every lane a ForEach starts, every property of a task,
every flow output), each with a budget of its own, and the step holds the event loop for all of
them. So a step also opens a shared deadline (:func:`step_budget`): every render it makes ends by
then, whatever its own budget has left, and fails with "render exceeded ... step budget". That
deadline is wall time, what the event loop waits, and it is set well above what legitimate steps
take (a ForEach starting 10 000 inline Log tasks takes about 1 s): it bounds a step made of
many renders that each stay within their own budget. Renders that never start their clock (the
first ``FIRST_STEPS`` steps of a render, templates with no loop or call) are not stopped by it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from time import monotonic, thread_time

from .errors import RenderLimitError
from .limits import RENDER_TIMEOUT_MS, STEP_RENDER_BUDGET_MS

#: Steps between two looks at the (monotonic) clock.
CHECK_EVERY = 64
#: Steps before the clock starts (see :meth:`RenderBudget.restart`).
FIRST_STEPS = 16
#: Wall time after which the CPU clock is read for the first time.
CPU_CLOCK_AFTER_S = 0.005

_timeout_ms: int = RENDER_TIMEOUT_MS
_step_budget_ms: int = STEP_RENDER_BUDGET_MS


def set_render_timeout_ms(timeout_ms: int) -> None:
    """Set the budget of every render in this process (``KESTREAM_RENDER_TIMEOUT_MS``, at start)."""
    global _timeout_ms
    if timeout_ms <= 0:
        raise ValueError(f"the render timeout must be positive, got {timeout_ms} ms")
    _timeout_ms = timeout_ms


def render_timeout_ms() -> int:
    """The budget each new render gets, in milliseconds of CPU time."""
    return _timeout_ms


def set_step_render_budget_ms(budget_ms: int) -> None:
    """Set the wall time the renders of one step share (``KESTREAM_STEP_RENDER_BUDGET_MS``)."""
    global _step_budget_ms
    if budget_ms <= 0:
        raise ValueError(f"the step render budget must be positive, got {budget_ms} ms")
    _step_budget_ms = budget_ms


def step_render_budget_ms() -> int:
    """The wall time each new step's renders share, in milliseconds."""
    return _step_budget_ms


class RenderBudget:
    """What is left of one render's CPU time; ``spend`` is the cheap per-step call.

    ``left`` counts the steps until the next look at the clock; hot loops may decrement it
    themselves and call :meth:`check` when it reaches zero. One object per thread is restarted
    for each render (allocating one per render would cost as much as a simple render).
    """

    __slots__ = (
        "_cpu_deadline",
        "_next_look",
        "_step_deadline",
        "_wall_deadline",
        "left",
        "timeout_ms",
    )

    def __init__(self, timeout_ms: float) -> None:
        self.restart(timeout_ms)

    def restart(self, timeout_ms: float, step_deadline: float = math.inf) -> None:
        """Count a new render's budget of ``timeout_ms``; the clock starts after a few steps.

        ``step_deadline`` (monotonic seconds) is when the step making this render runs out.

        Most renders make a handful of calls on small values and end before the clock would be
        read at all. Any big step (weighted by size) or a regex starts it at once; what runs
        before is at most ``FIRST_STEPS`` small steps, the kind of work a template without loops
        or calls does, which runs with no budget at all.
        """
        self.timeout_ms = timeout_ms
        self.left = FIRST_STEPS
        self._wall_deadline = -math.inf
        self._step_deadline = step_deadline

    def _start(self, now: float) -> None:
        if now >= self._step_deadline:
            raise self.step_exceeded()
        self._wall_deadline = now + self.timeout_ms / 1000
        self._cpu_deadline: float | None = None
        self._next_look = min(now + CPU_CLOCK_AFTER_S, self._wall_deadline, self._step_deadline)

    def spend(self, steps: int = 1) -> None:
        """Count ``steps`` units of work; looks at the clock every ``CHECK_EVERY`` units."""
        self.left -= steps
        if self.left <= 0:
            self.check()

    def check(self) -> None:
        """Look at the clock now; RenderLimitError when the budget is spent."""
        self.left = CHECK_EVERY
        now = monotonic()
        if self._wall_deadline == -math.inf:
            self._start(now)
        elif now >= self._next_look:
            self._look(now)

    def remaining_s(self) -> float:
        """Seconds of wall time that certainly fit in the budget (a timeout for C code)."""
        self.check()
        return max(min(self._wall_deadline, self._step_deadline) - monotonic(), 0.0)

    def exceeded(self) -> RenderLimitError:
        """The error reporting this budget, or the step's, as spent (raised on a regex timeout):
        the step's when its deadline is the earlier one (the one the timeout was taken from)."""
        if self._step_deadline <= self._wall_deadline:
            return self.step_exceeded()
        return self._cpu_exceeded()

    def _cpu_exceeded(self) -> RenderLimitError:
        return RenderLimitError(
            f"render exceeded its CPU-time budget of {self.timeout_ms:g} ms "
            "(KESTREAM_RENDER_TIMEOUT_MS)"
        )

    def step_exceeded(self) -> RenderLimitError:
        """The error for a render made after its step's shared deadline."""
        return RenderLimitError(
            f"render exceeded the step budget of {_step_budget_ms} ms "
            "(KESTREAM_STEP_RENDER_BUDGET_MS) shared by the renders of one executor step"
        )

    def _look(self, now: float) -> None:
        """Read the CPU clock; the next look is when the rest could be spent at the earliest
        (or at the step's deadline, if that comes first)."""
        if now >= self._step_deadline:
            raise self.step_exceeded()
        cpu = thread_time()
        if self._cpu_deadline is None:
            # First reading: the wall time so far is charged as CPU time (never less than it).
            self._cpu_deadline = cpu + (self._wall_deadline - now)
        remaining = self._cpu_deadline - cpu
        if remaining <= 0:
            raise self._cpu_exceeded()
        self._wall_deadline = now + remaining
        self._next_look = min(self._wall_deadline, self._step_deadline)


#: Counts for code running outside any render (a filter called directly); it never runs out.
UNBOUNDED = RenderBudget(math.inf)


class _Renders(threading.local):
    """This thread's budget object, the render in progress on this thread (or None), and the
    deadline of the step in progress (monotonic seconds; infinite outside a step)."""

    def __init__(self) -> None:
        self.budget = RenderBudget(RENDER_TIMEOUT_MS)
        self.current: RenderBudget | None = None
        self.step_deadline = math.inf


_RENDERS = _Renders()


def current_budget() -> RenderBudget:
    """The budget of the render in progress on this thread (:data:`UNBOUNDED` outside one)."""
    return _RENDERS.current or UNBOUNDED


def open_budget() -> tuple[RenderBudget, bool]:
    """The render in progress's budget, or a restarted one; True when this call started it
    (the caller then ends it with :func:`close_budget`)."""
    renders = _RENDERS
    current = renders.current
    if current is not None:
        return current, False
    budget = renders.budget
    budget.restart(_timeout_ms, renders.step_deadline)
    renders.current = budget
    return budget, True


def close_budget() -> None:
    """End the render in progress on this thread (the one :func:`open_budget` started)."""
    _RENDERS.current = None


@contextmanager
def step_budget() -> Iterator[None]:
    """Give every render made inside the block one shared deadline: the step render budget from
    now (an enclosing step's deadline, if earlier, stays)."""
    renders = _RENDERS
    outer = renders.step_deadline
    renders.step_deadline = min(outer, monotonic() + _step_budget_ms / 1000)
    try:
        yield
    finally:
        renders.step_deadline = outer
