"""The event streams' bounds on a real aiohttp server: the follow cap, backpressure from a client
that does not read, and the end of a stream whose client takes nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from kestream.api import sse
from kestream.api.http import ApiError

FRAME = 64 * 1024


class Source:
    """Frames as fast as the stream pulls them, counted; ``closed`` once the stream let go."""

    def __init__(self, frames: int = 100_000, size: int = FRAME) -> None:
        self.frames = frames
        self.chunk = b"data: " + b"x" * (size - 8) + b"\n\n"
        self.pulled = 0
        self.closed = asyncio.Event()

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            for _ in range(self.frames):
                self.pulled += 1
                yield self.chunk
                await asyncio.sleep(0)
        finally:
            self.closed.set()


Streams = Callable[[], AsyncIterator[bytes]]


@contextlib.asynccontextmanager
async def serving(
    limit: sse.FollowLimit, source: Streams, stall_s: float = sse.STALL_S
) -> AsyncIterator[TestServer]:
    async def follow(request: web.Request) -> web.StreamResponse:
        return await sse.pump(request, source(), limit, stall_s=stall_s)

    app = web.Application()
    app.router.add_get("/follow", follow)
    server = TestServer(app)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def test_a_slot_is_refused_past_the_limit_and_given_back() -> None:
    limit = sse.FollowLimit(2)
    with limit.slot(), limit.slot():
        assert limit.active == 2
        with pytest.raises(ApiError) as refused, limit.slot():
            pass
        assert refused.value.status == 503
        assert refused.value.headers["Retry-After"] == str(sse.RETRY_AFTER_S)
        assert limit.active == 2
    assert limit.active == 0
    with pytest.raises(RuntimeError), limit.slot():
        raise RuntimeError("a stream that fails still gives its slot back")
    assert limit.active == 0


async def test_follows_past_the_cap_get_503_with_kestras_error_body() -> None:
    limit = sse.FollowLimit(2)

    async def endless() -> AsyncIterator[bytes]:
        yield sse.frame({"id": "e1"}, event_id="start")
        await asyncio.Event().wait()  # an execution that never ends
        yield b""  # pragma: no cover

    async with serving(limit, endless) as server, ClientSession() as http:
        url = server.make_url("/follow")
        first, second = await http.get(url), await http.get(url)
        for stream in (first, second):
            assert stream.status == 200
            assert (await stream.content.readuntil(b"\n\n")).startswith(b"id: start")
        third = await http.get(url)
        assert third.status == 503
        assert third.headers["Retry-After"] == str(sse.RETRY_AFTER_S)
        assert "at most 2 live follows" in (await third.json())["message"]
        first.close()  # the client leaves: its slot is free again
        await _until(lambda: limit.active == 1)
        fourth = await http.get(url)
        assert fourth.status == 200
        fourth.close()
        second.close()
        await _until(lambda: limit.active == 0)


async def test_a_client_that_does_not_read_holds_back_its_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The source is pulled only as the socket drains: with a client that reads nothing, what
    was pulled stays at what the socket buffers hold, far below what the source would give."""
    limit = sse.FollowLimit(10)
    source = Source()
    async with serving(limit, source) as server:
        _, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"GET /follow HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
        await writer.drain()
        await _until(lambda: source.pulled > 0)
        held = -1
        while held != source.pulled:  # until the stream stops pulling: the sockets are full
            held = source.pulled
            await asyncio.sleep(0.3)
        writer.close()
        await _until(source.closed.is_set)  # the client left: the stream let go of its source
        await _until(lambda: limit.active == 0)
    with capsys.disabled():
        print(f"\na client reading nothing: {held} of {source.frames} frames of {FRAME} B pulled")
    assert held * FRAME < 64 * 1024 * 1024
    assert held < source.frames


async def test_a_client_that_takes_nothing_is_dropped_and_frees_its_slot() -> None:
    limit = sse.FollowLimit(1)
    source = Source()
    async with serving(limit, source, stall_s=0.5) as server:
        _, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"GET /follow HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
        await writer.drain()
        await _until(source.closed.is_set)  # stalled writes: the server ends the stream
        await _until(lambda: limit.active == 0)
        assert source.pulled < source.frames
        writer.close()
