"""Records handed to an aiokafka producer one caller at a time.

aiokafka keeps one open batch per partition, and while it is full every caller appending to
that partition waits in ``send`` for it to drain, all of them woken at each drain: thousands of
callers producing to one partition together (a ForEach's children ending, keyed by their
execution; submissions at a high rate) cost thousands of wake-ups per drain, quadratic in the
callers. Handed over one caller at a time, only that caller waits; the others wait on a lock,
woken one by one. The acknowledgements are awaited outside, so the callers still wait for the
broker together.
"""

from __future__ import annotations

import asyncio
from asyncio import Future
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["HandOver", "Send"]

#: A record to produce: topic, value, key.
Send = tuple[str, bytes, bytes | None]


class HandOver:
    """One producer's hand-over (see the module docs)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def send(self, producer: Any, sends: Sequence[Send]) -> list[Future[Any]]:
        """Hand ``sends`` to ``producer`` in order, one caller at a time; returns their
        acknowledgements, to await outside."""
        acks = await self.send_if(producer, sends, None)
        assert acks is not None
        return acks

    async def send_if(
        self,
        producer: Any,
        sends: Sequence[Send],
        still_wanted: Callable[[], bool] | None,
        *,
        refused: Callable[[BaseException], bool] | None = None,
    ) -> list[Future[Any]] | None:
        """:meth:`send`, unless ``still_wanted()`` says no once this caller's turn has come
        (``None``: nothing was handed over). The wait for the turn can be long (every caller
        before, a full batch while the broker is slow or away), and what the caller decided
        before it may no longer hold: a worker's result whose job was stopped meanwhile, its
        partition gone to another worker, must not go out.

        A record whose hand-over raises what ``refused`` accepts (the client refusing it for
        what it is before any broker saw it, say) gets that error as its acknowledgement, and
        the records after it are still handed over: the caller deals with it as with a record
        the broker refused. Without ``refused`` the error is raised, and nothing after it is
        handed over."""
        async with self._lock:
            if still_wanted is not None and not still_wanted():
                return None
            acks: list[Future[Any]] = []
            failed: list[Future[Any]] = []
            for topic, value, key in sends:
                try:
                    acks.append(await producer.send(topic, value, key=key))
                except Exception as exc:
                    if refused is None or not refused(exc):
                        for ack in failed:  # never returned: read, or asyncio logs them
                            ack.exception()
                        raise
                    failed.append(asyncio.get_running_loop().create_future())
                    failed[-1].set_exception(exc)
                    acks.append(failed[-1])
            return acks

    async def send_and_wait(self, producer: Any, send: Send) -> Any:
        """Hand one record over (:meth:`send`), then wait for its acknowledgement."""
        (ack,) = await self.send(producer, [send])
        return await ack
