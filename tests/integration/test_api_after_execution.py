"""On a real broker, through the API's routes: an execution whose afterExecution task still
runs shows its end state, but it is not over. Its follow stays open (``progress``) and sends
``end`` once that task has ended; ``?wait=true`` answers then, with the task's run in the
execution; the kill reaches the task (a Pause, or a script the worker stops) and the execution
keeps its end state."""

from __future__ import annotations

import asyncio
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
from kestream.tasks.scripts.process import group_alive

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
#: The afterExecution script writes the execution's id to ``started``, then waits for the test
#: to create ``release`` (both in the test's tmp_path).
#: ``after-gated`` ends SUCCESS, ``failed-gated`` FAILED.
GATED = """
id: {id}
namespace: {ns}
tasks:
  - id: {task}
afterExecution:
  - id: notify
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo {{{{ execution.id }}}} > {started}.tmp && mv {started}.tmp {started}
      - while [ ! -f {release} ]; do sleep 0.05; done
      - echo "notified {{{{ execution.state }}}}"
"""
_RETURNS = "ok\n    type: io.kestra.plugin.core.debug.Return\n    format: ok"
_FAILS = "broken\n    type: io.kestra.plugin.core.execution.Fail"
#: The afterExecution script writes its process group (``$$``: it leads a session of its own)
#: to ``group``, then sleeps until killed.
SLEEPS = """
id: after-sleeps
namespace: {ns}
tasks:
  - id: ok
    type: io.kestra.plugin.core.debug.Return
    format: ok
afterExecution:
  - id: notify
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo $$ > {group}.tmp && mv {group}.tmp {group}
      - sleep 1000
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
        for gated, task in (("after-gated", _RETURNS), ("failed-gated", _FAILS)):
            files = {"started": tmp_path / f"{gated}.started", "release": tmp_path / "release"}
            await service.deploy(GATED.format(ns=NS, id=gated, task=task, **files))
        await service.deploy(SLEEPS.format(ns=NS, group=tmp_path / "group"))
        for flow_id in ("after-waits", "after-gated", "failed-gated", "after-sleeps"):
            await eventually(lambda id_=flow_id: service.flow(NS, id_) is not None, 30.0)
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
        # Bounded: a follow that never ends fails the test instead of holding it for ever.
        line = await asyncio.wait_for(stream.content.readline(), 120.0)
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


def _runs(execution: dict[str, Any]) -> dict[str, str]:
    return {run["taskId"]: run["state"]["current"] for run in execution.get("taskRunList", [])}


async def test_wait_answers_once_the_after_execution_task_has_ended(
    api: TestClient, eventually: Eventually, tmp_path: Path
) -> None:
    """The execution is SUCCESS while its afterExecution script waits for ``release``; the
    ``?wait=true`` answer comes after it, and holds its ended run."""
    waiting = asyncio.ensure_future(api.post(f"/api/v1/main/executions/{NS}/after-gated?wait=true"))

    started = tmp_path / "after-gated.started"
    await eventually(started.exists, 60.0, message="the afterExecution script started")
    execution_id = started.read_text().strip()

    async def running() -> bool:
        got = await (await api.get(f"/api/v1/main/executions/{execution_id}")).json()
        return got["state"]["current"] == "SUCCESS" and _runs(got).get("notify") == "RUNNING"

    await eventually(running, 30.0, message="the API shows the script running")
    assert not waiting.done()  # the end state is there, the execution is not over
    (tmp_path / "release").touch()
    answer = await waiting
    assert answer.status == 200, await answer.text()
    waited = await answer.json()
    assert waited["id"] == execution_id
    assert waited["state"]["current"] == "SUCCESS"
    assert _runs(waited) == {"ok": "SUCCESS", "notify": "SUCCESS"}


async def test_the_kill_stops_the_after_execution_script_on_the_worker(
    api: TestClient, eventually: Eventually, tmp_path: Path
) -> None:
    """The kill reaches the afterExecution script running on the worker: its process group
    stops, its run ends KILLED, the follow then sends ``end``, and the execution stays SUCCESS."""
    created = await api.post(f"/api/v1/main/executions/{NS}/after-sleeps")
    assert created.status == 200, await created.text()
    path = f"/api/v1/main/executions/{(await created.json())['id']}"
    marker = tmp_path / "group"
    await eventually(marker.exists, 60.0, message="the afterExecution script started")
    group = int(marker.read_text())
    assert group_alive(group)

    async def running() -> bool:
        got = await (await api.get(path)).json()
        return got["state"]["current"] == "SUCCESS" and _runs(got).get("notify") == "RUNNING"

    await eventually(running, 30.0, message="the API shows the script running")
    stream = await api.get(path + "/follow")
    assert (await _frame(stream))[0] == "start"
    kind, shown = await _frame(stream)
    assert (kind, shown["state"]["current"]) == ("progress", "SUCCESS")
    killed = await api.delete(path + "/kill")
    assert killed.status == 202, await killed.text()
    while kind != "end":
        kind, shown = await _frame(stream)
    stream.close()
    assert shown["state"]["current"] == "SUCCESS"
    assert "KILLING" not in [h["state"] for h in shown["state"]["histories"]]
    (notify,) = [run for run in shown["taskRunList"] if run["taskId"] == "notify"]
    assert notify["state"]["current"] == "KILLED"
    assert notify["attempts"][-1]["state"]["current"] == "KILLED"
    await eventually(lambda: not group_alive(group), 30.0, message="the worker stopped the script")


async def test_restart_is_refused_until_the_after_execution_task_has_ended(
    api: TestClient, eventually: Eventually, tmp_path: Path
) -> None:
    """A FAILED execution whose afterExecution script runs is not over: its restart answers
    409 and changes nothing; once the script has ended, the restart runs."""
    created = await api.post(f"/api/v1/main/executions/{NS}/failed-gated")
    assert created.status == 200, await created.text()
    path = f"/api/v1/main/executions/{(await created.json())['id']}"
    await eventually((tmp_path / "failed-gated.started").exists, 60.0, message="script started")

    async def running() -> bool:
        got = await (await api.get(path)).json()
        return got["state"]["current"] == "FAILED" and _runs(got).get("notify") == "RUNNING"

    await eventually(running, 30.0, message="the API shows the script running")
    refused = await api.post(path + "/restart")
    assert refused.status == 409, await refused.text()
    assert "afterExecution tasks still run" in (await refused.json())["message"]
    (tmp_path / "release").touch()

    async def restarted() -> bool:
        return (await api.post(path + "/restart")).status == 200

    await eventually(restarted, 60.0, message="the restart once the script has ended")
    again = await eventually(
        lambda: _attempt(api, path, 2), 60.0, message="the second attempt ends FAILED again"
    )
    assert _runs(again) == {"broken": "FAILED", "notify": "SUCCESS"}  # ran again, released


async def _attempt(api: TestClient, path: str, number: int) -> dict[str, Any] | None:
    """The execution once its attempt ``number`` is over, else None."""
    stream = await api.get(path + "/follow")
    try:
        kind, shown = await _frame(stream)
        while kind == "start":
            kind, shown = await _frame(stream)
    finally:
        stream.close()
    over = kind == "end" and shown["metadata"]["attemptNumber"] == number
    return shown if over else None
