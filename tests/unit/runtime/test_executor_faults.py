"""One record never stops the executor processor, and a step that fails leaves nothing half
applied; recovery that keeps failing stops the processor loudly; held executions leave with
their partition. The processor runs here without a broker: events go straight to its step."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.structs import RecordMetadata

from kestream.executor import codec
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.snapshot import execution_model
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import command_router, executor_service, records
from kestream.runtime.changelog_restorer import ChangelogRestorer, PartitionRead, RecoveryFailed
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import ExecutorService, Outbox, _Rebalance
from kestream.runtime.metrics import Metrics
from kestream.runtime.pending_rebuilds import RebuildFailed
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from kestream.storage.offload import StorageUnavailable

PAUSED = """
id: paused
namespace: test.faults
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: resumed
"""


@pytest.fixture(autouse=True)
def _no_admission_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recoveries here read the executions' changelog through stubs; the admission slots'
    (flow concurrency, read after it) hold nothing in these tests."""

    async def empty(self: ChangelogRestorer, topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}

    monkeypatch.setattr(ChangelogRestorer, "_read_table", empty)


def _service(*flows: str) -> ExecutorService:
    settings = Settings(broker="unused:9092", executor_inline_tasks=True)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    for flow in flows:
        registry.put(parse_flow(flow))
    service = ExecutorService(ctx, registry, metrics=Metrics())
    service.owned = {0, 1}
    return service


def _paused(service: ExecutorService) -> Outbox:
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("e1", "test.faults", "paused"), out, ("executions", 0))
    for key, _ in out.logged:
        assert key.startswith("e1")
    assert service.states["e1"].state.current is StateType.PAUSED
    return out


def _letters(service: ExecutorService, out: Outbox) -> list[dict[str, Any]]:
    return [records.loads(v) for t, _, v, _ in out.commands if t == service.topics.dead_letter]


