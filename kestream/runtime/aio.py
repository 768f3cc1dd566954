"""Small asyncio helpers the runtime's services share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a service's background task and wait until it has stopped (None: nothing)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


#: How many items a long synchronous pass over a batch handles between two turns it gives the
#: event loop (:func:`paced`): a few milliseconds of work at most.
YIELD_EVERY = 200


async def paced(items: Iterable[T], every: int = YIELD_EVERY) -> AsyncIterator[T]:
    """``items``, giving the event loop a turn after every ``every`` of them.

    Every role of a shared process runs on one loop, and aiokafka's heartbeats are tasks of
    that loop: a pass over thousands of records (an executor batch, a changelog rebuild) that
    never yields delays every other role's heartbeats, fetches and HTTP answers by its length,
    and long enough costs them their group membership."""
    for n, item in enumerate(items, 1):
        yield item
        if n % every == 0:
            await asyncio.sleep(0)


def stray_cancellation() -> bool:
    """Whether the ``CancelledError`` being handled was not aimed at the current task: it came
    out of something the task awaited (aiokafka raises its coordination task's end, a
    cancellation, out of ``getmany``). A service loop that re-raised it ended as if stopped,
    without a word; it must take it as the failure it is."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0
