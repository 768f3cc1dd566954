"""Execution routes: create, validate inputs, get, kill, resume, restart, delete, follow, search
(Kestra 1.x).

Routes with a fixed last segment (``/search``, ``/{id}/kill``, ``/{id}/resume``, ...) are
registered before ``/{namespace}/{flowId}``, which would otherwise match them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import web
from pydantic_core import to_jsonable_python

from kestream.api import sse
from kestream.api.file_routes import store_uploads
from kestream.api.handle import ApiHandle
from kestream.api.http import (
    ApiError,
    bad_request,
    invalid,
    json_response,
    listing_response,
    not_found,
    parse_labels,
    query_flag,
    query_instant,
    query_int,
    read_form,
)
from kestream.api.index.query import QueryError, parse_search_params
from kestream.api.purge import delete_execution
from kestream.api.service import ApiService, dump
from kestream.executor.context import input_variables
from kestream.executor.replay import ReplayError
from kestream.executor.restore import RESTARTABLE, RestoreError
from kestream.kv.store import calls_kv, sync_current_store
from kestream.models.flow import Flow
from kestream.models.ids import new_id
from kestream.models.input_resolution import ResolvedInput, resolve_inputs
from kestream.models.inputs import InputValidationError
from kestream.models.state import StateType
from kestream.runtime.record_limit import RecordTooLarge
from kestream.secrets.encryption import scope_of
from kestream.storage.current import remove_execution_files

PREFIX = "/api/v1/{tenant}/executions"


def input_errors(exc: InputValidationError) -> ApiError:
    problems = [{"path": f"inputs.{p.input_id}", "message": str(p)} for p in exc.problems]
    return invalid(f"Invalid inputs: {exc}", problems)


def input_json(resolved: ResolvedInput) -> dict[str, Any]:
    """One input of a ``validate`` answer: Kestra's ``{input, value, enabled, errors}``."""
    definition = resolved.model.model_dump(mode="json", by_alias=True, exclude_none=True)
    if resolved.choices is not None:
        definition["values"] = resolved.choices
    return {
        "input": definition,
        "value": to_jsonable_python(resolved.value) if resolved.has_value else None,
        "enabled": resolved.enabled,
        "errors": [] if resolved.problem is None else [{"message": resolved.problem}],
    }


def execution_url(request: web.Request, execution: dict[str, Any]) -> str:
    """Where a person looks at the execution: its page in the web UI (``/ui/``, whose routes
    live in the fragment), as Kestra's answer links to its own UI."""
    page = request.url.with_path("/ui/").with_query(None)
    return f"{page}#/executions/{quote(execution['id'], safe='')}"


def current_state(execution: dict[str, Any]) -> StateType:
    return StateType(execution["state"]["current"])


async def _forget_uploads(flow: Flow, execution_id: str) -> None:
    """Delete the files uploaded for an execution that was refused before anything was sent
    (its inputs, a replay that cannot be made, a record too large): nothing would ever read
    them, nor delete them with the execution."""
    await asyncio.to_thread(remove_execution_files, flow.namespace, flow.id, execution_id)


