"""The operations endpoints every role serves: ``/metrics``, ``/health/live``, ``/health/ready``.

They are plain aiohttp handlers because faust's web server is aiohttp: the role's faust app mounts
them on its own web application (``app.web.web_app.router.add_routes(...)``), next to the API's
routes in the API role.

- ``GET /metrics``: Prometheus text (:meth:`Metrics.render`).
- ``GET /health/live``: 200 while the process's loops run, else 503; JSON details.
- ``GET /health/ready``: 200 when this process is ready, and, given a
  :class:`~kestream.runtime.members.MemberBoard` (the API role), when the whole installation is
  ready; else 503. The JSON names the members and which of them are not ready.
- Under ``kestream standalone`` the API role also answers for the supervisor
  (:class:`~kestream.runtime.supervision.SupervisedChildren`, ``supervisor`` in the JSON): not
  ready while a child is down or its replacement not yet ready, naming it and why; not live
  once the supervisor has given up.

Ports: the API listens on ``KESTREAM_WEB_PORT``; every other role takes an ephemeral port and
publishes it in its member record. faust refuses ``web_port=0``, so :func:`free_port` asks the
kernel for a free port and closes it again. Another process may take the port between that and
faust's bind; the role then fails to start with "address in use" and the supervisor starts it
again, with a fresh port. That window is a few milliseconds at process start.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from kestream.runtime.embedded_broker import free_port
from kestream.runtime.health import Health
from kestream.runtime.members import MemberBoard
from kestream.runtime.metrics import Metrics
from kestream.runtime.supervision import SupervisedChildren

__all__ = [
    "HEALTH_PATHS",
    "METRICS_PATH",
    "UNMATCHED",
    "free_port",
    "metrics_middleware",
    "ops_routes",
    "route_pattern",
]

METRICS_PATH = "/metrics"
HEALTH_PATHS = ("/health/live", "/health/ready")

#: The route label of requests that matched no route (so unknown paths cannot add series).
UNMATCHED = "unmatched"
#: Methods that get a series of their own; any other (a client may send anything) is "OTHER".
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


def _answer(ok: bool, details: dict[str, Any]) -> web.Response:
    return web.json_response(details, status=200 if ok else 503)


def ops_routes(
    metrics: Metrics,
    health: Health,
    board: MemberBoard | None = None,
    supervised: SupervisedChildren | None = None,
) -> list[web.RouteDef]:
    """The three routes, bound to this process's metrics, health and (API role) member board
    and, under ``kestream standalone``, its supervisor's report."""

    async def get_metrics(_: web.Request) -> web.Response:
        body, content_type = metrics.render()
        # Not ``content_type=``: aiohttp rejects a content type that carries parameters.
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def get_live(_: web.Request) -> web.Response:
        ok, details = health.live()
        if supervised is not None:
            supervisor_ok, details["supervisor"] = supervised.live()
            ok = ok and supervisor_ok
            details["status"] = "UP" if ok else "DOWN"
        return _answer(ok, details)

    async def get_ready(_: web.Request) -> web.Response:
        ok, details = health.ready()
        if board is not None:
            installation_ok, installation = board.status()
            details["installation"] = installation
            ok = ok and installation_ok
            if supervised is not None:
                members = board.roster.members() if board.loaded.is_set() else []
                supervisor_ok, details["supervisor"] = supervised.ready(members)
                ok = ok and supervisor_ok
            details["status"] = "UP" if ok else "DOWN"
        return _answer(ok, details)

    return [
        web.get(METRICS_PATH, get_metrics),
        web.get(HEALTH_PATHS[0], get_live),
        web.get(HEALTH_PATHS[1], get_ready),
    ]


def metrics_middleware(metrics: Metrics) -> Middleware:
    """An aiohttp middleware that records every request in ``kestream_http_server_requests``.

    The route label is the matched route's pattern (``/api/v1/{tenant}/executions/{id}``), never
    the raw path, so series stay bounded by the routes.
    """

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            method = request.method if request.method in _METHODS else "OTHER"
            metrics.http_request(
                route_pattern(request), method, status, time.perf_counter() - started
            )

    return record


def route_pattern(request: web.Request) -> str:
    """The pattern of the route ``request`` matched (``/api/v1/{tenant}/executions/{id}``), or
    :data:`UNMATCHED`: what metrics, logs and access rules name a request by. Never the raw
    path, which is unbounded and may carry a secret (a webhook's key)."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else UNMATCHED
