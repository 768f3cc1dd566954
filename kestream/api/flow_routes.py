"""Flow routes: create, update, get, list, search, delete, validate (Kestra 1.x paths).

Flows are YAML (``Content-Type: application/x-yaml``); a flow that does not validate is refused
with 422 and every problem located (``path`` and line). Each change of the source bumps the
revision; an unchanged source keeps it. Webhook keys are masked for callers without credentials
(:mod:`kestream.api.webhook_keys`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from kestream.api.guard import authenticated
from kestream.api.handle import ApiHandle
from kestream.api.http import (
    ApiError,
    bad_request,
    invalid,
    json_response,
    not_found,
    query_flag,
    query_int,
    read_text,
)
from kestream.api.webhook_keys import mask_webhook_keys
from kestream.models.flow import Flow, check_flow
from kestream.models.validation import FlowProblem, FlowValidationError
from kestream.models.yaml_source import YamlSyntaxError, load_yaml

PREFIX = "/api/v1/{tenant}/flows"


def flow_json(flow: Flow, *, with_source: bool, show_keys: bool) -> dict[str, Any]:
    """Kestra's Flow (``FlowWithSource`` with the source) JSON of a flow; Webhook keys masked
    unless ``show_keys`` (the caller is authenticated)."""
    body: dict[str, Any] = flow.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["revision"] = flow.revision
    body["labels"] = [{"key": k, "value": v} for k, v in flow.labels.items()]
    body.setdefault("deleted", False)
    body.setdefault("disabled", False)
    if with_source:
        body["source"] = flow.source
    return body if show_keys else mask_webhook_keys(body, flow)


def problem_json(problem: FlowProblem) -> dict[str, Any]:
    where = f"line {problem.line}: " if problem.line else ""
    return {"path": problem.path or None, "line": problem.line, "message": where + problem.message}


def rejected(exc: FlowValidationError) -> ApiError:
    return invalid(f"Invalid flow {exc.flow}: {exc}", [problem_json(p) for p in exc.problems])


class FlowRoutes:
    def __init__(self, api: ApiHandle) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(PREFIX, self.create),
            web.post(PREFIX + "/validate", self.validate),
            web.get(PREFIX + "/search", self.search),
            web.get(PREFIX + "/{namespace}", self.list_namespace),
            web.get(PREFIX + "/{namespace}/{id}", self.get),
            web.put(PREFIX + "/{namespace}/{id}", self.update),
            web.delete(PREFIX + "/{namespace}/{id}", self.delete),
        ]

    async def create(self, request: web.Request) -> web.Response:
        """``POST /api/v1/{tenant}/flows``: a new flow (422 if the id exists in the namespace)."""
        service = self.api.service_for(request)
        source = await read_text(request, self.api.max_body)
        flow = _parse(source)
        if service.flow(flow.namespace, flow.id) is not None:
            raise invalid(
                f"Flow id '{flow.id}' already exists in namespace '{flow.namespace}'",
                [{"path": "id", "message": "flow id already exists"}],
            )
        deployed = await service.deploy(source)
        keys = authenticated(request)
        return json_response(flow_json(deployed, with_source=True, show_keys=keys))

    async def update(self, request: web.Request) -> web.Response:
        """``PUT .../flows/{namespace}/{id}``: a new revision of an existing flow."""
        service = self.api.service_for(request)
        namespace, flow_id = request.match_info["namespace"], request.match_info["id"]
        if service.flow(namespace, flow_id) is None:
            raise not_found(f"Flow '{namespace}.{flow_id}'")
        source = await read_text(request, self.api.max_body)
        flow = _parse(source)
        if (flow.namespace, flow.id) != (namespace, flow_id):
            raise invalid(
                f"The flow's namespace and id ('{flow.namespace}.{flow.id}') must match the path "
                f"('{namespace}.{flow_id}')",
                [{"path": "id", "message": "namespace and id cannot change"}],
            )
        deployed = await service.deploy(source)
        keys = authenticated(request)
        return json_response(flow_json(deployed, with_source=True, show_keys=keys))

    async def get(self, request: web.Request) -> web.Response:
        service = self.api.service_for(request)
        namespace, flow_id = request.match_info["namespace"], request.match_info["id"]
        revision = request.query.get("revision")
        number = query_int(request, "revision", 0, low=1, high=10**9) if revision else None
        flow = service.flow(namespace, flow_id, number)
        if flow is None:
            which = f" revision {number}" if number else ""
            raise not_found(f"Flow '{namespace}.{flow_id}'{which}")
        return json_response(
            flow_json(
                flow,
                with_source=query_flag(request, "source"),
                show_keys=authenticated(request),
            )
        )

    async def list_namespace(self, request: web.Request) -> web.Response:
        """``GET .../flows/{namespace}``: every flow of a namespace (a list, as Kestra's)."""
        service = self.api.service_for(request)
        namespace = request.match_info["namespace"]
        flows = [f for f in service.flows() if f.namespace == namespace]
        flows.sort(key=lambda f: f.id)
        keys = authenticated(request)
        return json_response([flow_json(f, with_source=False, show_keys=keys) for f in flows])

    async def search(self, request: web.Request) -> web.Response:
        """``GET .../flows/search``: ``{results, total}`` by namespace (and its children), id
        or text (``q``), as ``filters[field][OPERATION]=`` or the older plain parameters."""
        service = self.api.service_for(request)
        page = query_int(request, "page", 1, low=1, high=1_000_000)
        size = query_int(request, "size", 10, low=1, high=1000)
        match = _flow_filter(request)
        flows = sorted((f for f in service.flows() if match(f)), key=lambda f: (f.namespace, f.id))
        start = (page - 1) * size
        keys = authenticated(request)
        results = [
            flow_json(f, with_source=False, show_keys=keys) for f in flows[start : start + size]
        ]
        return json_response({"results": results, "total": len(flows)})

    async def delete(self, request: web.Request) -> web.Response:
        service = self.api.service_for(request)
        namespace, flow_id = request.match_info["namespace"], request.match_info["id"]
        if not await service.delete_flow(namespace, flow_id):
            raise not_found(f"Flow '{namespace}.{flow_id}'")
        return web.Response(status=204)

    async def validate(self, request: web.Request) -> web.Response:
        """``POST .../flows/validate``: one result per YAML document (``---`` separated)."""
        self.api.tenant(request.match_info["tenant"])
        source = await read_text(request, self.api.max_body)
        return json_response([_validation(i, doc) for i, doc in enumerate(_documents(source))])


_FLOW_FILTER = re.compile(r"filters\[(\w+)\]\[(\w+)\]")


def _flow_filter(request: web.Request) -> Callable[[Flow], bool]:
    """The flow search's filters as one predicate; a filter it cannot apply is refused (400)
    rather than ignored, which would widen the listing."""
    tests: list[Callable[[Flow], bool]] = []
    for name, value in request.query.items():
        found = _FLOW_FILTER.fullmatch(name)
        field, op = found.groups() if found else (name, "LEGACY")
        if found is None and name not in ("namespace", "q"):
            continue  # page, size, sort and the like
        tests.append(_flow_test(name, field, op, value))
    return lambda flow: all(test(flow) for test in tests)


def _flow_test(name: str, field: str, op: str, value: str) -> Callable[[Flow], bool]:
    text = value.lower()
    if field == "namespace" and op in ("PREFIX", "STARTS_WITH", "LEGACY"):
        return lambda f: f.namespace == value or f.namespace.startswith(value + ".")
    if field == "namespace" and op == "EQUALS":
        return lambda f: f.namespace == value
    if field == "flowId" and op == "EQUALS":
        return lambda f: f.id == value
    if field == "q" and op in ("EQUALS", "LEGACY"):
        return lambda f: text in f.id.lower() or text in f.namespace.lower()
    raise bad_request(f"Invalid query filters: '{name}' is not supported by the flow search")


def _parse(source: str) -> Flow:
    from kestream.models.flow import parse_flow

    try:
        return parse_flow(source)
    except FlowValidationError as exc:
        raise rejected(exc) from None


def _documents(source: str) -> list[str]:
    """The YAML documents of a multi-document body, each as its own text."""
    docs: list[str] = []
    current: list[str] = []
    for line in source.splitlines(keepends=True):
        if line.rstrip() == "---":
            if "".join(current).strip():
                docs.append("".join(current))
            current = []
        else:
            current.append(line)
    if "".join(current).strip() or not docs:
        docs.append("".join(current))
    return docs


def _validation(index: int, source: str) -> dict[str, Any]:
    """Kestra's ``ValidateConstraintViolation`` of one document."""
    problems = check_flow(source)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [str(p) for p in problems if p.severity == "warning"]
    try:
        head = load_yaml(source).data  # the flow's own loader: bounded depth and size
    except YamlSyntaxError:
        head = None
    head = head if isinstance(head, dict) else {}
    body: dict[str, Any] = {
        "index": index,
        "flow": head.get("id") if isinstance(head.get("id"), str) else None,
        "namespace": head.get("namespace") if isinstance(head.get("namespace"), str) else None,
        "outdated": False,
        "deprecationPaths": [],
        "warnings": warnings,
        "infos": [],
    }
    if errors:
        body["constraints"] = "\n".join(str(p) for p in errors)
    return body
