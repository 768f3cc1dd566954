"""Which of several schedulers fires: the active/standby state machine (pure: no I/O).

Two or more schedulers may run for availability; exactly one of them fires. The runtime holds
a lease (:mod:`kestream.runtime.scheduler_lease`: the one partition of a consumer group's topic)
and reports what the group decides; this class turns those reports into a role and a *term*,
a number that grows with every acquisition. Everything an active scheduler starts is stamped
with its term, and :meth:`Leadership.holds` refuses a stale term: work begun under a lease that
has since been lost (and perhaps won again) can tell it must not fire.

``standby --acquire--> activating --activated--> active``; ``release`` from any state goes back
to ``standby``. Activation takes time (catching up on the trigger records, joining the other
groups), so a release can arrive while activating: the later ``activated`` call of that term is
then refused.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Leadership", "Role"]


class Role(StrEnum):
    """What ``/health`` says a scheduler is."""

    #: Holds no lease: fires nothing, keeps its trigger state warm to take over fast.
    STANDBY = "standby"
    #: Won the lease, catching up before it fires.
    ACTIVATING = "activating"
    #: Holds the lease and fires.
    ACTIVE = "active"


class Leadership:
    """One scheduler's role and term (see the module docs)."""

    def __init__(self) -> None:
        self.role = Role.STANDBY
        self.term = 0
        #: Set once the group has answered at least once (so a start can say what it is).
        self.decided = False
        #: How many times this scheduler became active.
        self.activations = 0
        #: Whether the current term took the lease over from a scheduler that held it while this
        #: one was already in the group (another member, or this one in an earlier term): only
        #: then are slots owed just before the activation delayed by the lease's move rather
        #: than missed. A first assignment (a cold start, a lone scheduler's restart, the
        #: return after an outage) is no takeover.
        self.takeover = False

    def acquire(self) -> int | None:
        """The lease was assigned: a new term, or ``None`` when this scheduler holds it already
        (a group that hands the partition to its holder again changes nothing)."""
        if self.role is not Role.STANDBY:
            self.decided = True
            return None
        self.takeover = self.decided
        self.decided = True
        self.term += 1
        self.role = Role.ACTIVATING
        return self.term

    def standby(self) -> None:
        """The group answered and gave this scheduler no lease."""
        self.decided = True
        self.role = Role.STANDBY

    def activated(self, term: int) -> bool:
        """Activation of ``term`` is done: fire from now on, unless the lease went meanwhile."""
        if self.role is not Role.ACTIVATING or term != self.term:
            return False
        self.role = Role.ACTIVE
        self.activations += 1
        return True

    def release(self) -> bool:
        """The lease was revoked or lost; whether this scheduler held it (and must step down)."""
        held = self.role is not Role.STANDBY
        self.role = Role.STANDBY
        return held

    def holds(self, term: int) -> bool:
        """May work started under ``term`` fire now?"""
        return self.role is Role.ACTIVE and term == self.term

    def holds_or_activating(self, term: int) -> bool:
        """May the activation of ``term`` (or work under it) still write?"""
        return self.role is not Role.STANDBY and term == self.term
