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
- its assignment changed or was handed out again, or its caller moved a position (a seek):
  records may be waiting there; or its caller knows records are waiting
  (:meth:`PacedConsumer.wake`, used by table reads), or resumed partitions it had paused.

A ring or wake-up is never dropped: it stays pending until a fetch *sent after it* has been
answered for every partition the consumer fetches (the consumer notes when each of its fetch
requests left and which partitions the response answered). A consumer never rests while a ring
is pending, nor while a partition's position is behind the high watermark its last fetch
reported (records fetched and not yet handed to the caller, which pausing would drop): a caller
busy with a batch finds the next one when it asks.

With the doorbell the quiet period is :data:`RUNG_QUIET_S`, none: a ring follows every record,
so once the fetch answering the last ring is in, there is little more to wait for. After records
the consumer looks once more (records that came meanwhile ring only at the end of the producer's
:data:`~kestream.runtime.doorbell.RING_EVERY_S`), then pauses as that empty answer comes in,
before aiokafka sends another fetch: a probe or an empty ring costs one fetch, a ring with
records two (a stream of them keeps the consumer awake). Without a doorbell (a directory that
cannot be made private) the quiet period is ``KESTREAM_CONSUMER_IDLE_AFTER_MS`` and probes start
at 250 ms, doubling. A consumer whose caller stops calling ``getmany`` (a table read on demand)
pauses too.

Pacing decides only *when* to fetch, never what: positions, commits and the group protocol
(heartbeats run in aiokafka's coordinator, not in the fetcher) are untouched, so a late wake-up
costs latency, never a record. ``getmany`` still returns within the caller's ``timeout_ms``, so
loops that do timed work between fetches (timers, retries, ticks) keep their rhythm.

Partitions the caller pauses itself (back-pressure) stay paused: the consumer tracks them apart
from its own idle pause. On Apache Kafka fetches wait for data, so pacing is off there
(:func:`pacing_for`): a consumer there costs one fetch per ``fetch_max_wait_ms`` (100 ms). Pacing
and the doorbell run only on the embedded broker (the one kestream starts,
:func:`mark_embedded`): clients of a Tansu of one's own may run on other hosts or in containers
that no ring reaches, so they poll as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.runtime.doorbell import Bell, Doorbell, doorbell_dir
from kestream.settings import Settings

Batch = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]

log = logging.getLogger("kestream.fetch_pacing")


#: How often aiokafka's background fetcher looks at its partitions when nothing wakes it
#: (``consumer_timeout_ms``; aiokafka's default is 200). A resume, a new assignment, records
#: taken, a metadata update it waits for and every response wake it at once, so the timeout is
#: only a net; at 200 ms a resting consumer's fetcher woke five times a second for nothing, at
#: 1 s once (about twenty wake-ups a second in standalone's shared role process): now no more
#: often than a resting consumer probes (:attr:`Pacing.probe_max`).
RESTING_FETCHER_WAKE_MS = 5_000
#: How long a loop that only reads (no timed work between its fetches) lets a paced consumer's
#: ``getmany`` wait (:func:`reader_wait_ms`): records, rings and probes end the wait at once,
#: so a longer one costs no latency, only fewer turns of the loop for nothing.
READER_WAIT_MS = 5_000

#: With a doorbell, a consumer stays awake this long after records or a ring: none. Rings come
#: after the broker acknowledged the records (:class:`~kestream.runtime.doorbell.RingingProducer`)
#: and each stays pending until a fetch sent after it is answered, which finds them; then it
#: pauses until the next ring (a stream of records keeps it awake, :attr:`Pacing.stream_quiet`).
RUNG_QUIET_S = 0.0


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
    #: How long one look for records lasts while a wake-up waits for its answer (or records
    #: wait for the caller): the consumer checks again after it, and pauses as soon as the
    #: answer comes.
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
            self.saw_records(now)
        return self.quiet_over(now)

    def saw_records(self, now: float) -> None:
        """A fetch brought records: active for a quiet period, longer within a stream."""
        close = now - self.last_records < self.pacing.stream_gap
        self.streak = self.streak + 1 if close else 1
        self.last_records = now
        streaming = self.streak >= self.pacing.stream_fetches
        self.traffic(now, max(self.pacing.quiet, self.pacing.stream_quiet) if streaming else None)

    def quiet_over(self, now: float) -> bool:
        """True (once) when the active period is over: the consumer goes idle now. With no
        quiet period (a doorbell) that is right after records that are no stream."""
        if self.idle or now < self.active_until:
            return False
        self.idle = True
        self.next_probe = now + self.gap
        return True

    def sleep_for(self, now: float, deadline: float) -> float:
        """How long an idle consumer waits before looking again (a ring may cut it short)."""
        return max(0.0, min(deadline, self.next_probe) - now)

    def wake_if_due(self, now: float) -> bool:
        """Idle: True when the probe is due (it fetches until its fetch is answered, the
        consumer's business, and pauses again at once if that finds nothing)."""
        if not self.idle or now < self.next_probe:
            return False
        self.idle = False
        self.probes += 1
        self.active_until = now
        self.gap = min(self.gap * 2, self.pacing.probe_max)
        return True


