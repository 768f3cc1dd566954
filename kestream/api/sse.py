"""Server-sent events: one ``data:`` frame per change, comments to keep idle streams open.

Kestra's follow routes stream ``text/event-stream`` frames whose ``data`` is the JSON of the
object (an execution, a log entry) and whose ``id`` says what the frame is: ``start`` first,
``progress`` for each change, ``end`` for the last one. Like Kestra's, the frames carry no
``event`` name, so a browser ``EventSource`` gets them as plain messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("kestream.api")

#: A comment frame this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0


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
    return b"id: " + event_id.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def pump(
    request: web.Request, items: AsyncIterator[bytes], keepalive_s: float = KEEPALIVE_S
) -> web.StreamResponse:
    """Write each frame of ``items`` as it comes; stop when they end or the client leaves."""
    response = await open_stream(request)
    iterator = items.__aiter__()
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                await response.write(b": keepalive\n\n")
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                break
            finally:
                pending = None
            await response.write(chunk)
    except ConnectionResetError:
        return response  # the client went away
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
