"""Health of one role process: is it alive, and is it ready for work?

- **live**: the event loop answers and the processors' loops run. A loop blocked for longer than
  :data:`MAX_BLOCK_S` (a task's blocking code on the loop, a runaway step) is not live: the
  :class:`LoopMonitor` heartbeat measures how late it wakes up. A probe that gets no answer at all
  (the loop is blocked right now) is the orchestrator's timeout; this answer covers the case where
  the loop came back but was stuck for long.
- **ready**: every part of the role is ready. For the executor that is partitions assigned, their
  state recovered from the changelog, and no rebalance in progress; for the worker, an assignment
  from its group. The parts report through :class:`HealthPart`; anything else (the flows table,
  the scheduler, the API's index) is wrapped in a :class:`Check`.

The installation's readiness (every role process, not just this one) is the
:class:`~kestream.runtime.members.MemberBoard`'s business: each process publishes what
:meth:`Health.ready` says here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kestream.runtime.aio import cancel_and_wait

if TYPE_CHECKING:
    from kestream.runtime.flows_table import FlowsTable
    from kestream.runtime.metrics import Metrics

log = logging.getLogger("kestream.health")

#: The heartbeat's period (seconds).
HEARTBEAT_S = 0.5
#: A loop that was blocked longer than this is reported as not live.
MAX_BLOCK_S = 10.0
#: Facts of a part's detail that are measurements, not state: they change at every look (the
#: loop's lag), so a member publishes them with its other news, never as news of their own.
MEASUREMENTS = frozenset({"lag_s"})


@runtime_checkable
class HealthPart(Protocol):
    """What a part of a role reports. ``is_ready`` rather than ``ready`` because the executor's
    ``ready`` is already the :class:`asyncio.Event` its tests await."""

    @property
    def health_name(self) -> str:
        """A short name: the key of this part in the health details."""
        ...

    @property
    def is_live(self) -> bool:
        """The part's own loop runs (a crashed loop is not live)."""
        ...

    @property
    def is_ready(self) -> bool:
        """The part can do its work now."""
        ...

    def health_detail(self) -> dict[str, Any]:
        """Small facts worth showing a person: counts, flags, partition numbers.

        ``/health`` answers without credentials, so only numbers and booleans (and lists of
        them) are shown (:func:`public_facts`): an error's text or repr names hosts, users and
        data, and belongs in the log.
        """
        ...


def _always() -> bool:
    return True


def _nothing() -> dict[str, Any]:
    return {}


@dataclass(slots=True)
class Check:
    """A :class:`HealthPart` from plain callables, for parts that are not services of ours.

    Example: ``Check("flows", lambda: table.loaded.is_set())``.
    """

    name: str
    ready: Callable[[], bool]
    live: Callable[[], bool] = _always
    detail: Callable[[], dict[str, Any]] = _nothing

    @property
    def health_name(self) -> str:
        return self.name

    @property
    def is_live(self) -> bool:
        return self.live()

    @property
    def is_ready(self) -> bool:
        return self.ready()

    def health_detail(self) -> dict[str, Any]:
        return self.detail()


#: Parts every role has (its own flows table, the ``flows`` check): in a process hosting
#: several roles they are named ``role.name``, since the process's checks are keyed by name and
#: same-named parts would hide each other. Every other part keeps the name it has in a process
#: of one role (``index``, ``executor``, ``scheduler``...), so what reads /health sees the same
#: checks whichever layout runs.
PER_ROLE_PARTS = frozenset({"flows"})


@dataclass(slots=True)
class RolePart:
    """A part of one role in the health of a process hosting several roles
    (:data:`PER_ROLE_PARTS` says which are named after their role)."""

    role: str
    part: HealthPart

    @property
    def health_name(self) -> str:
        name = self.part.health_name
        return f"{self.role}.{name}" if name in PER_ROLE_PARTS else name

    @property
    def is_live(self) -> bool:
        return self.part.is_live

    @property
    def is_ready(self) -> bool:
        return self.part.is_ready

    def health_detail(self) -> dict[str, Any]:
        return self.part.health_detail()


