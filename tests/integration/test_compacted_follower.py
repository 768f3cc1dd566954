"""CompactedFollower on a real broker: read whole at start, then followed live.

It serves the triggers API's table and a standby scheduler's warm trigger state; both depend on
a record written before ``start`` being applied by the time ``start`` returns, on a record
written later arriving without a restart, and on ``catch_up`` covering every write made before
it was called (a standby taking the lease acts on that).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka.structs import ConsumerRecord

from kestream.runtime.compacted_follower import CompactedFollower
from kestream.runtime.context import connect
from kestream.runtime.kafka import make_producer
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

Eventually = Callable[..., Awaitable[Any]]


async def test_reads_whole_then_follows_and_catches_up(
    broker: BrokerHandle, topic_prefix: str, eventually: Eventually
) -> None:
    settings = Settings(broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=2)
    ctx = await connect(settings)
    topic = ctx.topics.triggers
    producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
    await producer.start()
    table: dict[bytes, bytes] = {}

    def apply(record: ConsumerRecord[Any, Any]) -> None:
        if record.value is None:
            table.pop(record.key, None)
        else:
            table[record.key] = record.value

    follower = CompactedFollower(ctx, topic, apply, name="test-follower")
    try:
        for key in (b"a", b"b", b"c"):
            await producer.send_and_wait(topic, b"before-" + key, key=key)
        await producer.send_and_wait(topic, None, key=b"c")  # a tombstone deletes
        await follower.start()
        assert table == {b"a": b"before-a", b"b": b"before-b"}
        assert follower.alive

        await producer.send_and_wait(topic, b"live", key=b"d")
        await eventually(lambda: table.get(b"d") == b"live", 30.0, message="a live record")

        for index in range(20):
            await producer.send_and_wait(topic, f"v{index}".encode(), key=b"a")
        await follower.catch_up()
        assert table[b"a"] == b"v19"
    finally:
        await follower.stop()
        await producer.stop()
    assert not follower.alive
