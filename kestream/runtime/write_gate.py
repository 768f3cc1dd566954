"""The one gate every write of a group member passes: the executor's changelog, commands and
offsets; the worker's results and offsets.

A group member that the group may have expelled must write nothing from the state it holds:
its partitions may have a new owner, and a record written now (a changelog record carried from
the last cycle, a job, a task run's result, an offset) lands over what that owner wrote since.
The member fence (:mod:`.member_fence`) says when the process stood still past its session,
which is what drops the state and stops the worker's running jobs; the gate is stricter, for a
write needs no proof of a freeze, only a doubt. It is **closed** while:

- the membership has lapsed (:meth:`MemberFence.lapsed`);
- no heartbeat or join has confirmed the membership for a whole session
  (:meth:`MemberFence.unconfirmed`), whether or not the loop turned: a member cut off from its
  group coordinator only, or a broker away (a restart, when nothing can be written anyway);
- aiokafka's generation or member id differs from the one noted at the last assignment
  (:meth:`WriteGate.note`): aiokafka resets both when the coordinator answers that it was
  expelled (a rebalance that timed out while a cycle held the executor, a paused VM whose clock
  stopped too, say), and sets new ones at a join. Every record waiting to be written was made
  under the noted ones: a revocation writes or drops the carried records of the partitions it
  takes away before the next assignment notes new ones.

A write at a closed gate waits while the membership is only unconfirmed: a heartbeat answered
opens the gate again. When the group has said more (generation changed, membership lapsed), the
executor's write raises :class:`WriteRefused` (it then drops the state it would have written
from); a worker's result waits on (:meth:`WriteGate.passing` with ``given_up``) until the next
assignment notes the membership, or its job is stopped because the member lost the job's
partition. The waiters wake together, only when the gate may have moved
(:meth:`WriteGate.wake`), not each on a timer of its own. A revocation does not wait (it is part
of aiokafka's rejoin, which the wait would hold up): it asks :meth:`WriteGate.closed` first and
then writes and commits nothing.

Records already handed to the producer before the gate closed are beyond it (a cycle's flush
waiting for acks while the group moves on): exactly-once on Apache Kafka fences those too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kestream.runtime.member_fence import LOOK_EVERY_S, MemberFence

__all__ = ["WriteGate", "WriteRefused"]


class WriteRefused(Exception):
    """The gate refused a write: the group may have handed this member's partitions on."""


class WriteGate:
    """Whether a group member may write (see the module docs). Always open without a fence (no
    group: partitions assigned by hand, standalone's fixed shares). ``role`` names the member
    in what the gate logs, under its role's logger."""

    def __init__(self, fence: MemberFence | None = None, *, role: str = "executor") -> None:
        self.fence = fence
        self.role = role
        self._log = logging.getLogger(f"kestream.{role}")
        #: aiokafka's generation and member id at the last assignment.
        self._noted: tuple[int, str] | None = None
        #: A writer waiting at the closed gate said so; the first to pass once it opens says
        #: that too (many of a worker's results wait at once).
        self._warned = False
        #: Set (and replaced) when the gate or a waiter's ``given_up`` may have changed
        #: (:meth:`wake`): every writer waiting at the gate awaits it, so thousands of a
        #: worker's results waiting cost nothing until something moves, not a timer each.
        self._moved: asyncio.Event | None = None
        #: Writers waiting, and the one look (:meth:`_look`) that runs while there are any: a
        #: heartbeat answered (or the session running out) changes the gate without telling it.
        self._waiting = 0
        self._looking: asyncio.TimerHandle | None = None
        self._seen: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Let every writer waiting at the gate look again: the gate may have opened, or a
        waiter's ``given_up`` may have changed (a job stopped, a partition revoked, the stop's
        drain ended). The worker calls it when it changes what ``given_up`` reads."""
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    def _look(self) -> None:
        """Every :data:`LOOK_EVERY_S` while writers wait: wake them when why the gate is
        closed changed (it opened at a heartbeat, or the group said more)."""
        self._looking = None
        if self._waiting == 0:
            return
        why = self.closed()
        if why != self._seen:
            self._seen = why
            self.wake()
        self._looking = asyncio.get_running_loop().call_later(LOOK_EVERY_S, self._look)

    async def _wait(self, why: str | None) -> None:
        """Wait until :meth:`wake` (called by :meth:`_look`, :meth:`note` or the writer)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # (a gate outlives the loop its last writers waited on)
            self._loop, self._moved, self._looking, self._waiting = loop, None, None, 0
        if self._moved is None:
            self._moved = asyncio.Event()
        moved = self._moved
        self._waiting += 1
        if self._looking is None:
            self._seen = why
            self._looking = loop.call_later(LOOK_EVERY_S, self._look)
        try:
            await moved.wait()
        finally:
            self._waiting -= 1

    def note(self) -> bool:
        """An assignment has just completed: note the membership it was made under. True when
        its member id is not the one noted before: the group expelled this member in between,
        so what it started under the old one may have run on another member meanwhile, even on
        the partitions assigned back to it."""
        if self.fence is None:
            return False
        before, self._noted = self._noted, self.fence.membership()
        self.wake()
        return before is not None and self._noted is not None and before[1] != self._noted[1]

    def closed(self) -> str | None:
        """Why the gate is closed now, or None when it is open."""
        fence = self.fence
        if fence is None:
            return None
        if fence.lapsed():
            return "its group membership lapsed"
        if self._changed():
            return "the group no longer knows the generation it was assigned in"
        if fence.unconfirmed():
            return "no heartbeat has confirmed its group membership for a session"
        return None

    def _lapsed(self) -> bool:
        return self.fence is not None and self.fence.lapsed()

    def _changed(self) -> bool:
        if self._noted is None or self.fence is None:
            return False
        return self.fence.membership() != self._noted

    async def passing(
        self,
        given_up: Callable[[], bool] | None = None,
        held: Callable[[], bool] | None = None,
    ) -> bool:
        """Return True once the gate is open (and the write is not given up).

        Without ``given_up`` (the executor, which drops the state its writes come from when
        expelled), raise :class:`WriteRefused` when the group expelled this member (or its
        membership lapsed) meanwhile. With it (a worker's result, whose job the worker stops
        once it learns that it lost the job's partition: at a lapse, at a revocation with the
        gate closed, at an assignment without the partition or under a new member id), wait
        through those too, until the next assignment opens the gate, or return False as soon
        as ``given_up()`` says the write is off. ``held()``: the writer's own reason to wait
        at an open gate (a worker's result whose partition a rebalance revoked, until the
        assignment says whether it is this member's again), looked at again at each
        :meth:`note` and :meth:`wake`."""
        waited = False
        while True:
            why = self.closed()
            if why is None and (held is None or not held()):
                break
            if given_up is not None:
                if given_up():
                    return False
            elif why is not None and (self._lapsed() or self._changed()):
                self._warned = False  # (what comes next is a new closing)
                raise WriteRefused(why)
            if why is not None:
                if not self._warned:
                    self._warned = True
                    self._log.warning("%s: %s; its writes wait", self.role, why)
                waited = True
            await self._wait(why)
        if waited and self._warned:
            self._warned = False
            self._log.warning("%s: the gate is open again; writing", self.role)
        # (The assignment that opened it may have given the write up in the same turn.)
        return given_up is None or not given_up()
