"""The executor stream processor on a real broker: runs, dead letters, recovery, stream threads."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from executor_harness import Harness, wait_for

from kestream.executor import events as ev
from kestream.runtime import records
from kestream.runtime.changelog_restorer import RecoveryFailed
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.kafka import make_consumer
from kestream.runtime.pending_rebuilds import RebuildFailed
from kestream.storage.offload import StorageUnavailable

pytestmark = pytest.mark.integration

W1 = """
id: w1
namespace: test.runtime
inputs:
  - id: name
    type: STRING
    defaults: World
tasks:
  - id: concatenate
    type: io.kestra.plugin.core.output.OutputValues
    values:
      message: "Hello {{ inputs.name }}"
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ outputs.concatenate.values.message }}"
"""

PAUSED = """
id: paused
namespace: test.runtime
tasks:
  - id: before
    type: io.kestra.plugin.core.debug.Return
    format: "{{ execution.id }}"
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b", "c"]
    concurrencyLimit: 0
    tasks:
      - id: inner
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}"
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    delay: PT10S
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.before.value }} {{ outputs.inner.b.value }}"
"""

MANUAL = """
id: manual
namespace: test.runtime
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "resumed"
"""


def _created(execution_id: str, flow: str) -> ev.ExecutionCreated:
    return ev.ExecutionCreated(execution_id, "test.runtime", flow, inputs={"name": "Kafka"})


async def test_inline_flow_runs_to_success_once(broker, topic_prefix) -> None:  # type: ignore[no-untyped-def]
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    try:
        harness.deploy(W1)
        service = await harness.start_executor()
        await asyncio.wait_for(service.ready.wait(), 30)
        await harness.send(_created("w1-a", "w1"))
        await harness.send(_created("w1-a", "w1"))  # redelivered creation
        await wait_for(lambda: harness.state_of("w1-a") == "SUCCESS")
        await asyncio.sleep(1.0)
        terminal = [u for u in harness.updates["w1-a"] if u["terminal"]]
        assert len(terminal) == 1
        runs = terminal[0]["execution"]["taskRunList"]
        assert runs[0]["outputs"] == {"values": {"message": "Hello Kafka"}}
        assert service.states == {}  # the ended execution left the table
        assert "w1-a" in service.ended
    finally:
        await harness.close()


#: Records that decode as JSON but not as an event: each a dead letter, none a stopped processor.
HOSTILE_RECORDS = [
    b'{"type": "created", "id": "h1", "namespace": "test.runtime", "flowId": "w1",'
    b' "inputs": {"$td": 1e300}}',
    b'{"type": "created", "id": "h2", "namespace": "test.runtime", "flowId": "w1",'
    b' "trigger": {"$dt": 12}}',
    b'{"type": "result", "id": "h3", "run": "r", "attempt": "one", "state": "SUCCESS"}',
    b'{"type": "result", "id": "h4", "run": "r", "attempt": 1, "state": "EXPLODED"}',
    b'{"type": "created", "id": 5}',
    b'{"type": "resume", "id": "h6", "inputs": {"$esc": [1]}}',
    b"[1, 2, 3]",
    b"null",
    # nested past Python's recursion limit, or past what orjson can write back
    b'{"type": "created", "id": "h7", "namespace": "test.runtime", "flowId": "w1",'
    b' "inputs": {"a": ' + b"[" * 900 + b"]" * 900 + b"}}",
    b'{"type": "created", "id": "h8", "namespace": "test.runtime", "flowId": "w1",'
    b' "trigger": {"id": "t", "type": "x", "variables": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}}",
    # triggers in shapes no execution record has
    b'{"type": "created", "id": "h9", "namespace": "test.runtime", "flowId": "w1",'
    b' "trigger": {"variables": {"a": 1}}}',
    b'{"type": "created", "id": "h10", "namespace": "test.runtime", "flowId": "w1",'
    b' "trigger": {"id": "a", "type": "b", "variables": [1]}}',
    b'{"type": "created", "id": "h11", "namespace": "test.runtime", "flowId": "w1",'
    b' "labels": [1, 2]}',
]


async def test_undecodable_records_go_to_the_dead_letter_topic(broker, topic_prefix) -> None:  # type: ignore[no-untyped-def]
    harness = await Harness.open(broker.bootstrap, topic_prefix, executor_flow_wait_s=1.0)
    dlq = make_consumer(harness.ctx.settings, broker.bootstrap, broker.kind, group_id=None)
    try:
        harness.deploy(W1)
        service = await harness.start_executor()
        await asyncio.wait_for(service.ready.wait(), 30)
        await harness.send_raw(b"bad-1", b"{not json")
        await harness.send_raw(b"bad-2", b'{"type": "teleport", "id": "x"}')
        for i, hostile in enumerate(HOSTILE_RECORDS):  # what anyone with topic access can write
            await harness.send_raw(f"hostile-{i}".encode(), hostile)
        await harness.send(ev.ExecutionCreated("ghost", "test.runtime", "nope"))
        await harness.send(_created("after-bad", "w1"))
        await wait_for(lambda: harness.state_of("after-bad") == "SUCCESS")
        await dlq.start()
        dlq.assign([TopicPartition(harness.ctx.topics.dead_letter, 0)])
        reasons: list[str] = []

        async def collect() -> bool:
            batch = await dlq.getmany(timeout_ms=200)
            reasons.extend(records.loads(r.value)["reason"] for rs in batch.values() for r in rs)
            return len(reasons) >= 3 + len(HOSTILE_RECORDS)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not await collect():
            assert loop.time() < deadline, reasons
        assert any("not JSON" in r for r in reasons)
        assert any("unknown event type 'teleport'" in r for r in reasons)
        assert any("test.runtime.nope" in r and "not deployed within" in r for r in reasons)
        assert sum(r.startswith(("bad ", "an event", "created event")) for r in reasons) >= len(
            HOSTILE_RECORDS
        ), reasons
        assert service.is_live
    finally:
        await dlq.stop()
        await harness.close()


async def test_restart_resumes_in_flight_executions_with_their_state(broker, topic_prefix) -> None:  # type: ignore[no-untyped-def]
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    try:
        harness.deploy(PAUSED)
        harness.deploy(MANUAL)
        first = await harness.start_executor()
        await asyncio.wait_for(first.ready.wait(), 30)
        for i in range(3):
            await harness.send(_created(f"manual-{i}", "manual"))
        await harness.send(_created("delayed", "paused"))
        await wait_for(
            lambda: (
                all(harness.state_of(f"manual-{i}") == "PAUSED" for i in range(3))
                and harness.state_of("delayed") == "PAUSED"
            )
        )
        paused_at = datetime.now(UTC)
        before = {e: st.task_runs.keys() for e, st in first.states.items()}
        delayed_runs = {
            tr.task.id: (tr.value, tr.state.current, tr.outputs)
            for tr in first.states["delayed"].task_runs.values()
        }
        await first.stop()
        harness.services.remove(first)

        second = await harness.start_executor()
        await asyncio.wait_for(second.ready.wait(), 60)
        ready_at = datetime.now(UTC)
        assert {e: st.task_runs.keys() for e, st in second.states.items()} == before
        assert {
            tr.task.id: (tr.value, tr.state.current, tr.outputs)
            for tr in second.states["delayed"].task_runs.values()
        } == delayed_runs
        await wait_for(lambda: harness.state_of("delayed") == "SUCCESS", timeout=30)
        resumed_at = datetime.now(UTC)
        # On time: at its due time, or at once when no processor owned it then.
        due = paused_at + timedelta(seconds=10)
        expected = max(due, ready_at)
        print(
            f"[facts] executor handover took {(ready_at - paused_at).total_seconds():.1f}s; "
            f"resumed {(resumed_at - expected).total_seconds():.2f}s after it was due"
        )
        assert resumed_at >= due - timedelta(seconds=0.5)
        assert (resumed_at - expected).total_seconds() < 2.0
        final = harness.last("delayed")["execution"]  # type: ignore[index]
        after = next(r for r in final["taskRunList"] if r["taskId"] == "after")
        assert after["outputs"]["value"] == "delayed b"
        await harness.send(ev.Resume("manual-1"))
        await wait_for(lambda: harness.state_of("manual-1") == "SUCCESS")
        assert harness.state_of("manual-0") == "PAUSED"
    finally:
        await harness.close()


async def test_two_stream_processors_share_partitions_and_finish_each_once(
    broker, topic_prefix
) -> None:  # type: ignore[no-untyped-def]
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    try:
        harness.deploy(W1)
        one = await harness.start_executor()
        two = await harness.start_executor()
        await wait_for(lambda: len(one.owned) + len(two.owned) == 4 and one.owned and two.owned, 60)
        assert not one.owned & two.owned
        ids = [f"spread-{i}" for i in range(40)]
        for execution_id in ids:
            await harness.send(_created(execution_id, "w1"))
        await wait_for(lambda: all(harness.state_of(e) == "SUCCESS" for e in ids), 60)
        await asyncio.sleep(1.0)
        for execution_id in ids:
            assert sum(1 for u in harness.updates[execution_id] if u["terminal"]) == 1
        assert one.ended and two.ended
        assert not set(one.ended) & set(two.ended)
    finally:
        await harness.close()


async def test_partitions_handed_back_are_recovered_from_their_checkpoint(
    broker, topic_prefix, caplog
) -> None:  # type: ignore[no-untyped-def]
    """Paused executions survive partitions going to a second processor and back: the first
    takes them back from the checkpoint it parked them at, applying what the second wrote."""
    caplog.set_level("INFO", logger="kestream.executor")
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    try:
        harness.deploy(MANUAL)
        first = await harness.start_executor()
        await asyncio.wait_for(first.ready.wait(), 30)
        ids = [f"handed-{i}" for i in range(12)]
        for execution_id in ids:
            await harness.send(_created(execution_id, "manual"))
        await wait_for(lambda: all(harness.state_of(e) == "PAUSED" for e in ids), 60)

        second = await harness.start_executor()
        await wait_for(
            lambda: first.owned and second.owned and first.is_ready and second.is_ready, 60
        )
        moved = sorted(second.states)
        assert moved and set(moved) | set(first.states) == set(ids)
        for execution_id in moved:  # they end while the second processor owns them
            await harness.send(ev.Resume(execution_id))
        await wait_for(lambda: all(harness.state_of(e) == "SUCCESS" for e in moved), 60)

        caplog.clear()
        await second.stop()
        harness.services.remove(second)
        await wait_for(lambda: first.owned == {0, 1, 2, 3} and first.is_ready, 60)
        warm = [
            int(m.group(1))
            for r in caplog.records
            if (m := re.search(r"\((\d+) from their checkpoint\)", r.getMessage()))
        ]
        assert warm and warm[-1] == 4  # every partition came back from its checkpoint
        assert sorted(first.states) == sorted(set(ids) - set(moved))
        assert all(e in first.ended for e in moved)

        for execution_id in ids:  # a resume of an ended one changes nothing
            await harness.send(ev.Resume(execution_id))
        await wait_for(lambda: all(harness.state_of(e) == "SUCCESS" for e in ids), 60)
        await asyncio.sleep(1.0)
        for execution_id in ids:
            assert sum(1 for u in harness.updates[execution_id] if u["terminal"]) == 1
    finally:
        await harness.close()


async def test_a_changelog_that_cannot_be_read_stops_the_processor_loudly(
    broker, topic_prefix, make_topic
) -> None:  # type: ignore[no-untyped-def]
    """Recovery of a partition whose changelog partition does not exist (a changelog topic made
    with too few partitions) fails after its retries: the processor reports the failure, is no
    longer live, and owns nothing; it does not go on without the state."""
    await make_topic("executor-state-changelog", 1)  # the inputs get 4 partitions
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    failures: list[BaseException] = []
    try:
        harness.deploy(W1)
        service = ExecutorService(harness.ctx, harness.registry, on_failure=failures.append)
        service.recovery.restorer.backoff_s = 0.05
        service.recovery.restorer.attempts = 2
        service.recovery.restorer.request_timeout_ms = 3000  # each read fails in seconds, not 40 s
        harness.services.append(service)
        await service.start()
        await wait_for(lambda: bool(failures), 60)
        (failure,) = failures
        assert isinstance(failure, RecoveryFailed)
        assert "after 2 attempts" in str(failure)
        assert service.failure is failure
        assert not service.is_live and not service.is_ready and service.owned == set()
        await wait_for(lambda: service._task is not None and service._task.done(), 30)
        assert isinstance(service._task.exception(), RecoveryFailed)  # type: ignore[union-attr]
    finally:
        await harness.close()


def _resume_fails_once(service: ExecutorService) -> None:
    """The service's first step of a resume applies it, then raises (an engine bug)."""
    real_step = service.executor.step
    failed: list[ev.Event] = []

    def step(state: Any, event: ev.Event) -> Any:
        result = real_step(state, event)
        if isinstance(event, ev.Resume) and not failed:
            failed.append(event)
            raise RuntimeError("engine bug")
        return result

    service.executor.step = step  # type: ignore[method-assign]


