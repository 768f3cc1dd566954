"""Fetch pacing (kestream.runtime.fetch_pacing): the pacer's decisions on a hand-driven clock,
and a paced consumer's pauses and rings (real doorbell sockets, no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.runtime.compacted import read_to_end
from kestream.runtime.doorbell import Bell, doorbell_dir
from kestream.runtime.fetch_pacing import (
    READER_WAIT_MS,
    RESTING_FETCHER_WAKE_MS,
    FetchPacer,
    PacedConsumer,
    Pacing,
    mark_embedded,
    on_ring,
    paced_consumer_options,
    pacing_for,
    producer_bell,
    reader_wait_ms,
)
from kestream.settings import Settings

PACING = Pacing(quiet=2.0, probe_first=0.25, probe_max=1.0, probe_window=0.1)


def test_stays_active_while_records_come_and_goes_idle_after_a_quiet_period() -> None:
    pacer = FetchPacer(PACING, now=0.0)
    assert not pacer.fetched(1.0, records=False)
    assert not pacer.fetched(1.5, records=True)  # the quiet period starts again
    assert not pacer.fetched(3.4, records=False)
    assert pacer.fetched(3.5, records=False)
    assert pacer.idle
    assert pacer.next_probe == pytest.approx(3.75)
    assert not pacer.fetched(3.6, records=False), "going idle is reported once"


def test_probes_with_a_doubling_gap_capped_at_probe_max() -> None:
    pacer = FetchPacer(PACING, now=0.0)
    assert pacer.fetched(2.0, records=False)
    gaps = []
    now = 2.0
    for _ in range(5):
        assert not pacer.wake_if_due(pacer.next_probe - 0.01)
        gaps.append(round(pacer.next_probe - now, 3))
        now = pacer.next_probe
        assert pacer.wake_if_due(now)
        assert not pacer.idle
        assert pacer.active_until == now, "a probe lasts until its fetch is answered"
        now += 0.01
        assert pacer.fetched(now, records=False), "an empty probe pauses again"
    assert gaps == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert pacer.probes == 5


def test_a_ring_wakes_an_idle_pacer_for_a_whole_quiet_period_and_resets_the_gap() -> None:
    pacer = FetchPacer(PACING, now=0.0)
    pacer.fetched(2.0, records=False)
    pacer.wake_if_due(pacer.next_probe)
    pacer.fetched(pacer.active_until, records=False)
    assert pacer.gap == 0.5
    pacer.traffic(10.0)
    assert not pacer.idle
    assert pacer.gap == PACING.probe_first
    assert not pacer.fetched(11.9, records=False)
    assert pacer.fetched(12.0, records=False)


def test_a_ring_while_active_extends_the_active_period() -> None:
    """A ring for a record on another member's partition still keeps this one fetching: a
    later ring the producer's rate limit drops can then not be missed."""
    pacer = FetchPacer(PACING, now=0.0)
    pacer.traffic(1.9)
    assert not pacer.fetched(2.5, records=False)
    assert pacer.fetched(3.9, records=False)


def test_sleep_for_is_bounded_by_the_callers_deadline_and_the_next_probe() -> None:
    pacer = FetchPacer(PACING, now=0.0)
    pacer.fetched(2.0, records=False)
    assert pacer.sleep_for(2.0, deadline=2.1) == pytest.approx(0.1)
    assert pacer.sleep_for(2.0, deadline=5.0) == pytest.approx(0.25)
    assert pacer.sleep_for(3.0, deadline=5.0) == 0.0


def test_pacing_only_on_the_embedded_broker_and_off_with_zero() -> None:
    settings = Settings(consumer_idle_after_ms=1500, consumer_idle_probe_max_ms=3000)
    pacing = pacing_for(settings, "tansu")
    assert pacing is not None
    assert (pacing.quiet, pacing.probe_max) == (1.5, 3.0)
    assert pacing_for(settings, "kafka") is None
    assert pacing_for(Settings(consumer_idle_after_ms=0), "tansu") is None
    short = pacing_for(Settings(consumer_idle_probe_max_ms=100), "tansu")
    assert short is not None and short.probe_first == 0.1


