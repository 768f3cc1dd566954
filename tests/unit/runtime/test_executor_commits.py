"""The executor commits its input offsets at most every ``commit_every_s``, and at a revocation
and a stop: never past what it flushed, never past a held event. The processor runs here
without a broker: a consumer that hands out batches, a producer that acks everything."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from kestream.executor import events as ev
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.executor_outbox import Outbox
from kestream.runtime.executor_service import ExecutorService
from tests.unit.runtime.test_executor_faults import PAUSED, _Producer, _service


class _Consumer:
    """Hands out ``batches`` one per fetch, then stops the processor; records its commits.
    ``on_fetch`` runs before the fetch of the batch with that index (a rebalance, say)."""

    def __init__(self, service: ExecutorService, batches: list[dict[TopicPartition, list[Any]]]):
        self.service, self.batches = service, list(batches)
        self.commits: list[dict[TopicPartition, int]] = []
        self.fetches = 0
        self.on_fetch: dict[int, Any] = {}
        self.refuse_commits = False
        #: How many commits to refuse as a group that has moved on (an expulsion).
        self.expelled_commits = 0

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        if (hook := self.on_fetch.get(self.fetches)) is not None:
            await hook()
        self.fetches += 1
        if not self.batches:
            self.service._stopping = True
            return {}
        return self.batches.pop(0)

    async def commit(self, offsets: Any) -> None:
        if self.refuse_commits:
            raise RuntimeError("the group has moved on")
        if self.expelled_commits:
            self.expelled_commits -= 1
            raise CommitFailedError("the group has already rebalanced")
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})

    def highwater(self, tp: TopicPartition) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return set()


def _batch(
    service: ExecutorService, partition: int, offset: int, execution_id: str
) -> dict[TopicPartition, list[Any]]:
    tp = TopicPartition(service.topics.executions, partition)
    value = records.encode_event(ev.ExecutionCreated(execution_id, "test.faults", "paused"))
    rec = ConsumerRecord(tp.topic, partition, offset, 0, 0, b"", value, None, 0, 0, [])
    return {tp: [rec]}


def _run(service: ExecutorService, consumer: _Consumer) -> None:
    service._consumer = consumer  # type: ignore[assignment]
    service.writer.producer = _Producer(refused=b"")  # type: ignore[assignment]
    asyncio.run(service._loop())


def test_batches_within_the_interval_are_committed_once_at_the_stop() -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    tp0 = TopicPartition(service.topics.executions, 0)
    tp1 = TopicPartition(service.topics.executions, 1)
    batches = [_batch(service, 0, 5, "a"), _batch(service, 1, 9, "b"), _batch(service, 0, 6, "c")]
    consumer = _Consumer(service, batches)
    _run(service, consumer)
    assert {"a", "b", "c"} <= service.states.keys()  # all three stepped
    assert consumer.commits == [{tp0: 7, tp1: 10}]  # one commit, after each partition's last


def test_with_no_interval_every_batch_is_committed() -> None:
    service = _service(PAUSED)
    service.commit_every_s = 0.0
    tp0 = TopicPartition(service.topics.executions, 0)
    consumer = _Consumer(service, [_batch(service, 0, 5, "a"), _batch(service, 0, 6, "b")])
    _run(service, consumer)
    assert consumer.commits == [{tp0: 6}, {tp0: 7}]


def test_a_held_event_bounds_the_deferred_commit() -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    tp0 = TopicPartition(service.topics.executions, 0)
    unknown = records.encode_event(ev.ExecutionCreated("h", "test.faults", "not-deployed"))
    held = {tp0: [ConsumerRecord(tp0.topic, 0, 3, 0, 0, b"", unknown, None, 0, 0, [])]}
    consumer = _Consumer(service, [held, _batch(service, 0, 4, "a")])
    _run(service, consumer)
    assert "h" in service.held
    assert consumer.commits == [{tp0: 3}]  # a crash must replay the held creation


def test_a_revocation_commits_what_was_flushed_of_its_partitions() -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    tp0 = TopicPartition(service.topics.executions, 0)
    tp1 = TopicPartition(service.topics.executions, 1)
    batches = [_batch(service, 0, 5, "a"), _batch(service, 0, 6, "b"), _batch(service, 1, 8, "c")]
    consumer = _Consumer(service, batches)

    async def revoke_partition_0() -> None:
        await service.revoked({0})

    consumer.on_fetch[3] = revoke_partition_0
    _run(service, consumer)
    assert consumer.commits == [{tp0: 7}, {tp1: 9}]  # partition 0 as it left, 1 at the stop


def test_a_commit_refused_at_a_revocation_is_left_to_the_next_owner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    consumer = _Consumer(service, [_batch(service, 0, 5, "a")])

    async def revoke_all() -> None:
        consumer.refuse_commits = True
        await service.revoked({0, 1})
        consumer.refuse_commits = False

    consumer.on_fetch[1] = revoke_all
    with caplog.at_level(logging.WARNING, logger="kestream.executor"):
        _run(service, consumer)
    assert consumer.commits == []  # nothing left of partition 0 to commit at the stop
    assert "could not commit partitions [0, 1] at their revocation" in caplog.text
    assert service.owned == set()


REFUSED = "kestream_commit_failed_count_total"


def test_a_commit_the_group_refuses_is_a_rebalance_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An executor expelled after a stall (or whose commit meets a rebalance) learns it at its
    next commit: the processor goes on, logs it, counts it, and commits later."""
    service = _service(PAUSED)
    service.commit_every_s = 0.0
    tp0 = TopicPartition(service.topics.executions, 0)
    consumer = _Consumer(service, [_batch(service, 0, 5, "a"), _batch(service, 0, 6, "b")])
    consumer.expelled_commits = 1
    with caplog.at_level(logging.ERROR, logger="kestream.executor"):
        _run(service, consumer)
    assert service.failure is None and {"a", "b"} <= service.states.keys()
    assert consumer.commits == [{tp0: 7}]  # the next commit covers the refused one
    assert service.metrics.value(REFUSED, {"consumer": "executor"}) == 1.0
    assert "refused the offset commit of partitions [0]" in caplog.text


