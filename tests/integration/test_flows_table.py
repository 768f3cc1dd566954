"""The flows topic as a global table: revisions, bad records, listeners, deletion, late readers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import Flow
from kestream.models.validation import FlowValidationError
from kestream.runtime.context import connect
from kestream.runtime.flows_table import FlowsTable, flow_value
from kestream.runtime.kafka import make_producer
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

Eventually = Callable[..., Awaitable[Any]]

V1 = """
id: hello
namespace: test.flows
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: one
"""

V2 = V1.replace("message: one", "message: two")

OTHER = """
id: other
namespace: test.flows
tasks:
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: x
"""

BROKEN = """
id: broken
namespace: test.flows
tasks:
  - id: nope
    type: io.kestra.plugin.core.log.NoSuchTask
"""


def _settings(broker: BrokerHandle, prefix: str) -> Settings:
    return Settings(topic_prefix=prefix, broker=broker.bootstrap, partitions=4)


async def test_revisions_bad_records_and_a_late_reader(
    broker: BrokerHandle, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = await connect(_settings(broker, topic_prefix))
    table = FlowsTable(ctx, FlowRegistry())
    heard: list[Flow] = []
    table.add_listener(heard.append)
    await table.start()
    producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
    await producer.start()
    try:
        assert table.loaded.is_set() and table.flows() == []
        first = await table.publish(V1)
        again = await table.publish(V1)  # same source: same revision, nothing written
        second = await table.publish(V2, producer)
        assert (first.revision, again.revision, second.revision) == (1, 1, 2)
        with pytest.raises(FlowValidationError, match="NoSuchTask"):
            await table.publish(BROKEN)

        # Records no publisher would write: a flow that does not validate, not JSON, no revision,
        # and a head record that is not JSON.
        flows = ctx.topics.flows
        await producer.send_and_wait(flows, flow_value(BROKEN, 1), key=b"test.flows/broken/1")
        await producer.send_and_wait(flows, b"{not json", key=b"test.flows/garbage/1")
        await producer.send_and_wait(flows, b'{"source": "x"}', key=b"test.flows/norev/1")
        await producer.send_and_wait(flows, b"{not json", key=b"test.flows/badhead")
        with caplog.at_level(logging.WARNING, logger="kestream.flows"):
            other = await table.publish(OTHER)  # read back past the bad records
        assert other.revision == 1
        warned = "\n".join(r.getMessage() for r in caplog.records)
        assert "test.flows/broken/1 revision 1" in warned and "NoSuchTask" in warned
        assert "test.flows/garbage/1" in warned and "test.flows/norev/1" in warned
        assert "the head of test.flows/badhead" in warned

        assert [(f.id, f.revision) for f in heard] == [("hello", 1), ("hello", 2), ("other", 1)]
        assert table.latest("test.flows", "hello") == second

        # A table started later reads the whole topic before it says it is loaded.
        late_registry = FlowRegistry()
        late = FlowsTable(ctx, late_registry)
        late_heard: list[Flow] = []
        late.add_listener(late_heard.append)
        await late.start()
        try:
            assert late.loaded.is_set()
            one = late_registry.get("test.flows", "hello", 1)
            two = late_registry.get("test.flows", "hello", 2)
            assert one is not None and one.source == V1 and one.revision == 1
            assert two is not None and two.source == V2
            assert late.latest("test.flows", "hello") == two
            assert late_registry.get("test.flows", "broken") is None
            assert sorted((f.id, f.revision) for f in late.flows()) == [("hello", 2), ("other", 1)]
            assert len(late_heard) == 3
        finally:
            await late.stop()
    finally:
        await producer.stop()
        await table.stop()


async def test_deletion_is_followed_live_and_revisions_continue(
    broker: BrokerHandle, topic_prefix: str, eventually: Eventually
) -> None:
    ctx = await connect(_settings(broker, topic_prefix))
    writer = FlowsTable(ctx, FlowRegistry())
    reader_registry = FlowRegistry()
    reader = FlowsTable(ctx, reader_registry)
    await writer.start()
    await reader.start()
    try:
        await writer.publish(V1)
        await eventually(lambda: reader.latest("test.flows", "hello"), message="live follow")
        assert await writer.delete("test.flows", "hello")
        assert writer.latest("test.flows", "hello") is None
        assert not await writer.delete("test.flows", "hello")  # already gone
        await eventually(lambda: reader.is_deleted("test.flows", "hello"), message="tombstone")
        assert reader.latest("test.flows", "hello") is None and reader.flows() == []
        # Executions in flight still resolve the revision they name.
        assert reader.get("test.flows", "hello", 1) is not None
        again = await writer.publish(V1)  # a deleted flow comes back with a new revision
        assert again.revision == 2
        await eventually(lambda: reader.latest("test.flows", "hello"), message="redeploy")
        assert not reader.is_deleted("test.flows", "hello")
    finally:
        await reader.stop()
        await writer.stop()