# -- the consumer's own state, without a broker (assign needs none) ---------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fp", dir="/tmp") as base:
        directory = doorbell_dir("127.0.0.1:7", base=base)
        assert directory is not None
        yield directory


def _consumer(directory: Path | None) -> PacedConsumer:
    return PacedConsumer(bootstrap_servers="127.0.0.1:7", pacing=PACING, doorbell=directory)


def _all_paused(consumer: PacedConsumer) -> set[TopicPartition]:
    return set(AIOKafkaConsumer.paused(consumer))


async def test_the_callers_pause_outlives_the_idle_pause(short_dir: Path) -> None:
    consumer = _consumer(short_dir)
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer.assign([a, b])
    consumer.pause(a)  # back-pressure, as the worker does
    consumer._hold()
    assert consumer.resting and _all_paused(consumer) == {a, b}
    assert consumer.paused() == {a}, "the caller sees only its own pause"
    consumer.pause(b)
    consumer.resume(b)  # the caller lets go while the consumer rests
    assert _all_paused(consumer) == {a, b}, "its next getmany resumes the partitions"
    assert consumer.paused() == {a}
    consumer._release()
    assert not consumer.resting and _all_paused(consumer) == {a}
    consumer._hold()
    consumer.pause(a)
    consumer._release()
    assert not consumer.resting and _all_paused(consumer) == {a}
    await consumer.stop()


async def test_a_ring_for_its_topic_wakes_a_resting_consumer_and_its_reader(
    short_dir: Path,
) -> None:
    consumer = _consumer(short_dir)
    consumer.assign([TopicPartition("t", 0)])
    rung = asyncio.Event()
    assert on_ring(consumer, rung.set)
    consumer._hold()
    consumer.pacer.fetched(consumer.pacer.active_until, records=False)
    assert consumer.pacer.idle
    bell = Bell(short_dir, every=0.0)
    bell.ring("other")
    bell.ring("t")
    await asyncio.wait_for(rung.wait(), 10)
    assert not consumer.pacer.idle, "active again: its next getmany resumes the partitions"
    bell.close()
    await consumer.stop()


async def test_no_ring_hook_without_a_doorbell() -> None:
    consumer = _consumer(None)
    consumer.assign([TopicPartition("t", 0)])
    assert not on_ring(consumer, lambda: None)
    await consumer.stop()


def test_a_stream_of_records_keeps_the_consumer_awake_longer_than_a_lone_record() -> None:
    """Under load a consumer would otherwise pause between every two batches and be rung
    awake again: pause, ring and resume cost more than the fetches they save."""
    pacing = Pacing(quiet=0.02, stream_fetches=3, stream_gap=0.1, stream_quiet=1.0)
    pacer = FetchPacer(pacing, now=0.0)
    assert not pacer.fetched(1.0, records=True)
    assert pacer.active_until == pytest.approx(1.02), "a lone record: the short quiet period"
    assert not pacer.fetched(1.05, records=True)
    assert pacer.active_until == pytest.approx(1.07), "a burst is not a stream yet"
    assert not pacer.fetched(1.5, records=True)
    assert pacer.active_until == pytest.approx(1.52), "too far apart: the count starts again"
    pacer.fetched(1.55, records=True)
    assert not pacer.fetched(1.6, records=True)
    assert pacer.active_until == pytest.approx(2.6), "a stream: awake for stream_quiet"
    assert not pacer.fetched(2.5, records=False)
    assert pacer.fetched(2.6, records=False)


# -- wake-ups are never lost (a broker stand-in: aiokafka's fetch replaced) -------------------


