"""An execution update split over several records reaches the index whole: its end state is
never visible with only part of its task runs, whichever way the fetches cut the records.

The records are the executor's own (:func:`execution_updates.update_records` of an execution
the driver ran, with a small record limit), fed to the feed's handler without a broker (as in
test_feed_thread)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from kestream.api.index.feed import MAX_HOLD_S, IndexFeed, hold_incomplete
from kestream.api.index.sqlite import SQLiteStore
from kestream.api.index.store import Batch, FeedRecord, RecordKind
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.execution_updates import update_records
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from kestream.testing import Driver

RUNS = 60
FLOW = f"""
id: many
namespace: company.team
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{{{ range(1, {RUNS}) }}}}"
    concurrencyLimit: 0
    tasks:
      - id: out
        type: io.kestra.plugin.core.output.OutputValues
        values:
          text: "{{{{ taskrun.value }}}} {"z" * 200}"
  - id: fail
    type: io.kestra.plugin.core.execution.Fail
"""


@dataclass
class _Record:
    offset: int
    key: bytes
    value: bytes


@dataclass
class _DeadRecord(_Record):
    topic: str


def _ended_update(max_bytes: int) -> tuple[str, int, list[bytes]]:
    """The id, task run count and records of the final update of an execution that failed."""
    with Driver() as driver:
        driver.deploy(FLOW)
        started = driver.start("company.team", "many")
        ended = driver.wait(started.id)
        assert ended.state.current.value == "FAILED"
        st = driver.states[started.id]
        values = update_records(st, [], terminal=True, full=True, max_bytes=max_bytes)
        return started.id, len(st.task_runs), values


@pytest.fixture
def feed(tmp_path: Path) -> IndexFeed:
    settings = Settings(broker="unused:9092")
    store = SQLiteStore(tmp_path / "index.sqlite")
    return IndexFeed(BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings)), store)


def test_the_end_state_is_not_visible_before_every_task_run_of_its_update(feed: IndexFeed) -> None:
    execution_id, runs, values = _ended_update(max_bytes=4096)
    assert len(values) > 3 and runs > RUNS
    tp = TopicPartition(feed.ctx.topics.updates, 0)
    key = execution_id.encode()
    fetched = [_Record(offset, key, value) for offset, value in enumerate(values)]
    store = feed.store

    async def scenario() -> None:
        for cut in range(1, len(fetched)):  # a fetch that ends after each record but the last
            await feed._handle({tp: fetched[cut - 1 : cut]})
            assert store.get(execution_id) is None  # nothing of the update yet...
            assert store.offsets(tp.topic).get(0, 0) == 0  # ...and a restart reads it again
            assert feed.positions[tp] == cut  # read, held
        await feed._handle({tp: fetched[-1:]})

    asyncio.run(scenario())
    got = store.get(execution_id)
    assert got is not None and got["state"]["current"] == "FAILED"
    assert len(got["taskRunList"]) == runs
    assert store.offsets(tp.topic) == {0: len(values)}
    assert feed._held == []


def _update(offset: int, execution_id: str, *, more: bool) -> FeedRecord:
    header = {"id": execution_id, "namespace": "n", "flowId": "f", "state": {"current": "X"}}
    value = {"more": more, "terminal": False, "full": False, "execution": header, "taskRuns": []}
    return FeedRecord("updates", 0, offset, RecordKind.UPDATE, execution_id, value)


def test_only_the_unfinished_update_waits_and_the_offset_stops_at_its_first_record() -> None:
    batch = Batch()
    for record in (
        _update(10, "a", more=True),  # a: whole (its last record is read)
        _update(11, "b", more=True),  # b: an earlier update whole...
        _update(12, "b", more=False),
        _update(13, "a", more=False),
        _update(14, "b", more=True),  # ...the next one not yet
        _update(15, "c", more=False),
    ):
        batch.add(record)
    batch.advance("updates", 0, 16)  # a dead letter stepped over
    ready, held = hold_incomplete(batch)
    assert [r.offset for r in held] == [14]
    assert [r.offset for r in ready.records] == [10, 11, 12, 13, 15]
    assert ready.positions == {("updates", 0): 14}
    rest = Batch()
    rest.add(_update(17, "b", more=False))
    ready, held = hold_incomplete(rest, held)
    assert held == [] and [r.offset for r in ready.records] == [14, 17]
    assert ready.positions == {("updates", 0): 18}


def test_a_restart_of_the_feed_reads_the_held_records_again(tmp_path: Path) -> None:
    execution_id, runs, values = _ended_update(max_bytes=4096)
    settings = Settings(broker="unused:9092")
    store = SQLiteStore(tmp_path / "index.sqlite")
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    tp = TopicPartition(ctx.topics.updates, 0)
    fetched = [_Record(i, execution_id.encode(), v) for i, v in enumerate(values)]
    half = len(fetched) // 2

    async def scenario() -> None:
        await IndexFeed(ctx, store)._handle({tp: fetched[:half]})
        restarted = IndexFeed(ctx, store)  # a new process: reads from the stored offset
        start = store.offsets(tp.topic).get(0, 0)
        await restarted._handle({tp: fetched[start:]})

    asyncio.run(scenario())
    got = store.get(execution_id)
    assert got is not None and got["state"]["current"] == "FAILED"
    assert len(got["taskRunList"]) == runs
    assert records.loads(values[-1])["terminal"] is True


def test_a_dead_lettered_last_record_releases_the_rest_of_its_update(feed: IndexFeed) -> None:
    """Held forever otherwise: the index never shows the update, and the stored offset stays at
    its first record (every restart reads a growing tail again)."""
    execution_id, _, values = _ended_update(max_bytes=4096)
    tp = TopicPartition(feed.ctx.topics.updates, 0)
    key = execution_id.encode()
    fetched = [_Record(offset, key, value) for offset, value in enumerate(values[:-1])]
    fetched.append(_DeadRecord(len(values) - 1, key, b"{not json", tp.topic))
    dead: list[int] = []

    async def dead_letter(records: list[tuple[_Record, str]]) -> None:
        dead.extend(rec.offset for rec, _ in records)

    feed._dead_letter = dead_letter  # type: ignore[method-assign,assignment]

    async def scenario() -> None:
        await feed._handle({tp: fetched[:-1]})
        assert feed.store.get(execution_id) is None and len(feed._held) == len(values) - 1
        await feed._handle({tp: fetched[-1:]})

    asyncio.run(scenario())
    assert dead == [len(values) - 1]
    assert feed._held == [] and feed._held_raw == {}
    assert feed.store.get(execution_id) is not None  # what arrived, without the lost runs
    assert feed.store.offsets(tp.topic) == {0: len(values)}


def test_past_the_cap_held_records_are_applied_as_they_are() -> None:
    batch = Batch()
    for record in (_update(1, "a", more=True), _update(2, "b", more=True)):
        batch.add(record)
    ready, held = hold_incomplete(batch, max_held=2)
    assert [r.offset for r in held] == [1, 2]  # at the cap: still held
    more = Batch()
    more.add(_update(3, "b", more=True))
    ready, held = hold_incomplete(more, held, max_held=2)
    assert held == [] and [r.offset for r in ready.records] == [1, 2, 3]
    assert ready.positions == {("updates", 0): 4}


def test_a_later_whole_update_applies_an_orphaned_partial_one() -> None:
    batch = Batch()
    for record in (
        _update(1, "a", more=True),  # an update whose last record never came
        _update(2, "a", more=True),  # the next update of the same execution, whole
        _update(3, "a", more=False),
    ):
        batch.add(record)
    ready, held = hold_incomplete(batch)
    assert held == [] and [r.offset for r in ready.records] == [1, 2, 3]


def test_an_update_whose_last_record_never_comes_is_applied_after_the_longest_wait(
    feed: IndexFeed,
) -> None:
    """Its last record dead-lettered by the executor's writer: nothing on this topic says so."""
    execution_id, _, values = _ended_update(max_bytes=4096)
    tp = TopicPartition(feed.ctx.topics.updates, 0)
    key = execution_id.encode()
    fetched = [_Record(offset, key, value) for offset, value in enumerate(values[:-1])]
    now = [1000.0]
    feed._now = lambda: now[0]

    async def scenario() -> None:
        await feed._handle({tp: fetched})
        now[0] += MAX_HOLD_S  # not longer yet: an empty fetch changes nothing
        assert not feed._overdue()
        await feed._handle({})
        assert feed.store.get(execution_id) is None and feed._held
        now[0] += 1
        assert feed._overdue() == {execution_id}
        await feed._handle({})  # (the feed's loop calls this on an empty fetch when overdue)

    asyncio.run(scenario())
    assert feed._held == [] and feed._held_since == {}
    assert feed.store.get(execution_id) is not None
    assert feed.store.offsets(tp.topic) == {0: len(values) - 1}
