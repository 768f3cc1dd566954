"""A static group member that another live process has replaced stops; it never takes the id back.

Static membership (:mod:`~kestream.runtime.static_membership`) hands a process that joins with a
``group.instance.id`` the place of the member that held it: the old member id is fenced. That is
how a restarted process takes a dead one's partitions at once, and also what happens when two
*live* processes are given one id (``KESTREAM_GROUP_INSTANCE_ID`` copied between two
deployments). aiokafka's heartbeat (v0/v1) carries no instance id, so the fenced member hears
``UNKNOWN_MEMBER_ID``, not ``FENCED_INSTANCE_ID``: it resets its member id and joins again
with the same instance id, which fences the other one, whose next heartbeat does the same. Both
then hold the partitions in turn, a heartbeat each (measured on Kafka 4.4): two schedulers
both believe they lead, two executors recover the same partitions over and over.

:func:`guard_instance_id` stops that at the fenced member's rejoin. When aiokafka has reset a
member id it held (the coordinator knew it no more) and is about to join again, the guard asks
the coordinator who holds the instance id now (DescribeGroups v4, the first version that names
each member's instance id). Held by another member id: another process joined with it, and
this member is the one replaced. Joining would take the id back, so the guard refuses: it
raises :class:`DuplicateInstanceId` (naming the id and the holder's host), which ends aiokafka's
group coordination, and tells the caller (``on_duplicate``), which stops its role. Held by
nobody: the session expired (the process was frozen) or an operator removed the member; it
joins again as before.

The process that joined last keeps the id: it cannot tell a live holder from one killed a
moment ago whose session still runs (a restart), and waiting a session at every start would
cost the restart static membership saves. The fenced process exits with the error; started
again automatically while the other still runs, it takes the id back and the other one exits
(``standalone`` does not start it again: :data:`DUPLICATE_INSTANCE_ID`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer
from aiokafka import errors as kafka_errors
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Bytes, Int16, Int32, Schema, String

from kestream.runtime.restarts import RoleStepsDown

__all__ = [
    "DUPLICATE_INSTANCE_ID",
    "DuplicateInstanceId",
    "InstanceHolder",
    "duplicate_in",
    "guard_instance_id",
    "instance_holder",
]

log = logging.getLogger("kestream.runtime.instance_id")

#: How ``standalone`` counts the exit of a role replaced by another live process with its id.
DUPLICATE_INSTANCE_ID = "duplicate instance id"


class DuplicateInstanceId(RoleStepsDown):
    """Another live process joined this member's group with its ``group.instance.id``."""

    def __init__(self, instance_id: str, group: str, holder: InstanceHolder) -> None:
        super().__init__(
            f"another process ({holder.client_host}) joined group {group} with this process's "
            f"group instance id {instance_id!r} and replaced it; KESTREAM_GROUP_INSTANCE_ID "
            "must be unique among live processes: this one stops rather than take it back",
            cause=DUPLICATE_INSTANCE_ID,
        )
        self.instance_id = instance_id
        self.group = group
        self.holder = holder


class InstanceHolder(NamedTuple):
    """The member of a group that holds an instance id, as DescribeGroups names it."""

    member_id: str
    client_id: str
    client_host: str


