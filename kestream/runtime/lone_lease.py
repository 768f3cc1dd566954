"""The lease of a scheduler that no other scheduler can reach: held from start, without a group.

Several schedulers share a broker through the lease's consumer group
(:mod:`kestream.runtime.scheduler_lease`): its one partition is the lease, and its generation
fences a member the group has moved on from. ``kestream standalone`` on its own embedded broker
runs exactly one scheduler, and nothing else can reach that broker
(:data:`~kestream.runtime.process.ONLY_SCHEDULER_ENV`):

- the broker listens on loopback, on a port chosen at start, and its address is given only to
  the role processes standalone starts itself (on their stdin);
- standalone starts one scheduler, in one process (the shared one, or its own with
  ``KESTREAM_STANDALONE_PROCESS_PER_ROLE``), and starts it again only after that process has
  exited: two schedulers of one standalone never run at once.

There the group decides nothing: it hands its partition to the one member after a first join
that the embedded broker holds for half a session (2 s), then costs a heartbeat a second for as
long as the scheduler runs, and after a crash its dead member keeps the lease for a session
(4 s) before the restarted scheduler may take it. :class:`LoneLease` is what the group would
conclude, at once: the scheduler holds the lease from its start until it stops.

What the group's fence guards against cannot happen here: an expelled member that goes on
firing needs a second scheduler to take over from it. Were one started by hand against the
embedded broker anyway, both would fire; a schedule slot fired twice has the same execution id,
which the executor drops as a repeat (DESIGN.md section 3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kestream.scheduler.leadership import Leadership, Role

__all__ = ["LoneLease"]

log = logging.getLogger("kestream.scheduler.lease")


class LoneLease:
    """The lease of the only scheduler a broker will see (module docs); the interface of
    :class:`~kestream.runtime.scheduler_lease.SchedulerLease` that the scheduler uses.

    Args:
        leadership: the state machine to drive.
        on_acquired: called (not awaited) with the term at :meth:`start`.
        on_lost: awaited at :meth:`stop` while the scheduler still holds the lease.
    """

    def __init__(
        self,
        leadership: Leadership,
        *,
        on_acquired: Callable[[int], None],
        on_lost: Callable[[], Awaitable[None]],
    ) -> None:
        self.leadership = leadership
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        #: Never kept from a previous generation: there is one term, from start to stop.
        self.kept = False
        self.decided = asyncio.Event()
        self._held = False

    async def start(self) -> None:
        """Hold the lease: a new term, activated by ``on_acquired``; :attr:`decided` is set."""
        self._held = True
        term = self.leadership.acquire()
        if term is not None:
            log.info("scheduler lease: held (term %d; the only scheduler of this broker)", term)
            self.on_acquired(term)
        self.decided.set()

    async def stop(self) -> None:
        """Let go of the lease (the scheduler steps down first when it still holds it)."""
        self._held = False
        if self.leadership.role is not Role.STANDBY:
            try:
                await self.on_lost()
            finally:
                self.leadership.release()

    @property
    def alive(self) -> bool:
        return self._held

    def valid(self, term: int) -> bool:
        """Does this scheduler still hold the lease of ``term``? Until it stops, and only for
        the term it is in (a stop ends it)."""
        return self._held and self.leadership.holds_or_activating(term)
