"""On a real broker, through the API's routes: an execution whose afterExecution task still
runs shows its end state, its follow stays open (``progress``), the kill reaches that task,
and only then does the follow send ``end``; the execution keeps its end state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from kestream.api.app import install_api
from kestream.api.handle import ApiHandle
from kestream.api.service import ApiService
from kestream.executor.flow_registry import FlowRegistry
from kestream.runtime.context import connect
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings

pytestmark = pytest.mark.integration

Eventually = Callable[..., Awaitable[Any]]
NS = "it.after"
FLOW = f"""
id: after-waits
namespace: {NS}
tasks:
  - id: ok
    type: io.kestra.plugin.core.debug.Return
    format: ok
afterExecution:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


@pytest.fixture
async def api(  # type: ignore[no-untyped-def]
    broker, topic_prefix: str, tmp_path: Path, eventually: Eventually
) -> AsyncIterator[TestClient]:
    settings = Settings(
        broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=1, data_dir=str(tmp_path)
    )
    ctx = await connect(settings)
    registry = FlowRegistry()
    table = FlowsTable(ctx, registry)
    await table.start()
    executor, worker = ExecutorService(ctx, registry), WorkerService(ctx, registry)
    await executor.start()
    await worker.start()
    service = await ApiService.start(ctx)
    app = web.Application()
    install_api(app, ApiHandle(settings, service))
    client = TestClient(TestServer(app))
    try:
        await eventually(lambda: service.ready, 60.0, message="the index caught up")
        await service.deploy(FLOW)
        await eventually(lambda: service.flow(NS, "after-waits") is not None, 30.0)
        await client.start_server()
        yield client
    finally:
        await client.close()
        await service.stop()
        await worker.stop()
        await executor.stop()
        await table.stop()


async def _frame(stream: ClientResponse) -> tuple[str, dict[str, Any]]:
    kind, data = "", b""
    while True:
        line = await stream.content.readline()
        assert line, "the stream closed"
        if line.startswith(b"id: "):
            kind = line[4:].strip().decode()
        elif line.startswith(b"data: "):
            data = line[6:]
        elif line == b"\n" and kind:
            return kind, orjson.loads(data)


async def test_follow_and_kill_while_the_after_execution_task_runs(
    api: TestClient,
    eventually: Eventually,
) -> None:
    created = await api.post(f"/api/v1/main/executions/{NS}/after-waits")
    assert created.status == 200, await created.text()
    execution_id = (await created.json())["id"]
    path = f"/api/v1/main/executions/{execution_id}"

    async def pausing() -> bool:
        got = await (await api.get(path)).json()
        runs = {run["taskId"]: run["state"]["current"] for run in got.get("taskRunList", [])}
        return got["state"]["current"] == "SUCCESS" and runs.get("wait") == "PAUSED"

    await eventually(pausing, 60.0, message="the afterExecution Pause waits")
    stream = await api.get(path + "/follow")
    assert (await _frame(stream))[0] == "start"
    kind, shown = await _frame(stream)
    assert (kind, shown["state"]["current"]) == ("progress", "SUCCESS")

    killed = await api.delete(path + "/kill?isOnKillCascade=false")
    assert killed.status == 202, await killed.text()  # not "already finished": a task runs
    while kind != "end":
        kind, shown = await _frame(stream)
    runs = {run["taskId"]: run["state"]["current"] for run in shown["taskRunList"]}
    assert shown["state"]["current"] == "SUCCESS" and runs == {"ok": "SUCCESS", "wait": "KILLED"}
    stream.close()

    async def over() -> bool:
        return (await api.delete(path + "/kill?isOnKillCascade=false")).status == 409

    await eventually(over, 30.0, message="the index has the execution over")
