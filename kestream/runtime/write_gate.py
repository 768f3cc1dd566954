"""The one gate every write of the executor passes: changelog, commands and offsets.

A group member that the group may have expelled must write nothing from the state it holds:
its partitions may have a new owner, and a record written now (a changelog record carried from
the last cycle, a job, an offset) lands over what that owner wrote since. The member fence
(:mod:`.member_fence`) says when the process stood still past its session, which is what drops
the state; the gate is stricter, for a write needs no proof of a freeze, only a doubt. It is
**closed** while:

- the membership has lapsed (:meth:`MemberFence.lapsed`);
- no heartbeat or join has confirmed the membership for a whole session
  (:meth:`MemberFence.unconfirmed`), whether or not the loop turned: a member cut off from its
  group coordinator only, or a broker away (a restart, when nothing can be written anyway);
- aiokafka's generation or member id differs from the one noted at the last assignment
  (:meth:`WriteGate.note`): aiokafka resets both when the coordinator answers that it was
  expelled (a rebalance that timed out while a cycle held the executor, say), and sets new ones
  at a join. Every record waiting to be written was made under the noted ones: a revocation
  writes or drops the carried records of the partitions it takes away before the next
  assignment notes new ones.

A write at a closed gate raises :class:`WriteRefused` when the group has said so (generation
changed, membership lapsed) and waits while the membership is only unconfirmed: a heartbeat
answered opens it again, one answered with an expulsion refuses. A revocation does not wait (it
is part of aiokafka's rejoin, which the wait would hold up): it asks :meth:`WriteGate.closed`
first and then writes nothing.

Records already handed to the producer before the gate closed are beyond it (a cycle's flush
waiting for acks while the group moves on): exactly-once on Apache Kafka fences those too.
"""

from __future__ import annotations

import asyncio
import logging

from kestream.runtime.member_fence import LOOK_EVERY_S, MemberFence

__all__ = ["WriteGate", "WriteRefused"]

log = logging.getLogger("kestream.executor")


class WriteRefused(Exception):
    """The gate refused a write: the group may have handed this member's partitions on."""


class WriteGate:
    """Whether the executor may write (see the module docs). Always open without a fence (no
    group: partitions assigned by hand, standalone's fixed shares)."""

    def __init__(self, fence: MemberFence | None = None) -> None:
        self.fence = fence
        #: aiokafka's generation and member id at the last assignment.
        self._noted: tuple[int, str] | None = None

    def note(self) -> None:
        """An assignment has just completed: the membership it was made under."""
        if self.fence is not None:
            self._noted = self.fence.membership()

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

    def _changed(self) -> bool:
        if self._noted is None or self.fence is None:
            return False
        return self.fence.membership() != self._noted

    async def passing(self) -> None:
        """Return once the gate is open; raise :class:`WriteRefused` when the group expelled
        this member (or its membership lapsed) meanwhile."""
        waited = False
        while (why := self.closed()) is not None:
            fence = self.fence
            assert fence is not None
            if fence.lapsed() or self._changed():
                raise WriteRefused(why)
            if not waited:
                waited = True
                log.warning("executor: %s; its writes wait for a heartbeat", why)
            await asyncio.sleep(LOOK_EVERY_S)
        if waited:
            log.warning("executor: its group membership is confirmed again; writing")
