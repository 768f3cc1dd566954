"""One aiohttp middleware in front of every route of a web server: credentials and origins.

Every route needs credentials (:class:`Access.CREDENTIALS`) unless it was granted otherwise:
a route added to the application without a word is protected, so a new route cannot forget
it. The exceptions are granted by path where the routes are registered: ``/health/*`` and,
with ``KESTREAM_METRICS_AUTH=false``, ``/metrics`` are :attr:`Access.OPEN`; the webhook routes
are :attr:`Access.KEY` (the key in their path is their credential, and whoever holds it may
call them from anywhere, so their calls are not refused by origin either). A path that matches
no route needs credentials too, so an anonymous caller cannot tell which paths exist.

Browsers send a user's cached Basic credentials, and reach a developer's ``127.0.0.1``, from
any web page. So a state-changing request (POST, PUT, PATCH, DELETE) that a browser sends from
another origin is refused (403) unless that origin is in ``KESTREAM_API_CORS_ORIGINS``: its
``Origin`` is neither this server's own nor listed, or, without ``Origin``, its
``Sec-Fetch-Site`` says ``cross-site``. Clients that are not browsers (curl, kestrapy) send
neither header and are not concerned. CORS preflights are answered for listed origins only, and
responses to a listed origin carry ``Access-Control-Allow-Origin`` and expose kestream's own
headers (:data:`~kestream.api.http.EXPOSED_HEADERS`, such as the capped-total one).

Without credentials configured, the server is open and bound to loopback
(:func:`~kestream.api.auth.bind_refusal`); it then also refuses requests whose ``Host`` is not a
loopback name, which is what a DNS-rebinding page would send.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from kestream.api.auth import Credentials, host_is_loopback
from kestream.api.http import EXPOSED_HEADERS, ApiError
from kestream.runtime.ops_routes import route_pattern
from kestream.settings import Settings

__all__ = ["GUARD", "Access", "Guard", "authenticated", "install_guard"]

log = logging.getLogger("kestream.api.auth")

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_AUTHENTICATED: Final = web.RequestKey("kestream.authenticated", bool)
_PREFLIGHT_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
_PREFLIGHT_MAX_AGE_S = "600"
_EXPOSED = ", ".join(EXPOSED_HEADERS)
#: Longest part of a caller's ``Origin`` repeated in an error message.
_ORIGIN_ECHO = 200
#: Invalid credentials are logged at INFO at most this often (seconds); DEBUG in between.
REFUSAL_LOG_EVERY_S = 60.0


class Access(StrEnum):
    """What a route asks of its caller."""

    CREDENTIALS = "credentials"  # Basic or a bearer token (when any are set)
    OPEN = "open"  # nothing: /health/*, and /metrics with KESTREAM_METRICS_AUTH=false
    KEY = "key"  # the key in the path (webhooks); callable cross-origin


class Guard:
    """The middleware of one web server and the access granted to its paths."""

    def __init__(self, credentials: Credentials | None, origins: frozenset[str]) -> None:
        self.credentials = credentials
        self.origins = origins
        self._access: dict[str, Access] = {}
        #: Requests refused for invalid credentials since start.
        self.refused = 0
        self._reported = 0
        self._reported_at = -math.inf

    @classmethod
    def of(cls, settings: Settings) -> Guard:
        return cls(Credentials.of(settings), settings.cors_origins)

    def grant(self, paths: Iterable[str], access: Access) -> None:
        """Give ``access`` to routes by path (their pattern, as registered)."""
        for path in paths:
            given = self._access.setdefault(path, access)
            if given is not access:
                raise ValueError(f"{path} is granted both {given} and {access}")

    def access(self, request: web.Request) -> Access:
        # No route (404 or 405): UNMATCHED is no path, so it needs credentials.
        return self._access.get(route_pattern(request), Access.CREDENTIALS)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.credentials is None and not host_is_loopback(request.host):
            raise ApiError(
                403,
                "Forbidden: this server has no credentials set (KESTREAM_API_USERNAME, "
                "KESTREAM_API_PASSWORD), so it answers only requests addressed to loopback "
                "(Host: 127.0.0.1, [::1] or localhost)",
            )
        if _is_preflight(request):
            return self._preflight(request)
        access = self.access(request)
        if request.method in _STATE_CHANGING and access is not Access.KEY:
            self._check_origin(request)
        if access is Access.CREDENTIALS and self.credentials is not None:
            header = request.headers.get(hdrs.AUTHORIZATION)
            if not self.credentials.accept(header):
                raise self._unauthorized(request, given=header is not None)
            request[_AUTHENTICATED] = True
        return await handler(request)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Let a listed origin's page read the answer (errors and event streams included)."""
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or not self.origins:
            return
        response.headers.add(hdrs.VARY, hdrs.ORIGIN)
        if self._listed(origin):
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = _EXPOSED

    def _listed(self, origin: str) -> bool:
        return origin.strip().rstrip("/").lower() in self.origins

    def _preflight(self, request: web.Request) -> web.Response:
        origin = request.headers[hdrs.ORIGIN]
        if not self._listed(origin):
            raise ApiError(403, _not_allowed(origin))
        headers = {
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: _PREFLIGHT_METHODS,
            hdrs.ACCESS_CONTROL_MAX_AGE: _PREFLIGHT_MAX_AGE_S,
        }
        asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS)
        if asked:
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = asked
        return web.Response(status=204, headers=headers)

    def _check_origin(self, request: web.Request) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None:
            if not (self._listed(origin) or _same_origin(origin, request.host)):
                raise ApiError(403, _not_allowed(origin))
        elif request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise ApiError(
                403,
                "Forbidden: a browser's cross-site request (Sec-Fetch-Site: cross-site) cannot "
                "change anything here",
            )

    def _unauthorized(self, request: web.Request, *, given: bool) -> ApiError:
        if given:
            self._log_refusal(request)
        scheme = "Basic" if self.credentials and self.credentials.password else "Bearer"
        what = "invalid credentials" if given else "credentials are required"
        return ApiError(
            401,
            f"Unauthorized: {what} (HTTP Basic or a bearer token)",
            headers={hdrs.WWW_AUTHENTICATE: f'{scheme} realm="kestream"'},
        )

    def _log_refusal(self, request: web.Request) -> None:
        """Log invalid credentials at INFO at most once per :data:`REFUSAL_LOG_EVERY_S` (with
        how many were refused meanwhile), else at DEBUG: a guesser cannot flood the log. Every
        401 is counted in ``/metrics`` (``kestream_http_server_requests``, by route).

        The route's pattern, never the path or the header: neither is ours to log.
        """
        self.refused += 1
        where = (request.method, route_pattern(request), request.remote)
        now = time.monotonic()
        if now - self._reported_at < REFUSAL_LOG_EVERY_S:
            log.debug("%s %s from %s: invalid credentials", *where)
            return
        log.info(
            "%s %s from %s: invalid credentials (%d refused since the last such line)",
            *where,
            self.refused - self._reported,
        )
        self._reported_at, self._reported = now, self.refused


GUARD: Final = web.AppKey("kestream.guard", Guard)


def install_guard(app: web.Application, settings: Settings) -> Guard:
    """The application's guard, installed on the first call (as its outermost middleware
    so far): the role's server and the API both ask for it, and get the same one."""
    existing = app.get(GUARD)
    if existing is not None:
        return existing
    guard = Guard.of(settings)
    app[GUARD] = guard
    app.middlewares.append(guard.middleware)
    app.on_response_prepare.append(guard.on_response_prepare)
    return guard


def authenticated(request: web.Request) -> bool:
    """The request carried valid credentials (False on an open server, where nobody does)."""
    return bool(request.get(_AUTHENTICATED, False))


def _is_preflight(request: web.Request) -> bool:
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ORIGIN in request.headers
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def _same_origin(origin: str, host: str) -> bool:
    try:
        netloc = urlsplit(origin.strip()).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.lower()


def _not_allowed(origin: str) -> str:
    return (
        f"Forbidden: cross-origin request from '{origin[:_ORIGIN_ECHO]}': list the origin in "
        "KESTREAM_API_CORS_ORIGINS to allow its pages"
    )