#: The bootstrap addresses this process identified as kestream's embedded broker.
_EMBEDDED: set[str] = set()


def mark_embedded(bootstrap: str) -> None:
    """Record that ``bootstrap`` is kestream's embedded broker (its cluster id, probed by
    :func:`kestream.runtime.context.connect`): its consumers are paced and its producers ring.
    Every client of it runs on this host, so every consumer hears every ring."""
    _EMBEDDED.add(bootstrap)


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
        options.setdefault("consumer_timeout_ms", RESTING_FETCHER_WAKE_MS)
        super().__init__(*topics, **options)
        self.clock = clock
        self.pacer = FetchPacer(pacing, clock())
        self._doorbell_dir = doorbell
        self._doorbell: Doorbell | None = None
        self._topics: set[str] = set(topics)
        self._held_by_caller: set[TopicPartition] = set()
        #: The assignment paused for idleness, None while fetching.
        self._holding: frozenset[TopicPartition] | None = None
        #: A ring or wake-up not yet answered by a fetch sent after it (:attr:`clock` time)...
        self._pending_since: float | None = None
        #: ...and per partition, when the latest fetch request answered for it was sent.
        self._answer_sent: dict[TopicPartition, float] = {}
        #: Whether fetch requests are timed (:meth:`_time_fetches`): without it no wake-up is
        #: ever answered, and the consumer never pauses (it polls, as unpaced ones do).
        self._timing_fetches = False
        self._rung = asyncio.Event()
        self._in_getmany = 0
        #: The last getmany handed the caller records (it is busy with them, not waiting).
        self._handed_records = False
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
        super().subscribe(topics, pattern=pattern, listener=_WakingListener(self, listener))
        self._listen(topics)
        self._watch_idle()

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        super().assign(partitions)
        self._listen(tp.topic for tp in partitions)
        self.wake()  # aiokafka fetches assigned partitions afresh: records may wait there
        self._watch_idle()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        super().seek(partition, offset)
        self.wake()  # a rewind (the executor's fetch again) must not wait for a ring

    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool:
        done: bool = await super().seek_to_beginning(*partitions)
        self.wake()
        return done

    async def seek_to_end(self, *partitions: TopicPartition) -> bool:
        done: bool = await super().seek_to_end(*partitions)
        self.wake()
        return done

    async def seek_to_committed(self, *partitions: TopicPartition) -> dict[TopicPartition, int]:
        committed: dict[TopicPartition, int] = await super().seek_to_committed(*partitions)
        self.wake()
        return committed

    def pause(self, *partitions: TopicPartition) -> None:
        self._held_by_caller.update(partitions)
        super().pause(*partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        """Let go of the caller's pause; a resting consumer wakes at once if one of them was
        held (the worker's back-pressure: its jobs were rung for before it paused)."""
        was_held = not self._held_by_caller.isdisjoint(partitions)
        self._held_by_caller.difference_update(partitions)
        if self._holding is None:
            super().resume(*partitions)
        elif was_held:
            self.wake()

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
        self._pend()
        self._rung.set()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Batch:
        self._in_getmany += 1
        self._handed_records = False
        try:
            batch = await self._getmany(partitions, timeout_ms, max_records)
            self._handed_records = any(batch.values())
            return batch
        finally:
            self._in_getmany -= 1
            self._watch_idle()

    async def start(self) -> None:
        await super().start()
        self._time_fetches()

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
            # Fetch no longer than the active window (at least one look), so that a consumer
            # paused meanwhile (an answer that found nothing) waits for rings, not for records.
            until = min(
                deadline, max(self.pacer.active_until, now + self.pacer.pacing.probe_window)
            )
            batch: Batch = await super().getmany(
                *partitions, timeout_ms=math.ceil((until - now) * 1000), max_records=max_records
            )
            records = any(batch.values())
            self._settle(records)
            if records or self.clock() >= deadline:
                return batch

    def _settle(self, records: bool) -> None:
        """After a fetch (or none for a while): pause when the pacer says idle, unless a ring
        or wake-up is still unanswered or records wait that the caller has not had yet."""
        now = self.clock()
        if records:
            self.pacer.saw_records(now)
            # More may have come meanwhile, rung for within RING_EVERY_S only (a producer's
            # next job of a chain, say): look once more, with a fetch sent after these.
            self._pend()
        if self.pacer.idle or now < self.pacer.active_until:
            return  # busy (the common case under load: no look at the partitions)
        if self._must_fetch():
            return  # looked at again after the next answer, or the next look
        if self.pacer.quiet_over(now):
            self._hold()

    def _must_fetch(self) -> bool:
        fetching = self.assignment() - self._held_by_caller
        if not fetching:
            return False  # the caller holds every partition: nothing to fetch, rest
        return not self._answered(fetching) or self._behind(fetching)

    def _pend(self) -> None:
        """A ring or wake-up: pending until a fetch sent after it comes back."""
        self._pending_since = self.clock()

    def _answered(self, fetching: set[TopicPartition]) -> bool:
        """Whether every fetched partition got a response to a fetch sent after the pending
        ring or wake-up (one sent before it may have been read before its records were)."""
        since = self._pending_since
        if since is None:
            return True
        if any(self._answer_sent.get(tp, -math.inf) <= since for tp in fetching):
            return False
        self._pending_since = None
        return True

    def _time_fetches(self) -> None:
        """Note when each fetch request leaves and what its response answered, in aiokafka's
        fetcher (its one method that sends a request and handles the response)."""
        fetcher: Any = getattr(self, "_fetcher", None)
        send = getattr(fetcher, "_proc_fetch_request", None)
        if send is None:
            log.warning("cannot time this aiokafka's fetches: the consumer never pauses")
        elif not self._timing_fetches:
            fetcher._proc_fetch_request = functools.partial(self._timed_fetch, send)
            self._timing_fetches = True

    async def _timed_fetch(
        self, send: Callable[..., Any], assignment: Any, node_id: int, request: Any
    ) -> bool:
        """One fetch request and its response: each partition whose state the response updated
        (aiokafka stamps it then) was answered by a request sent at ``sent``. A response that
        brought nothing while the caller waits in ``getmany`` settles the consumer at once, so
        that an answered wake-up pauses it before aiokafka sends the next request."""
        sent = self.clock()
        partitions = [TopicPartition(t, p[0]) for t, parts in request.topics for p in parts]
        states = [assignment.state_value(tp) for tp in partitions]
        before = [None if state is None else state.timestamp for state in states]
        new_data: bool = await send(assignment, node_id, request)
        for tp, state, stamp in zip(partitions, states, before, strict=True):
            # A stamp equal to the one before (two responses in one millisecond) is left
            # unanswered: one more fetch, never a wake-up taken as answered too soon.
            if state is not None and state.timestamp is not None and state.timestamp != stamp:
                self._note_answer(tp, sent)
        if not new_data and self._in_getmany and self._holding is None:
            self._settle(records=False)
        return new_data

    def _note_answer(self, tp: TopicPartition, sent: float) -> None:
        """``tp`` was answered by a fetch request sent at ``sent``."""
        self._answer_sent[tp] = max(self._answer_sent.get(tp, -math.inf), sent)

    def _behind(self, fetching: set[TopicPartition]) -> bool:
        """Whether a partition's position is behind the high watermark its last fetch
        reported: records fetched (or fetchable) that the caller has not had. Pausing would
        drop aiokafka's buffer and leave them to the next ring or probe."""
        assignment = self._subscription.subscription
        if assignment is None:
            return False
        for tp in fetching:
            state = assignment.assignment.state_value(tp)
            if state is None or not state.has_valid_position or state.highwater is None:
                continue
            if state.position < state.highwater:
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
        if self._handed_records and self.on_ring is None:
            return  # busy with a batch: its next getmany decides (and arms the watch again)
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

    def look(self) -> None:
        """Fetch once now, as a ring makes it: a fetch sent after this call answers every
        partition, then the consumer rests again (:meth:`wake` keeps it fetching a while, for
        records known to wait)."""
        self.pacer.traffic(self.clock())
        self._pend()
        self._rung.set()

    def _ring(self, topic: str) -> None:
        self.look()
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
        if self._pending_since is None:  # a probe or a rebalance: it too waits for its answer
            self._pend()
        self._holding = None
        super().resume(*(self.assignment() - self._held_by_caller))


class _WakingListener(ConsumerRebalanceListener):
    """The caller's rebalance listener, and a wake-up on every assignment: aiokafka fetches
    the partitions afresh, even when the same ones come back."""

    def __init__(self, consumer: PacedConsumer, inner: Any) -> None:
        self.consumer = consumer
        self.inner = inner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_revoked(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.consumer.wake()
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_assigned(assigned))


async def _maybe_await(result: Any) -> None:
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        await result


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


def look(consumer: AIOKafkaConsumer) -> None:
    """Have a paced consumer fetch once now (:meth:`PacedConsumer.look`); nothing for any
    other, which fetches all the time anyway."""
    if isinstance(consumer, PacedConsumer):
        consumer.look()


def reader_wait_ms(consumer: AIOKafkaConsumer, timeout_ms: int) -> int:
    """The ``getmany`` timeout of a loop that only reads: :data:`READER_WAIT_MS` for a paced
    consumer, ``timeout_ms`` for any other (on Kafka a fetch waits for data itself, and a
    compacted topic's position may move past a gap with no record to end the wait)."""
    return max(READER_WAIT_MS, timeout_ms) if isinstance(consumer, PacedConsumer) else timeout_ms


def paced_consumer_options(settings: Settings, bootstrap: str, kind: str) -> dict[str, Any]:
    """The extra keyword arguments of a :class:`PacedConsumer` for this broker; empty when
    consumers are not paced there (:func:`pacing_for`) or it is not the embedded broker."""
    pacing = pacing_for(settings, kind)
    if pacing is None or bootstrap not in _EMBEDDED:
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
    if pacing_for(settings, kind) is None or bootstrap not in _EMBEDDED:
        return None
    directory = doorbell_dir(bootstrap)
    return Bell(directory) if directory is not None else None
