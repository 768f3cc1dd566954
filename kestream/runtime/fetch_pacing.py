"""Adaptive fetch pacing: consumers stop fetching while nothing flows, and wake on a doorbell.

On the embedded broker (Tansu) a waiting Fetch is not woken by new data, so every consumer
fetches every ``fetch_max_wait_ms`` (10 ms) to see records promptly (``docs/brokers.md``). Idle,
that polling was the whole cost of an idle installation: about one core for the broker and a
third of one for the roles. A :class:`PacedConsumer` fetches like any aiokafka consumer while
records come; after a quiet period with none it pauses its partitions, which stops aiokafka's
background fetcher, and fetches again only when

- the :mod:`~kestream.runtime.doorbell` rings for one of its topics: a producer on this host
  had a record of that topic acknowledged (every client of a loopback broker is on this host);
- a probe is due (every ``probe_max`` seconds): the net for a ring lost or a producer that
  does not ring;
- its assignment changed (a rebalance may hand it partitions with records waiting), or its
  caller knows records are waiting (:meth:`PacedConsumer.wake`, used by table reads).

With the doorbell the quiet period is :data:`RUNG_QUIET_S` (a ring follows every record, so a
fetch that finds nothing after the last ring is the end of it); without one (a directory that
cannot be made private) it is ``KESTREAM_CONSUMER_IDLE_AFTER_MS`` and probes start at 250 ms,
doubling. A consumer whose caller stops calling ``getmany`` (a table read on demand) pauses too.

Pacing decides only *when* to fetch, never what: positions, commits and the group protocol
(heartbeats run in aiokafka's coordinator, not in the fetcher) are untouched, so a late wake-up
costs latency, never a record. ``getmany`` still returns within the caller's ``timeout_ms``, so
loops that do timed work between fetches (timers, retries, ticks) keep their rhythm.

Partitions the caller pauses itself (back-pressure) stay paused: the consumer tracks them apart
from its own idle pause. On Apache Kafka fetches wait for data, so pacing is off there
(:func:`pacing_for`): a consumer there costs one fetch per ``fetch_max_wait_ms`` (100 ms).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.runtime.doorbell import Bell, Doorbell, doorbell_dir
from kestream.settings import Settings

Batch = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


#: With a doorbell, a consumer stays awake this long after records or a ring: rings come after
#: the broker acknowledged the records (:class:`~kestream.runtime.doorbell.RingingProducer`),
#: so a fetch or two finds them; then it pauses until the next ring.
RUNG_QUIET_S = 0.02


@dataclass(frozen=True)
class Pacing:
    """When a consumer goes idle and how often an idle one looks anyway (seconds)."""

    #: Idle after this long without records or rings.
    quiet: float = 2.0
    #: Awake this long after its assignment changed (new partitions may hold records).
    settle: float = 1.0
    #: The first probe this long after going idle; each empty probe doubles the gap...
    probe_first: float = 0.25
    #: ...up to this.
    probe_max: float = 5.0
    #: A probe keeps fetching this long before pausing again.
    probe_window: float = 0.02
    #: Records in this many fetches in a row, each within ``stream_gap`` of the last: a
    #: stream, not a burst (the member heartbeats of one process come together)...
    stream_fetches: int = 4
    stream_gap: float = 0.1
    #: ...so the consumer stays awake this long after them, rather than pausing and being
    #: rung awake between every two batches.
    stream_quiet: float = 1.0


class FetchPacer:
    """The pacing decisions of one consumer, free of I/O (the clock is passed in).

    Active until :attr:`active_until`; every sign of traffic (records, a ring) pushes that a
    quiet period ahead. Idle, a probe is due at :attr:`next_probe`."""

    def __init__(self, pacing: Pacing, now: float) -> None:
        self.pacing = pacing
        self.active_until = now + pacing.quiet
        self.idle = False
        self.gap = pacing.probe_first
        self.next_probe = float("inf")
        self.probes = 0
        self.last_records = float("-inf")
        self.streak = 0

    def traffic(self, now: float, span: float | None = None) -> None:
        """Records came or a ring was heard: active (again) for a quiet period (or ``span``)."""
        span = self.pacing.quiet if span is None else span
        self.active_until = max(self.active_until, now + span)
        self.gap = self.pacing.probe_first
        self.idle = False

    def fetched(self, now: float, records: bool) -> bool:
        """After an active fetch; True when the consumer should go idle now."""
        if records:
            close = now - self.last_records < self.pacing.stream_gap
            self.streak = self.streak + 1 if close else 1
            self.last_records = now
            streaming = self.streak >= self.pacing.stream_fetches
            self.traffic(
                now, max(self.pacing.quiet, self.pacing.stream_quiet) if streaming else None
            )
            return False
        if self.idle or now < self.active_until:
            return False
        self.idle = True
        self.next_probe = now + self.gap
        return True

    def sleep_for(self, now: float, deadline: float) -> float:
        """How long an idle consumer waits before looking again (a ring may cut it short)."""
        return max(0.0, min(deadline, self.next_probe) - now)

    def wake_if_due(self, now: float) -> bool:
        """Idle: True (and active for a probe window) when the probe is due."""
        if not self.idle or now < self.next_probe:
            return False
        self.idle = False
        self.probes += 1
        self.active_until = now + self.pacing.probe_window
        self.gap = min(self.gap * 2, self.pacing.probe_max)
        return True


def pacing_for(settings: Settings, kind: str) -> Pacing | None:
    """The pacing of consumers of this broker: None (fetch as aiokafka does) on Kafka, whose
    fetches wait for data, or when ``KESTREAM_CONSUMER_IDLE_AFTER_MS`` is 0."""
    if kind != "tansu" or settings.consumer_idle_after_ms <= 0:
        return None
    probe_max = max(settings.consumer_idle_probe_max_ms, 1) / 1000
    return Pacing(
        quiet=settings.consumer_idle_after_ms / 1000,
        probe_first=min(Pacing.probe_first, probe_max),
        probe_max=probe_max,
    )


class PacedConsumer(AIOKafkaConsumer):
    """An :class:`aiokafka.AIOKafkaConsumer` that pauses its partitions while idle (module
    docs). Made by :func:`kestream.runtime.kafka.make_consumer` on the embedded broker."""

    def __init__(
        self,
        *topics: str,
        pacing: Pacing,
        doorbell: Path | None,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        super().__init__(*topics, **options)
        self.clock = clock
        self.pacer = FetchPacer(pacing, clock())
        self._doorbell_dir = doorbell
        self._doorbell: Doorbell | None = None
        self._topics: set[str] = set(topics)
        self._held_by_caller: set[TopicPartition] = set()
        #: The assignment paused for idleness, None while fetching.
        self._holding: frozenset[TopicPartition] | None = None
        self._woke_ms = 0
        self._rung = asyncio.Event()
        self._in_getmany = 0
        self._watch: asyncio.TimerHandle | None = None
        #: How often an idle consumer resumed fetching (a ring, a probe, a new assignment).
        self.wakes = 0
        #: Called on each ring for one of its topics, for a caller that reads on demand.
        self.on_ring: Callable[[], None] | None = None

    # -- what the caller sees ------------------------------------------------------------

    def subscribe(
        self, topics: Iterable[str] = (), pattern: str | None = None, listener: Any = None
    ) -> None:
        topics = tuple(topics)
        super().subscribe(topics, pattern=pattern, listener=listener)
        self._listen(topics)
        self._watch_idle()

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        super().assign(partitions)
        self._listen(tp.topic for tp in partitions)
        self._watch_idle()

    def pause(self, *partitions: TopicPartition) -> None:
        self._held_by_caller.update(partitions)
        super().pause(*partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._held_by_caller.difference_update(partitions)
        if self._holding is None:
            super().resume(*partitions)

    def paused(self) -> set[TopicPartition]:
        """The partitions the caller paused (the idle pause is the consumer's own)."""
        return self._held_by_caller & self.assignment()

    @property
    def resting(self) -> bool:
        """Whether the consumer has paused its partitions for idleness (not fetching)."""
        return self._holding is not None

    def wake(self) -> None:
        """Fetch again now: the caller knows records are waiting (a position behind its high
        watermark, say) and will ask for them."""
        self.pacer.traffic(self.clock(), self.pacer.pacing.settle)
        self._rung.set()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Batch:
        self._in_getmany += 1
        try:
            return await self._getmany(partitions, timeout_ms, max_records)
        finally:
            self._in_getmany -= 1
            self._watch_idle()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._doorbell is not None:
            self._doorbell.forget(self._ring)
            self._doorbell = None
        await super().stop()

    # -- fetching and idling ---------------------------------------------------------------

    async def _getmany(
        self, partitions: tuple[TopicPartition, ...], timeout_ms: int, max_records: int | None
    ) -> Batch:
        deadline = self.clock() + timeout_ms / 1000
        while True:
            if self._holding is not None:
                if self.pacer.idle and not await self._idle_until(deadline):
                    return {}
                self._release()
            now = self.clock()
            # Fetch no longer than the active window, so an empty probe pauses again promptly.
            until = min(deadline, max(self.pacer.active_until, now))
            batch: Batch = await super().getmany(
                *partitions, timeout_ms=math.ceil((until - now) * 1000), max_records=max_records
            )
            records = any(batch.values())
            self._settle(records)
            if records or self.clock() >= deadline:
                return batch

    def _settle(self, records: bool) -> None:
        """After a fetch (or none for a while): pause when the pacer says idle. A wake-up
        whose first fetch the broker has not answered yet waits for that answer first."""
        now = self.clock()
        if not records and now >= self.pacer.active_until and not self._answered():
            self.pacer.traffic(now, self.pacer.pacing.probe_window)
        if self.pacer.fetched(now, records):
            self._hold()

    def _answered(self) -> bool:
        fetching = self.assignment() - self._held_by_caller
        if not self._woke_ms or not fetching:
            return True
        for tp in fetching:
            stamp = self.last_poll_timestamp(tp)
            if stamp is not None and stamp >= self._woke_ms:
                return True
        return False

    def _watch_idle(self) -> None:
        """Pause a consumer whose caller stops asking (a table read on demand): its fetcher
        would otherwise keep polling for nobody."""
        if self._watch is not None or self._holding is not None or self.pacer.idle:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # assigned outside a loop: the first getmany arms it
            return
        delay = max(self.pacer.active_until - self.clock(), 0.0) + self.pacer.pacing.probe_window
        self._watch = loop.call_later(delay, self._watch_fired)

    def _watch_fired(self) -> None:
        self._watch = None
        if self._in_getmany or self._holding is not None:
            return  # getmany decides, and arms the watch again when it returns
        self._settle(records=False)
        self._watch_idle()

    async def _idle_until(self, deadline: float) -> bool:
        """Wait, paused, until a ring, a due probe, a new assignment or ``deadline``; True
        when the consumer should fetch again."""
        while True:
            now = self.clock()
            if self.assignment() != self._holding:
                # A rebalance: the new partitions may hold records, and their first fetch waits
                # for their positions.
                self.pacer.traffic(now, self.pacer.pacing.settle)
            if self.pacer.wake_if_due(now) or not self.pacer.idle:
                return True
            wait = self.pacer.sleep_for(now, deadline)
            if wait <= 0:
                return False
            self._rung.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._rung.wait()
            except TimeoutError:
                pass

    def _ring(self, topic: str) -> None:
        self.pacer.traffic(self.clock())
        self._rung.set()
        if self.on_ring is not None:
            self.on_ring()

    @property
    def hears_rings(self) -> bool:
        """Whether a producer's ring reaches this consumer (a doorbell listens for it)."""
        return self._doorbell is not None and self._doorbell.listening

    def _listen(self, topics: Iterable[str]) -> None:
        self._topics.update(topics)
        if self._doorbell_dir is None or not self._topics:
            return
        if self._doorbell is None:
            try:
                self._doorbell = Doorbell.shared(self._doorbell_dir)
            except RuntimeError:  # no running loop: such a consumer wakes by probing only
                return
        self._doorbell.listen(self._topics, self._ring)

    def _hold(self) -> None:
        assigned = self.assignment()
        self._holding = frozenset(assigned)
        super().pause(*(assigned - self._held_by_caller))

    def _release(self) -> None:
        self.wakes += 1
        self._woke_ms = int(time.time() * 1000)
        self._holding = None
        super().resume(*(self.assignment() - self._held_by_caller))


def on_ring(consumer: AIOKafkaConsumer, callback: Callable[[], None]) -> bool:
    """Call ``callback`` when a producer on this host rings for ``consumer``'s topics; False
    (and nothing set) where no ring can reach it: the caller keeps polling then."""
    if not isinstance(consumer, PacedConsumer) or not consumer.hears_rings:
        return False
    consumer.on_ring = callback
    return True


def wake(consumer: AIOKafkaConsumer) -> None:
    """Tell a paced consumer that records are waiting for it (nothing for any other)."""
    if isinstance(consumer, PacedConsumer):
        consumer.wake()


def paced_consumer_options(settings: Settings, bootstrap: str, kind: str) -> dict[str, Any]:
    """The extra keyword arguments of a :class:`PacedConsumer` for this broker; empty when
    consumers are not paced there (:func:`pacing_for`)."""
    pacing = pacing_for(settings, kind)
    if pacing is None:
        return {}
    directory = doorbell_dir(bootstrap)
    if directory is not None:
        # Every record rings: no need to stay awake waiting for more, and probes are only the
        # net for a ring lost, so they need not come sooner after traffic.
        pacing = replace(
            pacing, quiet=min(pacing.quiet, RUNG_QUIET_S), probe_first=pacing.probe_max
        )
    return {"pacing": pacing, "doorbell": directory}


def producer_bell(settings: Settings, bootstrap: str, kind: str) -> Bell | None:
    """The bell a producer of this broker rings for the paced consumers on this host; None
    where consumers are not paced or no doorbell directory can be had."""
    if pacing_for(settings, kind) is None:
        return None
    directory = doorbell_dir(bootstrap)
    return Bell(directory) if directory is not None else None
