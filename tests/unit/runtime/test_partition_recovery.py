"""The executor's partitions coming and going (kestream.runtime.partition_recovery), on their
own: recovered cold from the changelog or warm from where they were parked, parked as they
leave, their checkpoints and the repairs of torn steps. No broker: the changelog reads are
replaced by what the broker would answer."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from kestream.executor import codec
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor
from kestream.executor.timers import TimerQueue
from kestream.models.clock import utc_now
from kestream.models.flow import parse_flow
from kestream.runtime import records
from kestream.runtime.admission_slots import AdmissionSlots
from kestream.runtime.changelog_restorer import ChangelogMirror, PartitionRead, RecoveryStopped
from kestream.runtime.context import BrokerContext
from kestream.runtime.ended_executions import EndedExecutions
from kestream.runtime.executor_outbox import PartitionOutboxes
from kestream.runtime.executor_writer import DeadLetters
from kestream.runtime.metrics import Metrics
from kestream.runtime.partition_recovery import PartitionRecovery
from kestream.runtime.topics import Topics
from kestream.settings import Settings

PAUSED = """
id: paused
namespace: test.recovery
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    delay: PT1H
"""

MARKER = {"state": "SUCCESS", "attempt": 1, "at": "2026-01-01T00:00:00+00:00"}

Changelog = list[tuple[str, Any]]


class _Changelog:
    """What the broker answers a recovery: each partition's records (``logs``) and end
    (``ends``, default the number of records); every read is noted as ``(partitions,
    start)``."""

    def __init__(self, recovery: PartitionRecovery) -> None:
        self.logs: dict[int, Changelog] = {}
        self.ends: dict[int, int] = {}
        self.reads: list[tuple[set[int], dict[int, int]]] = []
        recovery.restorer._read = self.read  # type: ignore[method-assign]
        recovery.restorer._read_table = self.read_table  # type: ignore[method-assign]

    async def read(self, partitions: set[int], start: dict[int, int]) -> Any:
        self.reads.append((set(partitions), dict(start)))
        reads = {}
        for p in partitions:
            reads[p] = read = PartitionRead(tombstones=p in start)
            for key, value in self.logs.get(p, [])[start.get(p, 0) :]:
                read.put(key, value)
        return reads, {p: self.ends.get(p, len(self.logs.get(p, []))) for p in partitions}

    async def read_table(self, topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}  # no flow-concurrency slots


def _recovery() -> tuple[PartitionRecovery, _Changelog]:
    settings = Settings(broker="unused:9092", executor_inline_tasks=True)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow(PAUSED))
    metrics = Metrics()
    letters = DeadLetters(ctx.topics, ctx.record_limit, metrics)
    recovery = PartitionRecovery(
        ctx,
        registry,
        states={},
        partition_of={},
        mirror=ChangelogMirror(),
        timers=TimerQueue(),
        ended=EndedExecutions(timedelta(hours=24), 1000),
        admission=AdmissionSlots(ctx.topics, letters, utc_now),
        metrics=metrics,
    )
    return recovery, _Changelog(recovery)


def _created(execution_id: str) -> tuple[ExecutionState, Changelog]:
    """A new execution paused on its timer, and the changelog records of its creation."""
    registry = FlowRegistry()
    registry.put(parse_flow(PAUSED))
    created = ev.ExecutionCreated(execution_id, "test.recovery", "paused")
    st = Executor(registry).step(None, created).state
    assert st is not None and st.timers
    return st, _records(st)


def _records(st: ExecutionState) -> Changelog:
    return list(codec.encode_changes(st, list(st.task_runs), created=True, new_groups={""}))


def _drop(recovery: PartitionRecovery, leaving: list[str]) -> None:
    """What the processor does with the executions :meth:`PartitionRecovery.release` returns."""
    for execution_id in leaving:
        recovery.states.pop(execution_id)
        recovery.partition_of.pop(execution_id)
    recovery.timers.forget(leaving)
    recovery.mirror.forget(leaving)


def _timers(recovery: PartitionRecovery, execution_id: str) -> list[str]:
    return [t for e, t in recovery.timers.pending() if e == execution_id]


def test_a_cold_recovery_installs_what_the_changelog_holds_and_repairs_a_torn_step() -> None:
    recovery, changelog = _recovery()
    st, whole = _created("e1")
    _, torn = _created("e2")
    assert codec.is_commit_mark(*torn[-1])
    marker = (codec.header_key("x1", codec.ENDED), MARKER)
    changelog.logs[0] = [*whole, marker, *torn[:-1]]  # e2's creation killed before its mark
    asyncio.run(recovery.recover({0}))
    assert changelog.reads == [({0}, {})]  # from the beginning
    assert set(recovery.states) == {"e1"} and recovery.partition_of == {"e1": 0}
    assert _records(recovery.states["e1"]) == whole  # rebuilt as it was written
    assert _timers(recovery, "e1") == list(st.timers)
    assert recovery.mirror.records_of("e1") == dict(whole)
    ended = recovery.ended.get("x1")
    assert ended is not None and ended.partition == 0
    assert sorted(recovery.repairs) == sorted((k, None, 0) for k, _ in torn[:-1])
    assert recovery.offsets == {0: len(changelog.logs[0])}


def test_a_partition_released_is_parked_at_its_checkpoint_and_comes_back_warm() -> None:
    recovery, changelog = _recovery()
    changelog.logs[0] = _created("e1")[1]
    changelog.logs[1] = _created("e2")[1]
    asyncio.run(recovery.recover({0, 1}))
    recovery.ended.restore("x1", 0, MARKER)
    recovery.acknowledged({0: 40, 1: 3})  # what the writer got acknowledged since
    recovery.repairs.extend([("k0", None, 0), ("k1", None, 1)])
    st = recovery.states["e1"]

    leaving = recovery.release({0}, park=True)
    assert leaving == ["e1"]  # e2 stays: its partition is not leaving
    assert recovery.offsets == {1: 3} and recovery.repairs == [("k1", None, 1)]
    assert recovery.ended.get("x1") is None and len(recovery.parked) == 1
    assert "e1" in recovery.states  # the table is the caller's to drop from
    _drop(recovery, leaving)

    changelog.ends[0] = 40  # nobody wrote to it meanwhile
    asyncio.run(recovery.recover({0}))
    assert changelog.reads[-1] == ({0}, {0: 40})  # from the checkpoint only
    assert recovery.states["e1"] is st  # the same state: nothing rebuilt
    assert recovery.partition_of["e1"] == 0 and "e1" in recovery.mirror
    assert _timers(recovery, "e1") == list(st.timers)
    back = recovery.ended.get("x1")
    assert back is not None and back.partition == 0
    assert recovery.offsets == {0: 40, 1: 3} and len(recovery.parked) == 0


def test_what_the_changelog_got_meanwhile_is_applied_to_the_parked_partition() -> None:
    """Another owner ended e1 meanwhile, and a zombie wrote e1's state again after that: e1
    stays ended and its stale records are tombstoned; e3, created meanwhile, comes in."""
    recovery, changelog = _recovery()
    st, created = _created("e1")
    changelog.logs[0] = created
    asyncio.run(recovery.recover({0}))
    _drop(recovery, recovery.release({0}, park=True))
    checkpoint = len(created)
    ended: Changelog = [(key, None) for key, _ in codec.tombstones(st)]
    ended.append((codec.header_key("e1", codec.ENDED), MARKER))
    changelog.logs[0] = [*created, *ended, *created, *_created("e3")[1]]
    asyncio.run(recovery.recover({0}))
    assert changelog.reads[-1] == ({0}, {0: checkpoint})
    assert set(recovery.states) == {"e3"} and "e1" not in recovery.mirror
    assert recovery.ended.get("e1") is not None
    assert sorted(recovery.repairs) == sorted((k, None, 0) for k, _ in created)


def test_a_partition_released_without_parking_is_read_whole_when_it_comes_back() -> None:
    recovery, changelog = _recovery()
    changelog.logs[0] = _created("e1")[1]
    asyncio.run(recovery.recover({0}))
    _drop(recovery, recovery.release({0}, park=False))  # its state may be ahead of the log
    assert recovery.offsets == {} and len(recovery.parked) == 0
    asyncio.run(recovery.recover({0}))
    assert changelog.reads == [({0}, {}), ({0}, {})]
    assert set(recovery.states) == {"e1"}


def test_a_partition_never_checkpointed_is_not_parked() -> None:
    recovery, _ = _recovery()
    recovery.states["e1"], _ = _created("e1")
    recovery.partition_of["e1"] = 0
    assert recovery.release({0}, park=True) == ["e1"]
    assert len(recovery.parked) == 0


def test_a_changelog_that_ends_before_the_checkpoint_is_read_whole() -> None:
    """Not the topic the partition was parked on (recreated, say): the parked state is not
    taken back."""
    recovery, changelog = _recovery()
    changelog.logs[0] = _created("e1")[1]
    asyncio.run(recovery.recover({0}))
    _drop(recovery, recovery.release({0}, park=True))
    checkpoint = len(changelog.logs[0])
    changelog.logs[0] = []
    asyncio.run(recovery.recover({0}))
    assert changelog.reads[-2:] == [({0}, {0: checkpoint}), ({0}, {})]
    assert recovery.states == {} and recovery.offsets == {0: 0}


def test_parked_partitions_too_old_expire() -> None:
    recovery, changelog = _recovery()
    changelog.logs[0] = _created("e1")[1]
    asyncio.run(recovery.recover({0}))
    _drop(recovery, recovery.release({0}, park=True))
    recovery.parked.max_age_s = 10.0
    recovery.expire(0.0)
    assert len(recovery.parked) == 1
    recovery.expire(1e12)
    assert len(recovery.parked) == 0


def test_acknowledged_checkpoints_only_move_forward() -> None:
    recovery, _ = _recovery()
    recovery.acknowledged({0: 10, 1: 4})
    recovery.acknowledged({0: 7, 1: 9})
    assert recovery.offsets == {0: 10, 1: 9}


def test_repairs_are_staged_on_their_partition_once() -> None:
    recovery, _ = _recovery()
    recovery.repairs.extend([("a#", None, 0), ("b#", {"x": 1}, 1)])
    out = PartitionOutboxes()
    recovery.take_repairs(out)
    assert out.parts[0].changelog == [("a#", None, 0)]
    assert out.parts[1].changelog == [("b#", records.dumps({"x": 1}), 1)]
    assert recovery.repairs == []
    again = PartitionOutboxes()
    recovery.take_repairs(again)
    assert again.parts == {}


def test_a_recovery_under_way_gives_up_at_a_stop() -> None:
    recovery, _ = _recovery()
    started = asyncio.Event()

    async def slow(partitions: set[int], start: dict[int, int]) -> Any:
        started.set()
        await asyncio.sleep(3600)  # a broker that does not answer

    recovery.restorer._read = slow  # type: ignore[method-assign]

    async def scenario() -> None:
        recovering = asyncio.create_task(recovery.recover({0}))
        await started.wait()
        recovery.give_up()
        with pytest.raises(RecoveryStopped):
            await asyncio.wait_for(recovering, 5)

    asyncio.run(scenario())
    assert recovery.states == {} and recovery.offsets == {}
