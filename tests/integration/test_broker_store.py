"""The embedded broker's mirror and restore against real Tansu brokers: what one broker had, a
fresh one gets back at the same offsets, with the groups' committed offsets.

Each test starts its own brokers (a restore needs an empty one), whatever ``--kafka-backend``
says: the mirror exists for the embedded broker only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kestream.runtime.broker_log import StoredRecord, encode, read_frames
from kestream.runtime.broker_store import BrokerStore, RestoreError
from kestream.runtime.embedded_broker import EmbeddedBroker
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.settings import Settings

pytestmark = pytest.mark.integration

Eventually = Callable[..., Awaitable[Any]]


def _settings(tmp_path: Path) -> Settings:
    return Settings(topic_prefix="st.", data_dir=str(tmp_path), partitions=4)


async def _create(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def _read_all(settings: Settings, bootstrap: str, tp: TopicPartition, count: int) -> list:
    consumer = make_consumer(settings, bootstrap, "tansu", group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        records: list = []
        while len(records) < count:
            batch = await consumer.getmany(tp, timeout_ms=2000)
            assert batch, f"only {len(records)} of {count} records came back"
            records += batch[tp]
        return records
    finally:
        await consumer.stop()


async def test_a_fresh_broker_gets_records_offsets_and_group_offsets_back(
    tmp_path: Path, eventually: Eventually
) -> None:
    settings = _settings(tmp_path)
    executions, members = settings.topic("executions"), settings.topic("members")
    store = BrokerStore(settings, tmp_path / "broker")
    async with EmbeddedBroker() as broker:
        await _create(broker.bootstrap, executions, 4)
        await _create(broker.bootstrap, members, 1)
        await store.start_mirror(broker.bootstrap)
        producer = make_producer(settings, broker.bootstrap, "tansu")
        await producer.start()
        for i in range(40):
            await producer.send(
                executions,
                value=f"v{i}".encode(),
                key=f"k{i % 7}".encode(),
                partition=i % 4,
                headers=[("n", str(i).encode())],
                timestamp_ms=1_700_000_000_000 + i,
            )
        await producer.send_and_wait(members, value=b"a process that will be gone")
        await producer.stop()
        group = make_consumer(
            settings, broker.bootstrap, "tansu", group_id=settings.topic("executor")
        )
        await group.start()
        tps = [TopicPartition(executions, p) for p in range(4)]
        group.assign(tps)
        for tp in tps:
            group.seek(tp, 0)
        await group.commit({tps[0]: 6, tps[1]: 10})  # partition 0 part-way, partition 1 at its end
        await group.stop()
        snapshots = store.snapshots
        await eventually(lambda: store.snapshots > snapshots + 1, 20, message="offset snapshot")
        await store.stop_mirror()

    assert store.topics() == {executions: 4}  # the members topic is not kept
    assert store.group_offsets()[settings.topic("executor")] == {tps[0]: 6, tps[1]: 10}

    async with EmbeddedBroker() as fresh:
        report = await store.restore(fresh.bootstrap)
        assert (report.topics, report.records, report.groups) == (1, 40, 1)
        back = await _read_all(settings, fresh.bootstrap, tps[2], 10)
        assert [(r.offset, r.key, r.value, r.timestamp) for r in back] == [
            (n, f"k{i % 7}".encode(), f"v{i}".encode(), 1_700_000_000_000 + i)
            for n, i in enumerate(range(2, 40, 4))
        ]
        assert [dict(r.headers)["n"] for r in back] == [str(i).encode() for i in range(2, 40, 4)]
        reader = make_consumer(
            settings, fresh.bootstrap, "tansu", group_id=settings.topic("executor")
        )
        await reader.start()
        try:
            assert await reader.committed(tps[0]) == 6
            assert await reader.committed(tps[1]) == 10
        finally:
            await reader.stop()
        # The mirror goes on from where the files end, on the new broker.
        await store.start_mirror(fresh.bootstrap)
        producer = make_producer(settings, fresh.bootstrap, "tansu")
        await producer.start()
        await producer.send_and_wait(executions, value=b"after", partition=2)
        await producer.stop()
        path = tmp_path / "broker" / "log" / executions / "2.log"
        await eventually(lambda: len(read_frames(path.read_bytes())[0]) == 11, 10)
        await store.stop_mirror()
    assert read_frames(path.read_bytes())[0][-1].value == b"after"


async def test_a_torn_tail_is_dropped_and_a_gap_refuses_the_restore(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    topic = settings.topic("logs")
    store = BrokerStore(settings, tmp_path / "broker")
    (tmp_path / "broker" / "topics.json").write_text(f'{{"{topic}": 2}}')
    part0 = tmp_path / "broker" / "log" / topic / "0.log"
    part0.parent.mkdir(parents=True)
    whole = [StoredRecord(i, 1, None, b"x", ()) for i in range(3)]
    part0.write_bytes(b"".join(map(encode, whole)) + encode(whole[0])[:7])
    async with EmbeddedBroker() as broker:
        report = await store.restore(broker.bootstrap)
        assert report.records == 3
    store.close()

    part1 = tmp_path / "broker" / "log" / topic / "1.log"
    part1.write_bytes(
        encode(StoredRecord(0, 1, None, b"a", ())) + encode(StoredRecord(2, 1, None, b"b", ()))
    )
    async with EmbeddedBroker() as broker:
        with pytest.raises(RestoreError, match=rf"{topic}\[1\]: record 2 landed at offset 1"):
            await BrokerStore(settings, tmp_path / "broker").restore(broker.bootstrap)