class ExecutionRoutes:
    def __init__(self, api: ApiHandle) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        one = PREFIX + "/{executionId}"
        return [
            web.get(PREFIX + "/search", self.search),
            web.get(PREFIX, self.search),
            web.get(one + "/follow", self.follow),
            web.delete(one + "/kill", self.kill),
            web.post(one + "/resume", self.resume),
            web.post(one + "/restart", self.restart),
            web.post(one + "/replay", self.replay),
            web.post(one + "/replay-with-inputs", self.replay_with_inputs),
            web.get(one, self.get),
            web.delete(one, self.delete),
            web.post(PREFIX + "/{namespace}/{flowId}/validate", self.validate_inputs),
            web.post(PREFIX + "/{namespace}/{flowId}", self.create),
        ]

    async def create(self, request: web.Request) -> web.Response:
        """Start an execution of the flow's newest revision (or ``?revision=``).

        Inputs are form fields (multipart or url-encoded; JSON is accepted too); an uploaded
        file is stored and its input is given its ``kestra://`` URI (FILE inputs). ``labels`` are
        repeated ``key:value`` query parameters, ``?scheduleDate=`` (ISO-8601 with an offset)
        starts it later (it waits as CREATED, its timer kept in the executor's state), and
        ``?wait=true`` answers when the execution ends or pauses, or after
        ``KESTREAM_API_WAIT_MAX_S`` with the execution as it stands then (not an error: the
        caller follows it, or gets it, from there).
        """
        service = self.api.service_for(request)
        namespace, flow_id = request.match_info["namespace"], request.match_info["flowId"]
        number = query_int(request, "revision", 0, low=1, high=10**9) or None
        wait = query_flag(request, "wait")  # checked before anything starts
        schedule_date = query_instant(request, "scheduleDate")
        flow = service.flow(namespace, flow_id, number)
        if flow is None:
            raise not_found(
                f"Flow '{namespace}.{flow_id}'" + (f" revision {number}" if number else "")
            )
        if flow.disabled:
            raise ApiError(409, f"Illegal state: Flow '{namespace}.{flow_id}' is disabled")
        labels = parse_labels(request.query.getall("labels", []))
        reserved = [k for k in labels if k.startswith("system.") and k != "system.correlationId"]
        if reserved:
            raise invalid(
                f"Labels starting with 'system.' are reserved: {', '.join(reserved)}",
                [{"path": "labels", "message": f"reserved label '{k}'"} for k in reserved],
            )
        execution_id = new_id()
        form = await read_form(request, self.api.settings.api_max_upload_bytes, files=True)
        inputs = await store_uploads(form, flow, execution_id)
        try:
            created = await service.create_execution(
                flow, inputs, labels, schedule_date=schedule_date, execution_id=execution_id
            )
        except (InputValidationError, RecordTooLarge) as exc:
            await _forget_uploads(flow, execution_id)
            if isinstance(exc, InputValidationError):
                raise input_errors(exc) from None
            raise
        if wait:
            waited = await service.wait(created["id"], self.api.settings.api_wait_max_s)
            created = waited or created
        return json_response({**created, "url": execution_url(request, created)})

    async def validate_inputs(self, request: web.Request) -> web.Response:
        """The inputs a form would send, resolved as a new execution would resolve them, and
        nothing started (Kestra's ``validate``): for each declared input, whether its
        ``dependsOn`` enables it, the value it would take and why it is refused; a SELECT's
        ``values`` are the ones its ``expression`` renders to."""
        service = self.api.service_for(request)
        namespace, flow_id = request.match_info["namespace"], request.match_info["flowId"]
        number = query_int(request, "revision", 0, low=1, high=10**9) or None
        flow = service.flow(namespace, flow_id, number)
        if flow is None:
            raise not_found(
                f"Flow '{namespace}.{flow_id}'" + (f" revision {number}" if number else "")
            )
        given = await read_form(request, self.api.max_body)
        if calls_kv(flow.source):
            await sync_current_store()  # kv() in input templates then reads without waiting
        scope, variables = scope_of(flow.namespace, flow.id), input_variables(flow)
        resolved = resolve_inputs(flow.inputs, given, scope=scope, variables=variables)
        inputs = [input_json(one) for one in resolved]
        return json_response({"id": flow.id, "namespace": flow.namespace, "inputs": inputs})

    async def get(self, request: web.Request) -> web.Response:
        _, execution = await self.api.execution_for(request)
        return json_response(execution)

    async def kill(self, request: web.Request) -> web.Response:
        """202: the kill is on its way (the execution goes KILLING, then KILLED, its running
        subflows with it). An ended execution whose ``afterExecution`` tasks still run keeps its
        end state; the kill stops them. One that is over is left as it is: 202 as well, or 409
        with ``?isOnKillCascade=false``, as Kestra answers."""
        service, execution = await self.api.execution_for(request)
        if service.over(execution):
            if not query_flag(request, "isOnKillCascade", default=True):
                raise ApiError(
                    409,
                    f"Illegal state: Execution '{execution['id']}' is already "
                    "finished, can't kill it",
                )
            return web.Response(status=202)
        await service.kill(execution)
        return web.Response(status=202)

    async def resume(self, request: web.Request) -> web.Response:
        """204: resumed with the form's inputs (the Pause's ``onResume``); 409 if not paused."""
        service, execution = await self.api.execution_for(request)
        if current_state(execution) is not StateType.PAUSED:
            raise ApiError(409, f"Illegal state: Execution '{execution['id']}' is not paused")
        inputs = await read_form(request, self.api.max_body)
        try:
            await service.resume(execution, inputs)
        except InputValidationError as exc:
            raise input_errors(exc) from None
        return web.Response(status=204)

    async def restart(self, request: web.Request) -> web.Response:
        """Restart an execution that ended FAILED, KILLED or WARNING: its failed task runs get a
        new attempt. Answers the execution as restarted. One whose ``afterExecution`` tasks
        still run is not over: 409 until they have ended (the executor leaves it as it is)."""
        service, execution = await self.api.execution_for(request)
        state = current_state(execution)
        if state not in RESTARTABLE:
            raise ApiError(
                409,
                f"Illegal state: Execution '{execution['id']}' is {state.value}: only FAILED, "
                "KILLED or WARNING executions can be restarted",
            )
        if not service.over(execution):
            raise ApiError(
                409,
                f"Illegal state: Execution '{execution['id']}' is {state.value} but its "
                "afterExecution tasks still run: restart it once they have ended",
            )
        await service.restart(execution)
        restarted = dict(execution)
        restarted["state"] = {**execution["state"], "current": StateType.RESTARTED.value}
        return json_response(restarted)

    async def replay(self, request: web.Request) -> web.Response:
        """Replay an ended execution as a new one, from ``?taskRunId=`` (the task runs before
        it are kept) or from its start, on ``?revision=`` (default: its own). Answers the new
        execution. One whose ``afterExecution`` tasks still run is refused (409), as a restart
        is: the replay would copy outputs and files they may still write."""
        return await self._replay(request, None)

    async def replay_with_inputs(self, request: web.Request) -> web.Response:
        """Replay, as ``replay``, with the form's inputs instead of the execution's own
        (checked as a new execution's; uploaded files are stored for the new execution)."""
        return await self._replay(request, {})

    async def _replay(self, request: web.Request, inputs: dict[str, Any] | None) -> web.Response:
        service, execution = await self.api.execution_for(request)
        state = current_state(execution)
        if not state.is_terminal:
            raise ApiError(
                409,
                f"Illegal state: Execution '{execution['id']}' is {state.value}: only an "
                "ended execution can be replayed",
            )
        if not service.over(execution):  # they may still write the files a replay copies
            raise ApiError(
                409,
                f"Illegal state: Execution '{execution['id']}' is {state.value} but its "
                "afterExecution tasks still run: replay it once they have ended",
            )
        revision = query_int(request, "revision", 0, low=1, high=10**9) or None
        number = revision or execution["flowRevision"]
        flow = service.flow(execution["namespace"], execution["flowId"], number)
        if flow is None:
            raise not_found(
                f"Flow '{execution['namespace']}.{execution['flowId']}' revision {number}"
            )
        execution_id = new_id()
        if inputs is not None:
            form = await read_form(request, self.api.max_body, files=True)
            inputs = await store_uploads(form, flow, execution_id)
        try:
            replayed = await service.replay(
                execution,
                flow,
                task_run_id=request.query.get("taskRunId") or None,
                inputs=inputs,
                execution_id=execution_id,
            )
        except (InputValidationError, ReplayError, RestoreError, RecordTooLarge) as exc:
            if inputs is not None:
                await _forget_uploads(flow, execution_id)
            if isinstance(exc, InputValidationError):
                raise input_errors(exc) from None
            if isinstance(exc, ReplayError | RestoreError):
                raise invalid(str(exc), [{"path": "taskRunId", "message": str(exc)}]) from None
            raise
        return json_response(replayed)

    async def delete(self, request: web.Request) -> web.Response:
        """204: the execution is deleted, with its lines unless ``deleteLogs=false``, through
        Kafka, so every API's index drops it (:func:`kestream.api.purge.delete_execution`); it
        no longer lists nor answers. Its stored files go too, unless ``deleteStorage=false``.
        An execution still running is refused with 409: kill it first; so is one restarted
        after this API's index saw it ended (the executor refuses the deletion). Running means
        not over: an ended execution whose ``afterExecution`` tasks still run is running too."""
        service, execution = await self.api.execution_for(request)
        if not service.over(execution):
            raise ApiError(
                409, f"Illegal state: Execution '{execution['id']}' is still running: kill it first"
            )
        logs = query_flag(request, "deleteLogs", default=True)
        files = query_flag(request, "deleteStorage", default=True)
        if not await delete_execution(service, execution, logs=logs):
            raise ApiError(
                409,
                f"Illegal state: Execution '{execution['id']}' was restarted while it was being "
                "deleted; it is kept",
            )
        if files:
            await asyncio.to_thread(
                remove_execution_files, execution["namespace"], execution["flowId"], execution["id"]
            )
        return web.Response(status=204)

    async def follow(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the execution now, then each change, ``end`` at its last state."""
        service, execution = await self.api.execution_for(request)
        return await sse.pump(request, follow_frames(service, execution), service.follows)

    async def search(self, request: web.Request) -> web.Response:
        """``{results, total}`` for Kestra's ``filters[field][OPERATION]=value`` parameters (and
        the older ``namespace=``/``flowId=``/``state=`` ones); the total is counted apart, and
        a capped one is said so in a header (:func:`listing_response`)."""
        service = self.api.service_for(request)
        try:
            query = parse_search_params(request.query)
        except QueryError as exc:
            raise bad_request(f"Invalid query filters: {exc}") from None
        return listing_response(await service.search(query))


async def follow_frames(service: ApiService, known: dict[str, Any]) -> AsyncIterator[bytes]:
    """Kestra's frames: ``start`` (the id), the execution as it is (``progress``), each change
    (``progress``), and the last state (``end``); an execution that is over gets ``end`` at
    once. Over means its ``afterExecution`` tasks have ended too (:meth:`ApiService.over`): the
    frames while they run show the end state as ``progress``."""
    execution_id = known["id"]
    yield sse.frame({"id": execution_id, "deleted": False}, event_id="start")
    if service.over(known):
        yield sse.frame(known, event_id="end")
        return
    yield sse.frame(known, event_id="progress")
    last: dict[str, Any] | None = None
    async for execution in service.follow(execution_id, known):
        last = dump(execution)
        if service.over(last):
            yield sse.frame(last, event_id="end")
            return
        yield sse.frame(last, event_id="progress")
    if last is not None:  # the executor called it over: its view wins
        yield sse.frame(last, event_id="end")