def _json(service: ExecutorService, execution_id: str) -> Any:
    """The execution's JSON without durations (a paused state's grows with the clock)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "duration"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(execution_model(service.states[execution_id]).model_dump(mode="json"))


def test_a_step_that_raises_half_way_is_rolled_back_and_dead_lettered() -> None:
    service = _service(PAUSED)
    _paused(service)
    before = _json(service, "e1")
    real_step = service.executor.step

    def half_applied(state: Any, event: ev.Event) -> Any:
        real_step(state, event)  # changes the state in place (resumes the Pause) ...
        raise RuntimeError("engine bug")  # ... then fails

    service.executor.step = half_applied  # type: ignore[method-assign]
    out = Outbox()
    service._apply(0, ev.Resume("e1"), out, ("executions", 5))
    assert _json(service, "e1") == before  # the resume left no trace
    (letter,) = _letters(service, out)
    assert letter["offset"] == 5 and "engine bug" in letter["reason"]
    assert [t for t, *_ in out.commands] == [service.topics.dead_letter]
    assert out.changelog == []

    service.executor.step = real_step  # type: ignore[method-assign]
    out = Outbox()
    service._apply(0, ev.Resume("e1"), out, ("executions", 6))  # the next event applies
    assert "e1" not in service.states and "e1" in service.ended  # resumed, and ran to its end


def test_a_failure_while_writing_the_step_rolls_back_its_execution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = _service(PAUSED)
    _paused(service)
    before = _json(service, "e1")
    timers_before = sorted(service.timers.pending())

    def chunking_fails(*args: Any, **kwargs: Any) -> list[bytes]:
        raise ValueError("cannot chunk")

    monkeypatch.setattr(command_router, "update_records", chunking_fails)
    out = Outbox()
    service._apply(0, ev.Resume("e1"), out, ("executions", 9))
    assert _json(service, "e1") == before
    assert sorted(service.timers.pending()) == timers_before
    (letter,) = _letters(service, out)
    assert "cannot chunk" in letter["reason"]
    monkeypatch.undo()
    service._apply(0, ev.Resume("e1"), Outbox(), ("executions", 10))
    assert "e1" in service.ended


def test_a_creation_that_fails_leaves_no_execution_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service(PAUSED)

    def chunking_fails(*args: Any, **kwargs: Any) -> list[bytes]:
        raise ValueError("cannot chunk")

    monkeypatch.setattr(command_router, "update_records", chunking_fails)
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("e2", "test.faults", "paused"), out, ("executions", 1))
    assert "e2" not in service.states and "e2" not in service.partition_of
    assert "e2" not in service.mirror and not list(service.timers.pending())
    assert len(_letters(service, out)) == 1


def test_an_event_that_cannot_be_decoded_in_any_way_is_dead_lettered() -> None:
    service = _service(PAUSED)
    out = Outbox()
    tp = TopicPartition(service.topics.executions, 0)
    for offset, value in enumerate([b"\xff", b'{"type": "kill", "id": "e", "attempt": -1}']):
        rec = _Record(offset, b"e", value)
        service._handle(tp, rec, out)  # type: ignore[arg-type]
    assert [letter["offset"] for letter in _letters(service, out)] == [0, 1]


class _Record:
    def __init__(self, offset: int, key: bytes, value: bytes) -> None:
        self.offset, self.key, self.value = offset, key, value


def test_held_executions_leave_with_their_partition() -> None:
    late = PAUSED.replace("id: paused", "id: late")
    service = _service(PAUSED)
    out = Outbox()
    created = ev.ExecutionCreated("h1", "test.faults", "late")
    service._apply(1, created, out, ("executions", 3))
    service._apply(1, ev.Kill("h1"), out, ("worker-results", 8))
    assert "h1" in service.held and out.commands == []
    asyncio.run(service.revoked({1}))
    assert "h1" not in service.held
    service.registry.put(parse_flow(late))  # the revision arrives after the partition left
    out = Outbox()
    service._release_held(service.clock(), out)
    assert "h1" not in service.states and out.commands == [] and out.changelog == []


def test_a_recovery_that_keeps_failing_stops_the_processor_loudly() -> None:
    service = _service(PAUSED)
    service.owned = set()
    reads: list[set[int]] = []

    async def unreadable(partitions: set[int], start: dict[int, int]) -> Any:
        reads.append(set(partitions))
        raise kafka_errors.KafkaConnectionError("broker away")

    service.recovery.restorer = ChangelogRestorer(
        service.ctx, service.registry, attempts=3, backoff_s=0
    )
    service.recovery.restorer._read = unreadable  # type: ignore[method-assign]
    failures: list[BaseException] = []
    service.on_failure = failures.append
    tps = [TopicPartition(service.topics.executions, p) for p in (0, 1)]
    asyncio.run(_Rebalance(service).on_partitions_assigned(tps))  # never raises into aiokafka
    assert reads == [{0, 1}] * 3  # retried
    (failure,) = failures
    assert isinstance(failure, RecoveryFailed) and "broker away" in str(failure)
    assert service.owned == set() and not service.ready.is_set()
    assert service.failure is failure and not service.is_live
    assert service.health_detail()["failure"].startswith("RecoveryFailed")


def test_a_recovery_that_fails_once_is_retried() -> None:
    service = _service(PAUSED)
    service.owned = set()
    calls: list[int] = []

    async def flaky(partitions: set[int], start: dict[int, int]) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise kafka_errors.KafkaConnectionError("blip")
        return {p: PartitionRead() for p in partitions}, dict.fromkeys(partitions, 0)

    service.recovery.restorer = ChangelogRestorer(
        service.ctx, service.registry, attempts=3, backoff_s=0
    )
    service.recovery.restorer._read = flaky  # type: ignore[method-assign]
    asyncio.run(service.assigned({0}))
    assert len(calls) == 2 and service.owned == {0} and service.ready.is_set()
    assert service.failure is None


class _Producer:
    """Acks every record but those whose value is ``refused``; ``broken`` fails every send
    the way a broker that went away does."""

    def __init__(self, refused: bytes, *, broken: bool = False) -> None:
        self.refused, self.broken = refused, broken
        self.acked: list[tuple[str, bytes | None]] = []

    async def send(
        self, topic: str, value: bytes | None, partition: int | None = None, **_: Any
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(kafka_errors.KafkaConnectionError("gone"))
        elif value == self.refused:
            future.set_exception(kafka_errors.MessageSizeTooLargeError("too large for the topic"))
        else:
            self.acked.append((topic, value))
            offset = len(self.acked)
            future.set_result(RecordMetadata(topic, partition or 0, None, offset, -1, None, 0))
        return future


def test_a_record_the_broker_refuses_is_dead_lettered_and_the_rest_is_written() -> None:
    service = _service(PAUSED)
    producer = _Producer(refused=b"bad")
    service.writer.producer = producer  # type: ignore[assignment]
    recs = [("t", "k1", b"good", None), ("t", "k2", b"bad", None), ("t", "k3", b"fine", None)]
    asyncio.run(service.writer.produce(recs))
    assert [v for t, v in producer.acked if t == "t"] == [b"good", b"fine"]
    (letter,) = [records.loads(v) for t, v in producer.acked if t == service.topics.dead_letter]
    assert letter["key"] == "k2" and "MessageSizeTooLarge" in letter["reason"]


def test_a_broker_failure_while_flushing_stops_the_processor() -> None:
    service = _service(PAUSED)
    service.writer.producer = _Producer(refused=b"", broken=True)  # type: ignore[assignment]
    with pytest.raises(kafka_errors.KafkaConnectionError):
        asyncio.run(service.writer.produce([("t", "k", b"v", None)]))


def test_a_stop_ends_a_recovery_under_way_without_calling_it_a_failure() -> None:
    service = _service(PAUSED)
    service.owned = set()
    failures: list[BaseException] = []
    service.on_failure = failures.append
    started = asyncio.Event()

    async def slow(partitions: set[int], start: dict[int, int]) -> Any:
        started.set()
        await asyncio.sleep(3600)  # a broker that does not answer

    service.recovery.restorer._read = slow  # type: ignore[method-assign]

    async def scenario() -> None:
        assigning = asyncio.create_task(service.assigned({0}))
        await started.wait()
        await service.stop()  # no loop, consumer or producer started: only the recovery
        await asyncio.wait_for(assigning, 5)

    asyncio.run(scenario())
    assert failures == [] and service.failure is None and service.owned == set()


def test_unreadable_changelog_records_are_skipped_not_fatal() -> None:
    from aiokafka.structs import ConsumerRecord

    def rec(offset: int, key: bytes | None, value: bytes | None) -> ConsumerRecord[Any, Any]:
        return ConsumerRecord("changelog", 0, offset, 0, 0, key, value, None, 0, 0, [])

    read = PartitionRead()
    for record in (
        rec(0, b"e1", b'{"ns": "a"}'),
        rec(1, None, b"{}"),  # no key
        rec(2, b"e1#", b"\xff not json"),
        rec(3, b"e1/run", b'{"n": 1}'),
        rec(4, b"e1#", b'{"created": 1}'),  # the step's commit mark
    ):
        read.add(record)
    assert read.latest == {"e1": {"e1": {"ns": "a"}, "e1/run": {"n": 1}, "e1#": {"created": 1}}}
    assert read.torn == {}


SLEEPY = """
id: sleepy
namespace: test.faults
tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1H
errors:
  - id: said
    type: io.kestra.plugin.core.log.Log
    message: failed