def test_the_revocation_after_a_refused_commit_commits_what_it_still_can() -> None:
    """The revocation that follows the refusal (aiokafka rejoins) may still commit in the
    group's current generation: the refused offsets were kept for it, then dropped."""
    service = _service(PAUSED)
    service.commit_every_s = 0.0
    tp0 = TopicPartition(service.topics.executions, 0)
    consumer = _Consumer(service, [_batch(service, 0, 5, "a")])
    consumer.expelled_commits = 1

    async def revoke_all() -> None:
        await service.revoked({0, 1})

    consumer.on_fetch[1] = revoke_all
    _run(service, consumer)
    assert consumer.commits == [{tp0: 6}]
    assert service.owned == set() and not service._uncommitted


# -- results handed over by the worker of this process (local_handoff) ------------------------


def _handed_result(service: ExecutorService, offset: int) -> TopicPartition:
    """A result the worker of this process handed over, acknowledged at ``offset``: stepped by
    the next cycle, after its fetched records; its broker copy is fetched in a later one."""
    service.local.enabled = True
    value = records.encode_event(ev.WorkerResult("a", "r", 1, StateType.SUCCESS))
    assert service.local.offer(0, offset, value)
    return TopicPartition(service.topics.results, 0)


def test_a_flush_failing_after_a_handed_step_leaves_the_copy_uncommitted() -> None:
    """A crash (here: the broker gone at the flush) between stepping a handed result and
    flushing it loses only memory: nothing of the cycle, the result's copy included, is
    committed, so the next owner steps the creation and the copy."""
    service = _service(PAUSED)
    service.commit_every_s = 0.0
    results = _handed_result(service, 17)
    consumer = _Consumer(service, [_batch(service, 0, 5, "a")])
    service._consumer = consumer  # type: ignore[assignment]
    service.writer.producer = _Producer(refused=b"", broken=True)  # type: ignore[assignment]
    with pytest.raises(KafkaConnectionError):
        asyncio.run(service._loop())
    assert consumer.commits == [] and not service.local._queued  # the result was stepped
    assert results not in service._take_offsets(None)


