"""Server-sent events: one ``data:`` frame per change, comments to keep idle streams open.

Kestra's follow routes stream ``text/event-stream`` frames whose ``data`` is the JSON of the
object (an execution, a log entry) and whose ``id`` says what the frame is: ``start`` first,
``progress`` for each change, ``end`` for the last one. Like Kestra's, the frames carry no
``event`` name, so a browser ``EventSource`` gets them as plain messages.

A stream holds a process resource for as long as its client stays, so streams are bounded:

- :class:`FollowLimit`: at most ``KESTREAM_API_MAX_FOLLOWS`` streams per process; one more is
  answered 503 with ``Retry-After`` before anything is streamed.
- Frames are pulled from their source only when the previous one is written, and a write waits
  for the socket to drain (aiohttp's transport buffer): a slow client slows its own source, and
  the process never holds more than one frame and a transport buffer for it. The sources bound
  what they keep while they are not pulled (the execution follow keeps the latest states, the
  log follow reads the index page by page).
- A client that takes nothing for :data:`STALL_S` is disconnected, which frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from aiohttp import web

from kestream.api.http import ApiError
from kestream.secrets.encryption import mask_sealed

log = logging.getLogger("kestream.api")

#: A comment frame this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0
#: A write the client has not taken after this long ends the stream.
STALL_S = 60.0
#: What a follow refused for lack of a slot is told to wait before trying again.
RETRY_AFTER_S = 10


class FollowLimit:
    """The live follows one process serves at once (``KESTREAM_API_MAX_FOLLOWS``).

    Counted on the event loop, so a plain counter is enough. The cap keeps a crowd of followers
    (or of forgotten browser tabs) from holding the process's memory, sockets and index reads.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot while the block runs; 503 with ``Retry-After`` when none is free."""
        if self.active >= self.limit:
            raise ApiError(
                503,
                f"Service unavailable: this API serves at most {self.limit} live follows at "
                "once; try again later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    await response.prepare(request)
    return response


def frame(data: Any, *, event_id: str) -> bytes:
    data_json = mask_sealed(orjson.dumps(data))  # SECRET inputs show as ******
    return b"id: " + event_id.encode() + b"\ndata: " + data_json + b"\n\n"


class _Stalled(Exception):
    """The client took nothing for :data:`STALL_S`."""


async def _write(response: web.StreamResponse, chunk: bytes, stall_s: float) -> None:
    try:
        async with asyncio.timeout(stall_s):
            await response.write(chunk)
    except TimeoutError:
        raise _Stalled from None


async def pump(
    request: web.Request,
    items: AsyncIterator[bytes],
    limit: FollowLimit,
    *,
    keepalive_s: float = KEEPALIVE_S,
    stall_s: float = STALL_S,
) -> web.StreamResponse:
    """Write each frame of ``items`` as it comes; stop when they end or the client leaves.

    Takes one of ``limit``'s slots first (503 when none is free, before the stream starts).
    """
    with limit.slot():
        return await _pump(request, items, keepalive_s, stall_s)


async def _pump(
    request: web.Request, items: AsyncIterator[bytes], keepalive_s: float, stall_s: float
) -> web.StreamResponse:
    response = await open_stream(request)
    iterator = items.__aiter__()
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                await _write(response, b": keepalive\n\n", stall_s)
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                break
            finally:
                pending = None
            await _write(response, chunk, stall_s)
    except ConnectionResetError:
        return response  # the client went away
    except _Stalled:
        log.info(
            "event stream of %s: the client took nothing for %.0f s; closing it",
            request.match_info.route.resource,
            stall_s,
        )
        if request.transport is not None:
            request.transport.abort()  # its unsent bytes are dropped with it
        return response
    except Exception:  # the stream has started: it can only end, not become an error answer
        log.exception("event stream of %s failed", request.match_info.route.resource)
        return response
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
