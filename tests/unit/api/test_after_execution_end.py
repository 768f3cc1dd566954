"""The API calls an execution over once its afterExecution tasks have ended, not at its end
state: the follow stream sends ``end`` then, a wait answers then, the log follow waits for
their lines, and a kill still reaches them.

The execution is the driver's (its updates are the executor's own records, made with
:func:`update_records`); the API's service runs without a broker, its client fed the records as
its consumer would hand them over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from aiokafka import TopicPartition

from kestream.api import execution_routes
from kestream.api.execution_end import after_execution_running, is_over
from kestream.api.execution_routes import follow_frames
from kestream.api.http import ApiError
from kestream.api.index.feed import IndexFeed
from kestream.api.index.sqlite import SQLiteStore
from kestream.api.service import ApiService, dump
from kestream.client import Client
from kestream.executor.snapshot import execution_model
from kestream.models.flow import parse_flow
from kestream.models.state import StateType as S
from kestream.runtime.context import BrokerContext
from kestream.runtime.execution_updates import update_records
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from kestream.testing import Driver

NS = "company.team"
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


FAILED_FLOW = f"""
id: failed-after-waits
namespace: {NS}
tasks:
  - id: broken
    type: io.kestra.plugin.core.execution.Fail
afterExecution:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


@dataclass
class _Record:
    offset: int
    key: bytes
    value: bytes


@dataclass
class _Run:
    """One execution's updates: while its afterExecution Pause waits, and after the kill."""

    id: str
    during: bytes
    after: bytes


@pytest.fixture(scope="module")
def run() -> _Run:
    with Driver() as driver:
        driver.deploy(FLOW)
        started = driver.start(NS, "after-waits")
        st = driver.states[started.id]
        assert st.state.current is S.SUCCESS and not st.terminal
        (during,) = update_records(st, [], terminal=False, full=True, max_bytes=1 << 20)
        driver.kill(started.id)
        st = driver.states[started.id]
        assert st.terminal
        (after,) = update_records(st, [], terminal=True, full=True, max_bytes=1 << 20)
    return _Run(started.id, during, after)


def _json(value: bytes) -> dict[str, object]:
    execution: dict[str, object] = orjson.loads(value)["execution"]
    return execution


@pytest.fixture
def service(tmp_path: Path) -> ApiService:
    settings = Settings(broker="unused:9092")
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    client = Client(ctx)
    client.registry.put(parse_flow(FLOW))
    client.registry.put(parse_flow(FAILED_FLOW))
    return ApiService(ctx, client, IndexFeed(ctx, SQLiteStore(tmp_path / "index.sqlite")))


def test_an_ended_execution_whose_after_execution_tasks_run_is_not_over(run: _Run) -> None:
    flow = parse_flow(FLOW)
    during, after = _json(run.during), _json(run.after)
    assert during["state"]["current"] == "SUCCESS"  # type: ignore[index]
    assert after_execution_running(during, flow) and not is_over(during, flow)
    assert not after_execution_running(after, flow) and is_over(after, flow)
    assert is_over(during, None)  # without its flow, the end state is all there is


def test_the_follow_ends_when_the_after_execution_tasks_have(
    run: _Run, service: ApiService
) -> None:
    async def scenario() -> list[tuple[str, str]]:
        frames: list[tuple[str, str]] = []
        stream: AsyncIterator[bytes] = follow_frames(service, _json(run.during))
        for _ in range(2):
            frames.append(_kind_and_state(await anext(stream)))
        nxt = asyncio.ensure_future(anext(stream))
        service.client._on_update(_Record(0, run.id.encode(), run.during))
        service.client._on_update(_Record(1, run.id.encode(), run.after))
        frames.append(_kind_and_state(await nxt))
        frames += [_kind_and_state(frame) async for frame in stream]
        return frames

    frames = asyncio.run(scenario())
    assert frames[0][0] == "start"
    assert frames[1] == ("progress", "SUCCESS")  # the end state, its afterExecution task running
    assert frames[-1] == ("end", "SUCCESS")
    assert [kind for kind, _ in frames].count("end") == 1


