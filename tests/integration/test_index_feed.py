"""The index feed on a real broker: executions run by the real executor and worker are indexed
with their states, counts, task runs and logs; a restarted feed resumes from the database's own
offsets and doubles nothing; an unreadable record is dead-lettered and stepped over."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kestream.api import log_routes
from kestream.api.handle import ApiHandle
from kestream.api.index.feed import IndexFeed
from kestream.api.index.query import parse_search_params
from kestream.api.index.sqlite import SQLiteStore
from kestream.api.index.store import Store
from kestream.api.log_routes import LogFilter, LogRoutes
from kestream.api.service import ApiService
from kestream.client import Client
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.state import StateType
from kestream.runtime.compacted import topic_partitions
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.kafka import make_consumer
from kestream.runtime.tansu_compat import fetch_highwaters
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings

pytestmark = pytest.mark.integration

Eventually = Callable[..., Awaitable[Any]]
CATCH_UP_S = 60.0
NAMESPACE = "test.index"

OK_FLOW = f"""
id: ok
namespace: {NAMESPACE}
labels:
  kind: ok
tasks:
  - id: greet
    type: io.kestra.plugin.core.log.Log
    message: "hello {{{{ inputs.who }}}}"
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.05S
  - id: answer
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ inputs.who }}}}"
inputs:
  - id: who
    type: STRING
    defaults: world
"""

CHATTY_FLOW = f"""
id: chatty
namespace: {NAMESPACE}
tasks:
  - id: talk
    type: io.kestra.plugin.core.flow.ForEach
    values: [1, 2, 3, 4, 5, 6, 7]
    tasks:
      - id: say
        type: io.kestra.plugin.core.log.Log
        message: "line {{{{ taskrun.value }}}}"
"""

BOOM_FLOW = f"""
id: boom
namespace: {NAMESPACE}.sub
tasks:
  - id: warn
    type: io.kestra.plugin.core.log.Log
    level: WARN
    message: about to fail
  - id: fail
    type: io.kestra.plugin.core.execution.Fail
    errorMessage: boom
