"""Log routes: an execution's log lines, and a live follow of them (Kestra 1.x paths).

Lines come from the execution index, which the index feed fills from the logs topic.

``GET .../logs/{executionId}`` answers Kestra's JSON array of lines, oldest first, at most
:data:`LOG_LIST_MAX` of them: an execution's lines are unbounded, the answer is not. When more
lines follow, the answer carries ``Link: <...?page=N+1>; rel="next"`` (RFC 8288) and
``X-Kestream-Truncated: true``; ``?page=`` (from 1) reads the next ones. An execution with fewer
lines gets exactly Kestra's answer.

``GET .../logs/search`` answers ``{results, total}``: the lines of every execution, newest
first, filtered by text, namespace, flow, level and dates (:func:`log_search`); the total is
counted up to :data:`~kestream.api.index.store.LOG_SEARCH_COUNT_MAX`.

The follow stream (frames ``start``, then ``progress`` per line, as Kestra's) reads the lines
the index received after the last one it sent (a sequence cursor, :meth:`Store.logs_after`: each
read costs the new lines, not the execution's), every :data:`FOLLOW_POLL_S` when there is
nothing new. Unlike Kestra's, which never ends, it closes once the index holds every line of the
ended execution (:meth:`ApiService.logs_end`): the index's state column says the execution has
ended, the feed has applied the logs topic up to its end as it stood then, and one more read
found what remained. The query parameters are checked before the stream starts (400).

A slow client gets backpressure, not a buffer: a read is at most a page of lines, and the next
page is read only once the client has taken the last one (the lines wait in the index, not in
the process).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiokafka import TopicPartition

from kestream.api import sse
from kestream.api.handle import ApiHandle
from kestream.api.http import (
    TRUNCATED_HEADER,
    bad_request,
    json_response,
    listing_response,
    query_int,
)
from kestream.api.index.log_query import parse_log_search
from kestream.api.index.query import MAX_PAGE, QueryError
from kestream.api.index.store import LOG_LEVELS, LOG_PAGE, LogSearch, log_level_rank
from kestream.api.service import ApiService

PREFIX = "/api/v1/{tenant}/logs/{executionId}"
SEARCH = "/api/v1/{tenant}/logs/search"
FOLLOW_POLL_S = 0.25
#: Most lines in one answer of ``GET .../logs/{executionId}`` (then ``Link: rel="next"``).
LOG_LIST_MAX = 10_000


@dataclass(frozen=True, slots=True)
class LogFilter:
    """``?minLevel=``, ``?taskRunId=``, ``?taskId=``, ``?attempt=``: which lines a caller wants.

    Parsed from the request at once (:meth:`of`), so a bad value is a 400 before anything is
    read or streamed.
    """

    min_level: str | None
    task_run_id: str | None
    task_id: str | None
    attempt: int | None

    @classmethod
    def of(cls, request: web.Request) -> LogFilter:
        query = request.query
        return cls(
            min_level=_min_level(query.get("minLevel")),
            task_run_id=query.get("taskRunId") or None,
            task_id=query.get("taskId") or None,
            attempt=_attempt(query.get("attempt")),
        )

    def narrow(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The lines of the task and attempt asked for (level and task run are the index's)."""
        if self.task_id is not None:
            lines = [line for line in lines if line.get("taskId") == self.task_id]
        if self.attempt is not None:
            lines = [line for line in lines if line.get("attemptNumber") == self.attempt]
        return lines


class LogRoutes:
    def __init__(self, api: ApiHandle) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(SEARCH, self.search),  # before PREFIX, whose id would match ``search``
            web.get(PREFIX + "/follow", self.follow),
            web.get(PREFIX, self.list),
        ]

    async def search(self, request: web.Request) -> web.Response:
        """``GET .../logs/search``: ``{results, total}``, the lines of every execution, newest
        first (see :func:`log_search`)."""
        service = self.api.service_for(request)
        return listing_response(await service.search_logs(log_search(request)))

    async def list(self, request: web.Request) -> web.Response:
        """One page of at most :data:`LOG_LIST_MAX` lines (see the module doc)."""
        wanted = LogFilter.of(request)
        page = query_int(request, "page", 1, low=1, high=MAX_PAGE)
        service, execution = await self.api.execution_for(request)
        lines = await service.logs(
            execution["id"],
            wanted.min_level,
            wanted.task_run_id,
            limit=LOG_LIST_MAX + 1,
            offset=(page - 1) * LOG_LIST_MAX,
        )
        more = len(lines) > LOG_LIST_MAX
        response = json_response(wanted.narrow(lines[:LOG_LIST_MAX]))
        if more:
            following = request.rel_url.update_query(page=str(page + 1))
            response.headers["Link"] = f'<{following}>; rel="next"'
            response.headers[TRUNCATED_HEADER] = "true"
        return response

    async def follow(self, request: web.Request) -> web.StreamResponse:
        wanted = LogFilter.of(request)
        service, execution = await self.api.execution_for(request)
        frames = self._frames(service, execution["id"], wanted)
        return await sse.pump(request, frames, service.follows)

    async def _frames(
        self, service: ApiService, execution_id: str, wanted: LogFilter
    ) -> AsyncIterator[bytes]:
        yield sse.frame({"executionId": execution_id}, event_id="start")
        cursor = 0
        end: Mapping[TopicPartition, int] | None = None
        while True:
            # Decided before the read: a read that starts once the feed is past the end
            # finds every remaining line.
            complete = end is not None and service.feed.reached(end)
            while True:  # the new lines, a page at a time, each read once the last is sent
                page = await service.logs_after(
                    execution_id, cursor, wanted.min_level, wanted.task_run_id, LOG_PAGE
                )
                cursor = page.cursor
                for line in wanted.narrow(page.lines):
                    yield sse.frame(line, event_id="progress")
                if not page.full:
                    break
            if complete:
                return
            if end is None:
                end = await service.logs_end(execution_id)
            await asyncio.sleep(FOLLOW_POLL_S)


def log_search(request: web.Request) -> LogSearch:
    """The logs search's query (:func:`~kestream.api.index.log_query.parse_log_search`: the
    plain parameters and Kestra's ``filters[field][OP]`` form); a bad value answers 400."""
    try:
        return parse_log_search(request.query)
    except QueryError as exc:
        raise bad_request(f"Invalid query filters: {exc}") from None


def _min_level(level: str | None) -> str | None:
    if not level:
        return None
    try:
        return LOG_LEVELS[log_level_rank(level)]
    except ValueError:
        raise bad_request(
            f"Query parameter 'minLevel' must be one of {', '.join(LOG_LEVELS)}"
        ) from None


def _attempt(raw: str | None) -> int | None:
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"Query parameter 'attempt' must be an integer, not '{raw}'") from None
