"""A worker partition handed over between two live workers, so that no attempt runs twice.

A rebalance revokes every partition of every worker (aiokafka's rebalance is eager) and the
group then hands them out again. Task runs still running at the revocation go on, and some end
before the new assignment arrives: their results go out (their effects are done), but their
offsets cannot be committed any more, and the offsets of jobs that ended earlier, behind one
still running, were not committed either. Where the partition comes back, the worker answers
its own copies from memory. Where it moves to another worker, that worker used to read it from
the committed offset and run those jobs a second time: on the embedded broker, whose revoke
grace is 0 and whose rebalances take seconds under load, the short worker-kill chaos test found
7 Sleeps with two effects.

The fix is a hand-over through the partition itself:

- The sticky assignor tells the new owner that the partition comes from a member still in the
  group (:func:`~.sticky_assignor.moved_from`); one whose previous owner left (killed,
  expelled) comes with nothing to wait for.
- The previous owner, at its own assignment, stops the partition's running jobs (unreported,
  as before), waits for them and for the results of those that ran to end
  (:data:`HANDOVER_JOBS_WAIT_S` at most), then appends a ``handover`` record to the partition:
  which offsets past the group's committed one it finished (:func:`done_ranges`), for the
  generation both were assigned in.
- The new owner starts no job of that partition until it reads that record, which comes after
  every job it fetched before it (it was appended after the assignment), or until
  :data:`HANDOVER_WAIT_S` has passed (the previous owner died on the way: its jobs then run
  again, as they did without a hand-over). Jobs at offsets the record names are done without
  running, and committed; the others start.
- A partition taken from a member that left is read to its end (as of the fetch) before its
  jobs start, and every hand-over found on the way is applied. On the embedded broker a
  rebalance can complete with a dead member still counted: a live worker then hands a partition
  over to the dead one, and the worker that gets the partition next, from nobody live, would
  otherwise run the jobs that hand-over names. It costs a fetch's round trip, once per
  partition gained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import TopicPartition

from kestream.runtime.record_values import RecordError
from kestream.runtime.worker_jobs import PartitionLog

__all__ = [
    "HANDOVER_JOBS_WAIT_S",
    "HANDOVER_WAIT_S",
    "AwaitedHandovers",
    "Handover",
    "decode_handover",
    "done_ranges",
    "encode_handover",
]

#: How long the previous owner waits for the partition's stopped jobs, and the results of those
#: that ran, to end before it writes the hand-over (a task in a thread cannot be stopped at once).
HANDOVER_JOBS_WAIT_S = 3.0
#: How long the new owner waits for the hand-over before it runs the partition's jobs anyway:
#: past the previous owner's own wait, with room for the write.
HANDOVER_WAIT_S = 10.0

#: An offset range, its start included and its end not.
Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Handover:
    """What a worker finished of a partition it lost to another member in ``generation``."""

    partition: int
    generation: int
    #: The member id of the worker that writes it (the previous owner).
    member: str
    #: The offsets it finished past the group's committed one, as sorted ranges.
    done: tuple[Range, ...]

    def covers(self, offset: int) -> bool:
        return any(start <= offset < end for start, end in self.done)


def encode_handover(handover: Handover) -> bytes:
    return orjson.dumps(
        {
            "type": "handover",
            "partition": handover.partition,
            "generation": handover.generation,
            "member": handover.member,
            "done": [list(r) for r in handover.done],
        }
    )


def decode_handover(body: dict[str, Any], partition: int) -> Handover:
    """A ``handover`` job record's body, read from ``partition``; :class:`RecordError` names
    what is wrong (one that names another partition than its own is refused: a hand-over is
    appended to the partition it is about)."""
    try:
        done = tuple((int(start), int(end)) for start, end in body["done"])
        handover = Handover(
            int(body["partition"]), int(body["generation"]), str(body["member"]), done
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"bad handover record: {type(exc).__name__}: {exc}") from None
    if handover.partition != partition:
        raise RecordError(
            f"a handover record of partition {handover.partition} read from partition {partition}"
        )
    return handover


def done_ranges(plog: PartitionLog) -> tuple[Range, ...]:
    """The offsets of ``plog`` whose work is done and that this worker may not have committed:
    from its last committed point (or its first fetch) up to the first record not done, then
    each later record done, and the jobs handed over in process that finished before their
    broker copies were fetched. A record leaves ``plog.pending`` only done (its commit point),
    so what lies before the first pending one is done, committed or not."""
    start = plog.committed if plog.committed is not None else plog.first
    ranges: list[Range] = []
    head = plog.pending[0].offset if plog.pending else plog.next_offset
    if start is not None and head is not None and head > start:
        ranges.append((start, head))
    done = {mark.offset for mark in plog.pending if mark.done}
    # Jobs handed over in process and finished, whose broker copies were not fetched yet.
    done.update(offset for offset, job in plog.handed.items() if job.finished)
    for offset in sorted(done):
        if ranges and ranges[-1][0] <= offset < ranges[-1][1]:
            continue
        if ranges and ranges[-1][1] == offset:
            ranges[-1] = (ranges[-1][0], offset + 1)
        else:
            ranges.append((offset, offset + 1))
    return tuple(ranges)


@dataclass(slots=True)
class _Awaited:
    #: The previous owner whose hand-over is awaited; ``None``: none, the partition is read to
    #: its end first.
    member: str | None
    generation: int
    #: When the wait ends; unset until a job is held for it (:meth:`AwaitedHandovers.clock`):
    #: a partition a full worker cannot fetch yet, or with no job yet, waits with no cost.
    deadline: float | None = None


class AwaitedHandovers:
    """The new owner's side: the partitions whose jobs wait, each until its deadline, for the
    hand-over of a live previous owner (:meth:`expect`), or, taken from a member that left, to
    have been read to their end (:meth:`read_to_end`): a hand-over written earlier, for a
    member that died before reading it, is then found before any of the jobs it names runs."""

    def __init__(self, wait_s: float = HANDOVER_WAIT_S) -> None:
        self.wait_s = wait_s
        self._awaited: dict[TopicPartition, _Awaited] = {}
        #: A wait ended since the held jobs were last tried: the worker tries them now.
        self.released = False

    def expect(self, tp: TopicPartition, member: str, generation: int) -> None:
        self._awaited[tp] = _Awaited(member, generation)

    def read_to_end(self, tp: TopicPartition) -> None:
        self._awaited[tp] = _Awaited(None, -1)

    def clock(self, tp: TopicPartition) -> None:
        """A job of ``tp`` is held for its wait: the wait's time runs from its first one."""
        awaited = self._awaited.get(tp)
        if awaited is not None and awaited.deadline is None:
            awaited.deadline = time.monotonic() + self.wait_s

    def __contains__(self, tp: object) -> bool:
        return tp in self._awaited

    def __len__(self) -> int:
        return len(self._awaited)

    def take(self, topic: str, handover: Handover) -> bool:
        """Whether ``handover`` is the one awaited for its partition (then no longer awaited);
        one of another generation or member (late, or a stale claim's) is not, though what it
        names is still done (the caller applies it to the jobs it holds)."""
        tp = TopicPartition(topic, handover.partition)
        awaited = self._awaited.get(tp)
        if awaited is None or (awaited.member, awaited.generation) != (
            handover.member,
            handover.generation,
        ):
            return False
        del self._awaited[tp]
        return True

    def partitions(self) -> set[TopicPartition]:
        """Every partition that waits, for either."""
        return set(self._awaited)

    def reading(self) -> list[TopicPartition]:
        """The partitions waiting to be read to their end."""
        return [tp for tp, a in self._awaited.items() if a.member is None]

    def reached_end(self, tp: TopicPartition) -> bool:
        """``tp`` was read to its end: whether that was what it waited for (then it no longer
        waits)."""
        awaited = self._awaited.get(tp)
        if awaited is None or awaited.member is not None:
            return False
        del self._awaited[tp]
        return True

    def expired(self) -> list[tuple[TopicPartition, str | None]]:
        """The partitions whose wait has ended without what they waited for (no longer
        awaited), with the member they waited for (``None``: the end of the partition)."""
        now = time.monotonic()
        late = [
            (tp, a.member)
            for tp, a in self._awaited.items()
            if a.deadline is not None and now >= a.deadline
        ]
        for tp, _ in late:
            del self._awaited[tp]
        return late

    def keep_only(self, partitions: set[TopicPartition]) -> None:
        """Stop waiting for every partition but ``partitions`` (at an assignment: those that
        come back while they wait go on waiting for the same)."""
        for tp in [tp for tp in self._awaited if tp not in partitions]:
            del self._awaited[tp]