"""


@dataclass
class Installation:
    ctx: BrokerContext
    client: Client
    path: Path


@pytest.fixture
async def installation(
    broker: Any, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Installation]:
    settings = Settings(broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=4)
    ctx = await connect(settings)
    registry = FlowRegistry()
    table = FlowsTable(ctx, registry)
    await table.start()
    executor = ExecutorService(ctx, registry)
    worker = WorkerService(ctx, registry)
    await executor.start()
    await worker.start()
    client = await Client.connect(settings)
    try:
        yield Installation(ctx, client, tmp_path / "index.sqlite")
    finally:
        await client.close()
        await worker.stop()
        await executor.stop()
        await table.stop()


async def _search(store: Store, **params: Any) -> tuple[list[dict[str, Any]], int]:
    listing = await asyncio.to_thread(store.search, parse_search_params(params))
    return listing.results, listing.total


async def _run_all(client: Client) -> tuple[list[str], list[str]]:
    await client.deploy(OK_FLOW)
    await client.deploy(BOOM_FLOW)
    ok = [
        await client.submit(
            NAMESPACE, "ok", {"who": f"w{i}"}, labels={"team": "a" if i % 2 else "b"}
        )
        for i in range(4)
    ]
    boom = [await client.submit(f"{NAMESPACE}.sub", "boom") for _ in range(2)]
    ended = await asyncio.gather(*(client.wait(i, timeout=60) for i in ok + boom))
    assert [e.state.current for e in ended] == [StateType.SUCCESS] * 4 + [StateType.FAILED] * 2
    return ok, boom


async def test_the_feed_indexes_what_the_executor_produced(
    installation: Installation, eventually: Eventually
) -> None:
    client = installation.client
    ok, boom = await _run_all(client)
    store = SQLiteStore(installation.path)
    feed = IndexFeed(installation.ctx, store)
    try:
        await feed.start()
        await asyncio.wait_for(feed.caught_up.wait(), CATCH_UP_S)

        assert (await _search(store))[1] == 6
        page, total = await _search(store, **{"filters[state][EQUALS]": "SUCCESS"})
        assert total == 4 and {r["id"] for r in page} == set(ok)
        page, total = await _search(
            store, **{"filters[namespace][PREFIX]": NAMESPACE, "state": "FAILED"}
        )
        assert total == 2 and {r["id"] for r in page} == set(boom)
        _, total = await _search(store, **{"filters[labels][EQUALS][team]": "a"})
        assert total == 2
        _, total = await _search(store, namespace=f"{NAMESPACE}.sub")  # legacy: a prefix
        assert total == 2

        # The merged document is the execution the client saw, task runs included.
        seen = (await client.wait(ok[0], timeout=10)).model_dump(mode="json", by_alias=True)
        got = await asyncio.to_thread(store.get, ok[0])
        assert got is not None
        assert [(r["taskId"], r["state"]["current"]) for r in got["taskRunList"]] == [
            (r["taskId"], r["state"]["current"]) for r in seen["taskRunList"]
        ]
        assert got["taskRunList"][-1]["outputs"] == {"value": "w0"}

        # Log lines may trail the terminal update by one produce.
        async def greeted() -> bool:
            lines = await asyncio.to_thread(store.logs, ok[0])
            return any(line["message"] == "hello w0" for line in lines)

        await eventually(greeted, 20.0)
        warned = await asyncio.to_thread(store.logs, boom[0], "WARN")
        assert "about to fail" in [line["message"] for line in warned]
        assert all(line["level"] in ("WARN", "ERROR") for line in warned)

        # Live: an execution started now is indexed as it runs.
        late = await client.submit(NAMESPACE, "ok", {"who": "late"})
        await client.wait(late, timeout=60)

        async def indexed() -> bool:
            got = await asyncio.to_thread(store.get, late)
            return got is not None and got["state"]["current"] == "SUCCESS"

        await eventually(indexed, 20.0)
        assert feed.stats.dead_letters == 0
    finally:
        await feed.stop()
        store.close()


async def test_a_log_follow_ends_only_once_the_index_has_the_last_lines(
    installation: Installation,
) -> None:
    """The executions have ended before the index reads a record: the client that ran them
    knows the end, the index does not yet. A follow opened then waits for the index (its
    state column, then the logs topic's end), however long the index lags, and then sends
    every line before it closes."""
    client = installation.client
    ok, boom = await _run_all(client)
    assert client.last_stop(ok[0]) is not None  # what the API's own client knows
    store = SQLiteStore(installation.path)
    feed = IndexFeed(installation.ctx, store)
    service = ApiService(installation.ctx, client, feed)
    everything = LogFilter(min_level=None, task_run_id=None, task_id=None, attempt=None)
    routes = LogRoutes(ApiHandle(installation.ctx.settings))

    async def follow(execution_id: str) -> list[dict[str, Any]]:
        frames = routes._frames(service, execution_id, everything)
        return [orjson.loads(frame.split(b"data:", 1)[1]) async for frame in frames]

    following = asyncio.create_task(follow(ok[0]))
    try:
        await asyncio.sleep(2.0)  # eight polls of an index that holds nothing
        assert not following.done()
        assert await service.logs_end(ok[0]) is None
        await feed.start()
        (start, *lines) = await asyncio.wait_for(following, CATCH_UP_S)
        assert start == {"executionId": ok[0]}
        assert "hello w0" in [line["message"] for line in lines]
        indexed = await asyncio.to_thread(store.logs, ok[0])
        assert sorted(line["message"] for line in lines) == sorted(
            line["message"] for line in indexed
        )
        end = await service.logs_end(boom[0])
        assert end is not None and feed.reached(end)
        (_, *warned) = await follow(boom[0])
        assert "about to fail" in [line["message"] for line in warned]
    finally:
        following.cancel()
        await feed.stop()
        store.close()


async def test_the_logs_of_an_execution_come_in_bounded_pages(
    installation: Installation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past :data:`LOG_LIST_MAX` lines an answer says so (``Link: rel="next"``) and the pages
    together are the execution's lines in order; a smaller answer is Kestra's plain list."""
    client = installation.client
    await client.deploy(CHATTY_FLOW)
    chatty = await client.submit(NAMESPACE, "chatty")
    assert (await client.wait(chatty, timeout=60)).state.current is StateType.SUCCESS
    store = SQLiteStore(installation.path)
    feed = IndexFeed(installation.ctx, store)
    handle = ApiHandle(installation.ctx.settings)
    handle.service = ApiService(installation.ctx, client, feed)
    app = web.Application()
    app.router.add_routes(LogRoutes(handle).routes())
    http = TestClient(TestServer(app))
    try:
        await feed.start()
        await asyncio.wait_for(feed.caught_up.wait(), CATCH_UP_S)
        whole = await asyncio.to_thread(store.logs, chatty)
        assert len(whole) >= 5
        monkeypatch.setattr(log_routes, "LOG_LIST_MAX", 2)
        await http.start_server()
        url: str | None = f"/api/v1/main/logs/{chatty}?minLevel=TRACE"
        pages: list[list[dict[str, Any]]] = []
        while url is not None:
            reply = await http.get(url)
            assert reply.status == 200
            pages.append(await reply.json())
            link = reply.headers.get("Link")
            assert (link is None) == (reply.headers.get(log_routes.TRUNCATED_HEADER) is None)
            url = link[1 : link.index(">")] if link else None
        assert [len(page) for page in pages[:-1]] == [2] * (len(pages) - 1)
        assert [line for page in pages for line in page] == whole
        monkeypatch.setattr(log_routes, "LOG_LIST_MAX", len(whole))
        small = await http.get(f"/api/v1/main/logs/{chatty}")
        assert await small.json() == whole and "Link" not in small.headers
    finally:
        await http.close()
        await feed.stop()
        store.close()


async def test_a_restarted_feed_resumes_from_the_database(
    installation: Installation, eventually: Eventually
) -> None:
    ok, boom = await _run_all(installation.client)
    store = SQLiteStore(installation.path)
    first = IndexFeed(installation.ctx, store)
    await first.start()
    try:
        await asyncio.wait_for(first.caught_up.wait(), CATCH_UP_S)

        async def all_logs() -> int:
            counts = [len(await asyncio.to_thread(store.logs, i)) for i in ok + boom]
            return all(counts) and sum(counts)

        lines = await eventually(all_logs, 20.0)
    finally:
        await first.stop()
    applied = first.stats.updates
    offsets = await asyncio.to_thread(store.offsets, installation.ctx.topics.updates)
    store.close()
    assert applied > 0 and sum(offsets.values()) >= applied

    reopened = SQLiteStore(installation.path)
    second = IndexFeed(installation.ctx, reopened)
    try:
        await second.start()
        await asyncio.wait_for(second.caught_up.wait(), CATCH_UP_S)
        assert second.stats.updates == 0 and second.stats.log_lines == 0  # nothing re-applied
        assert (await _search(reopened))[1] == 6
        assert sum([len(await asyncio.to_thread(reopened.logs, i)) for i in ok + boom]) == lines
        assert await asyncio.to_thread(reopened.offsets, installation.ctx.topics.updates) == offsets
    finally:
        await second.stop()
        reopened.close()


async def test_unreadable_records_are_dead_lettered_and_stepped_over(
    installation: Installation, eventually: Eventually
) -> None:
    ctx = installation.ctx
    producer = installation.client._require_producer()
    await producer.send_and_wait(ctx.topics.updates, b"{not json", key=b"bad-1")
    await producer.send_and_wait(ctx.topics.logs, b'{"not": "a list"}', key=b"bad-2")
    await _run_all(installation.client)
    store = SQLiteStore(installation.path)
    feed = IndexFeed(ctx, store)
    try:
        await feed.start()
        await asyncio.wait_for(feed.caught_up.wait(), CATCH_UP_S)
        assert feed.stats.dead_letters == 2
        assert (await _search(store))[1] == 6
        letters = await _read_all(ctx, ctx.topics.dead_letter)
        reasons = {letter["key"]: letter["reason"] for letter in letters}
        assert "not JSON" in reasons["bad-1"]
        assert "list" in reasons["bad-2"]
    finally:
        await feed.stop()
        store.close()


async def test_records_the_database_refuses_are_dead_lettered_and_reported(
    installation: Installation,
) -> None:
    """The database refuses one log record (a trigger stands for any value it cannot hold): the
    feed sets that record aside with the database's reason, keeps indexing the rest, and says
    so in its health details instead of retrying the batch forever."""
    ctx = installation.ctx
    store = SQLiteStore(installation.path)
    with store._writing() as cur:
        cur.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON logs WHEN NEW.doc LIKE '%poison%' "
            "BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
        )

    def line(execution_id: str, message: str) -> dict[str, Any]:
        return {
            "executionId": execution_id,
            "taskRunId": "r1",
            "level": "INFO",
            "message": message,
            "timestamp": "2025-01-01T00:00:00.000Z",
        }

    producer = installation.client._require_producer()
    for key, message in (("poisoned", "poison"), ("fine", "nul \x00 kept")):
        value = orjson.dumps([line(key, message)])
        await producer.send_and_wait(ctx.topics.logs, value, key=key.encode())
    await _run_all(installation.client)
    feed = IndexFeed(ctx, store)
    try:
        await feed.start()
        await asyncio.wait_for(feed.caught_up.wait(), CATCH_UP_S)
        assert (await _search(store))[1] == 6
        assert [entry["message"] for entry in store.logs("fine")] == ["nul \x00 kept"]
        assert store.logs("poisoned") == []
        assert (feed.stats.refused, feed.stats.dead_letters) == (1, 1)
        detail = feed.health_detail()
        assert detail["refused"] == 1 and detail["retrying"] is False
        # The open health never shows the database's reason (hosts, users, row values) ...
        assert "poison" not in str(detail)
        assert all(isinstance(value, bool | int) for value in detail.values())
        # ... the feed keeps it for the log and the dead letter.
        assert feed.stats.last_refusal is not None and "poison refused" in feed.stats.last_refusal
        (letter,) = await _read_all(ctx, ctx.topics.dead_letter)
        assert letter["key"] == "poisoned" and "poison refused" in letter["reason"]
        assert orjson.loads(letter["value"])[0]["message"] == "poison"
    finally:
        await feed.stop()
        store.close()