class LoopMonitor:
    """A heartbeat task on the event loop that measures how late it wakes up.

    Every ``interval`` it sleeps, then compares when it woke with when it asked to: the difference
    is the loop's lag (work that held the loop). ``is_live`` is false when the last beat is older
    than ``max_block_s`` (the loop is stuck now, seen from a thread or a late handler) or when
    the last lag alone exceeded it (the loop was stuck and just came back).
    """

    health_name = "event-loop"

    def __init__(
        self,
        *,
        interval: float = HEARTBEAT_S,
        max_block_s: float = MAX_BLOCK_S,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_block_s = max_block_s
        self.metrics = metrics
        self.clock = clock
        #: How late the last heartbeat woke up (seconds).
        self.lag = 0.0
        #: The worst lag seen since start.
        self.max_lag = 0.0
        self.last_beat = clock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.last_beat = self.clock()
        self._task = asyncio.create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            asked = self.clock()
            await asyncio.sleep(self.interval)
            self.beat(asked)

    def beat(self, asked: float) -> None:
        """Record one heartbeat that asked, at ``asked``, to sleep :attr:`interval`."""
        now = self.clock()
        self.lag = max(0.0, now - asked - self.interval)
        self.max_lag = max(self.max_lag, self.lag)
        self.last_beat = now
        if self.lag > self.max_block_s:
            log.warning("the event loop was blocked for %.1f s", self.lag)
        if self.metrics is not None:
            self.metrics.loop_lag.set(self.lag)

    @property
    def is_live(self) -> bool:
        silent = self.clock() - self.last_beat
        return silent <= self.max_block_s + self.interval and self.lag <= self.max_block_s

    @property
    def is_ready(self) -> bool:
        return self.is_live

    def health_detail(self) -> dict[str, Any]:
        return {"lag_s": round(self.lag, 4), "max_lag_s": round(self.max_lag, 4)}


@dataclass(slots=True)
class Health:
    """The health of one role process, collected from its parts.

    ``ready()`` is false until at least one part is registered (a process still starting has
    nothing to be ready with) and whenever a part is not live or not ready.
    """

    role: str
    parts: list[HealthPart] = field(default_factory=list)

    def add(self, *parts: HealthPart) -> None:
        """Register parts (the loop monitor, the processors, :class:`Check` wrappers)."""
        self.parts.extend(parts)

    def remove(self, part: HealthPart) -> None:
        with contextlib.suppress(ValueError):
            self.parts.remove(part)

    def live(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, details)``: every part's loop runs."""
        checks = {part.health_name: self._describe(part, ready=False) for part in self.parts}
        ok = all(check["live"] for check in checks.values())
        return ok, self._details(ok, checks)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, details)``: at least one part, and every part live and ready."""
        checks = {part.health_name: self._describe(part, ready=True) for part in self.parts}
        ok = bool(checks) and all(c["live"] and c["ready"] for c in checks.values())
        return ok, self._details(ok, checks)

    def not_ready(self) -> list[str]:
        """Names of the parts that are not live or not ready (what a member record carries)."""
        return [p.health_name for p in self.parts if not (p.is_live and p.is_ready)]

    def _details(self, ok: bool, checks: dict[str, Any]) -> dict[str, Any]:
        return {"role": self.role, "status": "UP" if ok else "DOWN", "checks": checks}

    @staticmethod
    def _describe(part: HealthPart, *, ready: bool) -> dict[str, Any]:
        try:
            out: dict[str, Any] = {"live": bool(part.is_live)}
            if ready:
                out["ready"] = bool(part.is_ready)
            out.update(public_facts(part.health_detail()))
        except Exception:  # a broken part must not break the probe: it is just down
            log.exception("health check of %s failed", part.health_name)
            return {"live": False, "ready": False, "checkFailed": True}
        return out


def public_facts(detail: dict[str, Any]) -> dict[str, Any]:
    """The entries of a part's ``detail`` that are numbers or booleans, or lists of numbers:
    what an open ``/health`` may show. Text (an error, a reason) is left to the log."""
    return {key: value for key, value in detail.items() if _is_fact(value)}


def _is_fact(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(isinstance(item, bool | int | float) for item in value)
    return isinstance(value, bool | int | float) or value is None


def flows_table_check(table: FlowsTable) -> Check:
    """The flows table as a part: ready once it has read the flows topic to its end."""
    return Check("flows", table.loaded.is_set)
