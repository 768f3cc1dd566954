"""A worker whose group coordination has ended for good (a join the group refused, such as a
member offering another assignor; a rebalance callback that raised) stops loudly: every fetch
would raise that end again and the member never rejoins, so its loop used to fail every half
second for ever while the worker still said it was live."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import InconsistentGroupProtocolError, KafkaError

from kestream.runtime.member_fence import MemberFence
from tests.unit.runtime.worker_fakes import make_worker

FLOW = """
id: f
namespace: test.coordination
tasks:
  - id: t
    type: io.kestra.plugin.core.debug.Return
    format: x
"""


def _consumer_whose_coordination(ended: BaseException | None) -> Any:
    """A consumer as the loop sees it: aiokafka's coordination task, ended or running."""
    loop = asyncio.get_running_loop()
    task: asyncio.Future[None] = loop.create_future()
    if ended is not None:
        task.set_exception(ended)
    return SimpleNamespace(_coordinator=SimpleNamespace(_coordination_task=task))


async def test_a_refused_join_stops_the_worker_and_says_why() -> None:
    failures: list[BaseException] = []
    worker, _ = make_worker(FLOW)
    worker.on_failure = failures.append
    worker.fence = MemberFence(10.0)
    refused = InconsistentGroupProtocolError("the group's members offer another assignor")
    worker._consumer = _consumer_whose_coordination(refused)
    fetches = 0

    async def fetch() -> None:
        nonlocal fetches
        fetches += 1
        raise refused  # what aiokafka's getmany raises once its coordination has ended

    worker._iteration = fetch  # type: ignore[method-assign]
    await asyncio.wait_for(worker.run(), 5)
    assert fetches == 1
    (failure,) = failures
    assert failure is worker.failure and failure.__cause__ is refused
    assert "group coordination ended" in str(failure)


async def test_a_failed_fetch_while_the_coordination_runs_is_retried() -> None:
    worker, _ = make_worker(FLOW)
    worker.fence = MemberFence(10.0)
    worker._consumer = _consumer_whose_coordination(None)
    fetches = 0

    async def fetch() -> None:
        nonlocal fetches
        fetches += 1
        if fetches == 1:
            raise KafkaError("broker away for a moment")
        worker._stopping = True

    worker._iteration = fetch  # type: ignore[method-assign]
    await asyncio.wait_for(worker.run(), 5)
    assert fetches == 2 and worker.failure is None
