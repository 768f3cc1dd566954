"""The API's routes on an aiohttp application (faust's web server in the API role).

:func:`install_api` adds every route (flows, executions, webhook, logs, the OpenAPI document),
the web UI's files at ``/ui/`` (:mod:`kestream.api.ui_routes`), and a middleware that answers
aiohttp's own errors and unexpected failures (logged with the request) as JSON. Every route is
behind the server's guard (:mod:`kestream.api.guard`), which requires credentials unless the
route's OpenAPI entry says otherwise (the webhooks) or it is one of the UI's files. Requests
are counted for ``/metrics`` by the role's metrics middleware.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import yaml
from aiohttp import web
from aiokafka.errors import MessageSizeTooLargeError

from kestream.api.cluster_routes import ClusterRoutes
from kestream.api.execution_routes import ExecutionRoutes
from kestream.api.file_routes import FileRoutes
from kestream.api.flow_routes import FlowRoutes
from kestream.api.guard import install_guard
from kestream.api.handle import ApiHandle
from kestream.api.http import ApiError
from kestream.api.kv_routes import KVRoutes
from kestream.api.log_routes import LogRoutes
from kestream.api.namespace_file_routes import NamespaceFileRoutes
from kestream.api.openapi import (
    OPENAPI_JSON_PATH,
    OPENAPI_YAML_PATH,
    openapi_document,
    route_access,
)
from kestream.api.purge import PurgeRoutes
from kestream.api.trigger_routes import TriggerRoutes
from kestream.api.ui_routes import UI_ACCESS, UI_PATHS, ui_routes
from kestream.api.webhook_routes import WebhookRoutes
from kestream.runtime.mirror_ack import NotDurable
from kestream.runtime.ops_routes import route_pattern
from kestream.runtime.record_limit import RecordTooLarge

log = logging.getLogger("kestream.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_routes(handle: ApiHandle) -> list[web.RouteDef]:
    """Every API route, in match order (fixed segments before path variables)."""
    routes = [
        *WebhookRoutes(handle).routes(),
        *PurgeRoutes(handle).routes(),  # before /executions/{executionId}
        *FileRoutes(handle).routes(),
        *ExecutionRoutes(handle).routes(),
        *FlowRoutes(handle).routes(),
        *LogRoutes(handle).routes(),
        *KVRoutes(handle).routes(),
        *NamespaceFileRoutes(handle).routes(),
        *TriggerRoutes(handle).routes(),
        *ClusterRoutes(handle).routes(),
    ]
    return routes


def install_api(app: web.Application, handle: ApiHandle) -> None:
    guard = install_guard(app, handle.settings)
    routes = api_routes(handle)
    document = openapi_document(routes)
    as_yaml = yaml.safe_dump(document, sort_keys=False)

    async def openapi_json(_: web.Request) -> web.Response:
        return web.json_response(document)

    async def openapi_yaml(_: web.Request) -> web.Response:
        return web.Response(text=as_yaml, content_type="application/yaml")

    served = [
        *routes,
        web.get(OPENAPI_YAML_PATH, openapi_yaml),
        web.get(OPENAPI_JSON_PATH, openapi_json),
    ]
    app.router.add_routes(served)
    for route in served:
        guard.grant([route.path], route_access(route))
    app.router.add_routes(ui_routes(handle.settings))
    guard.grant(UI_PATHS, UI_ACCESS)
    app.middlewares.append(json_errors)


def not_durable(request: web.Request, exc: NotDurable) -> ApiError:
    """The 503 of a creation or restart that was sent but is not known to be on disk.

    The record is in the broker and usually runs, so a second send would make a second
    execution: no ``Retry-After``, but the execution's id (``id``, as a created execution's
    body has it) and its ``Location``, where the caller looks it up instead."""
    if exc.execution_id is None:
        return ApiError(503, f"The execution is not known to be safe on disk: {exc}")
    tenant = quote(request.match_info.get("tenant", "main"), safe="")
    return ApiError(
        503,
        f"The execution {exc.execution_id} was sent but is not known to be safe on disk: "
        f"{exc}. Look it up (GET its Location) rather than send it again, which would "
        "create another execution",
        headers={"Location": f"/api/v1/{tenant}/executions/{quote(exc.execution_id, safe='')}"},
        fields={"id": exc.execution_id},
    )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405) and unexpected failures as Kestra's JSON error body.

    Failures are logged with the route's pattern, never the path: a webhook's path carries its
    key. A record the broker refuses as too large is the request's size, answered 413.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if isinstance(exc, ApiError) or exc.status < 400:
            raise
        allow = exc.headers.get("Allow")
        raise ApiError(
            exc.status, exc.reason, headers={"Allow": allow} if allow else None
        ) from None
    except RecordTooLarge as exc:  # the Client's and the flows table's check of the limit
        raise ApiError(413, f"Request Entity Too Large: {exc}") from None
    except NotDurable as exc:  # standalone: the mirror did not confirm a creation (mirror_ack)
        raise not_durable(request, exc) from None
    except MessageSizeTooLargeError:
        raise ApiError(
            413,
            "Request Entity Too Large: the execution it would create is larger than the "
            "broker accepts in one record",
        ) from None
    except Exception:
        log.exception("%s %s failed", request.method, route_pattern(request))
        raise ApiError(500, "Internal server error: see the API's log") from None
