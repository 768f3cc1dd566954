"""The flows topic read whole, as a global table (Kafka Streams' ``GlobalKTable``, by hand).

Every process that needs flows (executor, worker, API, client) runs one :class:`FlowsTable`. It
reads every partition of the compacted ``flows`` topic with a group-less consumer, from the
beginning up to the high watermark taken from a Fetch (``end_offsets()`` is wrong on the embedded
broker, docs/brokers.md), sets :attr:`FlowsTable.loaded`, then keeps following the topic in a
background task, so a flow deployed anywhere reaches every process within one fetch wait.

Records, keyed so that a compacted topic keeps everything a reader needs:

- ``namespace/id/revision`` -> ``{"source": <yaml>, "revision": int}``: one record per revision,
  never cleared, so executions and worker jobs that name an older revision still resolve after
  compaction (a single ``namespace/id`` key would keep only the newest revision);
- ``namespace/id`` -> ``{"revision": int, "deleted": bool}``: the flow's head, rewritten by every
  deploy and by a delete.

Each revision is parsed with :func:`parse_flow` and stored in the :class:`FlowRegistry` (which
keeps every revision). A record that does not parse is logged (naming flow and revision) and
skipped: one bad record never stops a process.

Deletion: ``FlowRegistry`` has no way to forget a flow, so the head's ``deleted`` flag is tracked
here (:meth:`FlowsTable.latest` answers ``None`` for a deleted flow, :meth:`FlowsTable.flows`
leaves it out); the registry keeps its revisions, so executions in flight finish, and a later
deploy of the same id continues the revision numbering instead of reusing revision 1.

Revisions are assigned by the publisher (:meth:`FlowsTable.publish`): the newest revision plus
one, or the newest revision itself when the source is unchanged. Before choosing, the publisher
reads the topic up to its current high watermark, so a revision deployed by another process
just before counts. Publishes in one process are serialised; two processes publishing the same
flow at the same instant may still both pick the same number, and then the later record (the
flows topic has one partition, so every reader sees the same order) wins in every table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import Flow, parse_flow
from kestream.runtime import records
from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.compacted import assign_from_start, read_to_end
from kestream.runtime.context import BrokerContext
from kestream.runtime.fetch_pacing import reader_wait_ms
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.tansu_compat import fetch_highwaters

log = logging.getLogger("kestream.flows")

FlowListener = Callable[[Flow], None]

#: How long :meth:`FlowsTable.publish` waits for the table to read its own record back.
PUBLISH_READ_BACK_S = 30.0
#: How long to wait for a topic to appear in the broker's metadata.
_FETCH_TIMEOUT_MS = 200
_RETRY_BACKOFF_S = 0.5


def flow_key(namespace: str, flow_id: str, revision: int | None = None) -> str:
    """The flows topic's record key: a revision's, or (without one) the flow's head."""
    head = f"{namespace}/{flow_id}"
    return head if revision is None else f"{head}/{revision}"


def head_value(revision: int, *, deleted: bool) -> bytes:
    """The flow's head record: its newest revision, and whether it is deleted."""
    return records.dumps({"revision": revision, "deleted": deleted})


def flow_value(source: str, revision: int) -> bytes:
    """The flows topic's record value."""
    return records.dumps({"source": source, "revision": revision})


