"""On a real broker, an execution whose last update takes several records (a small record limit,
many task runs) never shows in the index with its end state and only part of its task runs,
even when the feed fetches one record at a time: what ``GET`` and a restart read from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kestream.api.index.feed import IndexFeed
from kestream.api.index.sqlite import SQLiteStore
from kestream.api.index.store import ApplyResult, Batch
from kestream.client import Client
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.state import StateType
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings

pytestmark = pytest.mark.integration

CATCH_UP_S = 60.0
RUNS = 120
FLOW = f"""
id: wide
namespace: test.chunks
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{{{ range(1, {RUNS}) }}}}"
    concurrencyLimit: 0
    tasks:
      - id: out
        type: io.kestra.plugin.core.output.OutputValues
        values:
          text: "{{{{ taskrun.value }}}} {"p" * 1000}"
  - id: fail
    type: io.kestra.plugin.core.execution.Fail
"""


class _Watched(SQLiteStore):
    """The SQLite index, noting after each transaction what a reader would see of one execution."""

    def __init__(self, path: Path, execution_id: str) -> None:
        super().__init__(path)
        self.execution_id = execution_id
        self.seen: list[tuple[str, int]] = []

    def apply(self, batch: Batch) -> ApplyResult:
        result = super().apply(batch)
        got = self.get(self.execution_id)
        if got is not None:
            self.seen.append((got["state"]["current"], len(got["taskRunList"])))
        return result


@pytest.fixture
async def ctx(broker: Any, topic_prefix: str) -> AsyncIterator[BrokerContext]:
    settings = Settings(
        broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=1, max_record_bytes=32768
    )
    ctx = await connect(settings)
    registry = FlowRegistry()
    table = FlowsTable(ctx, registry)
    await table.start()
    executor = ExecutorService(ctx, registry)
    worker = WorkerService(ctx, registry)
    await executor.start()
    await worker.start()
    try:
        yield ctx
    finally:
        await worker.stop()
        await executor.stop()
        await table.stop()


async def test_the_index_never_shows_the_end_before_every_task_run(
    ctx: BrokerContext, tmp_path: Path
) -> None:
    client = Client(ctx)
    await client.start()
    try:
        await client.deploy(FLOW)
        execution_id = await client.submit("test.chunks", "wide")
        ended = await client.wait(execution_id, timeout=120)
    finally:
        await client.close()
    assert ended.state.current is StateType.FAILED
    runs = len(ended.taskRunList)
    assert runs > RUNS

    store = _Watched(tmp_path / "index.sqlite", execution_id)
    feed = IndexFeed(ctx, store, max_records=1)  # every fetch cuts a multi-record update
    try:
        await feed.start()
        await asyncio.wait_for(feed.caught_up.wait(), CATCH_UP_S)
    finally:
        await feed.stop()
    assert len(ended.model_dump_json()) > 4 * 32768  # its last update took several records
    assert store.seen[-1] == ("FAILED", runs)
    assert {seen for seen in store.seen if seen[0] == "FAILED"} == {("FAILED", runs)}
    store.close()
