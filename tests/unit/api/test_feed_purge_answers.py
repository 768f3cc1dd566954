"""The API learns the executor's answer to a purge from its own index feed: the record that
deletes the execution, or the refusal; a purge of lines only, by another request, is no answer.
The feed runs here without a broker: fetched records go straight to its handler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from aiokafka import TopicPartition

from kestream.api.index.feed import IndexFeed
from kestream.api.index.purges import PurgeRecord
from kestream.api.index.sqlite import SQLiteStore
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.topics import Topics
from kestream.settings import Settings


@dataclass
class _Record:
    offset: int
    key: bytes
    value: bytes


def test_watches_are_answered_by_deletions_and_refusals_only(tmp_path: Path) -> None:
    settings = Settings(broker="unused:9092")
    topics = Topics.of(settings)
    store = SQLiteStore(tmp_path / "index.sqlite")
    feed = IndexFeed(BrokerContext(settings, "unused:9092", "tansu", topics), store)
    sent = [
        ("gone", PurgeRecord(True, all_logs=True)),
        ("kept", PurgeRecord(False, refused=True)),
        ("waits", PurgeRecord(False, all_logs=True)),  # lines only: not the executor's answer
    ]
    fetched = {
        TopicPartition(topics.logs, 0): [
            _Record(n, key.encode(), records.dumps(record.to_value()))
            for n, (key, record) in enumerate(sent)
        ]
    }

    async def scenario() -> dict[str, bool]:
        answers = feed.watch_purges(["gone", "kept", "waits"])
        await feed._handle(fetched)
        assert not answers["waits"].done()
        feed.unwatch_purges(answers)
        assert feed._purge_watches == {}
        return {k: f.result().execution for k, f in answers.items() if f.done()}

    try:
        assert asyncio.run(scenario()) == {"gone": True, "kept": False}
        assert store.get("gone") is None  # applied before it was answered
    finally:
        store.close()
