"""A static member replaced by another live process is refused its rejoin (no broker: a stand-in
for aiokafka's group coordinator, with DescribeGroups v4 answers decoded from the wire)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError, RequestTimedOutError

from kestream.runtime.instance_id_guard import (
    DUPLICATE_INSTANCE_ID,
    DuplicateInstanceId,
    InstanceHolder,
    _DescribeGroupsRequestV4,
    _DescribeGroupsResponseV4,
    duplicate_in,
    guard_instance_id,
    holder_in,
)
from kestream.runtime.restarts import RoleStepsDown

GROUP = "t-scheduler-lease"


def _string(text: str | None) -> bytes:
    """A Kafka protocol STRING (NULLABLE_STRING for None): INT16 length, then UTF-8 bytes."""
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(data: bytes) -> bytes:
    """A Kafka protocol BYTES: INT32 length, then the bytes."""
    return struct.pack(">i", len(data)) + data


def _answer_bytes(members: list[tuple[str, str | None]], error_code: int = 0) -> bytes:
    """A DescribeGroups v4 response body for GROUP, assembled by hand from Kafka's message
    spec (DescribeGroupsResponse.json, non-flexible at v4): throttle_time_ms, then groups
    [error_code, group_id, group_state, protocol_type, protocol_data, members [member_id,
    group_instance_id (v4+, nullable), client_id, client_host, member_metadata,
    member_assignment], authorized_operations]."""
    body = struct.pack(">i", 0) + struct.pack(">i", 1)
    body += struct.pack(">h", error_code) + _string(GROUP) + _string("Stable")
    body += _string("consumer") + _string("range") + struct.pack(">i", len(members))
    for n, (member_id, instance_id) in enumerate(members):
        body += _string(member_id) + _string(instance_id) + _string("aiokafka")
        body += _string(f"/10.0.0.{n}") + _bytes(b"meta") + _bytes(b"")
    return body + struct.pack(">i", -2147483648)


def _answer(members: list[tuple[str, str | None]], error_code: int = 0) -> Any:
    """A DescribeGroups v4 answer for GROUP as the guard decodes it from the wire."""
    return _DescribeGroupsResponseV4.decode(_answer_bytes(members, error_code))


class _Coordinator:
    """aiokafka's group coordinator as far as the guard touches it."""

    def __init__(self, answer: Any = None, instance_id: str | None = "scheduler-0") -> None:
        self.group_id = GROUP
        self._group_instance_id = instance_id
        self.member_id = ""
        self.generation = -1
        self.answer = answer
        self.asked = 0
        self.joins = 0
        self.dead = 0
        self._retry_backoff_ms = 0

    def coordinator_dead(self) -> None:
        self.dead += 1

    def reset_generation(self) -> None:
        self.member_id, self.generation = "", -1

    async def _do_rejoin_group(self, subscription: object) -> bool:
        self.joins += 1
        self.member_id, self.generation = f"member-{self.joins}", self.joins
        return True

    async def _send_req(self, request: Any) -> Any:
        self.asked += 1
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class _Consumer:
    def __init__(self, coordinator: _Coordinator) -> None:
        self._coordinator = coordinator


def _guarded(coordinator: _Coordinator) -> list[DuplicateInstanceId]:
    told: list[DuplicateInstanceId] = []
    assert guard_instance_id(_Consumer(coordinator), told.append)  # type: ignore[arg-type]
    return told


async def _joined(coordinator: _Coordinator) -> None:
    """The first join, then a heartbeat answered UNKNOWN_MEMBER_ID (aiokafka resets)."""
    assert await coordinator._do_rejoin_group(None)
    coordinator.reset_generation()


