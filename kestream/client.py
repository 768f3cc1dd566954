"""kestream's public Python API: deploy flows, start executions, wait for them, act on them.

```python
from kestream.client import Client

async with await Client.connect(bootstrap="127.0.0.1:9092") as client:
    await client.deploy(flow_yaml)
    execution_id = await client.submit("company.team", "hello", {"name": "world"})
    execution = await client.wait(execution_id, timeout=60)
```

A client holds one producer, a :class:`~kestream.runtime.flows_table.FlowsTable` (so it validates
inputs against the flow revision it submits) and one *updates follower*: a group-less consumer
of every partition of ``execution-updates``, positioned at the high watermark taken when the
client connected. ``wait`` and ``follow`` therefore see every update produced after
:meth:`Client.connect`, never the ones before; hundreds of concurrent waiters share that one
consumer (a dict of futures and queues by execution id).

Updates carry the execution without its task runs plus the task runs that changed; when the
execution stops (ends or pauses) the whole list (``full``). The client merges them per execution
(:func:`merge_update`). It keeps state only for executions it was asked about: submitted by this
client (kept, once ended, until someone waits on them), waited on or followed (until they end);
at most ``max_watches`` of them (:data:`MAX_WATCHES`), the oldest idle ones forgotten first. For
other executions it keeps only their last *stop* update (terminal or paused), for
:data:`RECENT_TTL_S` (at most ``recent_max``, :data:`RECENT_MAX`), so a ``wait`` that starts
after the execution ended still returns. An execution that ended before the client connected
is not known to it (the API's index answers that).

A follower that reads more slowly than updates come keeps only the last
:data:`FOLLOW_QUEUE_MAX` states (each is the whole execution, so the older ones are dropped and
the latest is never lost); the terminal one is always kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord, RecordMetadata

from kestream.executor import events as ev
from kestream.executor.context import input_variables
from kestream.executor.flow_registry import FlowRegistry
from kestream.kv.store import calls_kv, sync_current_store
from kestream.models.execution import Execution, LogEntry
from kestream.models.flow import Flow
from kestream.models.ids import new_id
from kestream.models.inputs import parse_inputs
from kestream.runtime import records
from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.compacted import read_partitions, topic_partitions
from kestream.runtime.context import BrokerContext
from kestream.runtime.context import connect as connect_broker
from kestream.runtime.event_offload import fit_event
from kestream.runtime.execution_updates import MergedExecution, merge_update
from kestream.runtime.fetch_pacing import reader_wait_ms
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.hand_over import HandOver
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.tansu_compat import fetch_highwaters
from kestream.secrets.encryption import scope_of
from kestream.settings import Settings, get_settings

__all__ = ["Client", "FollowQueue", "MergedExecution", "merge_update"]

log = logging.getLogger("kestream.client")

#: Executions the client follows at once (submitted, waited on, followed); the oldest idle ones
#: are forgotten first.
MAX_WATCHES = 50_000
#: Stop updates (terminal or paused) of executions nobody watched, kept for a late ``wait``.
RECENT_MAX = 2_000
RECENT_TTL_S = 300.0
#: States a slow follower may have pending; past it the oldest pending one is dropped.
FOLLOW_QUEUE_MAX = 8
_FETCH_TIMEOUT_MS = 200
_ERROR_BACKOFF_S = 0.5


# -- the client --------------------------------------------------------------------------------


class FollowQueue:
    """The states one follower has not read yet, at most ``maxsize`` of them.

    Each state is the whole execution, so when the follower falls behind the oldest pending
    state is dropped (counted in :attr:`dropped`): it still gets the latest one, and the memory
    a follower that never reads holds is ``maxsize`` states. Nothing is taken after a terminal
    state (the follow ends there), so the end is never pushed out.
    """

    def __init__(self, maxsize: int = FOLLOW_QUEUE_MAX) -> None:
        self._items: deque[tuple[Execution, bool]] = deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self._ended = False
        self._closed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, execution: Execution, terminal: bool) -> None:
        if self._ended or self._closed:
            return
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append((execution, terminal))
        self._ended = terminal
        self._ready.set()

    def close(self) -> None:
        """The client is closing: :meth:`get` answers ``None`` once the queue is empty."""
        self._closed = True
        self._ready.set()

    async def get(self) -> tuple[Execution, bool] | None:
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


@dataclass(slots=True, eq=False)
class _Watch:
    merged: MergedExecution | None = None
    #: Futures of ``wait`` calls, with their ``until_paused``.
    waiters: list[tuple[asyncio.Future[Execution], bool]] = field(default_factory=list)
    #: Queues of ``follow`` calls.
    queues: list[FollowQueue] = field(default_factory=list)
    #: Set by kill/resume from this client: the last stop no longer answers ``wait``.
    stale: bool = False
    #: Someone waited on or followed it. An execution this client submitted keeps its end
    #: state here until then (a ``wait`` long after ``submit`` still returns).
    claimed: bool = False

    @property
    def idle(self) -> bool:
        return not self.waiters and not self.queues


class Client:
    """A connection to a kestream installation (see the module docs).

    Build it with :meth:`connect`; use it as an async context manager or call :meth:`close`.
    """

    def __init__(
        self,
        ctx: BrokerContext,
        *,
        max_watches: int = MAX_WATCHES,
        recent_max: int = RECENT_MAX,
        follow_queue_max: int = FOLLOW_QUEUE_MAX,
    ) -> None:
        self.ctx = ctx
        self.max_watches = max_watches
        self.recent_max = recent_max
        self.follow_queue_max = follow_queue_max
        self.registry = FlowRegistry()
        self.flows = FlowsTable(ctx, self.registry)
        self._producer: AIOKafkaProducer | None = None
        #: Records go to the producer one caller at a time: submissions at a high rate (the
        #: API's, a load generator's) would otherwise wake each other at every drain of a full
        #: batch (:mod:`kestream.runtime.hand_over`).
        self._hand_over = HandOver()
        self._updates: AIOKafkaConsumer | None = None
        self._follower: asyncio.Task[None] | None = None
        self._watches: OrderedDict[str, _Watch] = OrderedDict()
        self._recent: OrderedDict[str, tuple[MergedExecution, float]] = OrderedDict()
        self._closed = False

    @classmethod
    async def connect(
        cls, settings: Settings | None = None, *, bootstrap: str | None = None
    ) -> Client:
        """Connect to the broker (``bootstrap``, else ``KESTREAM_BROKER``) and load the flows."""
        ctx = await connect_broker(settings or get_settings(), bootstrap)
        client = cls(ctx)
        try:
            await client.start()
        except BaseException:
            await client.close()
            raise
        return client

    async def start(self) -> None:
        ctx = self.ctx
        self._producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
        await self._producer.start()
        await self.flows.start()
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        self._updates = consumer
        await consumer.start()
        tps = await topic_partitions(consumer, ctx.topics.updates)
        consumer.assign(tps)
        for tp, highwater in (await fetch_highwaters(consumer, tps)).items():
            consumer.seek(tp, highwater)
        self._follower = asyncio.create_task(self._follow_updates(), name="client-updates")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._follower)
        for watch in self._watches.values():
            for future, _ in watch.waiters:
                if not future.done():
                    future.set_exception(RuntimeError("the kestream client was closed"))
            for queue in watch.queues:
                queue.close()
        self._watches.clear()
        if self._updates is not None:
            await self._updates.stop()
        await self.flows.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- flows and executions ----------------------------------------------------------------

    async def deploy(self, flow_yaml: str) -> Flow:
        """Validate and publish a flow; returns it with its revision (unchanged source: same)."""
        return await self.flows.publish(flow_yaml, self._require_producer())

    async def submit(
        self,
        namespace: str,
        flow_id: str,
        inputs: dict[str, Any] | None = None,
        *,
        labels: dict[str, Any] | None = None,
        validate_inputs: bool = True,
        execution_id: str | None = None,
    ) -> str:
        """Start an execution of the flow's newest revision; returns its id.

        Inputs are checked here (raises :class:`~kestream.models.inputs.InputValidationError`
        naming every bad input), so the executor receives typed values. Raises
        :class:`LookupError` for a flow this client's flows table does not have.
        """
        flow = self.flows.latest(namespace, flow_id)
        if flow is None:
            raise LookupError(f"Unknown flow '{namespace}.{flow_id}': deploy it first")
        given: dict[str, Any] = dict(inputs or {})
        if validate_inputs:
            if calls_kv(flow.source):
                await sync_current_store()
            scope, variables = scope_of(namespace, flow_id), input_variables(flow)
            given = parse_inputs(flow.inputs, given, scope=scope, variables=variables)
        execution_id = execution_id or new_id()
        created = ev.ExecutionCreated(
            execution_id=execution_id,
            namespace=namespace,
            flow_id=flow_id,
            revision=flow.revision,
            inputs=given,
            validate_inputs=False,
            labels={str(k): str(v) for k, v in (labels or {}).items()},
        )
        self._watch(execution_id)  # interest before the first update can exist
        await self.send(created)
        return execution_id

    async def kill(self, execution_id: str, *, attempt: int | None = None) -> None:
        """Kill an execution. ``attempt``: the execution attempt seen by the caller (its
        ``metadata.attemptNumber``), so that this kill, replayed after a restart, leaves the
        restarted attempt alone; None kills whatever attempt runs."""
        await self._act(ev.Kill(execution_id, attempt))

    async def resume(
        self,
        execution_id: str,
        inputs: dict[str, Any] | None = None,
        *,
        task_run_id: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Resume the paused task runs of an execution, or only ``task_run_id``: naming the run
        makes a repeated resume harmless (it cannot resume the next Pause). ``attempt``: as
        :meth:`kill`'s."""
        await self._act(ev.Resume(execution_id, inputs, task_run_id, attempt))

    async def _act(self, event: ev.Event) -> None:
        watch = self._watch(event.execution_id)
        watch.claimed = True  # acted on: no longer just submitted
        watch.stale = True  # the next wait waits for what this changes
        await self.send(event)

    async def send(self, event: ev.Event) -> RecordMetadata:
        """Produce one event to the executions topic, keyed by its execution id; where the
        broker put it (what the API's durable acknowledgement waits for, :mod:`.mirror_ack`).

        Raises :class:`~kestream.runtime.record_limit.RecordTooLarge` (the API's 413) for an
        event larger than the record limit, before anything is produced; for a creation, the
        limit less the room its updates need for task runs (every one repeats its inputs,
        trigger and labels: :meth:`~kestream.runtime.record_limit.RecordLimit.check_header`).
        A replay's record also carries the replayed execution's JSON, which travels only in it:
        the whole record is held to the record limit, its creation part to the header's.
        Past ``KESTREAM_OUTPUT_INLINE_MAX_BYTES``, a restart's or replay's snapshot and the
        largest typed inputs are stored and referenced first (:mod:`.runtime.event_offload`).
        """
        key = event.execution_id.encode()
        topic = self.ctx.topics.executions
        value = records.encode_event(event)
        limit = self.ctx.record_limit
        threshold = self.ctx.settings.output_inline_max_bytes
        if 0 < threshold < len(value):  # large snapshots and inputs go to the storage
            event, value = await asyncio.to_thread(fit_event, event, value, threshold)
        if isinstance(event, ev.ExecutionCreated):
            header = value
            if event.replay is not None:
                limit.check(value, "the replay's record (the replayed execution's JSON)")
                header = records.encode_event(dataclasses.replace(event, replay=None))
            limit.check_header(header, "the execution's record (inputs, trigger and labels)")
        else:
            limit.check(value, "the request's record")
        sent: RecordMetadata = await self._hand_over.send_and_wait(
            self._require_producer(), (topic, value, key)
        )
        return sent

    async def send_records(
        self, topic: str, keyed: list[tuple[bytes, bytes]]
    ) -> list[RecordMetadata]:
        """Produce ``(key, value)`` records to one of kestream's topics and wait for every ack
        (the API's purge records, :mod:`kestream.api.purge`); their positions, in order."""
        sends = [(topic, value, key) for key, value in keyed]
        sent = await self._hand_over.send(self._require_producer(), sends)
        return list(await asyncio.gather(*sent))

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None or self._closed:
            raise RuntimeError("the kestream client is not connected")
        return self._producer

    # -- waiting and following --------------------------------------------------------------

    async def wait(
        self, execution_id: str, timeout: float | None = None, *, until_paused: bool = True
    ) -> Execution:
        """The execution at its first stop: an end state, or PAUSED (unless ``until_paused``
        is false). Raises :class:`TimeoutError` after ``timeout`` seconds."""
        watch = self._watch(execution_id)
        watch.claimed = True
        known = watch.merged
        if (
            known is not None
            and not watch.stale
            and (known.terminal or (until_paused and known.paused))
        ):
            self._release(execution_id, watch)
            return known.model()
        future: asyncio.Future[Execution] = asyncio.get_running_loop().create_future()
        entry = (future, until_paused)
        watch.waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if entry in watch.waiters:
                watch.waiters.remove(entry)
            self._release(execution_id, watch)

    async def follow(self, execution_id: str) -> AsyncIterator[Execution]:
        """Every update of the execution, merged, ending after the terminal one.

        Starts with what the client already knows of it, if anything.
        """
        watch = self._watch(execution_id)
        watch.claimed = True
        queue = FollowQueue(self.follow_queue_max)
        if watch.merged is not None:
            queue.put(watch.merged.model(), watch.merged.terminal and not watch.stale)
        watch.queues.append(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    raise RuntimeError("the kestream client was closed")
                execution, terminal = item
                yield execution
                if terminal:
                    return
        finally:
            if queue in watch.queues:
                watch.queues.remove(queue)
            self._release(execution_id, watch)

    def last_stop(self, execution_id: str) -> dict[str, Any] | None:
        """The execution JSON at the last stop (end or pause) this client saw, if it has it.

        The API answers with it when its index, which follows the same topic, lags behind. It
        is the updates' own JSON, merged (:meth:`MergedExecution.json`), not re-validated.
        """
        watch = self._watches.get(execution_id)
        merged = watch.merged if watch is not None else None
        if merged is None:
            recent = self._recent.get(execution_id)
            merged = recent[0] if recent is not None else None
        if merged is None or not merged.stopped:
            return None
        return merged.json()

    def seed(self, execution_id: str, execution: Mapping[str, Any], *, terminal: bool) -> None:
        """Tell the client what is already known of an execution (the API's index snapshot).

        A client only sees updates produced after it connected, and most updates carry only the
        task runs that changed; a follower of an execution that started earlier needs the rest.
        Task runs the client already has are newer than the snapshot's and are kept.
        """
        watch = self._watch(execution_id)
        snapshot = merge_update(None, {"execution": dict(execution), "full": True})
        snapshot.terminal = terminal
        known = watch.merged
        if known is None:
            watch.merged = snapshot
            return
        for run_id, run in snapshot.runs.items():
            known.runs.setdefault(run_id, run)

    def _watch(self, execution_id: str) -> _Watch:
        watch = self._watches.get(execution_id)
        if watch is not None:
            self._watches.move_to_end(execution_id)
            return watch
        watch = _Watch()
        recent = self._recent.pop(execution_id, None)
        if recent is not None:
            watch.merged = recent[0]
        self._watches[execution_id] = watch
        self._evict_watches()
        return watch

    def _release(self, execution_id: str, watch: _Watch) -> None:
        """Forget an ended execution nobody waits on any more (it stays in the recent cache)."""
        merged = watch.merged
        if watch.claimed and watch.idle and merged is not None and merged.terminal:
            if self._watches.get(execution_id) is watch:
                del self._watches[execution_id]
            self._remember(execution_id, merged)

    def _evict_watches(self) -> None:
        if len(self._watches) <= self.max_watches:
            return
        for execution_id in list(self._watches):
            if len(self._watches) <= self.max_watches:
                return
            if self._watches[execution_id].idle:
                del self._watches[execution_id]

    def _remember(self, execution_id: str, merged: MergedExecution) -> None:
        self._recent.pop(execution_id, None)
        now = time.monotonic()
        self._recent[execution_id] = (merged, now + RECENT_TTL_S)
        while self._recent and (
            len(self._recent) > self.recent_max or next(iter(self._recent.values()))[1] <= now
        ):
            self._recent.popitem(last=False)

    # -- the updates follower -----------------------------------------------------------------

    async def _follow_updates(self) -> None:
        consumer = self._updates
        assert consumer is not None
        while True:
            try:
                # No timed work between reads: a paced consumer's wait ends with its records.
                batch = await consumer.getmany(
                    timeout_ms=reader_wait_ms(consumer, _FETCH_TIMEOUT_MS)
                )
            except KafkaError as exc:
                log.warning("reading execution updates failed (%s); retrying", exc)
                await asyncio.sleep(_ERROR_BACKOFF_S)
                continue
            for recs in batch.values():
                for record in recs:
                    self._on_update(record)

    def _on_update(self, record: ConsumerRecord[Any, Any]) -> None:
        if record.key is None or record.value is None:
            return
        execution_id = record.key.decode("utf-8", "replace")
        try:
            update = records.loads(record.value)
            watch = self._watches.get(execution_id)
            if watch is None:
                if update.get("full"):  # a stop: keep it a while for a late wait()
                    self._remember(execution_id, merge_update(None, update))
                else:  # the next records of a stop that came in several
                    recent = self._recent.get(execution_id)
                    if recent is not None and not recent[0].complete:
                        merge_update(recent[0], update)
                return
            watch.merged = merge_update(watch.merged, update)
            watch.stale = False
            self._deliver(execution_id, watch)
        except Exception:  # one bad record must not stop the follower
            log.exception("cannot read the execution update at offset %d", record.offset)

    def _deliver(self, execution_id: str, watch: _Watch) -> None:
        merged = watch.merged
        assert merged is not None
        model: Execution | None = None
        if watch.queues and merged.complete:  # followers see whole updates, not chunks
            model = merged.model()
            for queue in watch.queues:
                queue.put(model, merged.terminal)
        if merged.stopped and watch.waiters:
            model = model or merged.model()
            keep: list[tuple[asyncio.Future[Execution], bool]] = []
            for future, until_paused in watch.waiters:
                if future.done():
                    continue
                if merged.terminal or until_paused:
                    future.set_result(model)
                else:
                    keep.append((future, until_paused))
            watch.waiters = keep
        self._release(execution_id, watch)

    # -- logs --------------------------------------------------------------------------------

    async def logs(self, execution_id: str) -> list[LogEntry]:
        """The execution's log lines written so far, oldest first.

        Reads the execution's partition of the logs topic from the beginning up to its high
        watermark: O(partition), fine for the CLI and tests; the API serves logs from its index.
        Lines written after an execution's update may lag it by one produce; read after ``wait``.
        """
        ctx = self.ctx
        key = execution_id.encode()
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        await consumer.start()
        try:
            partitions = [tp.partition for tp in await topic_partitions(consumer, ctx.topics.logs)]
            tp = TopicPartition(ctx.topics.logs, DefaultPartitioner()(key, partitions, partitions))
            entries: list[LogEntry] = []

            def keep(record: ConsumerRecord[Any, Any]) -> None:
                if record.key == key:
                    entries.extend(_log_entries(record))

            await read_partitions(consumer, [tp], keep)
        finally:
            await consumer.stop()
        entries.sort(key=lambda entry: entry.timestamp)  # stable: a task's lines keep their order
        return entries


def _log_entries(record: ConsumerRecord[Any, Any]) -> list[LogEntry]:
    try:
        body = records.loads(record.value)
        return [LogEntry.model_validate(line) for line in body]
    except Exception as exc:
        log.warning("skipping the unreadable log record at offset %d: %s", record.offset, exc)
        return []
