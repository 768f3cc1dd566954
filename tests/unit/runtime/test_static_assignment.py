"""``standalone``'s executors and worker on its own embedded broker take their partitions without
consumer groups (:mod:`kestream.runtime.static_assignment`): which ones each takes, what the
supervisor tells each process, and that the group's assignment callback (recovery) runs and the
offsets are committed under the group's name (broker-free: clients that record what they are
asked)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from kestream.executor.flow_registry import FlowRegistry
from kestream.runtime import executor_service, supervisor, worker_service
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.metrics import Metrics
from kestream.runtime.partition_recovery import PartitionRecovery
from kestream.runtime.process import EXECUTOR_SHARE_ENV, ONLY_SCHEDULER_ENV, ONLY_WORKER_ENV
from kestream.runtime.restarts import CrashLedger
from kestream.runtime.static_assignment import Share, executor_share, only_worker
from kestream.runtime.supervisor import RoleProcess, Supervisor, lone_roles_env, role_slots
from kestream.runtime.topics import Topics
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings
from tests.unit.runtime.worker_fakes import MadeConsumer, made_consumers

PARTITIONS = 4


def test_every_partition_has_exactly_one_executor_whatever_their_number() -> None:
    for count in range(1, 2 * PARTITIONS + 1):
        owners = [
            [k for k in range(count) if Share(k, count).owns(p)] for p in range(3 * PARTITIONS)
        ]
        assert all(len(found) == 1 for found in owners), count
    assert [p for p in range(8) if Share(1, 3).owns(p)] == [1, 4, 7]


def test_a_share_reads_back_what_it_writes_and_a_missing_executor_is_refused() -> None:
    assert Share.parse(Share(2, 3).encode()) == Share(2, 3)
    assert executor_share({EXECUTOR_SHARE_ENV: "1/2"}) == Share(1, 2)
    assert executor_share({}) is None
    assert only_worker({ONLY_WORKER_ENV: "1"}) and not only_worker({})
    with pytest.raises(ValueError, match="executor 2 of 2"):
        Share(2, 2)


@pytest.mark.parametrize("per_role", [False, True])
def test_each_process_of_standalone_is_told_its_roles_are_alone(per_role: bool) -> None:
    """Executor k of N (its place among the executor slots, whichever process hosts it), the
    worker, the scheduler; the API is told nothing. The env depends on the slot only, so a
    restarted process takes its predecessor's share."""
    settings = Settings(executor_stream_threads=3, standalone_process_per_role=per_role)
    slots = role_slots(settings)
    envs = {name: lone_roles_env(slots, name) for name, _ in slots}
    if per_role:
        assert envs == {
            "executor-1": {EXECUTOR_SHARE_ENV: "0/3"},
            "executor-2": {EXECUTOR_SHARE_ENV: "1/3"},
            "executor-3": {EXECUTOR_SHARE_ENV: "2/3"},
            "worker": {ONLY_WORKER_ENV: "1"},
            "scheduler": {ONLY_SCHEDULER_ENV: "1"},
            "api": {},
        }
    else:
        assert envs == {
            "executor-1+worker+scheduler+api": {
                EXECUTOR_SHARE_ENV: "0/3",
                ONLY_WORKER_ENV: "1",
                ONLY_SCHEDULER_ENV: "1",
            },
            "executor-2": {EXECUTOR_SHARE_ENV: "1/3"},
            "executor-3": {EXECUTOR_SHARE_ENV: "2/3"},
        }


#: A role process that writes the standalone variables it was given, named by its roles.
_CHILD = (
    "import json, os, sys\n"
    "sys.stdin.readline()\n"
    "given = {k: v for k, v in os.environ.items() if k.startswith('KESTREAM_STANDALONE_')}\n"
    "json.dump(given, open(sys.argv[1], 'w'))\n"
)


@pytest.mark.parametrize(
    ("options", "alone"),
    [({}, True), ({"standalone_groups": True}, False), ({"broker": "elsewhere:9092"}, False)],
    ids=["own-broker", "groups-forced", "broker-given"],
)
def test_only_standalone_on_its_own_broker_spares_its_roles_the_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], alone: bool
) -> None:
    monkeypatch.setattr(
        supervisor,
        "role_command",
        lambda role: [sys.executable, "-c", _CHILD, str(tmp_path / f"{role}.json")],
    )
    monkeypatch.setenv(EXECUTOR_SHARE_ENV, "7/9")  # from the environment: never passed on
    # Not durable: the mirror's socket pair (mirror_ack) needs the supervisor's running loop,
    # and what the roles are told about groups does not depend on it.
    settings = Settings(
        data_dir=str(tmp_path), executor_stream_threads=2, standalone_durable=False, **options
    )
    sup = Supervisor(settings, None)
    sup.ledger = CrashLedger(tmp_path / "standalone" / "crashes.json")
    sup.slots = [RoleProcess(name, roles, {}) for name, roles in role_slots(settings)]
    try:
        for slot in sup.slots:
            sup._spawn(slot, "127.0.0.1:1")
            assert slot.process is not None and slot.process.wait(60) == 0
    finally:
        asyncio.run(sup._stop_children(graceful=False))
    given = {s.role: json.loads((tmp_path / f"{s.role}.json").read_text()) for s in sup.slots}
    shares = {roles: env.get(EXECUTOR_SHARE_ENV) for roles, env in given.items()}
    if alone:
        assert shares == {"executor,worker,scheduler,api": "0/2", "executor": "1/2"}
        assert given["executor,worker,scheduler,api"][ONLY_WORKER_ENV] == "1"
    else:
        assert shares == {"executor,worker,scheduler,api": None, "executor": None}
        assert not any(
            ONLY_WORKER_ENV in env or ONLY_SCHEDULER_ENV in env for env in given.values()
        )


