"""The member boards of one process share one reading of the members topic."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kestream.runtime import members
from kestream.runtime.context import connect
from kestream.runtime.health import Check, Health
from kestream.runtime.members import MemberBoard, MemberPublisher
from kestream.settings import Settings

pytestmark = pytest.mark.integration

Eventually = Callable[..., Awaitable[Any]]


async def test_boards_of_a_process_share_one_reading(  # type: ignore[no-untyped-def]
    broker, topic_prefix, eventually: Eventually
) -> None:
    ctx = await connect(Settings(broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=1))
    executor = MemberPublisher(ctx, "executor", Health("executor", [Check("e", lambda: True)]))
    worker = MemberPublisher(ctx, "worker", Health("worker", [Check("w", lambda: True)]))
    first, second, late = MemberBoard(ctx), MemberBoard(ctx), MemberBoard(ctx)
    await executor.start()
    try:
        await first.start()
        await second.start()
        assert first._feed is not None and first._feed is second._feed
        feed = first._feed
        assert feed._consumer is not None
        await first.loaded.wait()
        await second.loaded.wait()

        def both_see_the_worker() -> Any:
            keys = [{m.key for m in b.roster.members()} for b in (first, second)]
            return all(worker.key in k for k in keys) or None

        await worker.start()  # a record after both started reaches both rosters
        await eventually(both_see_the_worker, 30.0, message="the worker on both boards")
        assert first.status()[0] and second.status()[0]

        await first.stop()  # the others keep being fed
        await late.start()  # handed the latest records at once, as a reading from the start
        assert late._feed is feed and late.loaded.is_set()
        assert {m.role for m in late.roster.members()} == {"executor", "worker"}
        await worker.stop()  # its tombstone reaches the boards still following

        def worker_gone() -> Any:
            boards = (second, late)
            return (
                all(worker.key not in {m.key for m in b.roster.members()} for b in boards) or None
            )

        await eventually(worker_gone, 30.0, message="the worker's tombstone")
        assert worker.key in {m.key for m in first.roster.members()}  # stopped: no longer fed

        await second.stop()
        await late.stop()  # the last board closes the reading
        assert feed.closed and feed._consumer is None
        assert not any(f is feed for f in members._FEEDS.values())
        await first.start()  # a board started again opens a new one
        assert first._feed is not None and first._feed is not feed
    finally:
        for board in (first, second, late):
            await board.stop()
        await worker.stop()
        await executor.stop()
