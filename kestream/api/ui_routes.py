"""The web UI's files at ``/ui/``: a single page that talks to the API's public routes only.

The files (HTML, ES modules, CSS) ship inside the package (``kestream/ui``), so serving them
needs no Node.js and no build. They carry no data: every execution, flow and log line the page
shows comes from the API's routes, each called with the credentials the user typed on the
page's login screen (HTTP Basic or a bearer token, the API's own scheme). So the files are
granted :attr:`~kestream.api.guard.Access.OPEN`, as ``/health`` is: a browser cannot send an
``Authorization`` header when it loads a page or a module script, so a login page behind the
credentials it asks for could never load. An open server still answers loopback only (the
guard's rule runs before any access check).

Responses forbid framing and any script, style or connection from another origin (a strict
Content-Security-Policy), and are revalidated on every load so an upgrade is seen at once.
"""

from __future__ import annotations

import mimetypes
from html import escape
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Final

from aiohttp import web

from kestream.api.guard import Access
from kestream.settings import Settings

__all__ = ["UI_ACCESS", "UI_PATHS", "UI_PREFIX", "ui_routes"]

UI_PREFIX: Final = "/ui/"
_FILE_PATTERN: Final = "/ui/{name:[A-Za-z0-9_.-]+}"
#: The routes the guard grants :attr:`Access.OPEN`, by pattern as the guard names them (a
#: resource's canonical form drops the variable's regular expression).
UI_PATHS: Final = ("/ui", UI_PREFIX, "/ui/{name}")
UI_ACCESS: Final = Access.OPEN
_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
_TENANT_MARK: Final = "{{tenant}}"
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def ui_files() -> Traversable:
    """The directory of the UI's files inside the installed package."""
    return resources.files("kestream").joinpath("ui")


def ui_routes(settings: Settings) -> list[web.RouteDef]:
    """``/ui`` redirects to ``/ui/``, which is the page; ``/ui/<name>`` is one of its files.

    Names are plain file names (no ``/``, no ``..``): nothing outside the UI's directory can be
    asked for. The page learns the tenant from a ``<meta>`` filled in here, so it calls
    ``/api/v1/{tenant}`` as any client does.
    """
    folder = ui_files()
    page = folder.joinpath("index.html").read_text(encoding="utf-8")
    page = page.replace(_TENANT_MARK, escape(settings.tenant, quote=True))

    async def redirect(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(UI_PREFIX)

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", headers=_HEADERS)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html":
            return await index(request)
        file = folder.joinpath(name)
        suffix = name[name.rfind(".") :] if "." in name else ""
        if name.startswith(".") or not file.is_file():
            raise web.HTTPNotFound()
        content_type = _TYPES.get(suffix) or mimetypes.guess_type(name)[0]
        if content_type is None:
            raise web.HTTPNotFound()
        return web.Response(body=file.read_bytes(), content_type=content_type, headers=_HEADERS)

    return [web.get("/ui", redirect), web.get(UI_PREFIX, index), web.get(_FILE_PATTERN, asset)]