class _Broker:
    """What the consumer's fetcher sees: records to hand out, and the fetch responses the
    fetcher would note for each consumer that fetched (``answer``)."""

    def __init__(self) -> None:
        self.fetches = 0
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        self.consumers: list[PacedConsumer] = []

    def answer(self, sent: float | None = None) -> None:
        """A response, to a fetch request sent at ``sent`` (now by default), for every
        partition of every consumer."""
        for consumer in self.consumers:
            for tp in consumer.assignment():
                consumer._note_answer(tp, consumer.clock() if sent is None else sent)

    def record(self, tp: TopicPartition) -> None:
        self.records.append(
            ConsumerRecord(tp.topic, tp.partition, 0, 0, 0, None, b"v", None, 0, 1, [])
        )


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> _Broker:
    stand_in = _Broker()

    async def getmany(
        self: AIOKafkaConsumer, *partitions: TopicPartition, timeout_ms: int = 0, **_: object
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        stand_in.fetches += 1
        if isinstance(self, PacedConsumer) and self not in stand_in.consumers:
            stand_in.consumers.append(self)
        if stand_in.records:
            taken, stand_in.records = stand_in.records, []
            return {TopicPartition(taken[0].topic, taken[0].partition): taken}
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", getmany)
    # aiokafka's seek needs a started fetcher: the position itself does not matter here.
    monkeypatch.setattr(AIOKafkaConsumer, "seek", lambda self, tp, offset: None)
    return stand_in


class _Clock:
    """The monotonic clock, moved on by hand (``now += s``) to pass quiet periods."""

    def __init__(self) -> None:
        self.skew = 0.0

    @property
    def now(self) -> float:
        return time.monotonic() + self.skew

    @now.setter
    def now(self, value: float) -> None:
        self.skew += value - self.now

    def __call__(self) -> float:
        return self.now


def _paced(clock: _Clock) -> PacedConsumer:
    pacing = Pacing(quiet=0.02, probe_first=5.0, probe_max=5.0, probe_window=0.02)
    return PacedConsumer(bootstrap_servers="127.0.0.1:7", pacing=pacing, doorbell=None, clock=clock)


async def _rest(consumer: PacedConsumer, clock: _Clock, broker: _Broker) -> None:
    """Let the consumer go idle: its active period over, and a fetch sent after every wake-up
    answered."""
    for _ in range(2):
        clock.now += 1  # past the active period, short of the first probe (5 s)
        broker.answer()
        consumer._watch_fired()
        if consumer.resting:
            return
    raise AssertionError("the consumer does not rest")


async def test_a_ring_heard_while_the_caller_is_busy_with_a_batch_is_fetched_next(
    broker: _Broker,
) -> None:
    clock = _Clock()
    consumer = _paced(clock)
    tp = TopicPartition("t", 0)
    consumer.assign([tp])
    broker.record(tp)
    assert await consumer.getmany(timeout_ms=20), "the caller has a batch and works on it"
    consumer._ring("t")
    broker.record(tp)
    for _ in range(3):  # the caller is busy far beyond the quiet period; the fetcher answers
        clock.now += 10
        broker.answer()
        consumer._watch_fired()
    assert not consumer.resting, "a caller busy with a batch is not paused under it"
    batch = await consumer.getmany(timeout_ms=20)
    assert batch.get(tp), "the record rung for while busy comes with the next getmany"
    await consumer.stop()


async def test_a_ring_heard_while_resting_or_unanswered_leads_to_a_fetch(broker: _Broker) -> None:
    clock = _Clock()
    consumer = _paced(clock)
    tp = TopicPartition("t", 0)
    consumer.assign([tp])
    assert not await consumer.getmany(timeout_ms=1)
    await _rest(consumer, clock, broker)
    consumer._ring("t")
    clock.now += 1  # its active period passes before the caller asks again
    consumer._watch_fired()
    broker.record(tp)
    assert (await consumer.getmany(timeout_ms=20)).get(tp), "the ring is still pending"
    assert not await consumer.getmany(timeout_ms=1), "the caller asks again: nothing more"
    before = clock.now
    consumer._ring("t")
    broker.answer(sent=before)  # a response to a fetch sent before the ring
    clock.now += 1
    consumer._watch_fired()
    assert not consumer.resting, "a ring whose answer may not include its record"
    broker.answer()
    clock.now += 1
    consumer._watch_fired()
    assert consumer.resting, "answered by a fetch sent after the ring: it rests"
    await consumer.stop()


async def test_a_ring_is_answered_by_one_fetch_sent_after_it_for_every_partition(
    broker: _Broker,
) -> None:
    """A consumer of 16 partitions rests after one response to a fetch sent after the ring,
    as one of one partition does, and not before every partition was answered."""
    clock = _Clock()
    consumer = _paced(clock)
    partitions = [TopicPartition("t", p) for p in range(16)]
    consumer.assign(partitions)
    assert not await consumer.getmany(timeout_ms=1)
    await _rest(consumer, clock, broker)
    consumer._ring("t")
    consumer._release()  # the ring's fetch starts
    clock.now += 0.001
    for tp in partitions[:15]:
        consumer._note_answer(tp, clock.now)
    clock.now += 1
    consumer._watch_fired()
    assert not consumer.resting, "one partition is not answered yet"
    consumer._note_answer(partitions[15], clock.now)
    clock.now += 1
    consumer._watch_fired()
    assert consumer.resting, "every partition answered by a fetch sent after the ring"
    await consumer.stop()


class _Request:
    """A fetch request as aiokafka's fetcher holds it: (topic, [(partition, offset, max)])."""

    def __init__(self, *partitions: TopicPartition) -> None:
        self.topics = [(tp.topic, [(tp.partition, 0, 1 << 20)]) for tp in partitions]


class _Response:
    """aiokafka's sending of one fetch request: held until :meth:`arrive`, which stamps the
    partitions the response answers, as aiokafka's handling of a response does."""

    def __init__(self, *answered: TopicPartition, records: bool = False) -> None:
        self.answered = answered
        self.records = records
        self.arrived = asyncio.Event()

    def arrive(self) -> None:
        self.arrived.set()

    async def __call__(self, assignment: Any, node_id: int, request: _Request) -> bool:
        await self.arrived.wait()
        for tp in self.answered:
            state = assignment.state_value(tp)
            state.timestamp = (state.timestamp or 0) + 1
        return self.records


def _assignment(consumer: PacedConsumer) -> Any:
    return consumer._subscription.subscription.assignment


async def test_a_fetch_sent_before_a_ring_does_not_answer_it(broker: _Broker) -> None:
    clock = _Clock()
    consumer = _paced(clock)
    tp = TopicPartition("t", 0)
    consumer.assign([tp])
    assert not await consumer.getmany(timeout_ms=1)
    await _rest(consumer, clock, broker)
    early = _Response(tp)
    in_flight = asyncio.create_task(
        consumer._timed_fetch(early, _assignment(consumer), 0, _Request(tp))
    )
    await asyncio.sleep(0)  # the request leaves
    clock.now += 0.001
    consumer._ring("t")
    consumer._release()
    early.arrive()
    await in_flight
    clock.now += 1
    consumer._watch_fired()
    assert not consumer.resting, "answered by a request sent before the ring: not the answer"
    late = _Response(tp)
    late.arrive()
    await consumer._timed_fetch(late, _assignment(consumer), 0, _Request(tp))
    clock.now += 1
    consumer._watch_fired()
    assert consumer.resting, "a request sent after the ring was answered"
    await consumer.stop()


async def test_a_partition_left_out_of_the_response_is_not_answered(broker: _Broker) -> None:
    clock = _Clock()
    consumer = _paced(clock)
    first, second = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer.assign([first, second])
    assert not await consumer.getmany(timeout_ms=1)
    await _rest(consumer, clock, broker)
    _assignment(consumer).state_value(second).timestamp = 5  # stamped by an earlier response
    consumer._ring("t")
    consumer._release()
    clock.now += 0.001
    partial = _Response(first)  # an error for the second, or its position moved meanwhile
    partial.arrive()
    await consumer._timed_fetch(partial, _assignment(consumer), 0, _Request(first, second))
    clock.now += 1
    consumer._watch_fired()
    assert not consumer.resting
    await consumer.stop()


async def test_an_empty_answer_pauses_a_waiting_consumer_before_the_next_fetch(
    broker: _Broker,
) -> None:
    """A ring's fetch that finds nothing pauses the consumer as its response comes in, while
    the caller still waits in getmany: aiokafka sends no second fetch for it."""
    clock = _Clock()
    consumer = _paced(clock)
    tp = TopicPartition("t", 0)
    consumer.assign([tp])
    assert not await consumer.getmany(timeout_ms=1)
    await _rest(consumer, clock, broker)
    consumer._ring("t")
    waiting = asyncio.create_task(consumer.getmany(timeout_ms=200))
    await asyncio.sleep(0)  # the caller waits; the ring released the partitions
    assert not consumer.resting
    clock.now += 1  # the ring's quiet period passes while the fetch is out
    empty = _Response(tp)
    empty.arrive()
    await consumer._timed_fetch(empty, _assignment(consumer), 0, _Request(tp))
    assert consumer.resting, "paused by the response itself"
    assert not waiting.done(), "the caller still waits (for a ring or its deadline)"
    assert await waiting == {}
    with_records = _Response(tp, records=True)
    consumer._ring("t")
    waiting = asyncio.create_task(consumer.getmany(timeout_ms=200))
    await asyncio.sleep(0)
    clock.now += 1
    with_records.arrive()
    await consumer._timed_fetch(with_records, _assignment(consumer), 0, _Request(tp))
    assert not consumer.resting, "a response with records leaves them to the caller"
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await consumer.stop()


async def test_after_records_a_fetch_sent_after_them_is_answered_before_resting(
    broker: _Broker,
) -> None:
    """A record acknowledged just after the ring that woke the consumer rings only at the end
    of its producer's ring gap (the next job of a chain): the consumer looks once more."""
    clock = _Clock()
    consumer = _paced(clock)
    tp = TopicPartition("jobs", 0)
    consumer.assign([tp])
    assert not await consumer.getmany(timeout_ms=1)
    await _rest(consumer, clock, broker)
    consumer._ring("jobs")
    rung = clock.now
    clock.now += 0.01
    broker.record(tp)
    assert (await consumer.getmany(timeout_ms=20)).get(tp)
    clock.now += 1  # the quiet period is over
    broker.answer(sent=rung + 0.005)  # after the ring, before the caller had the records
    assert not await consumer.getmany(timeout_ms=1)
    assert not consumer.resting, "no fetch sent after the records was answered yet"
    broker.answer()
    assert not await consumer.getmany(timeout_ms=1)
    assert consumer.resting
    await consumer.stop()


async def test_records_fetched_but_not_yet_taken_keep_the_consumer_fetching(
    broker: _Broker,
) -> None:
    """The caller is busy after an empty getmany; meanwhile the fetcher buffered records
    (position behind the high watermark): pausing would drop them until the next ring."""
    clock = _Clock()
    consumer = _paced(clock)
    tp = TopicPartition("t", 0)
    consumer.assign([tp])
    assert not await consumer.getmany(timeout_ms=1)
    state = consumer._subscription.subscription.assignment.state_value(tp)
    state.seek(3)
    state.highwater = 5
    for _ in range(3):
        clock.now += 10
        broker.answer()
        consumer._watch_fired()
    assert not consumer.resting
    state.seek(5)  # the caller took them
    await _rest(consumer, clock, broker)
    await consumer.stop()


async def test_the_callers_resume_wakes_a_resting_consumer(broker: _Broker) -> None:
    """The worker pauses everything when saturated and waits outside getmany; its resume must
    fetch the jobs rung for before the pause at once, not at the next probe."""
    clock = _Clock()
    consumer = _paced(clock)
    tp = TopicPartition("jobs", 0)
    consumer.assign([tp])
    assert not await consumer.getmany(timeout_ms=1)
    await _rest(consumer, clock, broker)
    consumer.pause(tp)  # saturated while its consumer rested
    consumer.resume(*consumer.paused())
    broker.record(tp)
    fetched = broker.fetches
    assert (await consumer.getmany(timeout_ms=20)).get(tp)
    assert broker.fetches > fetched
    assert not consumer.resting
    await consumer.stop()


@pytest.mark.parametrize("how", ["seek", "assign", "rebalance"])
async def test_a_seek_or_the_same_assignment_again_wakes_a_resting_consumer(
    broker: _Broker, how: str
) -> None:
    clock = _Clock()
    consumer = _paced(clock)
    tp = TopicPartition("t", 0)
    if how == "rebalance":
        consumer.subscribe(["t"])
        consumer._subscription.assign_from_subscribed({tp})
    else:
        consumer.assign([tp])
    assert not await consumer.getmany(timeout_ms=1)
    await _rest(consumer, clock, broker)
    if how == "seek":
        consumer.seek(tp, 0)  # the executor's fetch again rewinds a batch already rung for
    elif how == "assign":
        consumer.assign([tp])
    else:
        await consumer._subscription.listener.on_partitions_assigned({tp})
    broker.record(tp)
    assert (await consumer.getmany(timeout_ms=20)).get(tp)
    await consumer.stop()


async def test_read_to_end_wakes_the_consumer_until_it_reaches_the_end() -> None:
    tp = TopicPartition("t", 0)

    class Reader(PacedConsumer):
        def __init__(self) -> None:
            super().__init__(
                bootstrap_servers="127.0.0.1:7", pacing=PACING, doorbell=None, clock=_Clock()
            )
            self.at = 0
            self.empty_batches = 2
            self.woken = 0

        async def position(self, partition: TopicPartition) -> int:
            return self.at

        def wake(self) -> None:
            self.woken += 1

        async def getmany(
            self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
        ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
            if self.empty_batches:
                self.empty_batches -= 1
                return {}
            self.at = 1
            return {tp: [ConsumerRecord("t", 0, 0, 0, 0, None, b"v", None, 0, 1, [])]}

    reader = Reader()
    applied: list[object] = []
    await read_to_end(reader, {tp: 1}, applied.append)
    assert len(applied) == 1
    assert reader.woken == 3, "woken before the first fetch and after each empty one"
    await reader.stop()


async def test_a_paced_consumers_fetcher_looks_as_rarely_as_it_probes_when_nothing_wakes_it() -> (
    None
):
    """aiokafka's fetcher wakes on resumes, assignments and responses; its timeout is only a
    net, which at aiokafka's 200 ms woke every resting consumer five times a second."""
    consumer = _paced(_Clock())
    assert consumer._consumer_timeout == RESTING_FETCHER_WAKE_MS / 1000 == Pacing().probe_max
    given = PacedConsumer(
        bootstrap_servers="127.0.0.1:7", pacing=PACING, doorbell=None, consumer_timeout_ms=300
    )
    assert given._consumer_timeout == 0.3, "a caller's own timeout is kept"
    await consumer.stop()
    await given.stop()


def test_pacing_and_the_doorbell_only_on_the_broker_kestream_started(short_dir: Path) -> None:
    """A Tansu of one's own may have clients on other hosts or in containers that no ring
    reaches: its consumers keep polling."""
    settings = Settings()
    own = "127.0.0.1:29093"
    assert paced_consumer_options(settings, own, "tansu") == {}
    assert producer_bell(settings, own, "tansu") is None
    embedded = "127.0.0.1:29094"
    mark_embedded(embedded)
    assert paced_consumer_options(settings, embedded, "tansu")["pacing"] is not None
    assert paced_consumer_options(settings, embedded, "kafka") == {}


async def test_a_loop_that_only_reads_waits_long_on_a_paced_consumer_only() -> None:
    """Records, rings and probes end a paced consumer's wait, so a reading loop (the flows
    table, a compacted follower) need not turn every 200 ms; on any other consumer (Kafka) its
    own timeout stays, for a compacted topic's position may move with no record to end it."""
    paced = _paced(_Clock())
    plain = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:7")
    assert reader_wait_ms(paced, 200) == READER_WAIT_MS > 200
    assert reader_wait_ms(paced, READER_WAIT_MS * 2) == READER_WAIT_MS * 2
    assert reader_wait_ms(plain, 200) == 200
    await paced.stop()
    await plain.stop()
