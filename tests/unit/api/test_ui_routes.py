"""The UI's files at ``/ui/``: served from the package, open while the API stays guarded.

The API handle has no service here, so an API route answers 503 once past the guard: the
tests see the guard's own decision (401) without a broker.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from kestream.api.app import install_api
from kestream.api.handle import ApiHandle
from kestream.api.ui_routes import ui_files
from kestream.settings import Settings


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    settings = Settings(api_username="admin", api_password=SecretStr("pw-0123"), tenant="acme")
    app = web.Application()
    install_api(app, ApiHandle(settings))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_the_page_names_the_tenant_and_forbids_foreign_code(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.get("/ui/")
    assert reply.status == 200
    assert reply.content_type == "text/html"
    page = await reply.text()
    assert '<meta name="kestream-tenant" content="acme">' in page
    assert "{{tenant}}" not in page
    policy = reply.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


async def test_every_shipped_file_is_served_with_its_type(
    client: TestClient[web.Request, web.Application],
) -> None:
    names = sorted(f.name for f in ui_files().iterdir() if f.is_file())
    assert {"index.html", "app.js", "api.js", "style.css"} <= set(names)
    for name in names:
        reply = await client.get(f"/ui/{name}")
        assert reply.status == 200, name
        expected = {"js": "text/javascript", "css": "text/css", "html": "text/html"}
        assert reply.content_type == expected[name.rsplit(".", 1)[1]], name


async def test_ui_redirects_to_its_page(client: TestClient[web.Request, web.Application]) -> None:
    reply = await client.get("/ui", allow_redirects=False)
    assert reply.status == 302
    assert reply.headers["Location"] == "/ui/"


@pytest.mark.parametrize("path", ["/ui/missing.js", "/ui/..%2Fapi%2Fapp.py", "/ui/.hidden"])
async def test_nothing_outside_the_files_is_served(
    client: TestClient[web.Request, web.Application],
    path: str,
) -> None:
    reply = await client.get(path)
    assert reply.status in (401, 404)


async def test_the_api_still_requires_credentials(
    client: TestClient[web.Request, web.Application],
) -> None:
    reply = await client.get("/api/v1/acme/executions/search")
    assert reply.status == 401


def test_every_ui_file_ships_in_the_package() -> None:
    """An installed kestream (a wheel, not this checkout) has every file the page loads."""
    project = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["kestream"]
    for file in ui_files().iterdir():
        assert any(fnmatch(f"ui/{file.name}", pattern) for pattern in globs), file.name
