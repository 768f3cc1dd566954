"""The broker mirror keeps the committed offsets of every consumer group the roles use.

Tansu cannot list groups, so :data:`CONSUMER_GROUPS` names them; this reads the runtime's
sources for the group names they pass to Kafka, so a new group cannot be forgotten there (its
consumers would read their topics from the start again after every restart).
"""

from __future__ import annotations

import re
from pathlib import Path

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
    assert follow_wait_ms(1.5, busy=False) == FOLLOW_WAIT_IDLE_MS == 250
    assert follow_wait_ms(0.1, busy=False) == 100, "the metadata or snapshot check is due"
    assert follow_wait_ms(-1.0, busy=False) == FOLLOW_WAIT_BUSY_MS, "overdue: a short look"
    assert follow_wait_ms(1.5, busy=True) == FOLLOW_WAIT_BUSY_MS == 50, "a snapshot waits"