def test_a_refused_commit_after_a_skipped_copy_forgets_the_skip_with_the_partition() -> None:
    """The copy of a result stepped here is skipped, and its commit refused (the group moved
    on): the revocation commits what it still can, and forgets which copies were stepped, so
    the partition's next owner, this processor again included, steps the copy against the
    state it recovers (a no-op there)."""
    service = _service(PAUSED)
    service.commit_every_s = 0.0
    results = _handed_result(service, 17)
    copy = ConsumerRecord(results.topic, 0, 17, 0, 0, b"", b"", None, 0, 0, [])
    consumer = _Consumer(service, [_batch(service, 0, 5, "a"), {results: [copy]}])
    created = TopicPartition(service.topics.executions, 0)

    async def expelled_then_revoked() -> None:
        # the copy skipped, and both cycles' commits refused: kept for the revocation
        assert service._uncommitted == {created: 6, results: 18}
        await service.revoked({0, 1})

    consumer.expelled_commits = 2  # the first cycle's and the skip's
    consumer.on_fetch[2] = expelled_then_revoked
    _run(service, consumer)
    assert service.local.skipped == 1
    assert consumer.commits == [{created: 6, results: 18}]  # at the revocation
    assert not service.local.stepped_copy(0, 17) and service.owned == set()


# -- ended markers carried to the next write -------------------------------------------------

QUICK = """
id: quick
namespace: test.faults
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
"""


def _created(
    service: ExecutorService, offset: int, execution_id: str, flow: str
) -> ConsumerRecord[Any, Any]:
    value = records.encode_event(ev.ExecutionCreated(execution_id, "test.faults", flow))
    return ConsumerRecord(service.topics.executions, 0, offset, 0, 0, b"", value, None, 0, 0, [])


def _record_writes(service: ExecutorService, consumer: _Consumer) -> list[Any]:
    """What reaches the broker, in order: each produce call's ``(topic, key)`` list (one wait
    for acks each), and each commit."""
    writes: list[Any] = []
    produce = service.writer.produce

    async def recorded(recs: Any, refusals: Any = None) -> Any:
        if recs:
            writes.append([(topic, key) for topic, key, _, _ in recs])
        return await produce(recs, refusals)

    commit = consumer.commit

    async def committed(offsets: Any) -> None:
        writes.append(("commit", {tp.partition: meta.offset for tp, meta in offsets.items()}))
        await commit(offsets)

    service.writer.produce = recorded  # type: ignore[method-assign]
    consumer.commit = committed  # type: ignore[method-assign]
    return writes


def test_markers_of_one_step_executions_ride_with_the_next_write() -> None:
    service = _service(QUICK)
    service.commit_every_s = 3600.0
    service.writer.carry_s = 0.0  # every write takes what earlier ones carried
    tp = TopicPartition(service.topics.executions, 0)
    first, second = _created(service, 1, "a", "quick"), _created(service, 2, "b", "quick")
    consumer = _Consumer(service, [{tp: [first]}, {tp: [second]}])
    writes = _record_writes(service, consumer)
    _run(service, consumer)
    changelog = service.topics.changelog
    # batch 1: its commands alone (one wait for acks); batch 2: its commands, then a's marker
    # (one wait); the stop: b's marker, then the commit
    assert len(writes) == 4
    assert all(topic != changelog for topic, _ in writes[0])
    assert [key for _, key in writes[0]] == ["a"] * len(writes[0])
    assert writes[1][-1] == (changelog, "a!")
    assert all(topic != changelog and key == "b" for topic, key in writes[1][:-1])
    assert writes[2] == [(changelog, "b!")]
    assert writes[3] == ("commit", {0: 3})