def test_an_execution_that_is_over_gets_end_at_once(run: _Run, service: ApiService) -> None:
    async def scenario() -> list[tuple[str, str]]:
        return [_kind_and_state(f) async for f in follow_frames(service, _json(run.after))]

    assert asyncio.run(scenario()) == [("start", ""), ("end", "SUCCESS")]


def test_a_wait_answers_once_the_after_execution_tasks_have_ended(
    run: _Run, service: ApiService
) -> None:
    async def scenario() -> dict[str, object]:
        waiting = asyncio.ensure_future(service.wait(run.id, 3600))
        await asyncio.sleep(0)
        service.client._on_update(_Record(0, run.id.encode(), run.during))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not waiting.done()
        service.client._on_update(_Record(1, run.id.encode(), run.after))
        answer = await waiting
        assert answer is not None
        return answer

    answer = asyncio.run(scenario())
    waited = {r["taskId"]: r["state"]["current"] for r in answer["taskRunList"]}  # type: ignore[attr-defined]
    assert answer["state"]["current"] == "SUCCESS" and waited["wait"] == "KILLED"  # type: ignore[index]


def test_the_kill_route_sends_the_kill_while_after_execution_tasks_run(
    run: _Run, service: ApiService
) -> None:
    assert not service.over(_json(run.during))  # the route sends the kill (202)...
    assert service.over(_json(run.after))  # ...and leaves one that is over as it is


class _Handle:
    """The route's handle, answering with one execution."""

    def __init__(self, service: ApiService, execution: dict[str, object]) -> None:
        self.service, self.execution = service, execution

    async def execution_for(self, request: object) -> tuple[ApiService, dict[str, object]]:
        return self.service, self.execution


