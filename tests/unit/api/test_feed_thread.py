"""The index feed writes in a thread of its own: reads that fill the event loop's default pool
do not hold its writes back, and a write that waits does not hold the reads back. The feed runs
here without a broker: fetched records go straight to its handler (as in
test_feed_purge_answers)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from kestream.api.index.feed import THREAD_NAME, IndexFeed, decode_fetched
from kestream.api.index.sqlite import SQLiteStore
from kestream.api.index.store import RecordKind
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.topics import Topics
from kestream.settings import Settings

#: Only against a hang: each step below finishes at once unless one side waits for the other.
GUARD_S = 60.0


@dataclass
class _Record:
    offset: int
    key: bytes
    value: bytes


def update(execution_id: str) -> bytes:
    header = {
        "id": execution_id,
        "namespace": "company.team",
        "flowId": "hello",
        "labels": [],
        "state": {"current": "SUCCESS", "histories": [], "startDate": "2025-01-01T10:00:00Z"},
    }
    value: dict[str, Any] = {
        "more": False,
        "terminal": True,
        "full": True,
        "execution": {**header, "taskRunList": []},
    }
    return records.dumps(value)


def test_reads_and_the_feed_do_not_wait_for_each_other(tmp_path: Path) -> None:
    settings = Settings(broker="unused:9092")
    topics = Topics.of(settings)
    store = SQLiteStore(tmp_path / "index.sqlite")
    feed = IndexFeed(BrokerContext(settings, "unused:9092", "tansu", topics), store)
    tp = TopicPartition(topics.updates, 0)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        # A slow read holds the only thread of the default pool: the feed still applies.
        release = threading.Event()
        slow_read = asyncio.ensure_future(asyncio.to_thread(release.wait))
        try:
            await asyncio.wait_for(feed._handle({tp: [_Record(0, b"a", update("a"))]}), GUARD_S)
        finally:
            release.set()
        await slow_read
        assert store.get("a") is not None
        assert any(t.name.startswith(THREAD_NAME) for t in threading.enumerate())
        # A write that waits for the database holds the feed's thread: reads still answer.
        store._write_lock.acquire()
        try:
            write = asyncio.ensure_future(feed._handle({tp: [_Record(1, b"b", update("b"))]}))
            read = await asyncio.wait_for(asyncio.to_thread(store.get, "a"), GUARD_S)
            assert read is not None
            assert not write.done()
        finally:
            store._write_lock.release()
        await asyncio.wait_for(write, GUARD_S)
        assert store.get("b") is not None
        await feed.stop()
        assert not any(t.name.startswith(THREAD_NAME) for t in threading.enumerate())

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_the_feed_stops_while_slow_reads_hold_the_default_pool(tmp_path: Path) -> None:
    settings = Settings(broker="unused:9092")
    topics = Topics.of(settings)
    store = SQLiteStore(tmp_path / "index.sqlite")
    feed = IndexFeed(BrokerContext(settings, "unused:9092", "tansu", topics), store)
    tp = TopicPartition(topics.updates, 0)

    async def scenario() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        await asyncio.wait_for(feed._handle({tp: [_Record(0, b"a", update("a"))]}), GUARD_S)
        release = threading.Event()
        slow_read = asyncio.ensure_future(asyncio.to_thread(release.wait))
        try:
            await asyncio.wait_for(feed.stop(), GUARD_S)
        finally:
            release.set()
        await slow_read
        assert not any(t.name.startswith(THREAD_NAME) for t in threading.enumerate())

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_a_fetch_is_decoded_with_unreadable_records_stepped_over() -> None:
    topics = Topics.of(Settings(broker="unused:9092"))
    tp = TopicPartition(topics.updates, 2)
    fetched = {tp: [_Record(7, b"a", update("a")), _Record(8, b"b", b"{not json")]}
    batch, dead, raw = decode_fetched({topics.updates: RecordKind.UPDATE}, fetched)
    assert [(r.execution_id, r.offset) for r in batch.records] == [("a", 7)]
    assert [(rec.offset, why.startswith("not JSON")) for rec, why in dead] == [(8, True)]
    assert batch.positions == {(topics.updates, 2): 9}  # past the unreadable one too
    assert set(raw) == {(topics.updates, 2, 7), (topics.updates, 2, 8)}