def test_a_batch_with_other_changelog_records_writes_its_markers_in_their_order() -> None:
    service = _service(QUICK, PAUSED)
    service.commit_every_s = 3600.0
    tp = TopicPartition(service.topics.executions, 0)
    batch = {tp: [_created(service, 1, "a", "quick"), _created(service, 2, "p", "paused")]}
    consumer = _Consumer(service, [batch])
    writes = _record_writes(service, consumer)
    _run(service, consumer)
    changelog = [w for w in writes if w[0] != "commit" and w[0][0] == service.topics.changelog]
    (wave,) = changelog  # one changelog wave: the marker first, then the paused one's records
    assert wave[0] == (service.topics.changelog, "a!")
    assert [key for _, key in wave[1:]] and all(key.startswith("p") for _, key in wave[1:])
    assert writes[-1] == ("commit", {0: 3})


def test_a_revocation_writes_the_carried_markers_before_its_commit() -> None:
    service = _service(QUICK)
    service.commit_every_s = 3600.0
    tp = TopicPartition(service.topics.executions, 0)
    consumer = _Consumer(service, [{tp: [_created(service, 4, "a", "quick")]}])
    writes = _record_writes(service, consumer)

    carried: list[Any] = []

    async def revoke() -> None:
        carried.extend(key for _, key, _, _ in service.writer.carried)
        await service.revoked({0, 1})

    consumer.on_fetch[1] = revoke
    _run(service, consumer)
    assert carried == ["a!"]  # the marker waited for the next write ...
    assert writes[1:] == [[(service.topics.changelog, "a!")], ("commit", {0: 5})]  # ... this one
    assert not service.writer.carried


def test_each_cycles_changelog_rides_with_the_next_cycles_commands_in_one_produce() -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    service.writer.carry_s = 0.0  # every write takes what earlier ones carried
    consumer = _Consumer(service, [_batch(service, 0, 5, "a"), _batch(service, 0, 6, "b")])
    writes = _record_writes(service, consumer)
    _run(service, consumer)
    changelog = service.topics.changelog
    # batch 1: its commands alone; batch 2: its commands, then a's changelog (one produce, one
    # wait); the stop: b's changelog, then the commit
    first, second, last, commit = writes
    assert {key for _, key in first} == {"a"} and all(t != changelog for t, _ in first)
    split = next(i for i, (topic, _) in enumerate(second) if topic == changelog)
    assert {key for _, key in second[:split]} == {"b"}
    assert second[split:] == [(changelog, "a#")]  # a's whole state: one record
    assert last == [(changelog, "b#")]
    assert commit == ("commit", {0: 7})


def test_a_revocation_whose_commit_fails_drops_the_carried_records_and_parks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = _service(PAUSED)
    service.commit_every_s = 3600.0
    consumer = _Consumer(service, [_batch(service, 0, 5, "a")])
    carried: list[str] = []

    async def revoke() -> None:  # the broker is away when the revocation writes and commits
        carried.extend(key for _, key, _, _ in service.writer.carried)

        async def away(recs: Any, refusals: Any = None) -> Any:
            if recs:
                raise KafkaConnectionError("the broker is away")
            return []

        service.writer.produce = away  # type: ignore[method-assign]
        await service.revoked({0})

    consumer.on_fetch[1] = revoke
    with caplog.at_level(logging.WARNING, "kestream.executor"):
        _run(service, consumer)
    assert carried == ["a#"]
    assert "could not commit partitions [0]" in caplog.text
    # Written later, the record would land over the partition's next owner's records; and
    # the state held is ahead of the changelog, so a warm recovery from it would be wrong.
    assert not service.writer.carried and "a" not in service.states
    assert service.recovery.parked.take(0, 0.0) is None and consumer.commits == []


