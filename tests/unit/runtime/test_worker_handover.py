"""A partition that moves between two live workers is handed over (broker-free): the worker
that loses it tells the one that gets it which of its jobs it finished after the revocation,
whose offsets it could not commit, and the new owner runs only the others. Without it the new
owner read the partition from the committed offset and ran those jobs a second time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.models.flow import Flow
from kestream.models.state import StateType
from kestream.runtime.member_fence import MemberFence
from kestream.runtime.worker_handover import HANDOVER_WAIT_S, AwaitedHandovers, done_ranges
from kestream.runtime.worker_jobs import Job, PartitionLog
from kestream.runtime.worker_service import WorkerService
from tests.unit.runtime.executor_fakes import Coordinator
from tests.unit.runtime.worker_fakes import (
    JOBS,
    RecordingConsumer,
    RefusingProducer,
    close,
    job_record,
    make_worker,
)

FLOW = """
id: naps
namespace: test.worker
tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
"""


class _GroupConsumer(RecordingConsumer):
    def __init__(self, member_id: str) -> None:
        super().__init__()
        self._coordinator = Coordinator(member_id)
        self._coordinator.generation = 1  # the group's first
        #: The partition's end at the last fetch (its high watermark), and the position.
        self.end = 0
        self.next = 0

    def highwater(self, tp: TopicPartition) -> int:
        return self.end

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return -1  # (read_uncommitted)

    async def position(self, tp: TopicPartition) -> int:
        return self.next

    def assignment(self) -> set[TopicPartition]:
        return {JOBS}


async def _fetch(worker: WorkerService, *records: ConsumerRecord[Any, Any], end: int) -> None:
    """A fetch of ``records`` from :data:`JOBS`, whose end is then ``end``, as the worker's
    loop takes it."""
    consumer = worker._consumer
    assert isinstance(consumer, _GroupConsumer)
    consumer.end, consumer.next = end, records[-1].offset + 1
    worker._take_batch(cast(AIOKafkaConsumer, consumer), {JOBS: list(records)})
    await worker._note_read_to_end(cast(AIOKafkaConsumer, consumer))


def _handover(offset: int, generation: int, member: str, done: list[list[int]]) -> Any:
    value = orjson.dumps(
        {"type": "handover", "partition": 0, "generation": generation, "member": member,
         "done": done}
    )  # fmt: skip
    return ConsumerRecord(JOBS.topic, 0, offset, 0, 0, None, value, None, 0, len(value), [])


def _member(name: str) -> tuple[WorkerService, Flow, RefusingProducer, _GroupConsumer]:
    worker, flow = make_worker(FLOW, worker_revoke_grace_s=0.0)
    producer, consumer = RefusingProducer(), _GroupConsumer(name)
    worker._producer = producer
    worker._consumer = consumer
    worker.fence = MemberFence(30.0)
    worker.fence.watch(consumer)
    return worker, flow, producer, consumer


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Any, Any]]:
    old, new = _member("member-old"), _member("member-new")
    yield old, new
    for worker, *_ in (old, new):
        assert worker.fence is not None
        worker.fence.stop()
        await close(worker)


def _handover_record(producer: RefusingProducer, offset: int) -> ConsumerRecord[Any, Any]:
    """The hand-over the old owner produced, as the new owner fetches it at ``offset``."""
    (value,) = [v for topic, v in producer.acked if topic == JOBS.topic]
    return ConsumerRecord(JOBS.topic, 0, offset, 0, 0, None, value, None, 0, len(value), [])


async def _until(condition: Any) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


async def test_jobs_finished_after_the_revocation_are_not_run_again_by_the_next_owner(
    pair: tuple[Any, Any],
) -> None:
    (old, flow, old_producer, old_consumer), (new, _, new_producer, new_consumer) = pair
    old._on_assigned({JOBS})  # generation 1: the partition is the old worker's
    long = job_record(flow, "nap", {"duration": "PT30S"}, offset=5, run_id="long")
    short = job_record(flow, "nap", {"duration": "PT0.2S"}, offset=6, run_id="short")
    await _fetch(old, long, short, end=7)
    assert old.stats["started"] == 2

    await old._on_revoked({JOBS})  # a worker joins: no grace, both still run
    assert old_consumer.commits == [{JOBS: 5}]
    await _until(lambda: len(old_producer.results()) == 1)  # the short one ended in limbo
    (result,) = old_producer.results()
    assert result.task_run_id == "short" and result.state is StateType.SUCCESS

    old_consumer._coordinator.generation = new_consumer._coordinator.generation = 2
    new._assignor.handed_from = {JOBS: "member-old"}  # what the leader's assignment says
    new._assignor.handed_to = "member-new"
    old._on_assigned(set())  # the partition went to the new worker
    new._on_assigned({JOBS})
    await _fetch(new, long, short, end=7)  # the new owner reads from the committed offset
    assert new.stats["started"] == 0  # nothing runs before the hand-over, end or not

    await _until(lambda: old.stats["handed_over_partitions"] == 1)
    handover = orjson.loads(_handover_record(old_producer, 7).value)
    assert handover == {
        "type": "handover", "partition": 0, "generation": 2, "member": "member-old",
        "done": [[6, 7]],
    }  # fmt: skip
    assert old.stats["abandoned"] == 1  # the long one stopped there, unreported

    await _fetch(new, _handover_record(old_producer, 7), end=8)
    new._retry_held()
    assert new.stats["started"] == 1 and new.stats["handed_over_jobs"] == 1
    (running,) = new._jobs.values()
    assert running.key[1] == "long"  # the short one's effect is done: it is not run again
    assert new._partitions[JOBS].commit_point() == 5
    running.abandoned = True  # (end the test's job)
    assert new_producer.results() == []


async def test_without_a_hand_over_the_jobs_run_after_the_wait(pair: tuple[Any, Any]) -> None:
    (_, flow, _, _), (new, _, _, _) = pair
    new._awaited = AwaitedHandovers(wait_s=0.05)
    new._assignor.handed_from = {JOBS: "member-old"}
    new._assignor.handed_to = "member-new"
    new._on_assigned({JOBS})
    await _fetch(new, job_record(flow, "nap", {"duration": "PT30S"}, offset=5), end=6)
    assert new.stats["started"] == 0
    await asyncio.sleep(0.1)  # the old owner died before it handed the partition over
    new._end_overdue_waits()
    new._retry_held()
    assert new.stats["started"] == 1
    assert HANDOVER_WAIT_S > 3.0  # (the default is longer than the old owner's own wait)


async def test_a_hand_over_of_another_generation_is_not_the_one_awaited(
    pair: tuple[Any, Any],
) -> None:
    (_, flow, _, _), (new, _, _, new_consumer) = pair
    new_consumer._coordinator.generation = 3
    new._assignor.handed_from = {JOBS: "member-old"}
    new._assignor.handed_to = "member-new"
    new._on_assigned({JOBS})
    job = job_record(flow, "nap", {"duration": "PT30S"}, offset=5)
    await _fetch(new, job, _handover(6, 2, "member-old", [[3, 5]]), end=7)
    new._retry_held()
    assert new.stats["started"] == 0 and new.stats["handed_over_jobs"] == 0
    assert JOBS in new._awaited


async def test_a_partition_from_a_member_that_left_is_read_to_its_end_first(
    pair: tuple[Any, Any],
) -> None:
    (_, flow, _, _), (new, _, _, _) = pair
    new._assignor.handed_from = {}  # its previous owner left the group (killed)
    new._on_assigned({JOBS})
    await _fetch(new, job_record(flow, "nap", {"duration": "PT30S"}, offset=5), end=10)
    assert new.stats["started"] == 0  # four records more to read
    await _fetch(new, job_record(flow, "nap", {"duration": "PT30S"}, offset=9), end=10)
    assert new.stats["started"] == 2


async def test_an_earlier_hand_over_found_on_the_way_is_applied(pair: tuple[Any, Any]) -> None:
    """On the embedded broker a rebalance can complete with a dead member still counted: a live
    worker hands a partition over to it, and the next owner gets the partition from nobody
    live. The hand-over is in its backlog: the jobs it names do not run again."""
    (_, flow, _, _), (new, _, _, _) = pair
    new._on_assigned({JOBS})
    ended = job_record(flow, "nap", {"duration": "PT30S"}, offset=5, run_id="ended")
    stopped = job_record(flow, "nap", {"duration": "PT30S"}, offset=6, run_id="stopped")
    await _fetch(new, ended, stopped, _handover(7, 1, "member-dead", [[5, 6]]), end=8)
    assert new.stats["started"] == 1 and new.stats["handed_over_jobs"] == 1
    (running,) = new._jobs.values()
    assert running.key[1] == "stopped"
    running.abandoned = True


def test_done_ranges_cover_what_was_finished_past_the_committed_point() -> None:
    plog = PartitionLog()
    marks = {offset: plog.add(offset) for offset in range(10, 20)}
    assert done_ranges(plog) == ()  # fetched, none done
    for offset in (10, 11, 14, 15, 16, 19):
        marks[offset].done = True
    assert done_ranges(plog) == ((10, 12), (14, 17), (19, 20))
    assert plog.commit_point() == 12  # (leaves the pending records from 12 on)
    plog.committed = 12
    assert done_ranges(plog) == ((14, 17), (19, 20))
    plog.committed = 11  # committed before 11 was done: what left pending is still listed
    assert done_ranges(plog) == ((11, 12), (14, 17), (19, 20))
    handed = Job(("e", "r", 1), ("n", "f", 1), "t", {}, None, [], 0.0)  # type: ignore[arg-type]
    plog.handed[21] = handed  # handed over in process, its broker copy not fetched yet
    assert done_ranges(plog) == ((11, 12), (14, 17), (19, 20))
    handed.finished = True
    assert done_ranges(plog) == ((11, 12), (14, 17), (19, 20), (21, 22))
    assert done_ranges(PartitionLog()) == ()


async def test_a_hand_over_naming_another_partition_is_a_dead_letter(
    pair: tuple[Any, Any],
) -> None:
    (_, flow, _, _), (new, _, _, _) = pair
    new._assignor.handed_from = {JOBS: "member-old"}
    new._assignor.handed_to = "member-new"
    new._on_assigned({JOBS})
    other = orjson.dumps(
        {"type": "handover", "partition": 3, "generation": 1, "member": "member-old",
         "done": [[5, 6]]}
    )  # fmt: skip
    job = job_record(flow, "nap", {"duration": "PT30S"}, offset=5)
    record = ConsumerRecord(JOBS.topic, 0, 6, 0, 0, None, other, None, 0, len(other), [])
    await _fetch(new, job, record, end=7)
    assert new.stats["dead_lettered"] == 1 and new.stats["handed_over_jobs"] == 0
    assert JOBS in new._awaited  # still waiting for its own partition's


async def test_a_partition_back_while_it_waited_is_read_to_its_end_again(
    pair: tuple[Any, Any],
) -> None:
    (_, flow, _, _), (new, _, _, _) = pair
    new._on_assigned({JOBS})  # gained: read to its end first
    await new._on_revoked({JOBS})  # revoked before it was
    new._on_assigned({JOBS})  # and back: its backlog is read again from the committed offset
    assert new._awaited.reading() == [JOBS]
    await _fetch(new, job_record(flow, "nap", {"duration": "PT30S"}, offset=5), end=6)
    assert new.stats["started"] == 1
    assert not new._awaited


async def test_jobs_a_hand_over_named_stay_done_when_the_partition_is_read_again(
    pair: tuple[Any, Any],
) -> None:
    """The new owner keeps the partition through a later rebalance while a job it runs holds
    the commit point: the records after it are read again, and the finished ones the hand-over
    named do not run then either."""
    (_, flow, _, _), (new, _, _, _) = pair
    new._assignor.handed_from = {JOBS: "member-old"}
    new._assignor.handed_to = "member-new"
    new._on_assigned({JOBS})
    long = job_record(flow, "nap", {"duration": "PT30S"}, offset=5, run_id="long")
    ended = job_record(flow, "nap", {"duration": "PT30S"}, offset=6, run_id="ended")
    await _fetch(new, long, ended, _handover(7, 1, "member-old", [[6, 7]]), end=8)
    assert new.stats["started"] == 1
    await new._on_revoked({JOBS})  # a third worker joins; this one keeps the partition
    new._assignor.handed_from = {}
    new._on_assigned({JOBS})
    await _fetch(new, long, ended, _handover(7, 1, "member-old", [[6, 7]]), end=8)
    assert new.stats["started"] == 1  # neither the running one nor the finished one again
    (running,) = new._jobs.values()
    assert running.key[1] == "long"
    running.abandoned = True


async def test_a_copy_the_hand_over_does_not_name_still_runs(pair: tuple[Any, Any]) -> None:
    """A job's copy sent again by the executor (after a replay), read before the hand-over at an
    offset it does not name: the copy runs, so the executor's replayed step gets its answer."""
    (_, flow, _, _), (new, _, _, _) = pair
    new._assignor.handed_from = {JOBS: "member-old"}
    new._assignor.handed_to = "member-new"
    new._on_assigned({JOBS})
    first = job_record(flow, "nap", {"duration": "PT30S"}, offset=5, run_id="twice")
    again = job_record(flow, "nap", {"duration": "PT30S"}, offset=6, run_id="twice")
    await _fetch(new, first, again, _handover(7, 1, "member-old", [[5, 6]]), end=8)
    assert new.stats["started"] == 1 and new.stats["handed_over_jobs"] == 0
    (job,) = new._jobs.values()
    assert [mark.offset for mark in job.marks] == [6]
    job.abandoned = True


