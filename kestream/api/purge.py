"""The purge routes: what the PurgeExecutions and PurgeLogs tasks ask of the API.

``POST /api/v1/{tenant}/executions/purge`` takes an :class:`ExecutionPurge` (the task's
filters, as JSON) and answers ``{"executionsCount", "logsCount"}``; ``POST
/api/v1/{tenant}/logs/purge`` takes a :class:`LogPurge` and answers ``{"count"}``. Neither is a
Kestra route (Kestra runs these tasks next to its repositories); the tasks call them from the
worker (:mod:`kestream.tasks.purge_api`).

The API picks what to purge from its own index, then sends one purge record per execution to
the logs topic (:mod:`kestream.api.index.purges`): every API process's index feed applies it,
this one's included. The answer waits until this API's feed has applied them, so a read that
follows the task (``GET .../executions/{id}``) already finds them gone here; other API
processes follow as their feeds read the records. Executions are taken a page at a time, oldest
end first, by a keyset on the index (log lines, a page of executions' counts at a time), so one
purge holds at most a page of ids and reads each row once.

Counts are what this API's index held when it chose: a line of a purged execution still on its
way to the index is deleted too (the record comes after it in the partition) but not counted.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiokafka import TopicPartition
from pydantic import ValidationError

from kestream.api.handle import ApiHandle
from kestream.api.http import ApiError, bad_request, invalid, json_response, read_body
from kestream.api.index.purges import (
    Candidate,
    PageKey,
    PurgeRecord,
    execution_attempt,
    execution_candidates,
    line_counts,
    purgeable_lines,
)
from kestream.api.service import ApiService
from kestream.executor import events as ev
from kestream.runtime import records
from kestream.storage.current import remove_execution_files
from kestream.tasks.purge import ExecutionPurge, ExecutionPurgeCounts, LogPurge

__all__ = ["PurgeRoutes", "delete_execution", "purge_executions", "purge_logs"]

#: Executions chosen per round: the ids one round holds, and the records it sends at once.
PAGE = 500
#: How long an answer waits for this API's own index to apply the records it sent.
APPLY_WAIT_S = 120.0
_POLL_S = 0.05


async def _send(service: ApiService, records: list[tuple[str, PurgeRecord]]) -> None:
    """Produce the records, then wait until this API's index has applied them (module docs)."""
    if not records:
        return
    acks = await service.client.send_records(
        service.ctx.topics.logs,
        [
            (execution_id.encode(), orjson.dumps(record.to_value()))
            for execution_id, record in records
        ],
    )
    marks: dict[TopicPartition, int] = {}
    for ack in acks:
        tp = TopicPartition(ack.topic, ack.partition)
        marks[tp] = max(marks.get(tp, 0), ack.offset + 1)
    deadline = asyncio.get_running_loop().time() + APPLY_WAIT_S
    while not service.feed.reached(marks):
        if asyncio.get_running_loop().time() > deadline:
            raise ApiError(
                503,
                f"The purge was sent, but this API's index has not applied it within "
                f"{APPLY_WAIT_S:g}s; it will",
            )
        await asyncio.sleep(_POLL_S)


async def _purge_through_executor(
    service: ApiService, attempts: dict[str, int], record: PurgeRecord
) -> set[str]:
    """Delete ended executions (id -> the attempt the index shows ended) through the executor,
    which refuses any that runs again (:mod:`kestream.runtime.purge_fence`); returns the ids
    deleted, once this API's feed has applied the executor's answer for each one."""
    if not attempts:
        return set()
    value = record.to_value()
    answers = service.feed.watch_purges(attempts)
    try:
        await service.client.send_records(
            service.ctx.topics.executions,
            [
                (execution_id.encode(), records.encode_event(ev.Purge(execution_id, n, value)))
                for execution_id, n in attempts.items()
            ],
        )
        try:
            decided = await asyncio.wait_for(asyncio.gather(*answers.values()), APPLY_WAIT_S)
        except TimeoutError:
            raise ApiError(
                503,
                f"The purge was sent, but this API's index has not received the executor's "
                f"answer within {APPLY_WAIT_S:g}s; it will",
            ) from None
    finally:
        service.feed.unwatch_purges(answers)
    outcomes = zip(answers, decided, strict=True)
    return {execution_id for execution_id, answer in outcomes if answer.execution}


