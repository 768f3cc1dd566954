"""The executor processor's parts on their own, without a broker: the timer queue, the held
events, the ended markers, the changelog mirror and the outbox."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from kestream.executor import codec
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.snapshot import execution_model
from kestream.executor.step import Executor
from kestream.executor.timers import COMPACT_SLACK, TimerQueue
from kestream.models.flow import parse_flow
from kestream.runtime import records
from kestream.runtime.changelog_restorer import ChangelogMirror, ChangelogRestorer, PartitionRead
from kestream.runtime.context import BrokerContext
from kestream.runtime.ended_executions import EndedExecutions
from kestream.runtime.executor_outbox import Outbox
from kestream.runtime.held_events import HeldEvents
from kestream.runtime.topics import Topics
from kestream.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- timers ------------------------------------------------------------------------------------


def test_timers_fire_in_due_order_and_only_at_their_current_due_time() -> None:
    timers = TimerQueue()
    timers.set("a", "retry", at(5))
    timers.set("b", "pause", at(2))
    timers.set("a", "retry", at(3))  # moved: the entry at 5 is stale
    timers.set("c", "start", at(1))
    timers.cancel("c", "start")
    assert timers.next_due() == at(2)
    assert timers.pop_due(at(4)) == [("b", "pause", at(2)), ("a", "retry", at(3))]
    assert timers.pop_due(at(10)) == []  # the stale entry at 5 is skipped
    assert not timers and timers.next_due() is None


def test_forgotten_executions_keep_no_timer() -> None:
    timers = TimerQueue()
    timers.set("a", "t1", at(1))
    timers.set("a", "t2", at(2))
    timers.set("b", "t1", at(3))
    timers.forget(["a"])
    assert sorted(timers.pending()) == [("b", "t1")]
    assert len(timers) == 1
    assert timers.pop_due(at(5)) == [("b", "t1", at(3))]


def test_cancelled_far_timers_leave_a_bounded_heap() -> None:
    timers = TimerQueue()
    timers.set("keep", "sla", at(10))
    for n in range(20_000):  # executions that ended long before their hour-long SLA timer
        timers.set(f"e{n}", "sla", at(3600 + n))
        timers.set(f"e{n}", "sla", at(7200 + n))  # moved once on the way
        if n % 2:
            timers.cancel(f"e{n}", "sla")
        else:
            timers.forget([f"e{n}"])
        assert len(timers._heap) <= 2 * len(timers) + COMPACT_SLACK
    assert len(timers) == 1 and sorted(timers.pending()) == [("keep", "sla")]
    assert timers.pop_due(at(100_000)) == [("keep", "sla", at(10))]
    assert timers._heap == []


def test_compaction_keeps_every_live_timer_in_due_order() -> None:
    timers = TimerQueue()
    for n in range(3000):
        timers.set(f"e{n}", "t", at(n))
    for n in range(0, 3000, 3):
        timers.set(f"e{n}", "t", at(n))  # set again to the same time: a duplicate entry
    for n in range(3000):
        if n % 3:  # two thirds cancelled: the rebuild runs
            timers.cancel(f"e{n}", "t")
    assert len(timers._heap) < 3000
    fired = timers.pop_due(at(3000))
    assert fired == [(f"e{n}", "t", at(n)) for n in range(0, 3000, 3)]
    assert not timers


# -- held events ---------------------------------------------------------------------------------


def _created(execution_id: str) -> ev.ExecutionCreated:
    return ev.ExecutionCreated(execution_id, "ns", "late", revision=2)


def test_held_queues_release_when_known_or_expired_and_bound_the_commit() -> None:
    held = HeldEvents(timedelta(seconds=30))
    held.hold(1, ("executions", 7), _created("x"), "unknown", at(0))
    held.hold(1, ("worker-results", 3), ev.Kill("x"), "queued", at(1))
    held.hold(2, ("executions", 4), _created("y"), "unknown", at(10))
    assert held.commit_bounds() == {("executions", 1): 7, ("worker-results", 1): 3,
                                    ("executions", 2): 4}  # fmt: skip
    assert held.release(at(5), lambda e: False) == []
    (queue,) = held.release(at(31), lambda e: False)  # x's wait is over, y's is not
    assert [h.event for h in queue] == [_created("x"), ev.Kill("x")]
    (queue,) = held.release(at(32), lambda e: True)  # y's flow is known now
    assert queue[0].event == _created("y") and len(held) == 0


def test_held_queues_of_executions_waiting_for_their_rebuild_stay_whatever_their_deadline() -> None:
    held = HeldEvents(timedelta(seconds=30))
    held.hold(1, ("executions", 7), ev.Resume("x"), "queued", at(0))
    held.hold(1, ("executions", 8), ev.Kill("y"), "queued", at(0))
    (queue,) = held.release(at(60), lambda e: True, keep={"x"})  # x waits for its rebuild
    assert queue[0].event == ev.Kill("y") and "x" in held
    assert held.commit_bounds() == {("executions", 1): 7}
    (queue,) = held.release(at(61), lambda e: True)  # rebuilt
    assert queue[0].event == ev.Resume("x") and len(held) == 0


def test_held_events_leave_with_their_partition() -> None:
    held = HeldEvents(timedelta(seconds=30))
    held.hold(1, ("executions", 7), _created("x"), "unknown", at(0))
    held.hold(1, None, ev.TimerFired("x", "retry"), "queued", at(0))
    held.hold(2, ("executions", 4), _created("y"), "unknown", at(0))
    assert held.leave({1}) == 1
    assert "x" not in held and "y" in held
    assert held.commit_bounds() == {("executions", 2): 4}


# -- ended markers -------------------------------------------------------------------------------


def test_ended_markers_are_bounded_by_age_and_count_with_tombstones() -> None:
    ended = EndedExecutions(timedelta(hours=1), max_count=2)
    key, value = ended.mark("old", 0, "SUCCESS", 1, at(0))
    assert key == codec.header_key("old", codec.ENDED) and value["attempt"] == 1
    ended.mark("a", 1, "FAILED", 2, at(3000))
    ended.mark("b", 1, "SUCCESS", 1, at(3100))
    ended.mark("c", 0, "SUCCESS", 1, at(3200))
    dropped = ended.prune(at(3700))  # "old" is past an hour; then 3 left for 2 places
    assert dropped == [(codec.header_key("old", codec.ENDED), 0),
                       (codec.header_key("a", codec.ENDED), 1)]  # fmt: skip
    assert sorted(ended) == ["b", "c"]


def test_ended_markers_prune_oldest_first_whatever_order_they_came_in() -> None:
    ended = EndedExecutions(timedelta(hours=1), max_count=3)
    for n in (5, 1, 4, 2, 3, 0):  # restored from several partitions: not in time order
        ended.restore(f"e{n}", n % 2, {"at": at(n).isoformat(), "attempt": 1})
    ended.put("e4", None)  # rolled back
    ended.mark("e1", 1, "SUCCESS", 2, at(10))  # ended again later: its old time no longer counts
    assert ended.window(at(20)) == timedelta(seconds=20)  # the count bound sets the window
    dropped = ended.prune(at(20))
    assert [codec.execution_of(k) for k, _ in dropped] == ["e0", "e2"]
    assert sorted(ended) == ["e1", "e3", "e5"]
    assert ended.window(at(20)) == timedelta(seconds=17)  # still full: e3's age
    assert [codec.execution_of(k) for k, _ in ended.prune(at(3604))] == ["e3"]
    assert ended.window(at(3604)) == timedelta(hours=1)  # below the count bound again
    assert ended.prune(at(3604)) == []


def test_ended_markers_heap_stays_bounded_as_markers_leave() -> None:
    ended = EndedExecutions(timedelta(hours=24), max_count=1_000_000)
    for n in range(10_000):
        ended.mark(f"e{n}", n % 4, "SUCCESS", 1, at(n))
        if n % 2:
            ended.unmark(f"e{n}")
    ended.leave({0, 2})
    assert len(ended) == 0 and len(ended._by_time) <= 1024
    assert ended.prune(at(10**6)) == []


def test_ended_markers_come_back_from_the_changelog_and_leave_with_their_partition() -> None:
    first = EndedExecutions(timedelta(hours=24), max_count=10)
    _, value = first.mark("e", 3, "KILLED", 2, at(0))
    again = EndedExecutions(timedelta(hours=24), max_count=10)
    again.restore("e", 3, records.loads(records.dumps(value)))
    marker = again.get("e")
    assert marker is not None and (marker.partition, marker.attempt, marker.at) == (3, 2, at(0))
    again.leave({3})
    assert "e" not in again


# -- the changelog mirror --------------------------------------------------------------------


FLOW = """
id: paused
namespace: test.parts
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def test_the_mirror_rebuilds_a_state_as_recovery_would() -> None:
    registry = FlowRegistry()
    flow = registry.put(parse_flow(FLOW))
    step = Executor(registry).step(None, ev.ExecutionCreated("e", flow.namespace, flow.id))
    st = step.state
    assert st is not None
    out = Outbox()
    for key, value in codec.encode_changes(
        st, list(st.task_runs), created=True, new_groups={codec.ROOT}
    ):
        out.log(key, value, 0)
    mirror = ChangelogMirror()
    for key, value in out.logged:
        mirror.put(key, value)
    settings = Settings(broker="unused:9092")
    restorer = ChangelogRestorer(
        BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings)), registry
    )
    recs = mirror.records_of("e")
    assert recs is not None
    rebuilt = restorer.rebuild_one("e", recs)
    assert rebuilt is not None
    assert execution_model(rebuilt) == execution_model(st)
    assert [k for k, _, _ in out.changelog] == [k for k, _ in out.logged]
    for key, _ in codec.tombstones(st):
        mirror.put(key, None)
    assert "e" not in mirror


def test_a_changelog_rebuild_gives_the_event_loop_turns() -> None:
    """A partition of thousands of executions is rebuilt a few hundred at a time: the other
    roles of the process (their heartbeats) run between."""
    settings = Settings(broker="unused:9092")
    restorer = ChangelogRestorer(
        BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings)), FlowRegistry()
    )
    latest = {f"e{n}": {codec.header_key(f"e{n}", codec.ENDED): {"at": n}} for n in range(500)}
    seen: list[int] = []

    async def scenario() -> Any:
        async def other_role() -> None:
            while True:
                seen.append(1)
                await asyncio.sleep(0)

        other = asyncio.create_task(other_role())
        await asyncio.sleep(0)
        before = len(seen)
        try:
            found = await restorer.rebuild(0, PartitionRead(latest))
        finally:
            other.cancel()
        return found, len(seen) - before

    found, turns = asyncio.run(scenario())
    assert len(found.ended) == 500
    assert turns >= 2
