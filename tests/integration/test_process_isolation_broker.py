"""A blocking Python task on a real broker: an execution kill stops its code, not only its state.

Executor, worker, flows table and client run as in ``kestream standalone``. The task logs the pid
of the worker process it runs in, then sleeps for good; the test kills the execution once that
line is on the logs topic, and the process must then be gone (a thread would sleep on).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from executor_harness import running_roles

import kestream
from kestream.client import Client
from kestream.models.state import StateType

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@kestream.task("acme.blocking.Nap")
def nap(*, run: kestream.RunContext) -> None:
    run.logger.info("pid %d", os.getpid())
    time.sleep(1000)


@kestream.task("acme.blocking.Pid")
def pid() -> dict[str, Any]:
    return {"pid": os.getpid()}


NAPPING = """
id: napping
namespace: test.isolation
tasks:
  - id: nap
    type: acme.blocking.Nap
"""

QUICK = """
id: quick
namespace: test.isolation
tasks:
  - id: pid
    type: acme.blocking.Pid
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(broker: Any, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    prefix = f"isolation-{broker.backend}-{id(request)}."
    async with running_roles(broker.bootstrap, prefix, partitions=2, threads=1) as client:
        yield client


async def _until(check: Callable[[], Any], within: float = 60.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def _runs(process_id: int) -> bool:
    stat = Path(f"/proc/{process_id}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_an_execution_kill_stops_a_blocking_python_task(runtime: Client) -> None:
    flow = await runtime.deploy(NAPPING)
    execution_id = await runtime.submit(flow.namespace, flow.id, {})

    async def napping_pid() -> int | None:
        for entry in await runtime.logs(execution_id):
            if entry.message.startswith("pid "):
                return int(entry.message.split()[1])
        return None

    child = await _until(napping_pid)
    assert child != os.getpid() and _runs(child)
    await runtime.kill(execution_id)
    execution = await runtime.wait(execution_id, timeout=60)
    assert execution.state.current is StateType.KILLED

    async def stopped() -> bool:  # the KILLED update may come before the worker's clean-up
        return not _runs(child)

    await _until(stopped)

    # The worker's only slot is free again: a following blocking task runs, in a fresh child.
    quick = await runtime.deploy(QUICK)
    done = await runtime.wait(await runtime.submit(quick.namespace, quick.id, {}), timeout=60)
    assert done.state.current is StateType.SUCCESS
    outputs = done.taskRunList[0].outputs
    assert outputs is not None and outputs["pid"] not in (child, os.getpid())
