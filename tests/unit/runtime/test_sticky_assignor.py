"""The worker group's sticky assignor: a survivor keeps its partitions when a killed worker's
restart joins, each consumer sends its own last assignment, and a member back from expulsion
loses its stale claim to the generation the group has since given the partition."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from kestream.runtime.sticky_assignor import note_generation, sticky_assignor

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
