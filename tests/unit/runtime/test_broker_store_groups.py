"""The broker mirror keeps the committed offsets of every consumer group the roles use.

Tansu cannot list groups, so :data:`CONSUMER_GROUPS` names them; this reads the runtime's
sources for the group names they pass to Kafka, so a new group cannot be forgotten there (its
consumers would read their topics from the start again after every restart).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from kestream.runtime.broker_store import (
    CONSUMER_GROUPS,
    FOLLOW_WAIT_BUSY_MS,
    FOLLOW_WAIT_IDLE_MS,
    follow_wait_ms,
)

RUNTIME = Path(__file__).resolve().parents[3] / "kestream"
#: ``group_id=...topic("NAME")`` and ``f"{...topic_prefix}NAME..."`` near a group.
_TOPIC_CALL = re.compile(r'group_id=\s*self\.settings\.topic\("([^"]+)"\)')
_PREFIXED = re.compile(r'group\w* = (?:None if [^"]+ else )?f"\{[\w.]*topic_prefix\}(\w[\w-]*)')


def _group_names() -> set[str]:
    names: set[str] = set()
    for path in RUNTIME.rglob("*.py"):
        text = path.read_text()
        names |= set(_TOPIC_CALL.findall(text)) | set(_PREFIXED.findall(text))
    return names


def test_every_group_of_the_roles_is_kept() -> None:
    found = _group_names()
    assert {"executor", "worker", "scheduler"} <= found  # the scan itself still sees them
    assert found - {"worker"} <= set(CONSUMER_GROUPS), found


def test_offset_snapshots_space_out_while_idle_and_come_back_with_traffic() -> None:
    """An idle mirror doubles the gap between snapshots of unchanged offsets (up to the cap);
    a record fetched, or an offset that moved, brings back one a second."""
    from kestream.runtime.broker_store import (
        SNAPSHOT_EVERY_S,
        SNAPSHOT_IDLE_MAX_S,
        _SnapshotPace,
    )

    tp = TopicPartition("kestream.executions", 0)
    pace = _SnapshotPace()
    offsets = {"executor": {tp: 5}}
    gaps = [pace.settled(offsets) for _ in range(8)]
    assert gaps[:4] == [SNAPSHOT_EVERY_S, 2 * SNAPSHOT_EVERY_S, 4 * SNAPSHOT_EVERY_S, 8.0]
    assert gaps[-1] == SNAPSHOT_IDLE_MAX_S  # capped
    assert pace.after_fetch(False, 100.0) == 100.0  # an empty fetch changes nothing
    sooner = pace.after_fetch(True, 1e12)  # records: the next snapshot within a second
    assert sooner < 1e12 and pace.gap == SNAPSHOT_EVERY_S
    assert pace.settled(offsets) == SNAPSHOT_EVERY_S  # records were fetched since the last
    assert pace.settled(offsets) == 2 * SNAPSHOT_EVERY_S
    assert pace.settled({"executor": {tp: 6}}) == SNAPSHOT_EVERY_S  # an offset moved


def test_an_idle_mirror_reads_with_long_waits_and_a_busy_one_with_short_ones() -> None:
    """Records end a read at once (a ring wakes the mirror's paced consumer); an empty read is
    a turn of the loop for nothing, so an idle mirror waits until its next check is due."""
    assert follow_wait_ms(60.0, busy=False) == FOLLOW_WAIT_IDLE_MS == 5_000
    assert follow_wait_ms(1.5, busy=False) == 1_500, "the metadata or snapshot check is due"
    assert follow_wait_ms(-1.0, busy=False) == FOLLOW_WAIT_BUSY_MS, "overdue: a short look"
    assert follow_wait_ms(1.5, busy=True) == FOLLOW_WAIT_BUSY_MS == 50, "a snapshot waits"


def test_the_topic_list_is_read_less_often_while_idle_and_as_often_as_ever_with_traffic() -> None:
    """Idle, the mirror read every topic's metadata every 2 s; a new topic only matters for
    records to come, which follow records of the other topics (a job after its execution)."""
    from kestream.runtime.broker_store import TOPICS_EVERY_S, TOPICS_IDLE_MAX_S, _TopicsPace

    pace = _TopicsPace()
    gaps = [pace.read() for _ in range(8)]
    assert gaps[:3] == [2 * TOPICS_EVERY_S, 4 * TOPICS_EVERY_S, 8 * TOPICS_EVERY_S]
    assert gaps[-1] == TOPICS_IDLE_MAX_S  # capped
    assert pace.after_fetch(False, 100.0) == 100.0  # an empty fetch changes nothing
    sooner = pace.after_fetch(True, 1e12)  # records: the next read within TOPICS_EVERY_S
    assert sooner < 1e12 and pace.gap == TOPICS_EVERY_S
    assert pace.read() == TOPICS_EVERY_S  # records were fetched since the last read
    assert pace.read() == 2 * TOPICS_EVERY_S


async def test_an_offset_snapshot_wakes_the_resting_mirror_for_the_fetch_it_waits_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot is written once a fetch sent after it has answered every partition; an idle
    mirror's paced consumer fetched only at its next probe, read by read every 50 ms."""
    from kestream.runtime.broker_store import BrokerStore, _Snapshot
    from kestream.runtime.fetch_pacing import PacedConsumer, Pacing
    from kestream.settings import Settings

    store = BrokerStore(Settings(broker="127.0.0.1:1"), tmp_path)

    async def taken(assigned: set[TopicPartition]) -> _Snapshot:
        return _Snapshot(1, {})

    monkeypatch.setattr(store, "_take_snapshot", taken)
    pacing = Pacing(quiet=0.0)  # as with a doorbell: rest once a look is answered
    consumer = PacedConsumer(bootstrap_servers="127.0.0.1:1", pacing=pacing, doorbell=None)
    consumer.pacer.quiet_over(consumer.pacer.active_until)  # resting: idle until a probe
    assert consumer.pacer.idle
    assert await store._begin_snapshot(consumer, set()) is not None
    assert not consumer.pacer.idle and consumer._pending_since is not None  # one fetch, now
    # ...and no more: a fetch of every partition is the dearest request the broker answers.
    assert consumer.pacer.active_until <= consumer.clock()


class _Client:
    def __init__(self, fails: BaseException | None = None) -> None:
        self.fails, self.stopped = fails, False

    async def stop(self) -> None:
        await asyncio.sleep(0)  # a turn of the loop, where a cancellation lands
        self.stopped = True
        if self.fails is not None:
            raise self.fails

    close = stop


async def test_a_stopped_mirror_stops_every_client_whatever_one_raises(tmp_path: Path) -> None:
    """aiokafka's stop of a consumer without a group re-raised its fetch task's CancelledError
    once the broker was gone: the offset readers after it were left running, and the next
    mirror (after the broker's restart) asked the dead broker through them for 5 s a group."""
    from kestream.runtime.broker_store import BrokerStore
    from kestream.settings import Settings

    store = BrokerStore(Settings(broker="127.0.0.1:1"), tmp_path)
    consumer = _Client(asyncio.CancelledError())
    store._metadata = _Client(OSError("gone"))
    readers = {"g1": _Client(), "g2": _Client()}
    store._readers = readers
    await store._stop_clients(consumer)  # not cancelled: goes on
    assert all(r.stopped for r in readers.values()) and store._readers == {}

    store._readers = {"g3": (reader := _Client())}
    stopping = asyncio.create_task(store._stop_clients(_Client(asyncio.CancelledError())))
    await asyncio.sleep(0)
    stopping.cancel()  # the mirror itself is cancelled meanwhile: that still ends it
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert reader.stopped
