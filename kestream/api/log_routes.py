"""Log routes: an execution's log lines, and a live follow of them (Kestra 1.x paths).

Lines come from the execution index, which the index feed fills from the logs topic. The follow
stream (frames ``start``, then ``progress`` per line, as Kestra's) reads the index again every
:data:`FOLLOW_POLL_S` and sends the lines it has not sent yet, and, unlike Kestra's, which never
ends, closes a few reads after the execution has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from kestream.api import sse
from kestream.api.handle import ApiHandle
from kestream.api.http import bad_request, json_response
from kestream.api.index.store import LOG_LEVELS, log_level_rank
from kestream.api.service import ApiService
from kestream.models.state import StateType

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
        return await sse.pump(request, self._frames(request, service, execution["id"]))

    async def _frames(
        self, request: web.Request, service: ApiService, execution_id: str
    ) -> AsyncIterator[bytes]:
        yield sse.frame({"executionId": execution_id}, event_id="start")
        sent: set[tuple[Any, ...]] = set()
        min_level = _min_level(request)
        task_run_id = request.query.get("taskRunId")
        ended_reads = 0
        while ended_reads < FINAL_READS:
            execution = await service.execution(execution_id)
            if execution is None or StateType(execution["state"]["current"]).is_terminal:
                ended_reads += 1  # the last lines may be indexed a moment after the end
            lines = _narrow(request, await service.logs(execution_id, min_level, task_run_id))
            for line in lines:
                key = _line_key(line)
                if key not in sent:
                    sent.add(key)
                    yield sse.frame(line, event_id="progress")
            await asyncio.sleep(FOLLOW_POLL_S)


def _line_key(line: dict[str, Any]) -> tuple[Any, ...]:
    """What tells two lines apart: a line indexed late, with an earlier timestamp, is still
    sent once, and a line already sent is never sent again."""
    return (
        line.get("taskRunId"),
        line.get("attemptNumber"),
        line.get("timestamp"),
        line.get("level"),
        line.get("message"),
    )


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
