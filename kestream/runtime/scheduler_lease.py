"""The scheduler's lease: which of several schedulers is the active one.

Every scheduler joins the consumer group ``<prefix>scheduler-lease`` on the one-partition
trigger-commands topic (any one-partition topic would do; nothing is read from it: the partition
is paused). The group hands that partition to one member; that member is active, the others are
standbys. When the active one dies, the group notices after its session timeout
(``KESTREAM_SESSION_TIMEOUT_MS``) and hands the partition to a standby; a clean stop leaves the
group and hands it on at once.

Fencing: the group asks every member to give up its partitions before it assigns them again
(the revocation callback), and waits for the answer. :class:`SchedulerLease` awaits ``on_lost``
there, and the scheduler stops firing and flushes its producer before returning, so whatever
the old active wrote is in the log before the new one reads it. A member the group has already
expelled (its session expired while it was frozen) learns it late; :meth:`SchedulerLease.valid`
also refuses once the consumer's group generation is no longer the one the partition was assigned
in. A member whose group coordination died steps down for good and reports itself dead, and its
process stops, to be started again by its supervisor (counted there as ``stepped down``). One
that another live process replaced by taking its static instance id (two processes given one
``KESTREAM_GROUP_INSTANCE_ID``) is refused its rejoin (:mod:`.instance_id_guard`): it steps down
for good too and its process stops with an error naming the id (counted as ``duplicate
instance id``, which ``standalone`` does not restart), so the two never take the lease from
each other in turn. What remains (a frozen process that wakes and fires
before its heartbeat fails) can only repeat a slot the new active fires too, under the same
execution id derived from the slot, which the executor drops as a repeat (DESIGN.md section 3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.context import BrokerContext
from kestream.runtime.group_coordinator import coordination_failure, group_generation, member_id
from kestream.runtime.instance_id_guard import duplicate_in, guard_instance_id
from kestream.runtime.kafka import make_consumer
from kestream.runtime.restarts import RoleStepsDown
from kestream.runtime.static_membership import static_member, stop_member
from kestream.scheduler.leadership import Leadership, Role

__all__ = ["STEPPED_DOWN", "SchedulerLease"]

log = logging.getLogger("kestream.scheduler.lease")

_POLL_TIMEOUT_MS = 500
#: How ``standalone`` counts the exit of a scheduler whose lease's coordination died.
STEPPED_DOWN = "stepped down"
_ERROR_BACKOFF_S = 0.5


class SchedulerLease:
    """Membership in the lease group, reported to a :class:`Leadership`.

    Args:
        ctx: the broker and topics.
        leadership: the state machine to drive.
        on_acquired: called (not awaited: activation must not hold up the group) with the new
            term when this scheduler wins the lease.
        on_lost: awaited inside the revocation callback: when it returns, this scheduler fires
            nothing more.
        on_standby: awaited when the group answers with no lease for this scheduler.
        on_dead: called (once, after the step-down) with a :class:`RoleStepsDown` when the
            group coordination died: this process can never hold the lease again, a new one
            would (its host stops the process, for the supervisor to start another).

    A rebalance (a standby joining or leaving) revokes the lease and assigns it again, most
    often to the same member. :attr:`kept` says, at ``on_acquired``, that this member held it
    in the generation right before: no other scheduler can have held it in between, so the
    scheduler may go on with what it had.
    """

    def __init__(
        self,
        ctx: BrokerContext,
        leadership: Leadership,
        *,
        on_acquired: Callable[[int], None],
        on_lost: Callable[[], Awaitable[None]],
        on_standby: Callable[[], Awaitable[None]] | None = None,
        on_dead: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.leadership = leadership
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.on_standby = on_standby
        self.on_dead = on_dead
        #: The lease came back in the generation right after the one this member held it in.
        self.kept = False
        self._revoked_generation: int | None = None
        self.decided = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._generation: int | None = None
        #: The member id the lease was assigned to: with static membership a process that took
        #: this one's instance id holds the same generation, and only the member id (aiokafka
        #: takes a new one when its heartbeat is refused) tells them apart.
        self._member_id: str | None = None

    @property
    def group_id(self) -> str:
        return self.ctx.settings.topic("scheduler-lease")

    async def start(self) -> None:
        """Join the group; :attr:`decided` is set once the group has first answered."""
        ctx = self.ctx
        consumer = make_consumer(
            ctx.settings, ctx.bootstrap, ctx.kind, group_id=self.group_id,
            **static_member(ctx.settings, ctx.kind),
        )  # fmt: skip
        self._consumer = consumer
        await consumer.start()
        group_generation(consumer)  # the fence must be readable before this one may hold it
        guard_instance_id(consumer)  # a replaced member never takes its instance id back
        consumer.subscribe([ctx.topics.trigger_commands], listener=_Listener(self))
        self._task = asyncio.create_task(self._poll(consumer), name="scheduler-lease")

    async def stop(self) -> None:
        """Leave the group (a standby takes over at once)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_member(consumer)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def valid(self, term: int) -> bool:
        """Does this scheduler still hold the lease of ``term``, as far as it can tell?"""
        if not self.leadership.holds_or_activating(term):
            return False
        if self._generation is None:
            return True
        consumer = self._consumer
        held = (self._generation, self._member_id)
        return consumer is not None and held == (group_generation(consumer), member_id(consumer))

    def _current_generation(self) -> int | None:
        consumer = self._consumer
        return None if consumer is None else group_generation(consumer)

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        """Keep polling: a member that stops polling for ``max.poll.interval`` leaves its group;
        the partition is paused, so nothing is fetched. Ends, stepped down, once the consumer's
        group coordination has died (:meth:`_coordination_died`)."""
        while True:
            if (died := coordination_failure(consumer)) is not None:
                await self._coordination_died(died)
                return
            try:
                await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
            except KafkaError as exc:
                log.warning("scheduler lease: poll failed (%s); retrying", exc)
                await asyncio.sleep(_ERROR_BACKOFF_S)

    async def _coordination_died(self, exc: BaseException) -> None:
        """The consumer's group coordination ended with ``exc``: no rebalance will reach this
        member again, and its generation and member id stop changing, so :meth:`valid` cannot
        tell it lost the lease. The usual cause is another process that took this scheduler's
        static instance id (``FENCED_INSTANCE_ID``, which aiokafka 0.14 does not know: its
        SyncGroup raises an unexpected error, which ends the coordination). The scheduler
        steps down for good, the lease reports itself dead (:attr:`alive`: the health check
        then says the scheduler is not live) and tells ``on_dead``, whose host stops the
        process: a new one joins the group afresh (a process that stayed up not live would
        wait for a liveness probe that ``standalone`` does not have). When another live
        process took this one's instance id (:mod:`.instance_id_guard`), that is what
        ``on_dead`` is told: the process stops naming the id, for good."""
        duplicate = duplicate_in(exc)
        if duplicate is not None:
            log.error(
                "scheduler lease: %s. This scheduler steps down for good and fires nothing more",
                duplicate,
            )
        else:
            log.error(
                "scheduler lease: the group coordination stopped (%r); another process may "
                "have taken this scheduler's instance id (KESTREAM_GROUP_INSTANCE_ID). "
                "Stepping down",
                exc,
            )
        try:
            if self.leadership.role is not Role.STANDBY:
                try:
                    await self.on_lost()
                finally:
                    self.leadership.release()
        finally:
            self._generation = None
            if self.on_dead is not None:
                self.on_dead(
                    duplicate
                    or RoleStepsDown(
                        f"the scheduler lease's group coordination stopped ({exc!r})",
                        cause=STEPPED_DOWN,
                    )
                )

    async def assigned(self, partitions: list[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is not None and partitions:
            consumer.pause(*partitions)
        revoked, self._revoked_generation = self._revoked_generation, None
        if not partitions:
            self.kept = False
            self.leadership.standby()
            log.info("scheduler lease: standby (group %s)", self.group_id)
            if self.on_standby is not None:
                await self.on_standby()
        else:
            self._generation = self._current_generation()
            self._member_id = None if consumer is None else member_id(consumer)
            self.kept = (
                revoked is not None
                and self._generation is not None
                and self._generation == revoked + 1
            )
            term = self.leadership.acquire()
            if term is not None:
                log.info("scheduler lease: acquired (term %d)", term)
                self.on_acquired(term)
        self.decided.set()

    async def revoked(self) -> None:
        if self.leadership.role is not Role.STANDBY:
            log.info("scheduler lease: revoked; stepping down")
            self._revoked_generation = self._generation
            # ``on_lost`` releases the leadership once the batch in flight is written, so that
            # batch is not refused halfway (the generation still fences it: an expelled member's
            # is gone); released here too, whatever it did.
            try:
                await self.on_lost()
            finally:
                self.leadership.release()
        self._generation = None


class _Listener(ConsumerRebalanceListener):
    def __init__(self, lease: SchedulerLease) -> None:
        self.lease = lease

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.lease.revoked()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.lease.assigned(list(assigned))
