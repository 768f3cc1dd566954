"""The worker group's static membership on Apache Kafka (:mod:`kestream.runtime.static_membership`),
broker-free: the group consumer is made with the instance id on Kafka only, is guarded against a
live process that took its id, and a clean stop leaves the group after the last commit (aiokafka
sends no LeaveGroup for a static member: its partitions would wait a session)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from kestream.executor.flow_registry import FlowRegistry
from kestream.runtime import worker_service
from kestream.runtime.context import BrokerContext
from kestream.runtime.instance_id_guard import (
    DUPLICATE_INSTANCE_ID,
    DuplicateInstanceId,
    InstanceHolder,
)
from kestream.runtime.metrics import Metrics
from kestream.runtime.process import ONLY_WORKER_ENV
from kestream.runtime.topics import Topics
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings
from tests.unit.runtime.worker_fakes import MadeConsumer, made_consumers


class _Coordinator:
    """What the member fence and the instance id guard wrap of aiokafka's group coordinator."""

    generation = 3
    member_id = "member-1"
    group_id = "t.worker"

    def __init__(self, instance_id: str | None) -> None:
        self._group_instance_id = instance_id
        self._coordination_task: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def _do_heartbeat(self) -> bool:
        return True

    async def _do_rejoin_group(self, subscription: Any) -> bool:
        return True

    def reset_generation(self) -> None:
        self.generation, self.member_id = -1, ""


class _Consumer(MadeConsumer):
    """Also notes its commits and whether it still had its instance id when it stopped
    (aiokafka then skips LeaveGroup), in order, and keeps what the fence and guard wrap."""

    def __init__(self, group_id: str | None, extra: dict[str, Any]) -> None:
        super().__init__(group_id, extra)
        self._coordinator = _Coordinator(extra.get("group_instance_id"))
        self.events: list[str] = []

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.events.append("commit")

    async def stop(self) -> None:
        static = self._coordinator._group_instance_id is not None
        self.events.append("stop as a static member" if static else "stop, leaving")


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> list[_Consumer]:
    monkeypatch.delenv(ONLY_WORKER_ENV, raising=False)
    return made_consumers(monkeypatch, (worker_service,), _Consumer)


def _worker(kind: str, **options: Any) -> WorkerService:
    settings = Settings(
        broker="unused:9092", topic_prefix="t.", partitions=2, group_instance_id="node-a.worker"
    )
    ctx = BrokerContext(settings, "unused:9092", kind, Topics.of(settings))
    return WorkerService(ctx, FlowRegistry(), metrics=Metrics(), **options)


async def test_the_worker_joins_its_group_on_kafka_with_the_instance_id(
    consumers: list[_Consumer],
) -> None:
    worker = _worker("kafka")
    await worker.start()
    try:
        (consumer,) = consumers
        assert consumer.group_id == "t.worker"
        assert consumer.extra["group_instance_id"] == "node-a.worker"
        # Guarded (its rejoin wrapped): a live process that took the id is not replaced in turn.
        assert "_do_rejoin_group" in vars(consumer._coordinator)
    finally:
        await worker.stop(drain_timeout=0)


@pytest.mark.parametrize(
    ("kind", "options", "alone"),
    [
        ("tansu", {}, False),  # Tansu gets no id
        ("kafka", {"own_all_partitions": True}, False),  # no group
        ("kafka", {}, True),  # the only worker: the group's offsets, no member
    ],
    ids=["tansu", "own-all-partitions", "alone"],
)
async def test_no_instance_id_without_a_kafka_group_member(
    consumers: list[_Consumer],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    options: dict[str, Any],
    alone: bool,
) -> None:
    if alone:
        monkeypatch.setenv(ONLY_WORKER_ENV, "1")
    worker = _worker(kind, **options)
    await worker.start()
    try:
        (consumer,) = consumers
        assert "group_instance_id" not in consumer.extra
    finally:
        await worker.stop(drain_timeout=0)


async def test_a_clean_stop_commits_then_leaves_the_group(consumers: list[_Consumer]) -> None:
    worker = _worker("kafka")
    await worker.start()
    (consumer,) = consumers
    tp = TopicPartition(worker.topic, 0)
    worker._on_assigned({tp})
    worker._partitions[tp].add(7).done = True
    await worker.stop(drain_timeout=0)
    assert consumer.events == ["commit", "stop, leaving"]


async def test_a_worker_replaced_by_a_live_process_stops_as_a_duplicate(
    consumers: list[_Consumer],
) -> None:
    """The guard's refusal reaches the worker's failure as the duplicate itself (what
    ``standalone`` counts, and does not restart), once, though the loop then finds the
    coordination ended by it too."""
    failures: list[BaseException] = []
    worker = _worker("kafka", on_failure=failures.append)
    await worker.start()
    try:
        (consumer,) = consumers
        coordinator = consumer._coordinator
        holder = InstanceHolder("member-2", "aiokafka", "/10.0.0.2")

        async def holder_now(*_: Any) -> InstanceHolder:
            return holder

        # The coordinator knew this member no more (another joined with its id): aiokafka
        # resets the member id, then joins again.
        coordinator.reset_generation()
        guard = coordinator._do_rejoin_group.__self__  # type: ignore[attr-defined]
        guard._holder = holder_now
        with pytest.raises(DuplicateInstanceId):
            await coordinator._do_rejoin_group(None)
        ended = KafkaError("Unexpected error during coordination")  # (aiokafka's wrapping)
        ended.__cause__ = failures[0]
        coordinator._coordination_task.set_exception(ended)
        assert worker._coordination_ended()
        (failure,) = failures
        assert isinstance(failure, DuplicateInstanceId) and worker.failure is failure
        assert failure.cause == DUPLICATE_INSTANCE_ID
    finally:
        await worker.stop(drain_timeout=0)
