"""The KV store on a broker: the compacted ``kv`` topic read whole, as a global table.

Every role that needs the store (executor for ``kv()``, worker for the KV tasks, API for its
routes) runs one :class:`KVTable` per process (:func:`acquire` shares it between the roles of a
standalone process). Records are keyed ``namespace/key``; the value is the entry
(:class:`~kestream.kv.values.KVEntry`) as JSON, a tombstone deletes. Expired entries stay in the
topic, hidden from reads, until ``PurgeKV`` writes their tombstones.

Read-your-writes, across processes. A read answers *as of the moment it began*: it asks the
table for a *sync* and waits (bounded by ``KESTREAM_KV_SYNC_TIMEOUT_S``) for one that started
after it. A sync takes the topic's end offset from the broker (:func:`fetch_highwaters`) and
reads up to it (:func:`read_to_end`): every record acknowledged before the sync began is then in
the table. A write returns after its record is acknowledged *and* a sync begun after that has
ended, so the writer's own table has it too. Hence a value written by one execution is read by
any execution (on any executor or worker) whose read begins after the write returned; a sync
costs two round trips to the broker (ListOffsets, Fetch), and several readers waiting at once
share one. Between syncs the table follows the topic by itself every :data:`FOLLOW_S`.

The table runs in a thread of its own, with its own event loop, consumer and producer, and
readers in any event loop await its syncs without blocking theirs. ``kv()`` renders inside
synchronous code: its caller awaits :meth:`KVTable.async_sync` first, then ``kv()`` reads the
table as it stands (:meth:`KVTable.peek`); after a sync that did not answer in time, ``peek``
raises until one does, so a ``kv()`` never reads a table that may miss an acknowledged write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from kestream.kv.store import KVUnavailable, install_store
from kestream.kv.values import KVEntry
from kestream.models.clock import utc_now
from kestream.runtime.compacted import assign_from_start, read_to_end, topic_partitions
from kestream.runtime.context import BrokerContext
from kestream.runtime.fetch_pacing import on_ring
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.tansu_compat import fetch_highwaters

__all__ = ["FOLLOW_S", "KVTable", "acquire", "kv_key", "release"]

log = logging.getLogger("kestream.kv")

#: How often the table syncs when nobody asks (a value written elsewhere shows up within this).
FOLLOW_S = 1.0
#: The same where a write rings this process's doorbell (the embedded broker): the ring starts
#: a sync at once, and this is the net for a ring lost.
RUNG_FOLLOW_S = 5.0
_RETRY_BACKOFF_S = 0.5
T = TypeVar("T")


def kv_key(namespace: str, key: str) -> bytes:
    """The KV topic's record key (neither part holds a ``/``: :class:`KVEntry` checks both)."""
    return f"{namespace}/{key}".encode()