def test_a_large_batch_gives_the_event_loop_turns_while_it_is_stepped() -> None:
    """The roles of a shared process share one event loop, aiokafka's heartbeats included:
    a batch of thousands of records is stepped a few hundred at a time, other tasks running
    between (the batch still flushed and committed whole, after its last step)."""
    service = _service(PAUSED)
    service.commit_every_s = 0.0
    tp0 = TopicPartition(service.topics.executions, 0)
    recs = []
    for n in range(600):
        value = records.encode_event(ev.ExecutionCreated(f"x{n}", "test.faults", "paused"))
        recs.append(ConsumerRecord(tp0.topic, 0, n, 0, 0, b"", value, None, 0, 0, []))
    consumer = _Consumer(service, [{tp0: recs}])
    seen: list[int] = []  # executions stepped so far, each time another task ran

    async def scenario() -> None:
        async def other_role() -> None:
            while True:
                seen.append(len(service.states))
                await asyncio.sleep(0)

        other = asyncio.create_task(other_role())
        try:
            service._consumer = consumer
            service.writer.producer = _Producer(refused=b"")
            await service._loop()
        finally:
            other.cancel()

    asyncio.run(scenario())
    assert len(service.states) == 600
    assert {200, 400} <= set(seen)  # it ran in the middle of the batch
    assert consumer.commits == [{tp0: 600}]


# -- the changelog carried over several writes ---------------------------------------------------


def _w1_cycles(service: ExecutorService) -> list[Outbox]:
    """The outboxes of W1's three steps with tasks on workers, as the executor makes them: a
    job or an update with the execution's whole record, then its end (the whole record's
    tombstone and the ended marker)."""
    steps: list[list[tuple[str, bytes | None]]] = [
        [("a#", b"whole-1")],
        [("a#", b"whole-2")],
        [("a#", None), ("a!", b"ended")],
    ]
    cycles = []
    for step, changelog in enumerate(steps):
        out = Outbox()
        out.send(service.topics.updates, "a", f"update-{step}".encode())
        for key, value in changelog:
            out.changelog.append((key, value, 0))
        cycles.append(out)
    return cycles


def _writes(service: ExecutorService, outs: list[Any], times: list[float]) -> list[Any]:
    """Write ``outs`` one per write at the given clock times, then write what is left as a
    commit does; return what reached the broker, each produce's (topic, key, value)."""
    produced: list[Any] = []
    produce = service.writer.produce

    async def recorded(recs: Any, refusals: Any = None) -> Any:
        if recs:
            produced.append([(topic, key, value) for topic, key, value, _ in recs])
        return await produce(recs, refusals)

    now = [0.0]
    service.writer.produce = recorded  # type: ignore[method-assign]
    service.writer.producer = _Producer(refused=b"")  # type: ignore[assignment]
    service.writer.clock = lambda: now[0]

    async def run() -> None:
        for out, at in zip(outs, times, strict=True):
            now[0] = at
            await service.writer.write(out)
        await service.writer.write(Outbox(), carry=False)

    asyncio.run(run())
    return produced


def test_a_short_executions_changelog_of_several_writes_is_written_as_its_end() -> None:
    """W1's changelog records (tasks on workers): 4 written one write after their step, 2 when
    its steps fall within one carry (the tombstone and the marker; recovery reads the same)."""
    service = _service(QUICK)
    changelog = service.topics.changelog
    produced = _writes(service, _w1_cycles(service), [0.0, 0.1, 0.2])
    logged = [(key, value) for wave in produced for topic, key, value in wave if topic == changelog]
    assert logged == [("a#", None), ("a!", b"ended")]
    assert len(produced) == 4, "each write's commands in their produce, the carry with the last"
    service = _service(QUICK)
    service.writer.carry_s = 0.0
    produced = _writes(service, _w1_cycles(service), [0.0, 0.1, 0.2])
    logged = [key for wave in produced for topic, key, _ in wave if topic == changelog]
    assert logged == ["a#", "a#", "a#", "a!"], "without the carry: each step's records"