async def test_jobs_held_for_a_hand_over_take_no_slot(pair: tuple[Any, Any]) -> None:
    (_, flow, _, _), (new, _, _, _) = pair
    new.max_in_flight = 2
    new._assignor.handed_from = {JOBS: "member-old"}
    new._assignor.handed_to = "member-new"
    new._on_assigned({JOBS})
    jobs = [job_record(flow, "nap", {"duration": "PT30S"}, offset=o) for o in (5, 6, 7)]
    await _fetch(new, *jobs, end=8)
    assert new.in_flight == 3 and new._held_for_handover() == 2
    # A full worker would stop fetching, and never read the hand-over its jobs wait for.
    assert new.max_in_flight - new.in_flight + new._held_for_handover() > 0


async def test_a_partition_back_while_it_waits_for_a_hand_over_waits_for_the_same(
    pair: tuple[Any, Any],
) -> None:
    (_, flow, _, _), (new, _, _, _) = pair
    new._assignor.handed_from = {JOBS: "member-old"}
    new._assignor.handed_to = "member-new"
    new._on_assigned({JOBS})  # generation 1: waits for member-old's hand-over
    await new._on_revoked({JOBS})
    new._consumer._coordinator.generation = 2
    new._assignor.handed_from = {}  # generation 2: kept, from nobody
    new._on_assigned({JOBS})
    job = job_record(flow, "nap", {"duration": "PT30S"}, offset=5)
    await _fetch(new, job, end=6)  # read to its end: still waiting for the hand-over
    assert new.stats["started"] == 0
    await _fetch(new, _handover(6, 1, "member-old", [[3, 5]]), end=7)  # late, for generation 1
    new._retry_held()
    assert new.stats["started"] == 1 and not new._awaited
