"""The worker group's sticky assignor: a survivor keeps its partitions when a killed worker's
restart joins, each consumer sends its own last assignment, and a member back from expulsion
loses its stale claim to the generation the group has since given the partition; each
assignment says which of its partitions come from a member still in the group."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from kestream.runtime.sticky_assignor import moved_from, note_generation, sticky_assignor

TOPIC = "worker-tasks"
PARTITIONS = set(range(16))


class _Cluster:
    """The methods of aiokafka's cluster metadata the assignor reads."""

    def topics(self) -> set[str]:
        return {TOPIC}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return PARTITIONS if topic == TOPIC else None


def _member(assignor: Any) -> Any:
    return assignor.metadata([TOPIC])


def _receive(assignor: Any, partitions: list[int], generation: int) -> None:
    """What a join's end does: aiokafka's callback, then ours with the consumer's generation."""
    assignor.on_assignment(ConsumerProtocolMemberAssignment(0, [(TOPIC, sorted(partitions))], b""))
    consumer = SimpleNamespace(_coordinator=SimpleNamespace(generation=generation))
    note_generation(assignor, cast(AIOKafkaConsumer, consumer))


def _partitions(assignment: Any) -> set[int]:
    return {tp.partition for tp in assignment.partitions() if tp.topic == TOPIC}


def test_a_survivor_keeps_its_partitions_when_a_restarted_worker_joins() -> None:
    survivor, restarted = sticky_assignor(), sticky_assignor()
    kept = [1, 3, 4, 8, 9, 10, 14, 15]  # not what any ordering of members would give
    _receive(survivor, kept, generation=5)
    result = survivor.assign(
        _Cluster(), {"zz-restarted": _member(restarted), "aa-survivor": _member(survivor)}
    )
    assert _partitions(result["aa-survivor"]) == set(kept)
    assert _partitions(result["zz-restarted"]) == PARTITIONS - set(kept)


def test_each_consumer_sends_its_own_last_assignment() -> None:
    first, second = sticky_assignor(), sticky_assignor()
    _receive(first, [0, 1], generation=2)
    assert first.member_assignment == [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]
    assert second.member_assignment is None and second.generation == -1
    assert _member(second).user_data == b""


def test_a_stale_claim_loses_to_the_newer_generation() -> None:
    expelled, owner, peer = sticky_assignor(), sticky_assignor(), sticky_assignor()
    _receive(expelled, sorted(PARTITIONS), generation=3)  # all of them, before its expulsion
    _receive(owner, list(range(8)), generation=4)  # the group's since
    _receive(peer, list(range(8, 16)), generation=4)
    members = {"expelled": expelled, "owner": owner, "peer": peer}
    for order in (("expelled", "owner", "peer"), ("owner", "peer", "expelled")):
        result = owner.assign(_Cluster(), {name: _member(members[name]) for name in order})
        assert _partitions(result["owner"]) <= set(range(8))
        assert _partitions(result["peer"]) <= set(range(8, 16))
        assert len(_partitions(result["expelled"])) == 5  # balance: 16 over 3


def test_an_assignment_names_the_live_member_each_moved_partition_comes_from() -> None:
    survivor, restarted = sticky_assignor(), sticky_assignor()
    _receive(survivor, sorted(PARTITIONS), generation=5)  # all of them, its peer killed
    result = survivor.assign(
        _Cluster(), {"survivor": _member(survivor), "restarted": _member(restarted)}
    )
    taken = _partitions(result["restarted"])
    assert len(taken) == 8
    restarted.on_assignment(result["restarted"])
    assert moved_from(restarted, "restarted") == {
        TopicPartition(TOPIC, p): "survivor" for p in taken
    }
    survivor.on_assignment(result["survivor"])
    assert moved_from(survivor, "survivor") == {}  # it kept its own


def test_an_assignment_inherited_by_a_static_members_successor_awaits_nothing() -> None:
    """On Kafka a process restarted with a dead worker's instance id gets the dead one's
    assignment as it was, under its own new member id: what that assignment announced was
    handed over to the predecessor."""
    survivor, restarted = sticky_assignor(), sticky_assignor()
    _receive(survivor, sorted(PARTITIONS), generation=5)
    result = survivor.assign(
        _Cluster(), {"survivor": _member(survivor), "restarted": _member(restarted)}
    )
    successor = sticky_assignor()
    successor.on_assignment(result["restarted"])
    assert moved_from(successor, "restarted-again") == {}


def test_a_partition_whose_owner_left_comes_from_nobody() -> None:
    survivor, restarted = sticky_assignor(), sticky_assignor()
    _receive(survivor, list(range(8)), generation=5)  # the other 8 were the killed worker's
    result = survivor.assign(
        _Cluster(), {"survivor": _member(survivor), "restarted": _member(restarted)}
    )
    restarted.on_assignment(result["restarted"])
    assert _partitions(result["restarted"]) == set(range(8, 16))
    assert moved_from(restarted, "restarted") == {}


def test_the_newest_claim_is_where_a_partition_comes_from() -> None:
    expelled, owner, peer = sticky_assignor(), sticky_assignor(), sticky_assignor()
    _receive(expelled, sorted(PARTITIONS), generation=3)
    _receive(owner, list(range(8)), generation=4)
    _receive(peer, list(range(8, 16)), generation=4)
    members = {"expelled": expelled, "owner": owner, "peer": peer}
    result = owner.assign(_Cluster(), {name: _member(a) for name, a in members.items()})
    expelled.on_assignment(result["expelled"])
    got = moved_from(expelled, "expelled")
    assert set(got) == {TopicPartition(TOPIC, p) for p in _partitions(result["expelled"])}
    assert set(got.values()) <= {"owner", "peer"}  # never its own stale claim


def test_unreadable_user_data_awaits_nothing() -> None:
    member = sticky_assignor()
    member.on_assignment(ConsumerProtocolMemberAssignment(0, [(TOPIC, [1])], b"not json"))
    assert moved_from(member, "member") == {}