"""


def _updates(service: ExecutorService, producer: _Producer) -> list[dict[str, Any]]:
    return [records.loads(v) for t, v in producer.acked if t == service.topics.updates and v]


def test_a_job_the_broker_refuses_fails_its_task_run_in_the_same_cycle() -> None:
    service = _service(SLEEPY)
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("j1", "test.faults", "sleepy"), out, ("executions", 0))
    (job,) = [v for t, _, v, _ in out.commands if t == service.topics.worker_tasks]
    assert job is not None
    producer = _Producer(refused=job)
    service.writer.producer = producer  # type: ignore[assignment]
    asyncio.run(service._flush(out))
    # The task run failed with the broker's reason, so the errors branch ran and the execution
    # ended, instead of waiting for a result that can never come.
    assert "j1" not in service.states
    marker = service.ended.get("j1")
    assert marker is not None
    last = _updates(service, producer)[-1]
    assert last["terminal"] and last["execution"]["state"]["current"] == "FAILED"
    runs = {tr["taskId"]: tr["state"]["current"] for tr in last["execution"]["taskRunList"]}
    assert runs == {"nap": "FAILED", "said": "SUCCESS"}
    (letter,) = [records.loads(v) for t, v in producer.acked if t == service.topics.dead_letter]
    assert "MessageSizeTooLarge" in letter["reason"]


def test_a_changelog_record_the_broker_refuses_fails_its_execution() -> None:
    service = _service(PAUSED)
    out = _paused(service)
    dynamic = codec.header_key("e1", codec.DYNAMIC)
    (refused,) = [v for k, v, _ in out.changelog if k == dynamic]
    assert refused is not None
    producer = _Producer(refused=refused)
    service.writer.producer = producer  # type: ignore[assignment]
    asyncio.run(service._flush(out))
    assert "e1" in service.states  # its changelog is carried to the next write ...
    asyncio.run(service._flush(Outbox()))  # ... the next cycle's, which the broker refuses
    # Memory was ahead of the changelog: the execution ends FAILED rather than going on from a
    # state no recovery could rebuild.
    assert "e1" not in service.states and "e1" not in service.mirror
    last = _updates(service, producer)[-1]
    assert last["terminal"] and last["execution"]["state"]["current"] == "FAILED"
    written = [(t, v) for t, v in producer.acked if t == service.topics.changelog]
    assert written[-1][1] is not None and b"FAILED" in written[-1][1]  # the ended marker


class _OvertakenConsumer:
    """Returns ``batch`` from a fetch that a rebalance overtakes (partition 0 revoked and
    assigned back while the fetch is under way), then stops the processor."""

    def __init__(self, service: ExecutorService, batch: dict[TopicPartition, list[Any]]) -> None:
        self.service, self.batches = service, [batch]
        self.positions: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[Any] = []

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        if not self.batches:
            self.service._stopping = True
            return {}
        batch = self.batches.pop()
        for tp, recs in batch.items():
            self.positions[tp] = recs[-1].offset + 1
        await self.service.revoked({0})
        await self.service.assigned({0})
        return batch

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    async def commit(self, offsets: Any) -> None:
        self.commits.append(offsets)

    def highwater(self, tp: TopicPartition) -> None:
        return None


def test_a_batch_a_rebalance_overtook_is_fetched_again_not_stepped_or_committed() -> None:
    from aiokafka.structs import ConsumerRecord

    service = _service(PAUSED)

    async def nothing(partitions: set[int], start: dict[int, int]) -> Any:
        return {p: PartitionRead() for p in partitions}, dict.fromkeys(partitions, 0)

    service.recovery.restorer._read = nothing  # type: ignore[method-assign]
    service.writer.producer = _Producer(refused=b"")  # type: ignore[assignment]
    tp = TopicPartition(service.topics.executions, 0)
    value = records.encode_event(ev.ExecutionCreated("e9", "test.faults", "paused"))
    rec = ConsumerRecord(tp.topic, 0, 7, 0, 0, b"e9", value, None, 0, 0, [])
    consumer = _OvertakenConsumer(service, {tp: [rec]})
    service._consumer = consumer  # type: ignore[assignment]
    asyncio.run(service._loop())
    assert "e9" not in service.states  # not stepped against the state recovered meanwhile
    assert consumer.commits == []  # nor committed over the partition's new start
    assert consumer.seeks == [(tp, 7)]  # read again from its first record


FAILING = """
id: failing
namespace: test.faults
tasks:
  - id: boom
    type: io.kestra.plugin.core.execution.Fail