def _rebuilds_fail(service: ExecutorService, times: int) -> None:
    """The service's first ``times`` rebuilds of an execution from its changelog records fail,
    as a stored plan the internal storage does not give makes them fail."""
    restorer = service.recovery.restorer
    real_rebuild = restorer.rebuild_one
    left = [times]

    def rebuild(execution_id: str, recs: Any, plans: Any = None) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise StorageUnavailable("the internal storage does not answer")
        return real_rebuild(execution_id, recs, plans)

    restorer.rebuild_one = rebuild  # type: ignore[method-assign]


async def test_an_execution_its_roll_back_cannot_rebuild_ends_once_rebuilt(
    broker, topic_prefix
) -> None:  # type: ignore[no-untyped-def]
    """A resume whose step raises is dead-lettered, and the roll-back cannot rebuild the
    execution: it waits, the next resume held behind it, and the next cycle rebuilds it."""
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    try:
        harness.deploy(MANUAL)
        service = await harness.start_executor()
        await asyncio.wait_for(service.ready.wait(), 30)
        await harness.send(_created("rebuilt", "manual"))
        await wait_for(lambda: harness.state_of("rebuilt") == "PAUSED")
        _resume_fails_once(service)
        _rebuilds_fail(service, times=1)
        await harness.send(ev.Resume("rebuilt"))  # fails, and so does its roll-back
        await harness.send(ev.Resume("rebuilt"))
        await wait_for(lambda: harness.state_of("rebuilt") == "SUCCESS")
        assert service.failure is None and not service.rebuilds
    finally:
        await harness.close()