# -- the processors, on clients that record what they are asked ------------------------------


def _ctx() -> BrokerContext:
    settings = Settings(broker="unused:9092", topic_prefix="t.", partitions=PARTITIONS)
    return BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> list[MadeConsumer]:
    made = made_consumers(monkeypatch, (executor_service, worker_service), MadeConsumer)
    monkeypatch.setattr(executor_service, "checkpoint_follower", lambda ctx: None)
    return made


async def test_an_executor_with_a_share_recovers_and_commits_it_without_joining(
    consumers: list[MadeConsumer], monkeypatch: pytest.MonkeyPatch
) -> None:
    recovered: list[set[int]] = []

    async def recover(self: PartitionRecovery, partitions: set[int]) -> None:
        recovered.append(set(partitions))

    monkeypatch.setattr(PartitionRecovery, "recover", recover)
    ctx = _ctx()
    topics = ctx.topics
    service = ExecutorService(
        ctx, FlowRegistry(), metrics=Metrics(), route_worker_groups=False, share=Share(1, 2)
    )
    await service.start()
    try:
        (consumer,) = consumers
        assert consumer.group_id == "t.executor" and consumer.subscribed == []
        assert "group_instance_id" not in consumer.extra  # no member to keep
        inputs = (topics.executions, topics.results, topics.admissions)
        assert sorted(consumer.assigned) == sorted(
            TopicPartition(t, p) for t in inputs for p in (1, 3)
        )
        # The group's assignment callback ran before the first fetch: recovered, owned, ready.
        assert recovered == [{1, 3}]
        assert service.owned == {1, 3} and service.is_ready
        assert service.fence is None  # nothing can lapse: no group membership
        tp = TopicPartition(topics.executions, 3)
        service._flushed({tp: [_Record(6)], TopicPartition(topics.executions, 0): [_Record(9)]})
        await service._commit()
        assert consumer.commits == [{tp: OffsetAndMetadata(7, "")}]  # only what it owns
    finally:
        await service.stop()


async def test_an_executor_without_a_share_joins_its_group(
    consumers: list[MadeConsumer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker given in KESTREAM_BROKER: no share in the environment, the group as before
    (its member fence and instance id guard need a real consumer: only how it reads is looked
    at)."""
    monkeypatch.delenv(EXECUTOR_SHARE_ENV, raising=False)
    monkeypatch.setattr(executor_service, "MemberFence", _NoFence)
    monkeypatch.setattr(executor_service, "guard_instance_id", lambda consumer, fail: None)
    service = ExecutorService(_ctx(), FlowRegistry(), metrics=Metrics(), route_worker_groups=False)
    assert service.share is None
    await service.start()
    try:
        (consumer,) = consumers
        assert consumer.subscribed and consumer.assigned == []
        assert service.owned == set() and not service.is_ready
    finally:
        await service.stop()


def test_an_executor_takes_the_share_standalone_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXECUTOR_SHARE_ENV, "0/2")
    service = ExecutorService(_ctx(), FlowRegistry(), metrics=Metrics(), route_worker_groups=False)
    assert service.share == Share(0, 2)


async def test_the_only_worker_takes_every_partition_and_commits_under_its_group(
    consumers: list[MadeConsumer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ONLY_WORKER_ENV, "1")
    ctx = _ctx()
    service = WorkerService(ctx, FlowRegistry(), metrics=Metrics())
    await service.start()
    try:
        (consumer,) = consumers
        assert consumer.group_id == "t.worker" and consumer.subscribed == []
        jobs = ctx.topics.worker_tasks
        assert sorted(consumer.assigned) == [TopicPartition(jobs, p) for p in range(PARTITIONS)]
        assert service.is_ready and service.fence is None
        tp = TopicPartition(jobs, 2)
        service._partitions[tp].add(41).done = True
        await service._commit(force=True)
        assert consumer.commits == [{tp: 42}]
    finally:
        await service.stop(drain_timeout=0)


class _Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _NoFence:
    def __init__(self, *_: Any) -> None:
        return None

    def watch(self, consumer: Any) -> None:
        return None

    def guard(self, *_: Any) -> None:
        return None

    def stop(self) -> None:
        return None
