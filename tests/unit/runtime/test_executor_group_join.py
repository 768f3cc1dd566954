"""The executor group's join, driven through aiokafka's own join code (no broker).

aiokafka up to 0.14 sends one JoinGroup per assignor it offers, each with one more protocol
(aio-libs/aiokafka#1168): a member offering two sends two JoinGroups whose protocols differ.
Kafka takes the second as a member whose metadata changed and starts another rebalance, so two
executors whose joins fall out of step rebalance each other for ever: one never finishes a
join, and the stack never becomes ready.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance

from kestream.runtime.executor_service import EXECUTOR_ASSIGNORS


class _Coordinator:
    """What aiokafka's join reads of its group coordinator; every JoinGroup is answered that
    the coordinator is loading the group, which ends the join attempt without a SyncGroup."""

    member_id = ""
    _group_instance_id = None
    _rebalance_timeout_ms = 10_000
    _client = SimpleNamespace(api_version=(4, 0, 0))

    def __init__(self) -> None:
        self.joins: list[Any] = []

    async def _send_req(self, request: Any) -> Any:
        self.joins.append(request)
        return SimpleNamespace(error_code=kafka_errors.GroupLoadInProgressError.errno)


def test_an_executor_joins_its_group_with_one_join_group_request() -> None:
    coordinator = _Coordinator()
    subscription = SimpleNamespace(topics={"executions", "worker-results", "admissions"},
                                   active=True)  # fmt: skip
    rebalance = CoordinatorGroupRebalance(
        coordinator, "kestream.executor", 1, subscription, EXECUTOR_ASSIGNORS,
        session_timeout_ms=10_000, retry_backoff_ms=0,
    )  # fmt: skip

    assert asyncio.run(rebalance.perform_group_join()) is None

    assert len(coordinator.joins) == 1
