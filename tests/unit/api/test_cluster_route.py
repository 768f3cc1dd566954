"""The cluster route: the members topic's processes with the figures each publishes.

The roster is fed the records a real publisher writes (:class:`MemberPublisher.status` over a
real :class:`Health` and :class:`Metrics`), so what the route answers is what the topic carries.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from kestream.api.app import install_api
from kestream.api.handle import ApiHandle
from kestream.runtime.health import Check, Health
from kestream.runtime.member_rates import RateWindow
from kestream.runtime.members import (
    MemberBoard,
    MemberPublisher,
    MemberStatus,
    Roster,
    process_facts,
)
from kestream.runtime.metrics import Metrics
from kestream.runtime.restarts import CRASHES_FILE_ENV
from kestream.settings import Settings

NOW = 1_000_000.0
AUTH = {"Authorization": "Bearer t-0123456789"}


def published(role: str, pid: int, metrics: Metrics, partitions: list[int]) -> MemberStatus:
    health = Health(
        role, [Check("processor", lambda: True, detail=lambda: {"partitions": partitions})]
    )
    publisher = MemberPublisher(
        SimpleNamespace(), role, health, port=4000 + pid, metrics=metrics, host="h1", pid=pid,  # type: ignore[arg-type]
        clock=lambda: NOW,
    )  # fmt: skip
    # Through the record's bytes, as the board reads it.
    return MemberStatus.decode(publisher.status().encode())


@pytest.fixture
def roster() -> Roster:
    return Roster(clock=lambda: NOW)


@pytest.fixture
def memory_only() -> bool:
    """A test parametrizes it to True: standalone on Tansu without durability."""
    return False


@pytest.fixture
async def client(
    roster: Roster, memory_only: bool
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    settings = Settings(
        api_tokens=SecretStr("t-0123456789"), partitions=4, standalone_durable=not memory_only
    )
    board = MemberBoard(roster=roster)
    board.loaded.set()
    kind = "tansu" if memory_only else "kafka"
    service = SimpleNamespace(ready=True, ctx=SimpleNamespace(kind=kind))
    handle = ApiHandle(settings, service=service, board=board)  # type: ignore[arg-type]
    app = web.Application()
    install_api(app, handle)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_each_process_with_its_partitions_lag_slots_and_dead_letters(
    client: TestClient[web.Request, web.Application], roster: Roster
) -> None:
    worker_metrics = Metrics(process_collectors=False)
    worker_metrics.consumer_lag.labels("worker").set(7)
    worker_metrics.worker_job_thread.set(16)
    worker_metrics.worker_job_running.set(3)
    worker_metrics.dead_letter("worker")
    worker_metrics.consumer_lag.labels("executor").set(5)  # another role of its process
    worker_metrics.partition_lag("executor").report({("e", 0): 5}, [("e", 0)])  # not shown
    worker_metrics.partition_lag("worker").report({("j", 0): 4, ("j", 1): 3}, [("j", 0), ("j", 1)])
    executor_metrics = Metrics(process_collectors=False)
    executor_metrics.consumer_lag.labels("executor").set(2)
    executor_metrics.executor_threads.set(2)
    executor_lag = executor_metrics.partition_lag("executor")
    owned = [("e", 1), ("e", 3)]
    executor_lag.report({("e", 1): 9, ("e", 3): 1}, owned)
    executor_lag.report({("e", 1): 2}, owned)  # a later batch that did not reach 3: as it was
    roster.put(published("worker", 2, worker_metrics, [0, 1]))
    roster.put(published("executor", 1, executor_metrics, [0, 1, 2, 3]))

    reply = await client.get("/api/v1/main/cluster", headers=AUTH)
    assert reply.status == 200, await reply.text()
    body = await reply.json()
    assert body["status"] == "UP" and body["missingRoles"] == []
    assert body["broker"] == {"kind": "kafka", "standalone": False, "memoryOnly": False}
    assert body["partitions"] == 4
    executor, worker = body["members"]
    assert (executor["role"], executor["host"], executor["port"]) == ("executor", "h1", 4001)
    assert executor["checks"]["processor"]["partitions"] == [0, 1, 2, 3]
    assert executor["consumerLag"] == {"executor": 2.0} and executor["slots"] is None
    assert executor["partitionLag"] == {"1": 2.0, "3": 1.0}
    assert executor["streamThreads"] == 2.0 and worker["streamThreads"] is None
    assert worker["checks"]["processor"]["partitions"] == [0, 1]
    assert worker["consumerLag"] == {"worker": 7.0}
    assert worker["partitionLag"] == {"0": 4.0, "1": 3.0}
    assert (worker["slots"], worker["jobsRunning"]) == (16.0, 3.0)
    assert worker["deadLetters"] == {"worker": 1.0}
    assert (executor["throughput"], executor["latency"]) == ({}, {})  # none in a first record


async def test_throughput_and_latency_of_the_interval_between_two_records(
    client: TestClient[web.Request, web.Application], roster: Roster
) -> None:
    metrics = Metrics(process_collectors=False)
    ticks = iter([10.0, 14.0])
    window = RateWindow("executor", metrics, clock=lambda: next(ticks))
    for _ in range(8):
        metrics.execution_ended("n", "f", "SUCCESS", 0.5)
        metrics.executor_batch_done(1, 0.003)
    facts = {**process_facts("executor", {}, metrics), **window.figures()}  # 4 s later
    roster.put(MemberStatus("executor", "h1", 9, None, True, True, NOW, NOW, facts=facts))
    (member,) = (await (await client.get("/api/v1/main/cluster", headers=AUTH)).json())["members"]
    assert member["windowS"] == 4.0
    assert member["throughput"] == {"executions": 2.0, "taskRuns": 0.0}
    assert 0.0025 < member["latency"]["step"]["p50"] <= 0.005
    assert 0.0025 < member["latency"]["step"]["p99"] <= 0.005


async def test_needs_credentials_and_keeps_the_figures_off_the_open_health(
    client: TestClient[web.Request, web.Application], roster: Roster
) -> None:
    roster.put(published("worker", 2, Metrics(process_collectors=False), [0]))
    assert (await client.get("/api/v1/main/cluster")).status == 401
    _, installation = roster.status()
    assert "facts" not in installation["members"][0]
    assert "missingRoles" in installation


@pytest.mark.parametrize("memory_only", [True])
async def test_standalone_on_tansu_without_durability_is_memory_only(
    client: TestClient[web.Request, web.Application], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRASHES_FILE_ENV, "/nowhere/crashes.json")
    body = await (await client.get("/api/v1/main/cluster", headers=AUTH)).json()
    assert body["broker"] == {"kind": "tansu", "standalone": True, "memoryOnly": True}
    monkeypatch.delenv(CRASHES_FILE_ENV)
    body = await (await client.get("/api/v1/main/cluster", headers=AUTH)).json()
    assert body["broker"]["memoryOnly"] is False  # a Tansu of one's own: not standalone's


async def test_a_process_of_an_older_version_is_listed_without_figures(
    client: TestClient[web.Request, web.Application], roster: Roster
) -> None:
    older = published("scheduler", 3, Metrics(process_collectors=False), [])
    body = json.loads(older.encode())
    del body["facts"]  # written before the records carried them
    roster.apply(older.key, json.dumps(body).encode())
    reply = await client.get("/api/v1/main/cluster", headers=AUTH)
    (member,) = (await reply.json())["members"]
    assert member["role"] == "scheduler" and member["status"] == "UP"
    assert (member["checks"], member["consumerLag"], member["slots"]) == ({}, {}, None)
    assert member["partitionLag"] == {}