"""


def test_metrics_count_events_that_apply_and_a_restart_is_not_a_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = _service(FAILING)
    labels = {"namespace_id": "test.faults", "flow_id": "failing"}

    def count(name: str, **more: str) -> float:
        return service.metrics.value(f"kestream_executor_{name}_total", {**labels, **more}) or 0

    def chunking_fails(*args: Any, **kwargs: Any) -> list[bytes]:
        raise ValueError("cannot chunk")

    created = ev.ExecutionCreated("f1", "test.faults", "failing")
    monkeypatch.setattr(command_router, "update_records", chunking_fails)
    service._apply(0, created, Outbox(), ("executions", 0))  # rolled back, dead-lettered
    assert count("execution_started_count") == 0
    assert count("taskrun_created_count", task_type="io.kestra.plugin.core.execution.Fail") == 0
    monkeypatch.undo()

    out = Outbox()
    service._apply(0, created, out, ("executions", 1))
    assert count("execution_started_count") == 1
    assert count("execution_end_count", state="FAILED") == 1
    updates = [records.loads(v) for t, _, v, _ in out.commands if t == service.topics.updates]
    snapshot = updates[-1]["execution"]
    service._apply(0, ev.Restart("f1", snapshot), Outbox(), ("executions", 2))
    assert count("execution_started_count") == 1  # the same execution, run again
    assert count("execution_end_count", state="FAILED") == 2


def test_a_restart_is_not_a_start_once_its_ended_marker_is_gone() -> None:
    """The restart of an execution that ended long ago (its ended marker pruned past
    ``KESTREAM_EXECUTOR_ENDED_RETENTION_H``, or on an executor that never saw it end): rebuilt
    from its snapshot, it is written whole like a creation, but it is no new execution."""
    service = _service(FAILING)
    labels = {"namespace_id": "test.faults", "flow_id": "failing"}

    def count(name: str, **more: str) -> float:
        return service.metrics.value(f"kestream_executor_{name}_total", {**labels, **more}) or 0

    out = Outbox()
    service._apply(0, ev.ExecutionCreated("f2", "test.faults", "failing"), out, ("executions", 0))
    updates = [records.loads(v) for t, _, v, _ in out.commands if t == service.topics.updates]
    snapshot = updates[-1]["execution"]
    assert service.ended.unmark("f2") is not None  # what a prune past the retention does
    assert "f2" not in service.states and service.ended.get("f2") is None
    restarted = Outbox()
    service._apply(0, ev.Restart("f2", snapshot), restarted, ("executions", 1))
    assert any(key.startswith("f2") for key, _ in restarted.logged)  # written whole again
    assert count("execution_started_count") == 1
    assert count("execution_end_count", state="FAILED") == 2


class _SlowProducer(_Producer):
    """Acks nothing until ``release`` is set; ``sending`` is set at the first send."""

    def __init__(self) -> None:
        super().__init__(refused=b"")
        self.sending, self.release = asyncio.Event(), asyncio.Event()

    async def send(self, topic: str, value: bytes | None, **kwargs: Any) -> asyncio.Future[Any]:
        self.sending.set()
        await self.release.wait()
        return await super().send(topic, value, **kwargs)

    async def stop(self) -> None:
        return None


class _OneBatchConsumer(_OvertakenConsumer):
    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        if not self.batches:
            await asyncio.sleep(0.01)
            return {}
        return self.batches.pop()

    async def stop(self) -> None:
        return None


def test_a_stop_lets_the_cycle_under_way_write_its_changelog_and_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka.structs import ConsumerRecord

    monkeypatch.setattr(codec, "WHOLE_MAX_BYTES", 0)  # a step of several changelog records
    service = _service(PAUSED)
    tp = TopicPartition(service.topics.executions, 0)
    value = records.encode_event(ev.ExecutionCreated("s1", "test.faults", "paused"))
    consumer = _OneBatchConsumer(service, {tp: [ConsumerRecord(
        tp.topic, 0, 3, 0, 0, b"s1", value, None, 0, 0, []
    )]})  # fmt: skip
    producer = _SlowProducer()
    service._consumer = consumer  # type: ignore[assignment]
    service.writer.producer = producer  # type: ignore[assignment]

    async def scenario() -> None:
        service._task = asyncio.create_task(service._loop())
        await producer.sending.wait()  # the flush is under way
        stopping = asyncio.create_task(service.stop())
        await asyncio.sleep(0.05)
        producer.release.set()
        await stopping

    asyncio.run(scenario())
    reference = Outbox()  # what the step writes to the changelog
    created = ev.ExecutionCreated("s1", "test.faults", "paused")
    _service(PAUSED)._apply(0, created, reference, ("executions", 3))
    logged = [v for t, v in producer.acked if t == service.topics.changelog]
    assert len(logged) == len(reference.changelog) > 1  # every one, its commit mark last
    (committed,) = consumer.commits
    assert committed[tp].offset == 4


PARENT = """
id: parent
namespace: test.faults
tasks:
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: test.faults
    flowId: paused
    wait: true
