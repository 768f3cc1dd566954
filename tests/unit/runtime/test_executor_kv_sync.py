"""The executor syncs the KV store once before a batch of records when a deployed flow calls
``kv()`` (its steps then read the table without waiting), and not at all otherwise."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from kestream.executor.flow_registry import FlowRegistry
from kestream.kv.memory import MemoryKVStore
from kestream.kv.store import use_store
from kestream.models.flow import parse_flow
from kestream.runtime.executor_service import ExecutorService


class CountingStore(MemoryKVStore):
    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    async def async_sync(self) -> None:
        self.syncs += 1


LOG = "  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: "
PLAIN = "id: a\nnamespace: n\ntasks:\n" + LOG + "hi"
READS = "id: b\nnamespace: n\ntasks:\n" + LOG + "\"{{ kv('k') }}\""


async def test_one_sync_per_batch_of_records_once_a_flow_calls_kv() -> None:
    registry = FlowRegistry()
    # _sync_kv reads nothing else: the flows, and the results handed over in this process
    service: Any = SimpleNamespace(registry=registry, local=[])
    records = {TopicPartition("executions", 0): [object(), object()]}
    empty: dict[TopicPartition, list[object]] = {TopicPartition("executions", 0): []}
    store = CountingStore()
    with use_store(store):
        registry.put(parse_flow(PLAIN))
        await ExecutorService._sync_kv(service, records)
        assert store.syncs == 0  # no flow calls kv(): no round trip to the broker
        registry.put(parse_flow(READS))
        await ExecutorService._sync_kv(service, empty)
        assert store.syncs == 0  # a poll that brought nothing (timers only)
        await ExecutorService._sync_kv(service, records)
        assert store.syncs == 1  # two records, one sync
        service.local = ["a result handed over by the local worker"]
        await ExecutorService._sync_kv(service, empty)
        assert store.syncs == 2  # nothing fetched, but a handed-over result steps