class FlowsTable:
    """All flows, every revision, kept in ``registry`` and followed live from the flows topic."""

    def __init__(self, ctx: BrokerContext, registry: FlowRegistry) -> None:
        self.ctx = ctx
        self.registry = registry
        #: Set once the topic has been read up to the high watermark found at start.
        self.loaded = asyncio.Event()
        self._listeners: list[FlowListener] = []
        self._deleted: set[tuple[str, str]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        #: Next offset to read, per partition of the flows topic (what the table has seen).
        self._positions: dict[TopicPartition, int] = {}
        self._progress = asyncio.Condition()
        self._publish_lock = asyncio.Lock()
        self._own_producer: AIOKafkaProducer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the whole topic (then :attr:`loaded` is set) and keep following it."""
        settings, ctx = self.ctx.settings, self.ctx
        consumer = make_consumer(settings, ctx.bootstrap, ctx.kind, group_id=None)
        await consumer.start()
        self._consumer = consumer
        try:
            ends = await assign_from_start(consumer, ctx.topics.flows)
            await read_to_end(consumer, ends, self._apply)
            self._positions = {tp: await consumer.position(tp) for tp in ends}
        except BaseException:
            await self._close_clients()
            raise
        self.loaded.set()
        log.info("flows table loaded: %d flows", len(self.flows()))
        self._task = asyncio.create_task(self._follow(), name="flows-table")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._close_clients()

    async def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        producer, self._own_producer = self._own_producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> FlowsTable:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- reading ---------------------------------------------------------------------------

    def add_listener(self, callback: FlowListener) -> None:
        """Call ``callback(flow)`` after each flow revision the table stores (new or changed)."""
        self._listeners.append(callback)

    def latest(self, namespace: str, flow_id: str) -> Flow | None:
        """The newest revision of a flow, or ``None`` if it is unknown or deleted."""
        if (namespace, flow_id) in self._deleted:
            return None
        return self.registry.get(namespace, flow_id)

    def get(self, namespace: str, flow_id: str, revision: int | None = None) -> Flow | None:
        """A named revision (deleted flows included: executions in flight still need them)."""
        if revision is None:
            return self.latest(namespace, flow_id)
        return self.registry.get(namespace, flow_id, revision)

    def is_deleted(self, namespace: str, flow_id: str) -> bool:
        return (namespace, flow_id) in self._deleted

    def flows(self) -> list[Flow]:
        """The newest revision of every flow that is not deleted."""
        return [f for f in self.registry.all() if (f.namespace, f.id) not in self._deleted]

    async def _follow(self) -> None:
        while True:
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:  # transient broker trouble: keep following
                log.warning("flows table: fetch failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_BACKOFF_S)

    async def _poll(self) -> None:
        consumer = self._consumer
        assert consumer is not None, "FlowsTable is not started"
        # No timed work between reads: a paced consumer's wait ends with its records.
        batch = await consumer.getmany(timeout_ms=reader_wait_ms(consumer, _FETCH_TIMEOUT_MS))
        for recs in batch.values():
            for record in recs:
                self._apply(record)
        moved = False
        for tp in consumer.assignment():  # also past gaps (compaction) with no record returned
            position = await consumer.position(tp)
            moved = moved or position != self._positions.get(tp)
            self._positions[tp] = position
        if moved:
            async with self._progress:
                self._progress.notify_all()

    def _apply(self, record: ConsumerRecord[Any, Any]) -> None:
        key = record.key.decode("utf-8", "replace") if record.key is not None else ""
        if key.count("/") == 1:
            self._apply_head(key, record)
            return
        flow = self._decode(key, record)
        if flow is None:
            return
        known = self.registry.get(flow.namespace, flow.id, flow.revision)
        self.registry.put(flow)
        if known is None or known.source != flow.source:
            self._notify(flow)

    def _apply_head(self, key: str, record: ConsumerRecord[Any, Any]) -> None:
        namespace, _, flow_id = key.partition("/")
        try:
            head = records.loads(record.value) if record.value is not None else {}
        except records.RecordError as exc:
            log.warning(
                "flows table: skipping the head of %s (offset %d): %s", key, record.offset, exc
            )
            return
        if isinstance(head, dict) and head.get("deleted"):
            self._deleted.add((namespace, flow_id))
            log.info("flow %s.%s deleted", namespace, flow_id)
        else:
            self._deleted.discard((namespace, flow_id))

    def _decode(self, key: str, record: ConsumerRecord[Any, Any]) -> Flow | None:
        """The record's flow with its revision, or ``None`` (logged) when it cannot be used."""
        revision: Any = None
        try:
            body = records.loads(record.value)
            revision = body.get("revision") if isinstance(body, dict) else None
            if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
                raise ValueError(f"bad revision {revision!r}")
            source = body.get("source")
            if not isinstance(source, str):
                raise ValueError("no YAML source")
            flow = parse_flow(source, source_name=key)
            if flow_key(flow.namespace, flow.id, revision) != key:
                raise ValueError(f"the YAML names {flow.namespace}.{flow.id} revision {revision}")
        except Exception as exc:  # never fatal: one bad record must not stop a process
            log.warning(
                "flows table: skipping flow %s revision %s (offset %d): %s",
                key or "<no key>",
                revision,
                record.offset,
                exc,
            )
            return None
        return flow.model_copy(update={"revision": revision})

    def _notify(self, flow: Flow) -> None:
        for callback in list(self._listeners):
            try:
                callback(flow)
            except Exception:
                log.exception("flows table listener %r failed", callback)

    # -- writing ---------------------------------------------------------------------------

    async def publish(self, flow_yaml: str, producer: AIOKafkaProducer | None = None) -> Flow:
        """Validate and deploy a flow; returns it with its revision once this table has it.

        Raises :class:`~kestream.models.validation.FlowValidationError` listing every problem.
        An unchanged source keeps its revision and writes nothing.
        """
        flow = parse_flow(flow_yaml)
        async with self._publish_lock:
            await self.catch_up()  # revisions deployed elsewhere count too
            namespace, flow_id = flow.namespace, flow.id
            latest = self.registry.get(namespace, flow_id)
            deleted = (namespace, flow_id) in self._deleted
            if latest is not None and latest.source == flow_yaml and not deleted:
                return latest
            revision = (latest.revision or 0) + 1 if latest is not None else 1
            await self._write(
                flow_key(namespace, flow_id, revision), flow_value(flow_yaml, revision), producer
            )
            await self._write(
                flow_key(namespace, flow_id), head_value(revision, deleted=False), producer
            )
        stored = self.registry.get(namespace, flow_id, revision)
        return stored if stored is not None else flow.model_copy(update={"revision": revision})

    async def delete(
        self, namespace: str, flow_id: str, producer: AIOKafkaProducer | None = None
    ) -> bool:
        """Write a tombstone for a flow; ``False`` if the table does not know it (or it is gone)."""
        async with self._publish_lock:
            await self.catch_up()
            latest = self.latest(namespace, flow_id)
            if latest is None:
                return False
            head = head_value(latest.revision or 1, deleted=True)
            await self._write(flow_key(namespace, flow_id), head, producer)
        return True

    async def _write(
        self, key: str, value: bytes | None, producer: AIOKafkaProducer | None
    ) -> None:
        """Produce one record and wait until this table has read it back."""
        if self._task is None:
            raise RuntimeError("the flows table is not started")
        if producer is None:
            producer = await self._producer()
        if value is not None:
            self.ctx.record_limit.check(value, "the flow's record")
        meta = await producer.send_and_wait(self.ctx.topics.flows, value, key=key.encode())
        tp = TopicPartition(meta.topic, meta.partition)
        await self.wait_for_offset(tp, meta.offset, PUBLISH_READ_BACK_S)

    async def catch_up(self, timeout: float = PUBLISH_READ_BACK_S) -> None:
        """Wait until the table has read everything written to the topic before this call."""
        if self._consumer is None or self._task is None:
            raise RuntimeError("the flows table is not started")
        highwaters = await fetch_highwaters(self._consumer, list(self._positions))
        for tp, highwater in highwaters.items():
            if highwater > 0:
                await self.wait_for_offset(tp, highwater - 1, timeout)

    async def wait_for_offset(self, tp: TopicPartition, offset: int, timeout: float) -> None:
        """Wait until the table has applied the record at ``offset`` of ``tp``."""

        def seen() -> bool:
            return self._positions.get(tp, 0) > offset

        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(seen), timeout)

    async def _producer(self) -> AIOKafkaProducer:
        if self._own_producer is None:
            producer = make_producer(self.ctx.settings, self.ctx.bootstrap, self.ctx.kind)
            await producer.start()
            self._own_producer = producer
        return self._own_producer
