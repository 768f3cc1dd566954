"""The worker group's assignor: sticky, so a rebalance leaves partitions with the workers that
hold them.

Jobs that run through a rebalance (a Sleep, a script) go on only where their partition comes
back; where it moves, the new owner runs the attempt again from the committed offset, and its
side effects happen twice. With the round robin assignor a killed worker's restart (a new member
id, so a new order of members) shuffled every partition, the survivor's too: the worker-kill
chaos test found the survivor's Sleeps run again on the restarted worker. Sticky assignment
(Kafka's ``StickyAssignor``, as aiokafka ships it) keeps each survivor's partitions and moves
only the dead member's, and those it must to balance the group.

aiokafka's assignor keeps the member's last assignment, which it sends with each join, on the
class: two consumers of one process (two worker groups, the test drivers) would send each other's.
Each consumer therefore gets a class of its own (:func:`sticky_assignor`). aiokafka never tells
the assignor its generation, which settles two members' claims on one partition (a member
expelled and back claims what the group has since given another): the consumer's owner passes
it on each assignment (:func:`note_generation`). Only one assignor is
offered (aio-libs/aiokafka#1168: each offered assignor is one more JoinGroup, see
``EXECUTOR_ASSIGNORS``), so a group's members must all offer it: a worker of an older version
(round robin) and one of this version cannot share a group; stop the older workers first.

**Where a partition moved from.** The leader also tells each member, in its assignment's user
data, which of its partitions it takes over from a member still in the group (the claim of the
newest generation, as the assignment settles it): that member may have task runs of the
partition that ended after the revocation, whose offsets it could not commit, and it hands the
partition over (:mod:`.worker_handover`) before the new owner runs any of its jobs. A partition
whose previous owner left the group (killed, expelled) comes with nothing to wait for. The
user data names the member it was computed for: on Apache Kafka a worker restarted with a dead
one's instance id gets the dead one's assignment as it was, without a rebalance, and a hand-over
that assignment announced was its predecessor's to read (the restarted member, under a new
member id, awaits none).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from kestream.runtime.group_coordinator import group_generation

__all__ = ["HandingStickyAssignor", "moved_from", "note_generation", "sticky_assignor"]

log = logging.getLogger("kestream.worker")


class HandingStickyAssignor(StickyPartitionAssignor):
    """aiokafka's sticky assignor, whose assignments also say where each partition moved from
    (see the module docs); :meth:`on_assignment` keeps that in :attr:`handed_from`."""

    #: This member's partitions that came from another live member at its last assignment,
    #: with that member's id, and the member id that assignment was computed for.
    handed_from: dict[TopicPartition, str] = {}
    handed_to: str | None = None

    @classmethod
    def assign(
        cls, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        result = super().assign(cluster, members)
        owners = _previous_owners(cls, members)
        for member, assignment in result.items():
            moved = [
                [tp.topic, tp.partition, owner]
                for tp in assignment.partitions()
                if (owner := owners.get(tp)) is not None and owner != member
            ]
            if moved:
                data = json.dumps({"to": member, "from": moved}, separators=(",", ":")).encode()
                result[member] = ConsumerProtocolMemberAssignment(
                    assignment.version, assignment.assignment, data
                )
        return result

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        super().on_assignment(assignment)
        cls.handed_to, cls.handed_from = _moved(assignment.user_data)


def _previous_owners(
    cls: type[StickyPartitionAssignor], members: Mapping[str, ConsumerProtocolMemberMetadata]
) -> dict[TopicPartition, str]:
    """Each claimed partition's previous owner among ``members``: the claim of the newest
    generation (the one the sticky assignment keeps); of two claims of one generation, the
    first in the order of ``members``, as aiokafka's sticky assignment settles it."""
    best: dict[TopicPartition, tuple[int, str]] = {}
    for member in members:
        claim = cls.parse_member_metadata(members[member])
        for tp in claim.partitions:
            if tp not in best or claim.generation > best[tp][0]:
                best[tp] = (claim.generation, member)
    return {tp: member for tp, (_, member) in best.items()}


def _moved(user_data: bytes) -> tuple[str | None, dict[TopicPartition, str]]:
    """The ``to`` and ``from`` of an assignment's user data; nothing when there is none, or
    when it cannot be read (a leader of another version: nothing is awaited)."""
    if not user_data:
        return None, {}
    try:
        data = json.loads(user_data)
        moved = {TopicPartition(str(t), int(p)): str(owner) for t, p, owner in data["from"]}
        return str(data["to"]), moved
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("the assignment's user data cannot be read (%s); no hand-over awaited", exc)
        return None, {}


def moved_from(assignor: type[AbstractPartitionAssignor], member: str) -> dict[TopicPartition, str]:
    """The partitions of ``assignor``'s last assignment that came from another live member,
    with that member's id; none when that assignment was computed for another member id than
    ``member`` (a static member's predecessor: see the module docs)."""
    if getattr(assignor, "handed_to", None) != member:
        return {}
    return dict(getattr(assignor, "handed_from", {}))


def sticky_assignor() -> type[AbstractPartitionAssignor]:
    """A sticky assignor class whose remembered assignment belongs to one consumer."""
    return type(
        "OwnStickyAssignor",
        (HandingStickyAssignor,),
        {
            "member_assignment": None,
            "generation": StickyPartitionAssignor.DEFAULT_GENERATION_ID,
            "handed_from": {},
            "handed_to": None,
        },
    )


def note_generation(assignor: type[AbstractPartitionAssignor], consumer: AIOKafkaConsumer) -> None:
    """Tell ``assignor`` the generation of the assignment ``consumer`` just received; it sends
    it with its next join. aiokafka keeps the generation privately: where it cannot be read the
    assignor keeps the default, and a conflict between two claims is settled by member order."""
    try:
        generation = group_generation(consumer)
    except RuntimeError:  # this aiokafka keeps it elsewhere
        return
    if generation >= 0:
        assignor.generation = generation
