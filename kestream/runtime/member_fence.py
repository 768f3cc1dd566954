"""Whether a consumer group member may still act for the partitions the group assigned it.

A member the group has expelled (its session expired while the process was frozen: SIGSTOP, a
cgroup freeze, a loop held for longer than the session) learns it only from its next heartbeat or
commit. Until then its consumer goes on fetching records of partitions that are now another
member's, and whatever it writes from the state it holds lands after what the new owner wrote
since: changelog records that bring back the state of executions the new owner ended, jobs and
updates again. The commit is refused by the group, but the records are written.

aiokafka keeps the time of its last answered heartbeat to itself, so :class:`MemberFence` notes
it: the *send* time of every heartbeat the coordinator answered without error (its own
``_do_heartbeat``, wrapped), and the time of every join (the assignment callback). Membership is
**confirmed** while the latest of those is younger than the session timeout: the broker counted
the session from a moment no earlier, so it cannot have expired yet.

Membership has **lapsed** when it is unconfirmed for a whole session *and* the process itself
stood still since the last confirmation, for half a session or more: its event loop did not
turn (a timer of the fence, :meth:`MemberFence.guard`, notes every turn's time). A freeze is
what the fence is for; a broker away for as long (a restart) leaves heartbeats unanswered too,
but the loop turns, and the group, once back, counts its members' sessions afresh: aiokafka's
own answer (a heartbeat refused, a rejoin) is right there, and jobs killed needlessly would run
twice. A member whose membership has lapsed takes itself as expelled, whether or not the group
has said so yet: it writes nothing more from what it holds, drops its partitions' state (not
parked for a warm recovery: another member may have written their changelog since) and asks the
group to rejoin, whose next assignment recovers them from the changelog.

What is left: a process frozen in the middle of writing a cycle, after its last look, sends that
cycle's records once it wakes; the fence keeps it from writing anything more. Exactly-once
(``KESTREAM_PROCESSING_GUARANTEE``, on Apache Kafka) closes that too: the new owner's
transactional ids fence the old one's producers, and its open transaction is aborted.

A rebalance in progress (a heartbeat answered ``REBALANCE_IN_PROGRESS``) still confirms: the
group keeps a member that heartbeats until it rejoins or the rebalance times out.

A member whose work goes on beside its loop (the worker's running tasks) also needs to hear of a
lapse before that work does: :meth:`MemberFence.guard` looks every fraction of a second from a
timer of the event loop. A process woken from a freeze runs its expired timers in the order they
fell due, and this one falls due often, so it runs on the loop's first turn after the wake, before
the task woken by a later timer takes its next step: a task cancelled then never takes it (a
Sleep does not end, its effect does not happen). Work in threads or processes is out of reach.

The clock is the process's monotonic clock: a paused virtual machine's stops too (KVM/QEMU stop
the guest's clock while it is paused), so a VM paused past its session sees neither silence nor
a stall and is not fenced; exactly-once on Apache Kafka is the fence for that (docs/brokers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kestream.runtime.group_coordinator import membership

__all__ = ["LOOK_EVERY_S", "MemberFence"]

log = logging.getLogger("kestream.runtime.member_fence")

Clock = Callable[[], float]

#: How often :meth:`MemberFence.guard` looks: short enough that its timer falls due before the
#: tasks a freeze held up, long enough to cost nothing (ten timer callbacks a second).
LOOK_EVERY_S = 0.1


class MemberFence:
    """The confirmed membership of one group consumer (see the module docs)."""

    def __init__(self, session_timeout_s: float, *, clock: Clock = time.monotonic) -> None:
        self.session_timeout_s = session_timeout_s
        self.clock = clock
        #: The latest moment the group is known to have counted this member's session from.
        self.confirmed_at: float | None = None
        self._coordinator: Any = None
        self._guard: asyncio.TimerHandle | None = None
        #: The lapse was reported to ``guard``'s callback; a confirmation clears it.
        self.tripped = False
        #: When :meth:`guard` last looked (its timer ran: the loop turned), and the end of the
        #: last stall it saw (a look later than half a session after the one before).
        self._looked_at: float | None = None
        self._stall_ended_at: float | None = None

    def watch(self, consumer: Any) -> None:
        """Note the answered heartbeats of ``consumer``'s group coordination (a started group
        consumer; again for the same one: nothing). Raises when this aiokafka keeps no
        heartbeat call to wrap: a fence that silently notes nothing would let an expelled
        member write."""
        coordinator: Any = getattr(consumer, "_coordinator", None)
        if coordinator is not None and coordinator is self._coordinator:
            return
        heartbeat = getattr(coordinator, "_do_heartbeat", None)
        if heartbeat is None or not asyncio.iscoroutinefunction(heartbeat):
            raise RuntimeError(
                "member fence: this aiokafka has no coroutine consumer._coordinator._do_heartbeat"
                " to note heartbeats from; an expelled member could not be fenced"
            )
        self._coordinator = coordinator
        coordinator._do_heartbeat = self._noting(heartbeat)

    def _noting(self, heartbeat: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
        async def noted() -> bool:
            sent = self.clock()
            answered = await heartbeat()
            if answered:
                self.confirm(sent)
            return answered

        return noted

    def joined(self, consumer: Any) -> None:
        """A join of ``consumer`` has just completed (its assignment callback): confirm, and
        watch it if not yet. aiokafka's start of a subscribed consumer waits for the first
        join, so that join's assignment comes before the caller could watch: its generation
        and member id would be missed, and the write gate compares later ones with them. (A
        consumer that cannot be watched is left to :meth:`watch` after the start, which
        raises: an exception in a rebalance callback is only logged by aiokafka.)"""
        if self._coordinator is None and getattr(consumer, "_coordinator", None) is not None:
            with contextlib.suppress(RuntimeError):
                self.watch(consumer)
        self.confirm()

    def confirm(self, at: float | None = None) -> None:
        """The group counted this member's session from ``at`` (default now): a heartbeat sent
        then was answered, or a join has just completed."""
        moment = self.clock() if at is None else at
        if self.confirmed_at is None or moment > self.confirmed_at:
            self.confirmed_at = moment
        if not self.lapsed():
            self.tripped = False

    def lapsed(self) -> bool:
        """Whether no heartbeat or join has confirmed the membership for a whole session and
        the process stood still meanwhile (see the module docs): the group may have expelled
        this member and handed its partitions on. False before the first join (nothing is
        assigned yet)."""
        confirmed = self.confirmed_at
        now = self.clock()
        if confirmed is None or now - confirmed < self.session_timeout_s:
            return False
        looked, stalled = self._looked_at, self._stall_ended_at
        if looked is None:  # not guarded: the age alone says it
            return True
        if now - looked >= self.stall_s:  # standing still right now (the guard has not run)
            return True
        return stalled is not None and stalled > confirmed

    @property
    def stall_s(self) -> float:
        """The shortest pause of the loop taken for the process standing still."""
        return self.session_timeout_s / 2

    def unconfirmed(self) -> bool:
        """Whether no heartbeat or join has confirmed the membership for a whole session, the
        process stood still or not (False before the first join): the group may have expelled
        this member, so nothing is written (:mod:`.write_gate`) until a heartbeat confirms it
        again or aiokafka learns that it was expelled."""
        confirmed = self.confirmed_at
        return confirmed is not None and self.clock() - confirmed >= self.session_timeout_s

    def membership(self) -> tuple[int, str] | None:
        """aiokafka's generation and member id in the group as it last heard them (None when
        not watching a coordinator that keeps them). aiokafka resets both when the coordinator
        answers that it knows neither (``UNKNOWN_MEMBER_ID``, ``ILLEGAL_GENERATION``: this
        member was expelled) and sets new ones at each join."""
        return membership(self._coordinator)

    def silent_for(self) -> float:
        """Seconds since the membership was last confirmed (0 before the first join)."""
        return 0.0 if self.confirmed_at is None else self.clock() - self.confirmed_at

    def guard(self, on_lapse: Callable[[], None] | None, period_s: float) -> None:
        """Look every ``period_s`` from a timer of the running loop: note the loop's turns
        (a stall is a look later than :attr:`stall_s` after the one before), and call
        ``on_lapse`` (synchronously) once when the membership has lapsed; again after the
        next confirmation and lapse. :meth:`stop` ends it."""
        loop = asyncio.get_running_loop()

        def look() -> None:
            now = self.clock()
            if self._looked_at is not None and now - self._looked_at >= self.stall_s:
                self._stall_ended_at = now
            if not self.tripped and self.lapsed():
                self.tripped = True
                if on_lapse is not None:
                    on_lapse()
            self._looked_at = now
            self._guard = loop.call_later(period_s, look)

        self._looked_at = self.clock()
        self._guard = loop.call_later(period_s, look)

    def stop(self) -> None:
        """End :meth:`guard`'s looks."""
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def rejoin(self) -> None:
        """Ask the group coordination to rejoin at its next turn (aiokafka's own request, as a
        heartbeat answered ``UNKNOWN_MEMBER_ID`` makes): the revocation and the assignment that
        follow settle what this member owns."""
        request = getattr(self._coordinator, "request_rejoin", None)
        if request is None:
            log.warning("member fence: this aiokafka cannot be asked to rejoin; waiting for it")
            return
        request()