class _DescribeGroupsResponseV4(Response):
    API_KEY = 15
    API_VERSION = 4
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "groups",
            Array(
                ("error_code", Int16),
                ("group", String("utf-8")),
                ("state", String("utf-8")),
                ("protocol_type", String("utf-8")),
                ("protocol", String("utf-8")),
                (
                    "members",
                    Array(
                        ("member_id", String("utf-8")),
                        ("group_instance_id", String("utf-8")),
                        ("client_id", String("utf-8")),
                        ("client_host", String("utf-8")),
                        ("member_metadata", Bytes),
                        ("member_assignment", Bytes),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
    )


class _DescribeGroupsRequestV4(RequestStruct):
    API_KEY = 15
    API_VERSION = 4
    RESPONSE_TYPE = _DescribeGroupsResponseV4
    SCHEMA = Schema(("groups", Array(String("utf-8"))), ("include_authorized_operations", Boolean))


class _DescribeGroup(Request[_DescribeGroupsRequestV4]):
    """DescribeGroups of one group at v4 (aiokafka's own stops at v3, without instance ids)."""

    API_KEY = 15

    def __init__(self, group: str) -> None:
        self._group = group

    def build(
        self, request_struct_class: type[_DescribeGroupsRequestV4]
    ) -> _DescribeGroupsRequestV4:
        return request_struct_class([self._group], False)


def holder_in(response: Any, instance_id: str) -> InstanceHolder | None:
    """The member holding ``instance_id`` in a DescribeGroups v4 answer of one group (None:
    no member holds it). Raises the group's error, if it has one."""
    (group,) = response.groups
    error_code, _name, _state, _ptype, _protocol, members, _ops = group
    if error_code != 0:
        raise kafka_errors.for_code(error_code)()
    for member_id, held, client_id, client_host, _meta, _assignment in members:
        if held == instance_id:
            return InstanceHolder(member_id, client_id, client_host)
    return None


async def instance_holder(coordinator: Any, group: str, instance_id: str) -> InstanceHolder | None:
    """Ask ``group``'s coordinator (aiokafka's group coordinator of a consumer) which member
    holds ``instance_id``."""
    response = await coordinator._send_req(_DescribeGroup(group))
    return holder_in(response, instance_id)


def duplicate_in(exc: BaseException | None) -> DuplicateInstanceId | None:
    """The :class:`DuplicateInstanceId` ``exc`` is or was raised from (aiokafka wraps what ends
    its coordination in a ``KafkaError``), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DuplicateInstanceId):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def guard_instance_id(
    consumer: AIOKafkaConsumer,
    on_duplicate: Callable[[DuplicateInstanceId], None] | None = None,
) -> bool:
    """Refuse the rejoin of ``consumer`` (a started static group member) once another process
    holds its instance id (module docs); True when guarded, False for a member without an
    instance id (nothing to guard). Raises when this aiokafka keeps no coordination to wrap: a
    guard that silently guards nothing would let two processes swap their partitions."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    instance_id = getattr(coordinator, "_group_instance_id", None)
    if coordinator is not None and instance_id is None:
        return False
    rejoin = getattr(coordinator, "_do_rejoin_group", None)
    reset = getattr(coordinator, "reset_generation", None)
    if rejoin is None or reset is None or not isinstance(instance_id, str):
        raise RuntimeError(
            "instance id guard: this aiokafka keeps no consumer._coordinator._do_rejoin_group"
            " and reset_generation to guard; a duplicate instance id could not be refused"
        )
    _Guard(coordinator, instance_id, rejoin, reset, on_duplicate)
    return True


class _Guard:
    """The wrapped ``reset_generation`` and ``_do_rejoin_group`` of one coordinator."""

    def __init__(
        self,
        coordinator: Any,
        instance_id: str,
        rejoin: Callable[[Any], Awaitable[bool]],
        reset: Callable[[], None],
        on_duplicate: Callable[[DuplicateInstanceId], None] | None,
    ) -> None:
        self.coordinator = coordinator
        self.instance_id = instance_id
        self.on_duplicate = on_duplicate
        self._rejoin = rejoin
        self._reset = reset
        #: The member id the coordinator stopped knowing, until the rejoin has looked.
        self.lost: str | None = None
        coordinator.reset_generation = self.reset_generation
        coordinator._do_rejoin_group = self.rejoin

    def reset_generation(self) -> None:
        member_id = self.coordinator.member_id
        if isinstance(member_id, str) and member_id:
            self.lost = member_id
        self._reset()

    async def rejoin(self, subscription: Any) -> bool:
        """aiokafka's join, unless another member holds the instance id now: looked at before
        it when the member id was reset, and after a join that failed while it still had one
        (a rebalance has it join with its old member id, which the coordinator answers with
        ``FENCED_INSTANCE_ID``: an error aiokafka does not know, raised as unexpected)."""
        lost = self.lost
        if lost is not None:
            try:
                self._refuse_if_replaced(lost, await self._holder())
            except kafka_errors.KafkaError as exc:
                if exc.retriable:  # asked again at the next try
                    await self._retry_later(exc)
                    return False
                # Not answered for what it is (an authorization, an error this broker does
                # not explain): asking again would hold the member out of its group for good.
                log.error("could not ask group %s who holds instance id %r (%s): it joins "
                          "again unguarded; a duplicate instance id would not be refused",
                          self.coordinator.group_id, self.instance_id, exc)  # fmt: skip
            self.lost = None
        try:
            return await self._rejoin(subscription)
        except kafka_errors.KafkaError:
            member_id = self.coordinator.member_id
            if isinstance(member_id, str) and member_id:
                holder = None
                with contextlib.suppress(kafka_errors.KafkaError):  # the join's error stands
                    holder = await self._holder()
                self._refuse_if_replaced(member_id, holder)
            raise

    async def _retry_later(self, exc: kafka_errors.KafkaError) -> None:
        """A question that failed for now: asked again at aiokafka's next try of the join,
        after its retry backoff (as its own failed join waits). A coordinator that answered
        it is not the group's (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE in the group's
        body) is marked dead, as aiokafka's JoinGroup does for those codes: the join's loop
        then looks the coordinator up again, where asking the same broker would not end (a
        transport error marks it dead already, in aiokafka's ``_send_req``)."""
        log.warning("could not ask group %s who holds instance id %r: %s",
                    self.coordinator.group_id, self.instance_id, exc)  # fmt: skip
        moved = (kafka_errors.NotCoordinatorForGroupError,
                 kafka_errors.GroupCoordinatorNotAvailableError)  # fmt: skip
        if isinstance(exc, moved):
            self.coordinator.coordinator_dead()
        await asyncio.sleep(getattr(self.coordinator, "_retry_backoff_ms", 100) / 1000)

    async def _holder(self) -> InstanceHolder | None:
        try:
            return await instance_holder(
                self.coordinator, self.coordinator.group_id, self.instance_id
            )
        # (a broker whose DescribeGroups stops below v4: aiokafka's request raises the former
        # for an API it does not list, the latter for versions it lists that do not reach v4)
        except (kafka_errors.IncompatibleBrokerVersion, NotImplementedError):
            log.warning(
                "the broker has no DescribeGroups v4: a duplicate instance id of group %s "
                "cannot be told from an expired session",
                self.coordinator.group_id,
            )
            return None

    def _refuse_if_replaced(self, member_id: str, holder: InstanceHolder | None) -> None:
        """Raise :class:`DuplicateInstanceId` (telling ``on_duplicate`` first) when ``holder``
        is another member than ``member_id``, this one's."""
        if holder is None or holder.member_id == member_id:
            return
        duplicate = DuplicateInstanceId(self.instance_id, self.coordinator.group_id, holder)
        log.error("%s", duplicate)
        if self.on_duplicate is not None:
            self.on_duplicate(duplicate)
        raise duplicate