class KVTable:
    """:class:`~kestream.kv.store.KVStore` over the KV topic (module docs)."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.timeout = ctx.settings.kv_sync_timeout_s
        self._entries: dict[tuple[str, str], KVEntry] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._follow_s = FOLLOW_S
        #: Readers waiting for a sync that begins after their time (monotonic seconds).
        self._waiters: list[tuple[float, concurrent.futures.Future[None]]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[TopicPartition] = []
        #: Syncs done (tests and the latency figure read it).
        self.syncs = 0
        #: Why the last sync a reader asked for failed (``peek`` raises it until one succeeds).
        self._failed: KVUnavailable | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the table's thread and return once the topic has been read whole."""
        loaded: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run_thread, args=(loaded,), name="kv-table", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(loaded)
        log.info("KV table loaded: %d entries", len(self._entries))

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stopping = True
        loop.call_soon_threadsafe(self._wake_up)
        await asyncio.to_thread(thread.join)
        self._thread = self._loop = None

    def _run_thread(self, loaded: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(loaded))
        finally:
            loop.close()

    async def _serve(self, loaded: concurrent.futures.Future[None]) -> None:
        self._wake = asyncio.Event()
        settings, ctx = self.ctx.settings, self.ctx
        try:
            consumer = make_consumer(settings, ctx.bootstrap, ctx.kind, group_id=None)
            producer = make_producer(settings, ctx.bootstrap, ctx.kind)
            await consumer.start()
            self._consumer = consumer
            await producer.start()
            self._producer = producer
            self._partitions = await topic_partitions(consumer, ctx.topics.kv)
            ends = await assign_from_start(consumer, ctx.topics.kv)
            if on_ring(consumer, self._wake_up):  # a write elsewhere: sync now, not by polling
                self._follow_s = RUNG_FOLLOW_S
            await read_to_end(consumer, ends, self._apply)
        except BaseException as exc:
            await self._close()
            loaded.set_exception(exc)
            return
        loaded.set_result(None)
        try:
            await self._follow()
        finally:
            await self._close()
            for _, waiter in self._waiters:
                waiter.set_exception(KVUnavailable("the KV table stopped"))

    async def _close(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        self._consumer = self._producer = None

    def _wake_up(self) -> None:
        assert self._wake is not None
        self._wake.set()

    async def _follow(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._sync()
            except KafkaError as exc:  # transient broker trouble: waiters wait, or time out
                log.warning("KV table: sync failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_BACKOFF_S)
                continue
            except Exception:  # never let the table's thread die: readers would all time out
                log.exception("KV table: sync failed; retrying")
                await asyncio.sleep(_RETRY_BACKOFF_S)
                continue
            self._release(started)
            if self._waiters:
                continue  # someone asked during that sync: their sync begins now
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._follow_s)

    async def _sync(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        ends = await fetch_highwaters(consumer, self._partitions)
        await read_to_end(consumer, ends, self._apply)
        self.syncs += 1

    def _release(self, started: float) -> None:
        still: list[tuple[float, concurrent.futures.Future[None]]] = []
        for asked, waiter in self._waiters:
            if asked <= started:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((asked, waiter))
        self._waiters = still

    def _apply(self, record: ConsumerRecord[Any, Any]) -> None:
        raw = record.key.decode("utf-8", "replace") if record.key is not None else ""
        namespace, _, key = raw.rpartition("/")  # a key never holds "/"; nor a namespace
        if record.value is None:
            self._entries.pop((namespace, key), None)
            return
        try:
            entry = KVEntry.model_validate_json(record.value)
        except ValueError as exc:  # one bad record never stops a process
            log.warning("KV table: skipping %s (offset %d): %s", raw, record.offset, exc)
            return
        self._entries[(entry.namespace, entry.key)] = entry

    # -- waiting for a sync ------------------------------------------------------------------

    def _ask(self) -> concurrent.futures.Future[None]:
        """A future done once a sync begun after now has ended."""
        loop = self._loop
        if loop is None or self._stopping:
            raise KVUnavailable("the KV table is not running")
        waiter: concurrent.futures.Future[None] = concurrent.futures.Future()
        asked = time.monotonic()

        def register() -> None:
            self._waiters.append((asked, waiter))
            self._wake_up()

        loop.call_soon_threadsafe(register)
        return waiter

    def _unavailable(self) -> KVUnavailable:
        return KVUnavailable(
            f"the KV store did not answer within {self.timeout:g}s "
            "(KESTREAM_KV_SYNC_TIMEOUT_S): is the broker reachable?"
        )

    async def async_sync(self) -> None:
        """Return once the table holds every write acknowledged before this call, without
        blocking the caller's event loop."""
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._ask()), self.timeout)
        except TimeoutError:
            self._failed = self._unavailable()
            raise self._failed from None
        except KVUnavailable as exc:
            self._failed = exc
            raise
        self._failed = None

    async def _on_table_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise KVUnavailable("the KV table is not running")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            raise self._unavailable() from None

    # -- KVStore -----------------------------------------------------------------------------

    def _live(self, namespace: str, key: str) -> KVEntry | None:
        entry = self._entries.get((namespace, key))
        return None if entry is None or entry.expired(utc_now()) else entry

    def peek(self, namespace: str, key: str) -> KVEntry | None:
        if self._failed is not None:
            raise self._failed
        if self._loop is None:
            raise KVUnavailable("the KV table is not running")
        return self._live(namespace, key)

    async def aget(self, namespace: str, key: str) -> KVEntry | None:
        await self.async_sync()
        return self._live(namespace, key)

    async def alist(self, namespace: str) -> list[KVEntry]:
        await self.async_sync()
        now = utc_now()
        return [
            entry
            for (ns, _), entry in sorted(self._entries.copy().items())
            if ns == namespace and not entry.expired(now)
        ]

    async def aall(self) -> list[KVEntry]:
        await self.async_sync()
        return [entry for _, entry in sorted(self._entries.copy().items())]

    async def aput(self, entry: KVEntry) -> None:
        value = entry.model_dump_json().encode()
        await self._on_table_loop(self._send(kv_key(entry.namespace, entry.key), value))
        await self.async_sync()

    async def adelete(self, namespace: str, key: str) -> None:
        await self.adelete_many([(namespace, key)])

    async def adelete_many(self, keys: Sequence[tuple[str, str]]) -> None:
        if not keys:
            return
        await self._on_table_loop(self._tombstones([kv_key(ns, key) for ns, key in keys]))
        await self.async_sync()

    async def _tombstones(self, keys: list[bytes]) -> None:
        """Every tombstone handed to the producer first (it batches them), then all awaited."""
        producer = self._producer
        if producer is None:
            raise KVUnavailable("the KV table is not running")
        sent = [await producer.send(self.ctx.topics.kv, None, key=key) for key in keys]
        await asyncio.gather(*sent)

    async def _send(self, key: bytes, value: bytes | None) -> None:
        producer = self._producer
        if producer is None:
            raise KVUnavailable("the KV table is not running")
        await producer.send_and_wait(self.ctx.topics.kv, value, key=key)


class _Shared:
    """The process's one table and how many roles use it."""

    starting: asyncio.Task[KVTable] | None = None
    users = 0


async def _start_shared(ctx: BrokerContext) -> KVTable:
    table = KVTable(ctx)
    await table.start()
    install_store(table)
    return table


async def acquire(ctx: BrokerContext) -> KVTable:
    """The process's table, started by the first role that asks (the roles of a standalone
    process share it) and installed as the process's KV store (:func:`install_store`)."""
    if _Shared.starting is None:
        _Shared.starting = asyncio.ensure_future(_start_shared(ctx))
    try:
        table = await asyncio.shield(_Shared.starting)
    except BaseException:
        _Shared.starting = None
        raise
    _Shared.users += 1
    return table


async def release() -> None:
    """One user less; the last one stops the table and uninstalls it."""
    _Shared.users = max(_Shared.users - 1, 0)
    starting = _Shared.starting
    if _Shared.users == 0 and starting is not None and starting.done():
        _Shared.starting = None
        install_store(None)
        if not starting.cancelled() and starting.exception() is None:
            await starting.result().stop()


class KVTablePart:
    """A role's use of the process's table, as one of its parts (stopping it releases it)."""

    def __init__(self, table: KVTable) -> None:
        self.table = table

    @classmethod
    async def start(cls, ctx: BrokerContext) -> KVTablePart:
        return cls(await acquire(ctx))

    async def stop(self) -> None:
        await release()