"""


def test_a_subflow_execution_the_broker_refuses_fails_its_parent_task_run() -> None:
    service = _service(PAUSED, PARENT)
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("p1", "test.faults", "parent"), out, ("executions", 0))
    (child,) = [v for t, k, v, _ in out.commands if t == service.topics.executions and k != "p1"]
    assert child is not None
    producer = _Producer(refused=child)
    service.writer.producer = producer  # type: ignore[assignment]
    asyncio.run(service._flush(out))
    answers = [records.decode_event(v) for t, v in producer.acked if t == service.topics.executions]
    (answer,) = answers
    assert isinstance(answer, ev.SubflowFinished) and answer.execution_id == "p1"
    assert answer.child_state is StateType.FAILED and "MessageSizeTooLarge" in str(answer.error)
    heard = Outbox()
    service._apply(0, answer, heard, ("executions", 1))  # the parent hears it, and fails
    assert "p1" not in service.states and "p1" in service.ended
    updates = [records.loads(v) for t, _, v, _ in heard.commands if t == service.topics.updates]
    runs = {tr["taskId"]: tr["state"]["current"] for tr in updates[-1]["execution"]["taskRunList"]}
    assert updates[-1]["execution"]["state"]["current"] == "FAILED" and runs == {"call": "FAILED"}


LIMITED = """
id: limited
namespace: test.faults
concurrency:
  limit: 1
  behavior: QUEUE
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def test_a_queued_execution_whose_changelog_record_is_refused_ends_and_leaves_the_line() -> None:
    service = _service(LIMITED)
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("q1", "test.faults", "limited"), out, ("executions", 0))
    queued = ev.Admission("q1", "test.faults", "limited", 1, StateType.QUEUED, service.clock())
    out = Outbox()
    service._apply(0, queued, out, ("executions", 1))
    assert service.states["q1"].state.current is StateType.QUEUED
    dynamic = codec.header_key("q1", codec.DYNAMIC)
    (refused,) = [v for k, v, _ in out.changelog if k == dynamic]
    assert refused is not None
    producer = _Producer(refused=refused)
    service.writer.producer = producer  # type: ignore[assignment]
    asyncio.run(service._flush(out))
    asyncio.run(service._commit())  # carried records first: refused, QUEUED ends FAILED
    assert "q1" not in service.states and not service.writer.carried
    last = [records.loads(v) for t, v in producer.acked if t == service.topics.updates][-1]
    assert last["terminal"] and last["execution"]["state"]["current"] == "FAILED"
    (release,) = [
        records.loads(v) for t, v in producer.acked if t == service.topics.admissions and v
    ]
    assert release["type"] == "release" and release["id"] == "q1"