def test_records_carried_past_their_time_ride_with_the_next_commands() -> None:
    service = _service(QUICK)
    changelog = service.topics.changelog
    carry = service.writer.carry_s
    first, second, third = _w1_cycles(service)
    produced = _writes(service, [first, second, third], [0.0, carry, carry + 0.01])
    # the second write is due (its carry is as old as carry_s): the first step's whole record
    # goes with its commands; the second's and the end are coalesced into the end
    assert [(t, k) for t, k, _ in produced[1] if t == changelog] == [(changelog, "a#")]
    assert [v for t, k, v in produced[1] if t == changelog] == [b"whole-1"]
    assert [(k, v) for t, k, v in produced[3] if t == changelog] == [("a#", None), ("a!", b"ended")]


def test_a_write_without_commands_writes_what_is_carried() -> None:
    """An idle cycle (its fetch timed out) writes the carry at once, as before."""
    service = _service(QUICK)
    changelog = service.topics.changelog
    first, *_ = _w1_cycles(service)
    produced = _writes(service, [first, Outbox()], [0.0, 0.01])
    assert [(t, k) for t, k, _ in produced[1]] == [(changelog, "a#")]
    assert not service.writer.carried and len(produced) == 2


def test_dropping_the_carry_of_a_partition_keeps_the_others() -> None:
    service = _service(QUICK)
    writer = service.writer
    out = Outbox()
    out.send(service.topics.updates, "a", b"u")
    out.changelog.extend([("a#", b"x", 0), ("b#", b"y", 1)])
    writer.producer = _Producer(refused=b"")  # type: ignore[assignment]
    asyncio.run(writer.write(out))
    assert [key for _, key, _, _ in writer.carried] == ["a#", "b#"]
    assert writer.drop_carried({0})
    assert [key for _, key, _, _ in writer.carried] == ["b#"]
    assert writer.drop_carried({1}) and writer._carried_for(10.0) == 0.0


def _step(service: ExecutorService, execution_id: str, topic: str | None) -> Outbox:
    """A step's outbox: an update, a command to ``topic`` if any, the whole record."""
    out = Outbox()
    out.send(service.topics.updates, execution_id, b"update")
    if topic is not None:
        out.send(topic, execution_id, b"command")
    out.changelog.append((f"{execution_id}#", b"whole", 0))
    return out


@pytest.mark.parametrize("acting", ["jobs", "group jobs", "executions"])
def test_the_changelog_of_a_step_that_sent_jobs_goes_with_the_next_write(acting: str) -> None:
    """A replay sends a step's jobs (or new executions) again while its changelog is not
    written: such a step's changelog is carried one write only, so a kill -9 re-runs the jobs
    of the last cycle alone; steps with updates only are still carried."""
    service = _service(QUICK)
    topics, changelog = service.topics, service.topics.changelog
    topic = {
        "jobs": topics.worker_tasks,
        "group jobs": topics.group_tasks("gpu"),
        "executions": topics.executions,
    }[acting]
    steps = [_step(service, "a", topic), _step(service, "b", None), _step(service, "c", None)]
    produced = _writes(service, steps, [0.0, 0.01, 0.02])
    logged = [[k for t, k, _ in wave if t == changelog] for wave in produced]
    assert logged == [[], ["a#"], [], ["b#", "c#"]]


def test_carried_records_are_written_changelog_first_then_the_other_tables() -> None:
    """The carry's order across topics is always the same (each topic's own kept), whether or
    not coalescing dropped anything."""
    service = _service(QUICK)
    table = service.topics.admission_changelog
    steps = []
    for execution_id in ("a", "b"):
        out = _step(service, execution_id, None)
        out.tables.append((table, f"slot-{execution_id}", b"slot", 0))
        steps.append(out)
    produced = _writes(service, steps, [0.0, 0.01])
    assert [k for _, k, _ in produced[-1]] == ["a#", "b#", "slot-a", "slot-b"]
