"""In standalone, every route that tells its caller an execution exists (a creation, a webhook,
a replay, a restart) waits for the broker mirror's word (kestream.runtime.mirror_ack) for the
very record it sent; when the word is no, the 503 names the execution and where to look it up,
and does not invite a second send (which would create a second execution)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kestream.api.app import json_errors
from kestream.api.index.feed import IndexFeed
from kestream.api.index.sqlite import SQLiteStore
from kestream.api.service import ApiService, dump
from kestream.client import Client
from kestream.executor import events as ev
from kestream.executor.snapshot import execution_model
from kestream.models.flow import Flow, parse_flow
from kestream.models.state import StateType as S
from kestream.runtime.context import BrokerContext
from kestream.runtime.mirror_ack import NotDurable
from kestream.runtime.topics import Topics
from kestream.scheduler.webhooks import find_webhook, webhook_execution
from kestream.settings import Settings
from kestream.testing import Driver

NS = "company.team"
FLOW = f"""
id: durable
namespace: {NS}
tasks:
  - id: broken
    type: io.kestra.plugin.core.execution.Fail
triggers:
  - id: hook
    type: io.kestra.plugin.core.trigger.Webhook
    key: a-key
"""


class _Mirror:
    """The API's MirrorAck as the service uses it: records each wait, says no when told."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, int]] = []
        self.refuse: str | None = None

    async def wait(self, topic: str, partition: int, offset: int) -> None:
        self.asked.append((topic, partition, offset))
        if self.refuse is not None:
            raise NotDurable(self.refuse)

    async def close(self) -> None:
        pass


class _Sent:
    """The client's send: each event gets the next offset of its topic's partition 0."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def __call__(self, event: Any) -> SimpleNamespace:
        self.events.append(event)
        return SimpleNamespace(topic="kestream.executions", partition=0, offset=len(self.events))


@pytest.fixture
def flow() -> Flow:
    return parse_flow(FLOW)


@pytest.fixture
def ended(flow: Flow) -> dict[str, Any]:
    """A failed execution's JSON, as the index holds it."""
    with Driver() as driver:
        driver.deploy(FLOW)
        started = driver.start(NS, "durable")
        st = driver.states[started.id]
        assert st.state.current is S.FAILED
        return dump(execution_model(st))


@pytest.fixture
async def parts(tmp_path: Path, flow: Flow) -> AsyncIterator[tuple[ApiService, _Mirror, _Sent]]:
    settings = Settings(broker="unused:9092")
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    client = Client(ctx)
    client.registry.put(flow)
    sent = _Sent()
    client.send = sent  # type: ignore[method-assign]
    mirror = _Mirror()
    service = ApiService(
        ctx,
        client,
        IndexFeed(ctx, SQLiteStore(tmp_path / "index.sqlite")),
        mirror,  # type: ignore[arg-type]
    )
    yield service, mirror, sent
    service.index.close()


async def _every_send(service: ApiService, flow: Flow, ended: dict[str, Any]) -> list[str]:
    """A creation, a webhook call, a replay and a restart; the ids they answered with."""
    created = await service.create_execution(flow, {}, {})
    trigger = find_webhook(flow, "a-key")
    assert trigger is not None
    hooked = await service.submit_event(
        webhook_execution(
            flow,
            trigger,
            body=None,
            content_type=None,
            headers={},
            parameters={},
            execution_id="hooked",
        ),
        flow,
    )
    replayed = await service.replay(ended, flow, task_run_id=None, inputs=None)
    await service.restart(ended)
    return [created["id"], hooked["id"], replayed["id"], ended["id"]]


async def test_each_route_that_sends_an_execution_waits_for_its_own_record(
    parts: tuple[ApiService, _Mirror, _Sent], flow: Flow, ended: dict[str, Any]
) -> None:
    service, mirror, sent = parts
    ids = await _every_send(service, flow, ended)
    assert [e.execution_id for e in sent.events] == ids
    assert isinstance(sent.events[-1], ev.Restart)
    assert mirror.asked == [("kestream.executions", 0, n) for n in (1, 2, 3, 4)]


@pytest.mark.parametrize("which", range(4))
async def test_a_refused_wait_names_the_execution_it_sent(
    parts: tuple[ApiService, _Mirror, _Sent], flow: Flow, ended: dict[str, Any], which: int
) -> None:
    service, mirror, sent = parts
    sends = [
        lambda: service.create_execution(flow, {}, {}),
        lambda: service.submit_event(
            webhook_execution(
                flow,
                find_webhook(flow, "a-key"),  # type: ignore[arg-type]
                body=None,
                content_type=None,
                headers={},
                parameters={},
                execution_id="hooked",
            ),
            flow,
        ),
        lambda: service.replay(ended, flow, task_run_id=None, inputs=None),
        lambda: service.restart(ended),
    ]
    mirror.refuse = "the broker mirror is not running"
    with pytest.raises(NotDurable, match="not running") as refused:
        await sends[which]()
    (event,) = sent.events
    assert refused.value.execution_id == event.execution_id


async def _raising(exc: Exception) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async def handler(_: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[json_errors])
    app.router.add_post("/api/v1/{tenant}/executions/{namespace}/{flowId}", handler)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_the_503_gives_the_id_and_its_location_and_no_retry_after() -> None:
    refused = NotDurable("the broker mirror is not running", execution_id="4Xy z")
    async for client in _raising(refused):
        reply = await client.post("/api/v1/main/executions/company.team/durable")
        assert reply.status == 503
        assert "Retry-After" not in reply.headers
        assert reply.headers["Location"] == "/api/v1/main/executions/4Xy%20z"
        body = await reply.json()
        assert body["id"] == "4Xy z"
        assert "not running" in body["message"] and "another execution" in body["message"]
