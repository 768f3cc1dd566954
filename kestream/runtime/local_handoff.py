"""Records handed between the roles of one process, beside their broker copies.

``kestream standalone`` (``kestream roles executor,worker,...``) hosts the executor and the
worker in one process. A runnable task then costs four broker hops on the way there and back
(job produced, job fetched, result produced, result fetched), each a fetch wait on Tansu. With
``KESTREAM_LOCAL_HANDOFF`` on (the default), the process's :class:`LocalHandoff` cuts the two
fetches out:

- **executor -> worker.** When the executor's flush has a ``run`` job acknowledged by the broker
  on a partition of the jobs topic the local worker owns now, the job is handed to that worker,
  which starts it at once (:meth:`~kestream.runtime.worker_service.WorkerService.accept_local`).
- **worker -> executor.** When a worker's result is acknowledged on a ``worker-results``
  partition the local executor owns now, the result's bytes are queued for it
  (:class:`LocalResults`) with the offset the broker gave them; its loop wakes from its fetch,
  and steps them in its next cycle after the fetched records. The broker copy stays the
  executor's input, committed as any record; when it is fetched, it is recognised by its
  offset and not decoded or stepped again (:meth:`LocalResults.stepped_copy`).

**Crash safety.** Three rules keep delivery as it is without the hand-off:

1. *Durable first.* A record is handed over only after the broker acknowledged it, so its
   broker copy exists whatever happens next. A process killed (``kill -9``) after a hand-off
   loses only work in memory: its successor reads the broker copies from the committed
   offsets, as it would have anyway.
2. *Offsets move only on the broker copy.* The hand-off carries no offset. The worker commits a
   job's offset only once that record has been fetched and its job's result acknowledged; the
   executor commits a result's offset only once it fetched that record, in a cycle after the
   one that stepped the handed result and flushed what it made (a handed result held behind
   its execution holds the commit at its copy's offset, as a fetched one does). A crash before
   either replays the copy.
3. *Every effect is deduplicated.* The worker keeps each job it was handed, per partition, by
   the offset of its broker copy until that copy is fetched (apart from its evicting memory of
   finished jobs, so a late copy is still known): the copy of a running job waits for it, the
   copy of a finished one is marked done without a second result, while a copy at another
   offset (the executor replayed its step after a crash and sent the job again) is answered
   again, as before. The broker copy of a handed-off result reaches an executor whose state
   already applied it: it is skipped by its (partition, offset); and were it stepped (fetched in
   the cycle before the handed result was taken, or after a rebalance), results are applied
   once per (task run, attempt) (:meth:`~kestream.executor.step.Step.current_attempt`), so the
   copy would change nothing.

**What can run twice.** A handed job's offset is committed only once its copy is fetched. So on
a rebalance (the partition revoked), a stop or a crash, the handed jobs of a partition whose
copies were not fetched yet run again on the partition's next reader: at-least-once, as for any
job whose offset was not committed. The worker bounds them: it hands over no more jobs of a
partition while :data:`~kestream.runtime.worker_service.HANDED_UNFETCHED_MAX` copies of it are
unfetched, and keeps slots for fetched jobs (half the free ones while a fetch is under way,
:data:`~kestream.runtime.worker_service.FETCH_RESERVE_SHARE` of all between fetches; hand-offs
never take the worker past ``max_in_flight``), so the fetch keeps up with the copies and with
the jobs of executors in other processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka.structs import ConsumerRecord

from kestream.executor import events as ev
from kestream.runtime import records
from kestream.runtime.executor_outbox import CommandRecord

if TYPE_CHECKING:
    from kestream.runtime.context import BrokerContext
    from kestream.runtime.executor_service import ExecutorService
    from kestream.runtime.worker_service import WorkerService

__all__ = ["LocalHandoff", "LocalResults", "connect", "disconnect", "handoff_for"]

log = logging.getLogger("kestream.handoff")

#: At most this many results wait for one executor; past it a result is left to its broker
#: copy, so results ending together cannot pile up in memory ahead of the executor's cycles.
QUEUED_MAX = 4096
#: At most this many handed results stepped whose broker copies are not fetched yet are
#: remembered per partition (the oldest forgotten first): a forgotten one's copy is stepped,
#: a no-op, instead of skipped.
STEPPED_MAX = 4096


class _Acked(Protocol):
    """What an acknowledgement says of where a record went (aiokafka's ``RecordMetadata``)."""

    topic: str
    partition: int
    offset: int


class LocalResults:
    """Results handed to one executor, to step in its next cycle; and the fetch that wakes when
    one arrives. Without hand-offs (:attr:`enabled` false) the fetch is the consumer's own."""

    def __init__(self, owns: Callable[[int], bool]) -> None:
        self.enabled = False
        #: Whether the executor owns an input partition now (and is not stopping).
        self.owns = owns
        self._queued: list[tuple[int, int, bytes]] = []
        #: Per partition, the offsets of the broker copies of results stepped here, until each
        #: is fetched (insertion-ordered, about in offset order: :meth:`stepped_copy`).
        self._stepped: dict[int, dict[int, None]] = {}
        self._arrived = asyncio.Event()
        #: Counter: broker copies skipped (:meth:`stepped_copy`).
        self.skipped = 0
        #: The getmany a handed-over result cut short: its consumer, the generation it began
        #: in, and its task, awaited again by the next :meth:`fetch`.
        self._pending: tuple[Any, int, asyncio.Future[Any]] | None = None

    def offer(self, partition: int, offset: int, value: bytes) -> bool:
        """Queue a result acknowledged at ``offset`` of ``partition`` of the results topic, if
        the partition is owned."""
        if not self.enabled or len(self._queued) >= QUEUED_MAX or not self.owns(partition):
            return False
        self._queued.append((partition, offset, value))
        self._arrived.set()
        return True

    def __len__(self) -> int:
        return len(self._queued)

    def take(self, limit: int) -> Iterator[tuple[int, int, ev.Event]]:
        """The first ``limit`` queued results of partitions still owned, decoded, with their
        partition and offset, in arrival order (the rest stay queued, for the next cycle, which
        they end the fetch of). One that cannot be decoded is skipped: its broker copy is
        dead-lettered when it is fetched.

        The caller steps every result yielded, in the cycle whose flush writes what it made
        (or holds it behind its execution, with its copy's offset, which holds the commit):
        its broker copy, fetched in a later cycle, is then skipped (:meth:`stepped_copy`)."""
        queued, self._queued = self._queued[:limit], self._queued[limit:]
        if not self._queued:
            self._arrived.clear()
        for partition, offset, value in queued:
            if not self.owns(partition):
                continue  # revoked meanwhile: the partition's new owner steps the broker copy
            try:
                event = records.decode_event(value)
            except Exception:
                continue
            stepped = self._stepped.setdefault(partition, {})
            stepped[offset] = None
            if len(stepped) > STEPPED_MAX:
                del stepped[next(iter(stepped))]
            yield partition, offset, event

    def stepped_copy(self, partition: int, offset: int) -> bool:
        """Whether the record fetched at ``offset`` of ``partition`` of the results topic is the
        broker copy of a result stepped here already (:meth:`take`): then neither decoded nor
        stepped again. Copies arrive in offset order, so the entries left before it are of
        copies fetched before their result was taken (stepped then): they are forgotten."""
        stepped = self._stepped.get(partition)
        if not stepped:
            return False
        found = stepped.pop(offset, False) is None
        while stepped and (oldest := next(iter(stepped))) < offset:
            del stepped[oldest]
        self.skipped += found
        return found

    def forget(self, partitions: set[int]) -> None:
        """Drop what is known of partitions revoked: their copies are their next owner's."""
        for partition in partitions:
            self._stepped.pop(partition, None)

    async def fetch(
        self, consumer: Any, timeout_ms: int, max_records: int, generation: int
    ) -> tuple[int, dict[Any, Any]]:
        """``consumer.getmany``, ended early (returning nothing) when a result is handed over
        meanwhile; with the group generation (the caller's ``generation``) that getmany began
        in, since its records may have been fetched before a rebalance.

        A getmany cut short is never cancelled: aiokafka's ``fetch_context`` has no
        ``finally``, so a cancelled getmany would leave the subscription's fetch count up for
        good, and with it the consumer's max-poll-interval check off. It is kept and awaited
        again by the next fetch, its records (if any) returned then."""
        if not self.enabled and self._pending is None:
            return generation, dict(
                await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            )
        if self._pending is None or self._pending[0] is not consumer:
            if self._queued:
                timeout_ms = 0
            fetching = asyncio.ensure_future(
                consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            )
            self._pending = (consumer, generation, fetching)
        _, began, fetching = self._pending
        if not fetching.done() and not self._queued:
            arrived = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait({fetching, arrived}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrived.cancel()
        if not fetching.done():
            return generation, {}  # a result arrived: step it; the getmany goes on meanwhile
        self._pending = None
        return began, dict(fetching.result())

    def close(self) -> None:
        """Cancel the getmany kept under way (the consumer is stopping)."""
        if self._pending is not None:
            self._pending[2].cancel()
            self._pending = None


class LocalHandoff:
    """The roles of one process that take records from each other (see the module docs)."""

    def __init__(self) -> None:
        self.workers: list[WorkerService] = []
        self.executors: list[LocalResults] = []
        #: Counters: jobs and results handed over.
        self.jobs = 0
        self.results = 0

    def add_worker(self, worker: WorkerService) -> None:
        """Take the jobs acknowledged on partitions ``worker`` owns; give it the results."""
        worker.on_result = self.result_acked
        self.workers.append(worker)
        for results in self.executors:
            results.enabled = True

    def add_executor(self, executor: ExecutorService) -> None:
        """Give ``executor``'s acknowledged jobs to the workers; take the results of its
        partitions (its fetch races the hand-offs only once a worker shares the process)."""
        executor.writer.on_acked = self.job_acked
        executor.local.enabled = bool(self.workers)
        self.executors.append(executor.local)

    def remove(self, processor: Any) -> None:
        """Let a stopping executor or worker go: it takes and gives nothing more, and is no
        longer referenced (nor are its state tables)."""
        if processor in self.workers:
            self.workers.remove(processor)
            processor.on_result = None
        local = getattr(processor, "local", None)
        if local in self.executors:
            self.executors.remove(local)
            processor.writer.on_acked = None
            local.enabled = False
        for results in self.executors:
            results.enabled = bool(self.workers)

    def job_acked(self, rec: CommandRecord, acked: _Acked) -> None:
        """A record of the executor's flush was acknowledged: hand it to the local worker that
        owns its partition, if it is a job (the worker checks the kind)."""
        _, key, value, _ = rec
        if value is None or not any(acked.topic == worker.topic for worker in self.workers):
            return  # changelog, logs, results...: the cheap common case
        raw = key.encode()
        record: ConsumerRecord[Any, Any] = ConsumerRecord(
            acked.topic, acked.partition, acked.offset, 0, 0, raw, value, None, len(raw),
            len(value), [],
        )  # fmt: skip
        for worker in self.workers:
            try:
                taken = worker.accept_local(record)
            except Exception:  # never the flush's failure: the broker copy runs the job
                log.exception("handing job %s[%d]@%d over failed", *record[:3])
                continue
            if taken:
                self.jobs += 1
                return

    def result_acked(self, acked: _Acked, value: bytes) -> None:
        """A worker's result was acknowledged: queue it for the local executor owning its
        partition (results are keyed by execution id, as the executor's inputs are)."""
        for results in self.executors:
            if results.offer(acked.partition, acked.offset, value):
                self.results += 1
                return


_HANDOFFS: dict[tuple[str, str], LocalHandoff] = {}


def handoff_for(ctx: BrokerContext) -> LocalHandoff | None:
    """The hand-off shared by the roles of this process on ``ctx``'s broker and topics; None
    when ``KESTREAM_LOCAL_HANDOFF`` is off."""
    if not ctx.settings.local_handoff:
        return None
    key = (ctx.bootstrap, ctx.settings.topic_prefix)
    found = _HANDOFFS.get(key)
    if found is None:
        found = _HANDOFFS[key] = LocalHandoff()
    return found


def disconnect(processor: Any) -> None:
    """Take a stopping executor or worker out of its process's hand-off (a no-op if it is in
    none); a hand-off left with no role is dropped."""
    for key, handoff in list(_HANDOFFS.items()):
        handoff.remove(processor)
        if not handoff.workers and not handoff.executors:
            del _HANDOFFS[key]


def connect(ctx: BrokerContext, role: str, processor: Any) -> None:
    """Join a role's processor just started to its process's hand-off (if on): the executor's
    and the worker's; the other roles take no part."""
    handoff = handoff_for(ctx)
    if handoff is None:
        return
    if role == "executor":
        handoff.add_executor(processor)
    elif role == "worker":
        handoff.add_worker(processor)
