"""Fetch pacing (kestream.runtime.fetch_pacing): the pacer's decisions on a hand-driven clock,
and a paced consumer's pauses and rings (real doorbell sockets, no broker)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from kestream.runtime.doorbell import Bell, doorbell_dir
from kestream.runtime.fetch_pacing import FetchPacer, PacedConsumer, Pacing, on_ring, pacing_for
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
        assert pacer.active_until == pytest.approx(now + PACING.probe_window)
        now += PACING.probe_window
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
    consumer.resume(a)  # the caller lets go while the consumer rests: still resting
    assert _all_paused(consumer) == {a, b}
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