def test_a_cancellation_out_of_the_fetch_stops_the_processor_loudly() -> None:
    """aiokafka raises its coordination task's end out of ``getmany``: when that was a
    cancellation (a rebalance callback that awaited a cancelled task), the loop took it for its
    own stop and ended without a word, its partitions held and nothing processed."""
    service = _service(PAUSED)
    failures: list[BaseException] = []
    service.on_failure = failures.append

    async def coordination_ended() -> None:
        raise asyncio.CancelledError  # not a cancellation of the loop's task

    service._loop = coordination_ended  # type: ignore[method-assign]

    async def run() -> BaseException | None:
        task = asyncio.create_task(service._run())
        try:
            await task
        except (asyncio.CancelledError, RuntimeError) as exc:
            return exc
        return None

    ended = asyncio.run(run())
    assert isinstance(ended, RuntimeError) and "not aimed at the loop" in str(ended)
    assert failures == [ended] and service.failure is ended and not service.is_live


def test_a_stop_of_the_processor_is_still_a_quiet_cancellation() -> None:
    service = _service(PAUSED)
    failures: list[BaseException] = []
    service.on_failure = failures.append

    async def waits() -> None:
        await asyncio.Event().wait()

    service._loop = waits  # type: ignore[method-assign]

    async def run() -> bool:
        task = asyncio.create_task(service._run())
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(run())
    assert failures == [] and service.failure is None


def test_the_records_of_the_last_rounds_undoing_are_written_not_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each round's refusals are undone in memory (:meth:`ExecutorService._undo_refused`);
    the records the last undoing made are written too, else memory is ahead of the changelog
    and of the updates, with nothing written. What that last write refuses stays
    dead-lettered, said in the log."""
    service = _service(PAUSED)
    undone: list[int] = []

    def undo(refused: list[Any], out: Outbox) -> None:
        undone.append(len(undone))
        out.send("t", "k", b"undo %d" % len(undone))

    monkeypatch.setattr(service, "_undo_refused", undo)
    written: list[list[Any]] = []
    for box, refused in service._refusal_rounds(Outbox()):
        written.append([value for _, _, value, _ in box.commands])
        refused.append(cast(Any, ("refused", "every time")))
    rounds = executor_service._FLUSH_ROUNDS
    assert len(undone) == rounds
    assert written[-1] == [b"undo %d" % rounds] and len(written) == rounds + 1
    assert f"still refused after {rounds} rounds" in caplog.text


def _failing_steps(service: ExecutorService) -> Any:
    """The service's steps apply the event, then raise (an engine bug); returns the real step."""
    real_step = service.executor.step

    def half_applied(state: Any, event: ev.Event) -> Any:
        real_step(state, event)
        raise RuntimeError("engine bug")

    service.executor.step = half_applied  # type: ignore[method-assign]
    return real_step


