"""Log routes: an execution's log lines, and a live follow of them (Kestra 1.x paths).

Lines come from the execution index, which the index feed fills from the logs topic. The follow
stream (frames ``start``, then ``progress`` per line, as Kestra's) reads the lines the index
received after the last one it sent (a sequence cursor, :meth:`Store.logs_after`: each read
costs the new lines, not the execution's), every :data:`FOLLOW_POLL_S` when there is nothing
new, and, unlike Kestra's, which never ends, closes a few reads after the execution has ended.

A slow client gets backpressure, not a buffer: a read is at most a page of lines, and the next
page is read only once the client has taken the last one (the lines wait in the index, not in
the process).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from kestream.api import sse
from kestream.api.handle import ApiHandle
from kestream.api.http import bad_request, json_response
from kestream.api.index.store import LOG_LEVELS, LOG_PAGE, log_level_rank
from kestream.api.service import ApiService

PREFIX = "/api/v1/{tenant}/logs/{executionId}"
FOLLOW_POLL_S = 0.25
#: Reads after the execution is seen ended, for lines indexed after its end.
FINAL_READS = 3


class LogRoutes:
    def __init__(self, api: ApiHandle) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PREFIX + "/follow", self.follow), web.get(PREFIX, self.list)]

    async def list(self, request: web.Request) -> web.Response:
        """``?minLevel=``, ``?taskRunId=``, ``?taskId=``, ``?attempt=`` narrow the lines."""
        service, execution = await self.api.execution_for(request)
        lines = await service.logs(
            execution["id"], _min_level(request), request.query.get("taskRunId")
        )
        return json_response(_narrow(request, lines))

    async def follow(self, request: web.Request) -> web.StreamResponse:
        service, execution = await self.api.execution_for(request)
        frames = self._frames(request, service, execution["id"])
        return await sse.pump(request, frames, service.follows)

    async def _frames(
        self, request: web.Request, service: ApiService, execution_id: str
    ) -> AsyncIterator[bytes]:
        yield sse.frame({"executionId": execution_id}, event_id="start")
        min_level = _min_level(request)
        task_run_id = request.query.get("taskRunId")
        cursor = 0
        ended_reads = 0
        while ended_reads < FINAL_READS:
            if await service.ended(execution_id):
                ended_reads += 1  # the last lines may be indexed a moment after the end
            while True:  # the new lines, a page at a time, each read once the last is sent
                page = await service.logs_after(
                    execution_id, cursor, min_level, task_run_id, LOG_PAGE
                )
                cursor = page.cursor
                for line in _narrow(request, page.lines):
                    yield sse.frame(line, event_id="progress")
                if not page.full:
                    break
            await asyncio.sleep(FOLLOW_POLL_S)


def _min_level(request: web.Request) -> str | None:
    level = request.query.get("minLevel")
    if level is None or level == "":
        return None
    try:
        return LOG_LEVELS[log_level_rank(level)]
    except ValueError:
        raise bad_request(
            f"Query parameter 'minLevel' must be one of {', '.join(LOG_LEVELS)}"
        ) from None


def _narrow(request: web.Request, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    task_id = request.query.get("taskId")
    attempt = request.query.get("attempt")
    if task_id:
        lines = [line for line in lines if line.get("taskId") == task_id]
    if attempt:
        try:
            number = int(attempt)
        except ValueError:
            raise bad_request(
                f"Query parameter 'attempt' must be an integer, not '{attempt}'"
            ) from None
        lines = [line for line in lines if line.get("attemptNumber") == number]
    return lines