async def test_a_member_replaced_by_another_live_process_is_refused_its_rejoin() -> None:
    coordinator = _Coordinator(_answer([("member-9", "scheduler-0"), ("other", None)]))
    told = _guarded(coordinator)
    await _joined(coordinator)
    with pytest.raises(DuplicateInstanceId) as raised:
        await coordinator._do_rejoin_group(None)
    assert coordinator.joins == 1 and coordinator.asked == 1  # it never joined again
    (duplicate,) = told
    assert duplicate is raised.value and isinstance(duplicate, RoleStepsDown)
    assert duplicate.cause == DUPLICATE_INSTANCE_ID == "duplicate instance id"
    assert duplicate.instance_id == "scheduler-0" and duplicate.group == GROUP
    assert duplicate.holder == InstanceHolder("member-9", "aiokafka", "/10.0.0.0")
    assert "'scheduler-0'" in str(duplicate) and "KESTREAM_GROUP_INSTANCE_ID" in str(duplicate)


async def test_a_member_whose_session_expired_joins_again() -> None:
    """Nobody holds the id (the group removed the member after its session): a rejoin, and
    the next reset asks again."""
    coordinator = _Coordinator(_answer([("other", "executor-1")]))
    told = _guarded(coordinator)
    await _joined(coordinator)
    assert await coordinator._do_rejoin_group(None)
    assert (coordinator.joins, coordinator.member_id, told) == (2, "member-2", [])
    await coordinator._do_rejoin_group(None)  # no reset in between: nothing to ask
    assert coordinator.asked == 1
    coordinator.reset_generation()
    await coordinator._do_rejoin_group(None)
    assert coordinator.asked == 2


async def test_a_member_the_group_still_knows_by_its_id_joins_again() -> None:
    """The coordinator still names this member's own id (a stale generation, not a
    replacement): it joins again."""
    coordinator = _Coordinator(_answer([("member-1", "scheduler-0")]))
    told = _guarded(coordinator)
    await _joined(coordinator)
    assert await coordinator._do_rejoin_group(None)
    assert (coordinator.joins, told) == (2, [])


async def test_the_first_join_asks_nothing() -> None:
    coordinator = _Coordinator(RuntimeError("not asked"))
    _guarded(coordinator)
    coordinator.reset_generation()  # before any join: no member id was lost
    assert await coordinator._do_rejoin_group(None)
    assert coordinator.asked == 0


async def test_an_unanswered_question_defers_the_rejoin_and_asks_again() -> None:
    coordinator = _Coordinator(RequestTimedOutError())
    told = _guarded(coordinator)
    await _joined(coordinator)
    assert not await coordinator._do_rejoin_group(None)  # aiokafka tries again after a backoff
    coordinator.answer = _answer([("member-7", "scheduler-0")])
    with pytest.raises(DuplicateInstanceId):
        await coordinator._do_rejoin_group(None)
    assert coordinator.joins == 1 and len(told) == 1


async def test_a_join_refused_while_another_process_holds_the_id_is_a_duplicate() -> None:
    """A rebalance has the member join with its old member id, which the coordinator refuses
    with FENCED_INSTANCE_ID (raised by aiokafka as an unexpected KafkaError)."""
    coordinator = _Coordinator(_answer([("member-9", "scheduler-0")]))
    told = _guarded(coordinator)
    assert await coordinator._do_rejoin_group(None)  # joined as member-1

    async def refused(subscription: object) -> bool:
        raise KafkaError("UnknownError: Unexpected error in join group")

    guard = coordinator._do_rejoin_group.__self__  # type: ignore[attr-defined]
    guard._rejoin = refused
    with pytest.raises(DuplicateInstanceId):
        await coordinator._do_rejoin_group(None)
    assert len(told) == 1
    coordinator.answer = _answer([("member-1", "scheduler-0")])  # still its own: the error stands
    with pytest.raises(KafkaError, match="Unexpected error in join group"):
        await coordinator._do_rejoin_group(None)
    assert len(told) == 1


async def test_a_group_error_in_the_answer_is_raised() -> None:
    with pytest.raises(GroupAuthorizationFailedError):
        holder_in(_answer([], error_code=30), "scheduler-0")


