"""The index feed's start: a partition the index has no offset for is read from its beginning,
and all of them are sought in one call (each call waits for a round of the consumer's offset
lookup: 32 calls held a new API's start back by 0.4 s on the embedded broker). No broker: the
consumer is a stand-in that records the seeks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from kestream.api.index import feed as feed_module
from kestream.api.index.feed import IndexFeed
from kestream.api.index.sqlite import SQLiteStore
from kestream.runtime.context import BrokerContext
from kestream.runtime.topics import Topics
from kestream.settings import Settings

PARTITIONS = 4


class _Consumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, ...]] = []
        self.positions: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(tps, -1)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> bool:
        self.seeks.append(tps)
        for tp in tps:
            self.positions[tp] = 0
        return True

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(self, *args: Any, **kwargs: Any) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(3600)
        return {}


async def test_the_partitions_the_index_has_not_read_are_sought_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(broker="unused:9092")
    topics = Topics.of(settings)
    consumer = _Consumer()

    async def partitions(_consumer: Any, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in range(PARTITIONS)]

    async def highwaters(_consumer: Any, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    monkeypatch.setattr(feed_module, "make_consumer", lambda *args, **kwargs: consumer)
    monkeypatch.setattr(feed_module, "topic_partitions", partitions)
    monkeypatch.setattr(feed_module, "fetch_highwaters", highwaters)
    store = SQLiteStore(tmp_path / "index.sqlite")
    feed = IndexFeed(BrokerContext(settings, "unused:9092", "tansu", topics), store)
    try:
        await feed.start()
    finally:
        await feed.stop()
        store.close()
    (sought,) = consumer.seeks
    assert sorted(sought) == sorted(consumer.positions)
    assert len(sought) == PARTITIONS * len({tp.topic for tp in sought}) > PARTITIONS