async def _read_all(ctx: BrokerContext, topic: str) -> list[dict[str, Any]]:
    consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        targets = await fetch_highwaters(consumer, tps)
        out: list[dict[str, Any]] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < hw for tp, hw in targets.items()])

        while await behind():
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(orjson.loads(r.value) for r in recs)
        return out
    finally:
        await consumer.stop()


async def test_an_index_of_topics_that_are_gone_is_emptied_and_filled_again(
    installation: Installation,
) -> None:
    """The embedded broker keeps nothing: restarted with the same data dir, the topics start
    over at offset 0 while the index file still holds the old offsets and executions."""
    await _run_all(installation.client)
    store = SQLiteStore(installation.path)
    feed = IndexFeed(installation.ctx, store)
    await feed.start()
    await asyncio.wait_for(feed.caught_up.wait(), CATCH_UP_S)
    await feed.stop()
    store.close()
    with sqlite3.connect(installation.path) as db:  # as if the topics were shorter than known
        db.execute("UPDATE feed_offsets SET next_offset = next_offset + 1000")
        db.execute("UPDATE executions SET flow_id = 'from-the-old-broker'")
    reopened = SQLiteStore(installation.path)
    again = IndexFeed(installation.ctx, reopened)
    try:
        await again.start()
        await asyncio.wait_for(again.caught_up.wait(), CATCH_UP_S)
        results, total = await _search(reopened)
        assert total == 6
        assert {r["flowId"] for r in results} == {"ok", "boom"}
        assert again.stats.updates > 0
    finally:
        await again.stop()
        reopened.close()