async def delete_execution(service: ApiService, execution: dict[str, Any], *, logs: bool) -> bool:
    """Delete one ended execution (``DELETE .../executions/{id}``), with its lines if ``logs``:
    the record a purge sends, through the executor as a purge does, so every API's index drops
    it; False when the executor refused it because the execution was restarted meanwhile."""
    execution_id = execution["id"]
    attempts = {execution_id: execution_attempt(execution)}
    return bool(await _purge_through_executor(service, attempts, PurgeRecord(True, logs)))


async def purge_executions(service: ApiService, query: ExecutionPurge) -> ExecutionPurgeCounts:
    """Purge what ``query`` names, a page at a time (module docs)."""
    counts = ExecutionPurgeCounts()
    if not (query.purgeExecution or query.purgeLog or query.purgeStorage):
        return counts
    store = service.index
    after: PageKey | None = None
    while True:
        page, after = await asyncio.to_thread(execution_candidates, store, query, PAGE, after)
        if page:
            await _purge_page(service, query, page, counts)
        if after is None:
            return counts


async def _purge_page(
    service: ApiService, query: ExecutionPurge, page: list[Candidate], counts: ExecutionPurgeCounts
) -> None:
    """Purge one page of the executions ``query`` picked; adds to ``counts``.

    Deleting executions goes through the executor, and their files go only once it accepted
    (a restarted execution keeps both); lines and files alone are deleted directly.
    """
    store = service.index
    lines = await asyncio.to_thread(line_counts, store, [c.id for c in page])
    record = PurgeRecord(query.purgeExecution, all_logs=query.purgeLog)
    if query.purgeExecution:
        attempts = {c.id: c.attempt for c in page}
        deleted = await _purge_through_executor(service, attempts, record)
        page = [c for c in page if c.id in deleted]
        counts.executionsCount += len(page)
    elif query.purgeLog:
        await _send(service, [(c.id, record) for c in page])
    if query.purgeLog:
        counts.logsCount += sum(lines.get(c.id, 0) for c in page)
    if query.purgeStorage:
        counts.storagesCount += await asyncio.to_thread(_remove_files, page)


def _remove_files(page: list[Candidate]) -> int:
    """Delete the stored files of these executions (their folders, by the namespace and flow
    the index knew them by); returns how many files went."""
    return sum(remove_execution_files(c.namespace, c.flow_id, c.id) for c in page)


async def purge_logs(service: ApiService, query: LogPurge) -> int:
    """Purge the lines ``query`` names, a page of executions at a time; returns how many the
    index held."""
    record = PurgeRecord(False, lines=query)
    total = 0
    after: str | None = None
    while True:
        counts = await asyncio.to_thread(purgeable_lines, service.index, query, PAGE, after)
        if not counts:
            return total
        ids = sorted(counts)
        await _send(service, [(execution_id, record) for execution_id in ids])
        total += sum(counts.values())
        if len(ids) < PAGE:
            return total
        after = ids[-1]


_M = TypeVar("_M", ExecutionPurge, LogPurge)


async def _query_of(request: web.Request, model: type[_M], limit: int) -> _M:
    body = await read_body(request, limit)
    try:
        data: Any = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"path": ".".join(str(p) for p in error["loc"]), "message": error["msg"]}
            for error in exc.errors()
        ]
        raise invalid(f"Invalid purge: {exc.error_count()} problem(s)", problems) from None


class PurgeRoutes:
    def __init__(self, api: ApiHandle) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/v1/{tenant}/executions/purge", self.executions),
            web.post("/api/v1/{tenant}/logs/purge", self.logs),
        ]

    async def executions(self, request: web.Request) -> web.Response:
        """Purge ended executions (and their lines): the counts."""
        service = self.api.service_for(request)
        query = await _query_of(request, ExecutionPurge, self.api.max_body)
        counts = await purge_executions(service, query)
        return json_response(counts.model_dump())

    async def logs(self, request: web.Request) -> web.Response:
        """Purge log lines: ``{"count": N}``."""
        service = self.api.service_for(request)
        query = await _query_of(request, LogPurge, self.api.max_body)
        return json_response({"count": await purge_logs(service, query)})