def _failing_rebuilds(service: ExecutorService, times: int) -> list[str]:
    """The service's rebuilds of an execution from its changelog records raise the first
    ``times`` times, as a stored plan the internal storage does not give makes them; returns
    the executions each call was asked for."""
    restorer = service.recovery.restorer
    real_rebuild = restorer.rebuild_one
    calls: list[str] = []

    def flaky(execution_id: str, recs: Any, plans: Any = None) -> Any:
        calls.append(execution_id)
        if len(calls) <= times:
            raise StorageUnavailable("the internal storage does not answer")
        return real_rebuild(execution_id, recs, plans)

    restorer.rebuild_one = flaky  # type: ignore[method-assign]
    return calls


def test_an_execution_its_roll_back_cannot_rebuild_waits_for_its_rebuild_then_runs_on() -> None:
    """Never out of the table for good: its later events are held (the commit stays below
    them), the next cycle rebuilds it from its changelog records, and they step in order."""
    service = _service(PAUSED)
    _paused(service)
    real_step = _failing_steps(service)
    calls = _failing_rebuilds(service, times=1)
    out = Outbox()
    service._apply(0, ev.Resume("e1"), out, ("executions", 5))
    assert calls == ["e1"] and len(_letters(service, out)) == 1
    assert "e1" not in service.states and "e1" in service.rebuilds and "e1" in service.mirror
    assert service.health_detail()["rebuilding"] == 1
    service.executor.step = real_step  # type: ignore[method-assign]
    tp = TopicPartition(service.topics.executions, 0)
    service._apply(0, ev.Resume("e1"), out, (tp.topic, 6))
    assert "e1" in service.held and "e1" not in service.ended  # not stepped against nothing
    service._flushed({tp: [_Record(6, b"e1", b"")]})  # type: ignore[list-item]
    assert service._take_offsets(None)[tp].offset == 6  # a crash replays the held event
    service._release_held(service.clock(), out)
    assert "e1" in service.held  # waits for its rebuild, not for a flow revision
    asyncio.run(service.rebuilds.rebuild(out))  # the next cycle's, which succeeds
    assert calls == ["e1", "e1"] and "e1" in service.states and "e1" not in service.rebuilds
    assert _json(service, "e1")["state"]["current"] == "PAUSED"
    service._release_held(service.clock(), out)
    assert "e1" not in service.held and "e1" in service.ended  # resumed, and ran to its end


def test_an_execution_whose_records_cannot_be_read_is_left_out_as_a_recovery_leaves_it() -> None:
    """A rebuild that reads the records but cannot rebuild from them (a bad record, its flow
    revision unknown) ends as a recovery's would: left out, its held events stepped against no
    state. Stopping the processor would come to the same after recovering every partition."""
    service = _service(PAUSED)
    _paused(service)
    real_step = _failing_steps(service)
    _failing_rebuilds(service, times=1)
    out = Outbox()
    service._apply(0, ev.Resume("e1"), out, ("executions", 5))
    service.executor.step = real_step  # type: ignore[method-assign]
    service._apply(0, ev.Resume("e1"), out, ("executions", 6))
    service.recovery.restorer.rebuild_one = lambda *_: None  # type: ignore[method-assign]
    left = asyncio.run(service.rebuilds.rebuild(out))
    assert left == ["e1"] and "e1" not in service.rebuilds
    service._leave_table(left)
    service._release_held(service.clock(), out)
    assert "e1" not in service.held and "e1" not in service.states


class _IdleConsumer(_OneBatchConsumer):
    """Gives its batches, then nothing; stops the processor after ``idle`` empty fetches."""

    def __init__(self, service: ExecutorService, batch: Any, idle: int = 20) -> None:
        super().__init__(service, batch)
        self.idle = idle

    async def getmany(self, **kwargs: Any) -> dict[TopicPartition, list[Any]]:
        if not self.batches:
            self.idle -= 1
            if self.idle <= 0:
                self.service._stopping = True
        return await super().getmany(**kwargs)


