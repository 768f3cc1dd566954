"""Metrics, health and member status on a real broker, and the ops routes over HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from executor_harness import Harness
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kestream.executor import events as ev
from kestream.runtime.context import connect
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.health import Check, Health, LoopMonitor
from kestream.runtime.members import MemberBoard, MemberPublisher, Roster
from kestream.runtime.metrics import Metrics
from kestream.runtime.ops_routes import metrics_middleware, ops_routes
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings

pytestmark = pytest.mark.integration

Eventually = Callable[..., Awaitable[Any]]
JOIN_S = 30.0  # a group join takes ~5 s on Tansu
BEAT_S = 0.3  # heartbeats of the members under test (the default is 2 s)

FLOW = """
id: ops
namespace: test.ops
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "hi"
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.1S
"""

EXEC = {"namespace_id": "test.ops", "flow_id": "ops"}
LOG = "io.kestra.plugin.core.log.Log"
SLEEP = "io.kestra.plugin.core.flow.Sleep"


async def test_a_flow_moves_the_counters_and_the_services_become_ready(  # type: ignore[no-untyped-def]
    broker, topic_prefix, eventually: Eventually
) -> None:
    metrics = Metrics(CollectorRegistry(), process_collectors=False)
    harness = await Harness.open(broker.bootstrap, topic_prefix)
    executor = ExecutorService(harness.ctx, harness.registry, metrics=metrics)
    harness.services.append(executor)  # the harness stops it
    worker = WorkerService(harness.ctx, harness.registry, metrics=metrics)
    health = Health("test", [executor, worker])
    try:
        harness.deploy(FLOW)
        assert not health.ready()[0] and not executor.is_live
        await executor.start()
        await worker.start()
        await eventually(lambda: health.ready()[0], JOIN_S, message="executor and worker ready")
        assert metrics.value("kestream_executor_thread_count") == 1
        assert metrics.value("kestream_worker_job_thread") == worker.threads

        await harness.send(ev.ExecutionCreated("ops-1", "test.ops", "ops"))
        await eventually(lambda: harness.state_of("ops-1") == "SUCCESS", 30.0)

        value = metrics.value
        assert value("kestream_executor_execution_started_count_total", EXEC) == 1
        success = {**EXEC, "state": "SUCCESS"}
        assert value("kestream_executor_execution_end_count_total", success) == 1
        assert value("kestream_executor_execution_duration_seconds_count", success) == 1
        for task_type in (LOG, SLEEP):
            task = {**EXEC, "task_type": task_type}
            assert value("kestream_executor_taskrun_created_count_total", task) == 1
            assert value("kestream_executor_taskrun_ended_count_total", {**task, **success}) == 1
        sleep = {**EXEC, "task_type": SLEEP}
        assert value("kestream_worker_started_count_total", sleep) == 1
        assert value("kestream_worker_ended_count_total", {**sleep, **success}) == 1
        slept = value("kestream_worker_ended_duration_seconds_sum", {**sleep, **success})
        assert slept is not None and slept >= 0.1
        assert value("kestream_worker_job_running") == 0
        # A batch's events are counted once the batch is written, just after the update the
        # harness saw: wait for the count of the last one.
        await eventually(
            lambda: (value("kestream_executor_events_count_total") or 0) >= 2,  # creation, result
            10.0,
            message="the executor counted the creation and the result",
        )
        assert value("kestream_executor_execution_in_flight") == 0
        assert value("kestream_dead_letter_count_total", {"source": "executor"}) is None
    finally:
        await worker.stop()
        await harness.close()
    assert not health.live()[0]  # the loops are gone
    assert metrics.value("kestream_executor_thread_count") == 0


async def test_the_board_follows_members_and_the_routes_answer(  # type: ignore[no-untyped-def]
    broker, topic_prefix, eventually: Eventually
) -> None:
    ctx = await connect(Settings(broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=1))
    metrics = Metrics(CollectorRegistry())
    executor_ready = {"value": True}
    executor_health = Health("executor", [Check("executor", lambda: executor_ready["value"])])
    worker_health = Health("worker", [Check("worker", lambda: True)])
    publishers = [
        MemberPublisher(ctx, "executor", executor_health, port=41_001, interval=BEAT_S,
                        keepalive=BEAT_S, check_every=0.05, metrics=metrics),
        MemberPublisher(ctx, "worker", worker_health, port=41_002, interval=BEAT_S,
                        keepalive=BEAT_S),
    ]  # fmt: skip
    monitor = LoopMonitor(interval=0.05, metrics=metrics)
    api_health = Health("api", [monitor])
    board = MemberBoard(roster=Roster(interval=BEAT_S))  # handed to the routes before start
    app = web.Application(middlewares=[metrics_middleware(metrics)])
    app.add_routes(ops_routes(metrics, api_health, board))
    client = TestClient(TestServer(app))
    try:
        await client.start_server()
        early = await client.get("/health/ready")
        assert early.status == 503
        assert (await early.json())["installation"]["reason"] == "reading the members topic"
        for publisher in publishers:
            await publisher.start()
        await monitor.start()
        await board.start(ctx)  # after the publishers: it reads their records from the beginning

        async def ready() -> dict[str, Any] | None:
            response = await client.get("/health/ready")
            body: dict[str, Any] = await response.json()
            return body if response.status == 200 else None

        body = await eventually(ready, 30.0, message="installation ready")
        members = body["installation"]["members"]
        assert {m["role"]: m["port"] for m in members} == {"executor": 41_001, "worker": 41_002}
        assert body["checks"]["event-loop"]["live"] is True
        assert metrics.value("kestream_ready") == 1

        executor_ready["value"] = False  # say, a rebalance started

        async def not_ready() -> dict[str, Any] | None:
            response = await client.get("/health/ready")
            body: dict[str, Any] = await response.json()
            return body if response.status == 503 else None

        body = await eventually(not_ready, 10.0, message="installation not ready")
        assert body["status"] == "DOWN"
        assert body["installation"]["notReady"] == [publishers[0].key]
        assert metrics.value("kestream_ready") == 0

        executor_ready["value"] = True
        await eventually(ready, 10.0, message="ready again")

        await publishers[1].stop()  # a clean stop leaves the table at once
        body = await eventually(not_ready, 10.0, message="no worker left")
        assert body["installation"]["missingRoles"] == ["worker"]

        live = await client.get("/health/live")
        assert live.status == 200 and (await live.json())["status"] == "UP"

        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(await response.text())}
        assert "kestream_executor_execution_started_count" in families
        assert "process_cpu_seconds" in families
        served = {
            (s.labels["route"], s.labels["status"])
            for s in families["kestream_http_server_requests_seconds"].samples
            if s.name.endswith("_count")
        }
        assert {("/health/ready", "200"), ("/health/ready", "503")} <= served
        assert (await client.get("/nowhere")).status == 404
        unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
        assert metrics.value("kestream_http_server_requests_seconds_count", unmatched) == 1
    finally:
        await client.close()
        await board.stop()
        await monitor.stop()
        for publisher in publishers:
            await publisher.stop()
