"""The OpenAPI 3.1 document of the API, built from the routes themselves.

Each route's operation comes from :data:`OPERATIONS` (its id, query parameters, request body and
responses, in Kestra 1.x's names); path parameters come from the route's path and the summary
from the handler's docstring. A route without an entry here, or an entry without a route, is an
error when the document is built, so the document cannot drift from the routes (a test builds
it from the real route table). Each operation also says what it asks of its caller
(:class:`~kestream.api.guard.Access`): the guard protects the routes from this same table, and
the document states it as OpenAPI security (Basic or bearer; none for the webhooks).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kestream.api.guard import Access

#: Where Kestra serves its document, and the same as JSON.
OPENAPI_YAML_PATH = "/swagger/kestra.yml"
OPENAPI_JSON_PATH = "/swagger/kestra.json"

_JSON = "application/json"
_YAML = "application/x-yaml"
_FORM = "multipart/form-data"
_SSE = "text/event-stream"


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str = "string"
    description: str = ""
    repeated: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    operation_id: str
    tag: str
    query: tuple[Param, ...] = ()
    body: str | None = None  # a content type
    responses: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    access: Access = Access.CREDENTIALS


_OK_JSON = (_JSON, "OK")
_ERRORS = {404: (_JSON, "Not found"), 422: (_JSON, "Invalid input")}
_PAGE = (
    Param("page", "integer", "1-based page number"),
    Param("size", "integer", "page size"),
)

_T = "/api/v1/{tenant}"
#: What both log routes take to narrow the lines (``LogFilter``).
_LOG_FILTERS = (
    Param("minLevel"),
    Param("taskRunId"),
    Param("taskId"),
    Param("attempt", "integer"),
)

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", _T + "/flows"): Operation(
        "createFlow", "Flows", body=_YAML, responses={200: _OK_JSON, 422: _ERRORS[422]}
    ),
    ("POST", _T + "/flows/validate"): Operation(
        "validateFlows", "Flows", body=_YAML, responses={200: _OK_JSON}
    ),
    ("GET", _T + "/flows/search"): Operation(
        "searchFlows",
        "Flows",
        query=(*_PAGE, Param("namespace", description="namespace and its children"), Param("q")),
        responses={200: _OK_JSON},
    ),
    ("GET", _T + "/flows/{namespace}"): Operation(
        "listFlowsByNamespace", "Flows", responses={200: _OK_JSON}
    ),
    ("GET", _T + "/flows/{namespace}/{id}"): Operation(
        "getFlow",
        "Flows",
        query=(Param("source", "boolean"), Param("revision", "integer")),
        responses={200: _OK_JSON, 404: _ERRORS[404]},
    ),
    ("PUT", _T + "/flows/{namespace}/{id}"): Operation(
        "updateFlow", "Flows", body=_YAML, responses={200: _OK_JSON, **_ERRORS}
    ),
    ("DELETE", _T + "/flows/{namespace}/{id}"): Operation(
        "deleteFlow", "Flows", responses={204: (_JSON, "Deleted"), 404: _ERRORS[404]}
    ),
    ("POST", _T + "/executions/{namespace}/{flowId}"): Operation(
        "createExecution",
        "Executions",
        query=(
            Param("labels", description="key:value", repeated=True),
            Param("wait", "boolean", "answer when the execution ends or pauses"),
            Param("revision", "integer"),
            Param("scheduleDate", description="ISO-8601 date-time: start then, not now"),
        ),
        body=_FORM,
        responses={200: _OK_JSON, **_ERRORS},
    ),
    ("POST", _T + "/executions/{namespace}/{flowId}/validate"): Operation(
        "validateNewExecutionInputs",
        "Executions",
        query=(Param("revision", "integer"),),
        body=_FORM,
        responses={200: _OK_JSON, 404: _ERRORS[404]},
    ),
    ("GET", _T + "/executions/search"): Operation(
        "searchExecutions",
        "Executions",
        query=(
            *_PAGE,
            Param("sort", description="field:asc|desc"),
            Param("filters[field][OPERATION]", description="Kestra query filters"),
        ),
        responses={200: _OK_JSON, 422: _ERRORS[422]},
    ),
    ("GET", _T + "/executions"): Operation(
        "listExecutions",
        "Executions",
        query=(*_PAGE, Param("namespace"), Param("flowId"), Param("state", repeated=True)),
        responses={200: _OK_JSON, 422: _ERRORS[422]},
    ),
    ("GET", _T + "/executions/{executionId}/file"): Operation(
        "downloadFileFromExecution",
        "Executions",
        query=(Param("path", description="kestra:// URI of a file of the execution"),),
        responses={200: ("application/octet-stream", "The file"), 404: _ERRORS[404]},
    ),
    ("GET", _T + "/executions/{executionId}/file/metas"): Operation(
        "getFileMetadatasFromExecution",
        "Executions",
        query=(Param("path"),),
        responses={200: _OK_JSON, 404: _ERRORS[404]},
    ),
    ("GET", _T + "/executions/{executionId}/file/preview"): Operation(
        "previewFileFromExecution",
        "Executions",
        query=(Param("path"), Param("maxRows", "integer"), Param("encoding")),
        responses={200: _OK_JSON, 404: _ERRORS[404]},
    ),
    ("GET", _T + "/executions/{executionId}"): Operation(
        "getExecution", "Executions", responses={200: _OK_JSON, 404: _ERRORS[404]}
    ),
    ("DELETE", _T + "/executions/{executionId}"): Operation(
        "deleteExecution",
        "Executions",
        responses={204: (_JSON, "Deleted"), 404: _ERRORS[404], 409: (_JSON, "Running")},
    ),
    ("DELETE", _T + "/executions/{executionId}/kill"): Operation(
        "killExecution",
        "Executions",
        responses={202: (_JSON, "Accepted"), 404: _ERRORS[404], 409: (_JSON, "Ended")},
    ),
    ("POST", _T + "/executions/{executionId}/resume"): Operation(
        "resumeExecution",
        "Executions",
        body=_FORM,
        responses={204: (_JSON, "Resumed"), 404: _ERRORS[404], 409: (_JSON, "Not paused")},
    ),
    ("POST", _T + "/executions/{executionId}/restart"): Operation(
        "restartExecution",
        "Executions",
        responses={200: _OK_JSON, 404: _ERRORS[404], 409: (_JSON, "Not restartable")},
    ),
    ("POST", _T + "/executions/{executionId}/replay"): Operation(
        "replayExecution",
        "Executions",
        query=(Param("taskRunId"), Param("revision", "integer")),
        responses={200: _OK_JSON, 404: _ERRORS[404], 409: (_JSON, "Not ended"), 422: _ERRORS[422]},
    ),
    ("POST", _T + "/executions/{executionId}/replay-with-inputs"): Operation(
        "replayExecutionWithinputs",
        "Executions",
        query=(Param("taskRunId"), Param("revision", "integer")),
        body=_FORM,
        responses={200: _OK_JSON, 404: _ERRORS[404], 409: (_JSON, "Not ended"), 422: _ERRORS[422]},
    ),
    ("GET", _T + "/executions/{executionId}/follow"): Operation(
        "followExecution", "Executions", responses={200: (_SSE, "Server-sent events")}
    ),
    ("POST", _T + "/executions/purge"): Operation(
        "purgeExecutions",
        "Executions",
        body=_JSON,
        responses={200: _OK_JSON, 422: _ERRORS[422]},
    ),
    ("POST", _T + "/logs/purge"): Operation(
        "purgeLogs", "Logs", body=_JSON, responses={200: _OK_JSON, 422: _ERRORS[422]}
    ),
    ("GET", _T + "/logs/search"): Operation(
        "searchLogs",
        "Logs",
        query=(
            Param("q", description="text in the message, in any case"),
            Param("namespace", description="the namespace and its children"),
            Param("flowId"),
            Param("minLevel"),
            Param("startDate"),
            Param("endDate"),
            Param("timeRange", description="an ISO-8601 duration back from now"),
            *_PAGE,
        ),
        responses={200: _OK_JSON},
    ),
    ("GET", _T + "/logs/{executionId}"): Operation(
        "listLogsFromExecution",
        "Logs",
        query=(*_LOG_FILTERS, Param("page", "integer")),
        responses={200: _OK_JSON, 404: _ERRORS[404]},
    ),
    ("GET", _T + "/logs/{executionId}/follow"): Operation(
        "followLogsFromExecution",
        "Logs",
        query=_LOG_FILTERS,
        responses={200: (_SSE, "Server-sent events")},
    ),
    ("GET", _T + "/namespaces/{namespace}/files/directory"): Operation(
        "listNamespaceDirectoryFiles", "Files", query=(Param("path"),), responses={200: _OK_JSON}
    ),
    ("GET", _T + "/namespaces/{namespace}/files/stats"): Operation(
        "getFileMetadatas",
        "Files",
        query=(Param("path"),),
        responses={200: _OK_JSON, 404: _ERRORS[404]},
    ),
    ("GET", _T + "/namespaces/{namespace}/files/search"): Operation(
        "searchNamespaceFiles", "Files", query=(Param("q"),), responses={200: _OK_JSON}
    ),
    ("GET", _T + "/namespaces/{namespace}/files"): Operation(
        "getFileContent",
        "Files",
        query=(Param("path"),),
        responses={200: ("application/octet-stream", "The file"), 404: _ERRORS[404]},
    ),
    ("POST", _T + "/namespaces/{namespace}/files"): Operation(
        "createNamespaceFile",
        "Files",
        query=(Param("path"),),
        body=_FORM,
        responses={200: (_JSON, "Stored")},
    ),
    ("DELETE", _T + "/namespaces/{namespace}/files"): Operation(
        "deleteFileDirectory",
        "Files",
        query=(Param("path"),),
        responses={204: (_JSON, "Deleted"), 404: _ERRORS[404]},
    ),
    ("GET", _T + "/namespaces/{namespace}/kv"): Operation(
        "listKeys", "KV", responses={200: _OK_JSON}
    ),
    ("GET", _T + "/namespaces/{namespace}/kv/{key}"): Operation(
        "getKeyValue", "KV", responses={200: _OK_JSON, 404: _ERRORS[404]}
    ),
    ("PUT", _T + "/namespaces/{namespace}/kv/{key}"): Operation(
        "setKeyValue", "KV", body="text/plain", responses={200: (_JSON, "Set")}
    ),
    ("DELETE", _T + "/namespaces/{namespace}/kv/{key}"): Operation(
        "deleteKeyValue", "KV", responses={200: _OK_JSON}
    ),
    ("GET", _T + "/triggers/search"): Operation(
        "searchTriggers",
        "Triggers",
        query=(
            *_PAGE,
            Param("filters[field][OPERATION]", description="namespace, flowId, triggerId, q"),
            Param("namespace"),
            Param("flowId"),
            Param("q"),
        ),
        responses={200: _OK_JSON, 400: (_JSON, "Invalid query filters")},
    ),
    ("GET", _T + "/triggers/{namespace}/{flowId}"): Operation(
        "searchTriggersForFlow", "Triggers", query=_PAGE, responses={200: _OK_JSON}
    ),
    ("GET", _T + "/triggers/{namespace}/{flowId}/{triggerId}"): Operation(
        "getTrigger", "Triggers", responses={200: _OK_JSON, 404: _ERRORS[404]}
    ),
    ("PUT", _T + "/triggers"): Operation(
        "updateTrigger",
        "Triggers",
        body=_JSON,
        responses={200: _OK_JSON, 400: (_JSON, "Invalid backfill"), 404: _ERRORS[404]},
    ),
    ("POST", _T + "/triggers/{namespace}/{flowId}/{triggerId}/unlock"): Operation(
        "unlockTrigger",
        "Triggers",
        responses={200: _OK_JSON, 404: _ERRORS[404], 409: (_JSON, "Trigger is not locked")},
    ),
    ("GET", _T + "/cluster"): Operation(
        "getCluster",
        "Cluster",
        responses={200: _OK_JSON, 503: (_JSON, "The members topic is still being read")},
    ),
    ("POST", _T + "/triggers/set-disabled/by-triggers"): Operation(
        "disabledTriggersByIds", "Triggers", body=_JSON, responses={200: _OK_JSON}
    ),
    ("POST", _T + "/triggers/set-disabled"): Operation(
        "setDisabledTriggers", "Triggers", body=_JSON, responses={200: _OK_JSON}
    ),
    ("PUT", _T + "/triggers/set-disabled"): Operation(
        "disableTriggerById",
        "Triggers",
        body=_JSON,
        responses={
            200: _OK_JSON,
            400: (_JSON, "Invalid request"),
            404: _ERRORS[404],
            409: (_JSON, "Not a Schedule trigger"),
        },
    ),
    ("DELETE", _T + "/triggers/delete/by-triggers"): Operation(
        "deleteTriggersByIds", "Triggers", body=_JSON, responses={200: _OK_JSON}
    ),
    ("DELETE", _T + "/triggers/delete/by-query"): Operation(
        "deleteTriggersByQuery",
        "Triggers",
        query=(Param("filters[field][OPERATION]"),),
        body=_JSON,
        responses={200: _OK_JSON, 400: (_JSON, "Invalid query filters")},
    ),
    ("GET", _T + "/triggers/export/by-query/csv"): Operation(
        "exportTriggersByQuery",
        "Triggers",
        query=(Param("filters[field][OPERATION]"),),
        responses={200: ("text/csv", "The triggers found, one row each")},
    ),
    ("POST", _T + "/triggers/{namespace}/{flowId}/{triggerId}/restart"): Operation(
        "restartTrigger",
        "Triggers",
        responses={200: _OK_JSON, 404: _ERRORS[404], 409: (_JSON, "Not a Schedule trigger")},
    ),
    ("DELETE", _T + "/triggers/{namespace}/{flowId}/{triggerId}"): Operation(
        "deleteTrigger",
        "Triggers",
        responses={
            204: (_JSON, "Deleted"),
            404: _ERRORS[404],
            409: (_JSON, "Not a Schedule trigger"),
        },
    ),
    ("POST", _T + "/triggers/set-disabled/by-query"): Operation(
        "disabledTriggersByQuery",
        "Triggers",
        query=(Param("disabled", "boolean"), Param("filters[field][OPERATION]")),
        responses={200: _OK_JSON},
    ),
    ("POST", _T + "/triggers/unlock/by-triggers"): Operation(
        "unlockTriggersByIds", "Triggers", body=_JSON, responses={200: _OK_JSON}
    ),
    ("POST", _T + "/triggers/unlock/by-query"): Operation(
        "unlockTriggersByQuery",
        "Triggers",
        query=(Param("filters[field][OPERATION]"),),
        responses={200: _OK_JSON},
    ),
    **{
        (method, _T + f"/triggers/backfill/{action}"): Operation(
            f"{action}Backfill",
            "Triggers",
            body=_JSON,
            responses={200: _OK_JSON, 400: (_JSON, "No backfill found"), 404: _ERRORS[404]},
        )
        for method, action in (("PUT", "pause"), ("PUT", "unpause"), ("POST", "delete"))
    },
    **{
        ("POST", _T + f"/triggers/backfill/{action}/by-triggers"): Operation(
            f"{action}BackfillByIds", "Triggers", body=_JSON, responses={200: _OK_JSON}
        )
        for action in ("pause", "unpause", "delete")
    },
    **{
        ("POST", _T + f"/triggers/backfill/{action}/by-query"): Operation(
            f"{action}BackfillByQuery",
            "Triggers",
            query=(Param("filters[field][OPERATION]"),),
            responses={200: _OK_JSON},
        )
        for action in ("pause", "unpause", "delete")
    },
    **{
        (method, _T + "/executions/webhook/{namespace}/{flowId}/{key}"): Operation(
            f"webhookTrigger{method.title()}",
            "Executions",
            body=None if method == "GET" else "*/*",
            responses={200: _OK_JSON, 404: _ERRORS[404]},
            access=Access.KEY,
        )
        for method in ("GET", "POST", "PUT")
    },
}

_PATH_PARAM = re.compile(r"\{(\w+)\}")

#: The credentials every operation takes unless it says otherwise (Kestra's names).
_SECURITY_SCHEMES = {
    "basicAuth": {"type": "http", "scheme": "basic"},
    "bearerAuth": {"type": "http", "scheme": "bearer"},
}
_UNAUTHORIZED = {"description": "Credentials missing or invalid", "content": {_JSON: {}}}


def route_access(route: web.RouteDef) -> Access:
    """What a route asks of its caller, from :data:`OPERATIONS` (credentials if it has no
    entry, as the OpenAPI document's own routes)."""
    operation = OPERATIONS.get((route.method, route.path))
    return operation.access if operation is not None else Access.CREDENTIALS


def openapi_document(routes: list[web.RouteDef]) -> dict[str, Any]:
    """The document of ``routes``; raises ValueError when a route and OPERATIONS disagree."""
    paths: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str]] = set()
    for route in routes:
        key = (route.method, route.path)
        operation = OPERATIONS.get(key)
        if operation is None:
            raise ValueError(f"route {route.method} {route.path} has no OpenAPI entry")
        seen.add(key)
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, operation)
    missing = set(OPERATIONS) - seen
    if missing:
        raise ValueError(f"OpenAPI entries without a route: {sorted(missing)}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kestream",
            "version": "1",
            "description": "Kestra 1.x-compatible REST API of a kestream installation",
        },
        "paths": paths,
        "components": {"securitySchemes": _SECURITY_SCHEMES},
        "security": [{name: []} for name in _SECURITY_SCHEMES],
    }


def _operation(route: web.RouteDef, operation: Operation) -> dict[str, Any]:
    doc = inspect.getdoc(route.handler) or ""
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(route.path)
    ]
    for param in operation.query:
        schema: dict[str, Any] = {"type": param.type}
        if param.repeated:
            schema = {"type": "array", "items": schema}
        entry = {"name": param.name, "in": "query", "required": False, "schema": schema}
        if param.description:
            entry["description"] = param.description
        params.append(entry)
    out: dict[str, Any] = {
        "operationId": operation.operation_id,
        "tags": [operation.tag],
        "summary": doc.split("\n", 1)[0] if doc else operation.operation_id,
        "parameters": params,
        "responses": {
            str(code): {"description": text, "content": {kind: {}}}
            if kind and code != 204
            else {"description": text}
            for code, (kind, text) in sorted(operation.responses.items())
        },
    }
    if len(doc.split("\n", 1)) > 1:
        out["description"] = doc
    if operation.body is not None:
        out["requestBody"] = {"content": {operation.body: {}}}
    if operation.access is Access.CREDENTIALS:
        out["responses"]["401"] = _UNAUTHORIZED
    else:
        out["security"] = []  # the key in the path is the credential
    return out