def test_delete_refuses_while_after_execution_tasks_run_and_deletes_once_over(
    run: _Run, service: ApiService, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted: list[object] = []

    async def delete_execution(_service: object, execution: dict[str, object], **_: object) -> bool:
        deleted.append(execution["id"])
        return True

    monkeypatch.setattr(execution_routes, "delete_execution", delete_execution)
    request = make_mocked_request("DELETE", f"/api/v1/main/executions/{run.id}?deleteStorage=false")

    async def answer(execution: dict[str, object]) -> int:
        routes = execution_routes.ExecutionRoutes(cast(Any, _Handle(service, execution)))
        try:
            return (await routes.delete(request)).status
        except ApiError as exc:
            return exc.status

    assert asyncio.run(answer(_json(run.during))) == 409  # its end state, the Pause running
    assert deleted == []
    assert asyncio.run(answer(_json(run.after))) == 204
    assert deleted == [run.id]


def test_restart_refuses_while_after_execution_tasks_run_and_restarts_once_over(
    service: ApiService, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Driver() as driver:
        driver.deploy(FAILED_FLOW)
        failed = driver.start(NS, "failed-after-waits")
        during = dump(failed)
        over = dump(driver.kill(failed.id))
    assert during["state"]["current"] == over["state"]["current"] == "FAILED"
    restarted: list[object] = []

    async def restart(execution: dict[str, object]) -> None:
        restarted.append(execution["id"])

    monkeypatch.setattr(service, "restart", restart)
    request = make_mocked_request("POST", f"/api/v1/main/executions/{failed.id}/restart")

    async def answer(execution: dict[str, object]) -> tuple[int, str]:
        routes = execution_routes.ExecutionRoutes(cast(Any, _Handle(service, execution)))
        try:
            return (await routes.restart(request)).status, ""
        except ApiError as exc:
            return exc.status, str(exc.text)

    status, message = asyncio.run(answer(during))
    assert status == 409 and "afterExecution tasks still run" in message
    assert restarted == []
    assert asyncio.run(answer(over))[0] == 200
    assert restarted == [failed.id]


def test_replay_refuses_while_after_execution_tasks_run_and_replays_once_over(
    run: _Run, service: ApiService, monkeypatch: pytest.MonkeyPatch
) -> None:
    replayed: list[object] = []

    async def replay(execution: dict[str, object], *_: object, **__: object) -> dict[str, object]:
        replayed.append(execution["id"])
        return {"id": "new"}

    monkeypatch.setattr(service, "replay", replay)
    request = make_mocked_request("POST", f"/api/v1/main/executions/{run.id}/replay")

    async def answer(execution: dict[str, object]) -> tuple[int, str]:
        routes = execution_routes.ExecutionRoutes(cast(Any, _Handle(service, execution)))
        try:
            return (await routes.replay(request)).status, ""
        except ApiError as exc:
            return exc.status, str(exc.text)

    status, message = asyncio.run(answer(_json(run.during)))  # SUCCESS, the Pause running
    assert status == 409 and "afterExecution tasks still run" in message
    assert replayed == []
    assert asyncio.run(answer(_json(run.after)))[0] == 200
    assert replayed == [run.id]


def test_the_log_follow_waits_for_the_after_execution_tasks(run: _Run, service: ApiService) -> None:
    async def scenario() -> None:
        updates = TopicPartition(service.ctx.topics.updates, 0)
        await service.feed._handle({updates: [_Record(0, run.id.encode(), run.during)]})
        assert service.index.state(run.id) == "SUCCESS"
        assert await service.logs_end(run.id) is None  # its afterExecution task may still log

    asyncio.run(scenario())


def test_the_log_follow_reads_the_execution_again_only_once_the_executor_calls_it_over(
    run: _Run, service: ApiService, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    get = service.index.get

    def counted_get(execution_id: str, **kwargs: bool) -> dict[str, object] | None:
        reads.append(execution_id)
        return get(execution_id, **kwargs)

    logs = {TopicPartition(service.ctx.topics.logs, 0): 7}

    async def logs_end() -> dict[TopicPartition, int]:
        return logs

    monkeypatch.setattr(service.index, "get", counted_get)
    monkeypatch.setattr(service.feed, "logs_end", logs_end)

    async def scenario() -> None:
        updates = TopicPartition(service.ctx.topics.updates, 0)
        await service.feed._handle({updates: [_Record(0, run.id.encode(), run.during)]})
        for _ in range(5):  # the follow's polls while the afterExecution Pause waits
            assert await service.logs_end(run.id) is None
        assert reads == [run.id]  # the whole execution read once, not at every poll
        await service.feed._handle({updates: [_Record(1, run.id.encode(), run.after)]})
        service.client._on_update(_Record(1, run.id.encode(), run.after))  # the executor: over
        marks = None
        for _ in range(20):  # the client's wait hands over within the loop's next turns
            marks = await service.logs_end(run.id)
            if marks is not None:
                break
            await asyncio.sleep(0)
        assert marks == logs
        assert reads == [run.id, run.id]

    asyncio.run(scenario())


def _kind_and_state(frame: bytes) -> tuple[str, str]:
    lines = frame.decode().splitlines()
    kind = next(line[4:] for line in lines if line.startswith("id: "))
    data = orjson.loads(next(line[6:] for line in lines if line.startswith("data: ")))
    return kind, str((data.get("state") or {}).get("current", ""))


def test_the_driver_kill_reaches_only_the_after_execution_task() -> None:
    with Driver() as driver:
        driver.deploy(FLOW)
        started = driver.start(NS, "after-waits")
        assert not is_over(dump(started), parse_flow(FLOW))
        done = driver.kill(started.id)
        assert is_over(dump(done), parse_flow(FLOW))
        assert dump(execution_model(driver.states[started.id]))["state"]["current"] == "SUCCESS"