def test_a_member_without_an_instance_id_is_not_guarded() -> None:
    coordinator = _Coordinator(instance_id=None)
    rejoin = coordinator._do_rejoin_group
    assert not guard_instance_id(_Consumer(coordinator))  # type: ignore[arg-type]
    assert coordinator._do_rejoin_group == rejoin


def test_an_aiokafka_without_the_calls_to_guard_is_refused() -> None:
    class _Bare:
        _group_instance_id = "executor-0"

    with pytest.raises(RuntimeError, match="_do_rejoin_group"):
        guard_instance_id(_Consumer(_Bare()))  # type: ignore[arg-type]


def test_the_duplicate_is_found_behind_aiokafkas_wrapping() -> None:
    duplicate = DuplicateInstanceId("x", GROUP, InstanceHolder("m", "c", "/h"))
    try:
        try:
            raise duplicate
        except Exception as exc:
            raise KafkaError(f"Unexpected error during coordination {exc!r}") from exc
    except KafkaError as wrapped:
        assert duplicate_in(wrapped) is duplicate
    assert duplicate_in(KafkaError("other")) is None and duplicate_in(None) is None


def test_the_answer_is_read_field_by_field_as_the_spec_orders_them() -> None:
    """Wire bytes assembled by hand (not by the guard's own schema): a field out of order
    (the instance id and the client id swapped, say) would name another holder."""
    answer = _answer([("member-9", "scheduler-0"), ("member-3", None)])
    assert holder_in(answer, "scheduler-0") == InstanceHolder("member-9", "aiokafka", "/10.0.0.0")
    assert holder_in(answer, "aiokafka") is None


def test_the_question_is_encoded_as_the_spec_orders_it() -> None:
    """DescribeGroupsRequest v4: groups [STRING], include_authorized_operations BOOLEAN."""
    encoded = _DescribeGroupsRequestV4([GROUP], False).encode()
    assert encoded == struct.pack(">i", 1) + _string(GROUP) + b"\x00"


@pytest.mark.parametrize("code", [15, 16], ids=["coordinator-not-available", "not-coordinator"])
async def test_a_coordinator_that_moved_is_marked_dead_and_asked_again(code: int) -> None:
    """The group's coordinator moved (the answer's group error): the coordinator is marked
    dead, so aiokafka looks it up again before the next try, which asks the new one."""
    coordinator = _Coordinator(_answer([], error_code=code))
    told = _guarded(coordinator)
    await _joined(coordinator)
    assert not await coordinator._do_rejoin_group(None)
    assert coordinator.dead == 1 and coordinator.joins == 1
    coordinator.answer = _answer([])
    assert await coordinator._do_rejoin_group(None)
    assert coordinator.joins == 2 and told == []


async def test_a_question_refused_for_good_does_not_hold_the_rejoin() -> None:
    """Not allowed to describe the group (GROUP_AUTHORIZATION_FAILED in its body, not
    retriable): asking again would keep the member out of its group for ever; it joins
    unguarded, with an error logged."""
    coordinator = _Coordinator(_answer([], error_code=30))
    told = _guarded(coordinator)
    await _joined(coordinator)
    assert await coordinator._do_rejoin_group(None)
    assert coordinator.joins == 2 and coordinator.asked == 1 and told == []


async def test_a_broker_without_describe_groups_v4_joins_unguarded() -> None:
    """A broker that lists DescribeGroups only below v4 (static membership came with Kafka
    2.3, v4 with 2.4): aiokafka's request raises NotImplementedError, which must not end the
    group coordination."""
    coordinator = _Coordinator(NotImplementedError("no DescribeGroups v4"))
    told = _guarded(coordinator)
    await _joined(coordinator)
    assert await coordinator._do_rejoin_group(None)
    assert coordinator.joins == 2 and told == []