def test_an_execution_that_cannot_be_rebuilt_stops_the_processor_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The next cycle's rebuild fails too: the processor stops (its process exits), naming the
    execution and why, and its held event was never committed past (the next owner recovers
    the execution from the changelog and replays it)."""
    from aiokafka.structs import ConsumerRecord

    service = _service(PAUSED)
    _paused(service)
    _failing_steps(service)
    _failing_rebuilds(service, times=100)
    service.writer.producer = _Producer(refused=b"")  # type: ignore[assignment]
    service.commit_every_s = 0
    failures: list[BaseException] = []
    service.on_failure = failures.append
    tp = TopicPartition(service.topics.executions, 0)
    batch = [
        ConsumerRecord(tp.topic, 0, offset, 0, 0, b"e1", records.encode_event(e), None, 0, 0, [])
        for offset, e in ((5, ev.Resume("e1")), (6, ev.Kill("e1")))
    ]
    consumer = _IdleConsumer(service, {tp: batch})
    service._consumer = consumer  # type: ignore[assignment]
    with pytest.raises(RebuildFailed, match="execution e1 cannot be rebuilt") as raised:
        asyncio.run(service._run())
    assert failures == [raised.value] and "does not answer" in str(raised.value)
    assert "execution e1 cannot be rebuilt from its changelog records" in caplog.text
    assert [commit[tp].offset for commit in consumer.commits] == [6]  # never past the Kill


def test_an_execution_waiting_for_its_rebuild_leaves_with_its_partition_unparked() -> None:
    """Its entry and its held events go with the partition, and the partition is not parked:
    its parked state would lack the execution, so it comes back from its changelog."""
    service = _service(PAUSED)
    _paused(service)
    _failing_steps(service)
    _failing_rebuilds(service, times=100)
    service._apply(0, ev.Resume("e1"), Outbox(), ("executions", 5))
    service._apply(0, ev.Kill("e1"), Outbox(), ("executions", 6))
    service.recovery.offsets[0] = 3  # the changelog checkpoint it would be parked at
    asyncio.run(service.revoked({0}))
    assert "e1" not in service.rebuilds and "e1" not in service.held
    assert "e1" not in service.partition_of and "e1" not in service.mirror
    assert service.recovery.parked.take(0, time.monotonic()) is None


def test_a_refused_changelog_record_of_an_execution_waiting_for_its_rebuild_stops_it() -> None:
    """Its records in memory are then ahead of the changelog, and no state is left to fail:
    only a recovery from the changelog can take it back."""
    service = _service(PAUSED)
    out = _paused(service)
    dynamic = codec.header_key("e1", codec.DYNAMIC)
    (refused,) = [v for k, v, _ in out.changelog if k == dynamic]
    _failing_steps(service)
    _failing_rebuilds(service, times=100)
    service._apply(0, ev.Resume("e1"), out, ("executions", 5))
    service.writer.producer = _Producer(refused=refused)  # type: ignore[assignment]
    with pytest.raises(RebuildFailed, match="e1 cannot be rebuilt: its changelog record was"):
        asyncio.run(service._flush(out, carry=False))


def test_a_refused_job_of_an_execution_waiting_for_its_rebuild_fails_its_run_once_rebuilt() -> None:
    """The failed result that undoes the refused job is held behind the rebuild, not dropped:
    the task run would wait for ever for a result that can never come."""
    service = _service(SLEEPY)
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("j1", "test.faults", "sleepy"), out, ("executions", 0))
    (job,) = [v for t, _, v, _ in out.commands if t == service.topics.worker_tasks]
    assert job is not None
    real_step = _failing_steps(service)
    _failing_rebuilds(service, times=1)
    service._apply(0, ev.Kill("j1"), out, ("executions", 1))
    service.executor.step = real_step  # type: ignore[method-assign]
    service.writer.producer = _Producer(refused=job)  # type: ignore[assignment]
    asyncio.run(service._flush(out))
    assert "j1" in service.held and "j1" not in service.ended
    later = Outbox()
    asyncio.run(service.rebuilds.rebuild(later))
    service._release_held(service.clock(), later)
    assert "j1" in service.ended  # its task run failed: the errors branch ran, then it ended
    producer = _Producer(refused=b"")
    service.writer.producer = producer  # type: ignore[assignment]
    asyncio.run(service._flush(later))
    last = _updates(service, producer)[-1]
    assert last["terminal"] and last["execution"]["state"]["current"] == "FAILED"
    runs = {tr["taskId"]: tr["state"]["current"] for tr in last["execution"]["taskRunList"]}
    assert runs == {"nap": "FAILED", "said": "SUCCESS"}
