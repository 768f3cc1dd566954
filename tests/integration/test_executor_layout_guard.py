"""Executors of the version before the current changelog layouts (their group protocol was
``range``) and this version's cannot share a group: the one who joins a group the others hold
is refused, so none of them takes over partitions whose changelog it cannot read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import InconsistentGroupProtocolError

from kestream.runtime.executor_service import EXECUTOR_ASSIGNORS

if TYPE_CHECKING:
    from conftest import BrokerHandle

PREVIOUS = (RangePartitionAssignor,)  # what the executors before these layouts offered


def _member(
    broker: BrokerHandle, group: str, assignors: tuple[type[AbstractPartitionAssignor], ...]
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        partition_assignment_strategy=assignors,
        enable_auto_commit=False,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=500,
    )


@pytest.mark.parametrize(
    ("holding", "joining"),
    [(PREVIOUS, EXECUTOR_ASSIGNORS), (EXECUTOR_ASSIGNORS, PREVIOUS)],
    ids=["upgrade", "rollback"],
)
async def test_executors_across_the_layout_boundary_share_no_group(
    broker: BrokerHandle,
    make_topic: Callable[[str, int], Awaitable[str]],
    topic_prefix: str,
    holding: tuple[type[AbstractPartitionAssignor], ...],
    joining: tuple[type[AbstractPartitionAssignor], ...],
) -> None:
    topic = await make_topic("executions", 2)
    group = f"{topic_prefix}executor"
    first = _member(broker, group, holding)
    first.subscribe([topic])
    await first.start()
    second = _member(broker, group, joining)
    try:
        await first.getmany(timeout_ms=5_000)
        while not first.assignment():
            await first.getmany(timeout_ms=500)
        second.subscribe([topic])
        with pytest.raises(InconsistentGroupProtocolError):
            await second.start()  # its join, refused
            for _ in range(40):  # (or at its first poll)
                await second.getmany(timeout_ms=500)
        assert len(first.assignment()) == 2  # the group kept its member and its partitions
    finally:
        await second.stop()
        await first.stop()
