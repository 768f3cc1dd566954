"""A follower that falls behind holds a bounded queue: the latest states, and always the end."""

from __future__ import annotations

import asyncio
import tracemalloc
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from kestream.client import FOLLOW_QUEUE_MAX, Client, FollowQueue
from kestream.models.execution import Execution
from kestream.runtime.context import BrokerContext
from kestream.runtime.topics import Topics
from kestream.settings import Settings


def _client() -> Client:
    settings = Settings(topic_prefix="unit.", broker="unused:9092")
    return Client(BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings)))


def _update(number: int, state: str = "RUNNING", *, terminal: bool = False) -> Any:
    """An update of ``e1`` whose label ``n`` says which one it is, with 50 task runs."""
    runs = [
        {
            "id": f"r{i}",
            "executionId": "e1",
            "namespace": "test.client",
            "flowId": "f",
            "taskId": f"t{i}",
            "state": {"current": "SUCCESS", "histories": []},
            "outputs": {"value": "y" * 200},
        }
        for i in range(50)
    ]
    header = {
        "id": "e1",
        "namespace": "test.client",
        "flowId": "f",
        "flowRevision": 1,
        "originalId": "e1",
        "labels": [{"key": "n", "value": str(number)}],
        "metadata": {"attemptNumber": 1, "originalCreatedDate": "2025-01-01T00:00:00.000Z"},
        "state": {"current": state, "histories": []},
        "taskRunList": runs,
    }
    body = {"execution": header, "full": True, "terminal": terminal}
    return SimpleNamespace(key=b"e1", value=orjson.dumps(body), offset=number)


def _number(execution: Execution) -> int:
    return int(execution.labels[0].value)


async def test_a_follower_that_never_reads_holds_at_most_the_latest_states(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = _client()
    follow = client.follow("e1")
    first = asyncio.ensure_future(follow.__anext__())
    await asyncio.sleep(0)  # the follower is registered and waits
    client._on_update(_update(0))
    async with asyncio.timeout(30):  # a guard against a hang, not a measure
        assert _number(await first) == 0
    (queue,) = client._watches["e1"].queues

    tracemalloc.start()
    try:
        client._on_update(_update(1))
        base, _ = tracemalloc.get_traced_memory()
        held: dict[int, int] = {}
        for number in range(2, 2_001):  # 2 000 states while the follower reads nothing
            client._on_update(_update(number))
            assert len(queue) <= FOLLOW_QUEUE_MAX
            if number in (200, 2_000):
                held[number] = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert queue.dropped == 2_000 - FOLLOW_QUEUE_MAX
    with capsys.disabled():
        print(
            f"\na follower that reads nothing: {len(queue)} states kept, {queue.dropped} dropped; "
            f"memory over one state: {held[200] / 1024:.0f} KiB after 200 states, "
            f"{held[2_000] / 1024:.0f} KiB after 2 000"
        )
    assert held[2_000] < 2 * held[200]  # flat, not ten times more
    client._on_update(_update(2_001, "SUCCESS", terminal=True))
    async with asyncio.timeout(30):
        rest = [_number(execution) async for execution in follow]
    assert rest == list(range(2_002 - FOLLOW_QUEUE_MAX, 2_002))  # the latest, the end last
    assert "e1" not in client._watches


async def test_nothing_is_taken_after_the_end_so_the_end_is_never_dropped() -> None:
    queue = FollowQueue(maxsize=2)
    client = _client()
    states = [
        Execution.model_validate(orjson.loads(_update(n).value)["execution"]) for n in range(4)
    ]
    queue.put(states[0], False)
    queue.put(states[1], True)  # the end
    queue.put(states[2], False)  # a restart's first state: not this follow's any more
    queue.put(states[3], False)
    assert len(queue) == 2 and queue.dropped == 0
    got = [await queue.get(), await queue.get()]
    assert [(_number(item[0]), item[1]) for item in got if item] == [(0, False), (1, True)]
    queue.close()
    assert await queue.get() is None
    await client.close()
