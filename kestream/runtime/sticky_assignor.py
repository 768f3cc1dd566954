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
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from kestream.runtime.group_coordinator import group_generation

__all__ = ["note_generation", "sticky_assignor"]


def sticky_assignor() -> type[AbstractPartitionAssignor]:
    """A sticky assignor class whose remembered assignment belongs to one consumer."""
    return type(
        "OwnStickyAssignor",
        (StickyPartitionAssignor,),
        {"member_assignment": None, "generation": StickyPartitionAssignor.DEFAULT_GENERATION_ID},
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