async def test_a_roll_back_that_never_rebuilds_stops_the_processor_and_the_next_owner_ends_it(
    broker, topic_prefix
) -> None:  # type: ignore[no-untyped-def]
    """A rebuild that fails again stops the processor loudly, naming the execution; the
    resume held was never committed, so the next owner recovers the execution from the
    changelog and runs it to its end."""
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    failures: list[BaseException] = []
    try:
        harness.deploy(MANUAL)
        first = ExecutorService(harness.ctx, harness.registry, on_failure=failures.append)
        harness.services.append(first)
        await first.start()
        await asyncio.wait_for(first.ready.wait(), 30)
        await harness.send(_created("stuck", "manual"))
        await wait_for(lambda: harness.state_of("stuck") == "PAUSED")
        _resume_fails_once(first)
        _rebuilds_fail(first, times=1_000)
        await harness.send(ev.Resume("stuck"))
        await harness.send(ev.Resume("stuck"))
        await wait_for(lambda: bool(failures))
        (failure,) = failures
        assert isinstance(failure, RebuildFailed) and "execution stuck" in str(failure)
        await wait_for(lambda: first._task is not None and first._task.done())
        assert not first.is_live and harness.state_of("stuck") == "PAUSED"
        await first.stop()  # as its process exits
        harness.services.remove(first)
        second = await harness.start_executor()
        await wait_for(lambda: harness.state_of("stuck") == "SUCCESS", 60)
        assert second.failure is None
    finally:
        await harness.close()
