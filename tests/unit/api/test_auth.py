"""Authentication, cross-origin refusal and the bind rule, on the roles' real web applications.

The route walk takes the application a role's faust web server gets (``RoleService.
install_routes``), so every route any role serves is checked, including one added later; the
API service is not started, so a request the guard lets through gets the route's own answer
(503 while starting), never 401.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from kestream.api.auth import Credentials, bind_refusal, host_is_loopback, is_loopback
from kestream.api.guard import GUARD, Access
from kestream.api.http import TOTAL_CAPPED_HEADER, TRUNCATED_HEADER
from kestream.api.openapi import OPERATIONS, openapi_document
from kestream.api.ui_routes import UI_PATHS
from kestream.runtime.faust_app import RoleService
from kestream.settings import Settings

USER, PASSWORD, TOKEN = "admin", "pa:ss wörd", "tok-0123456789abcdef"
SECURED = Settings(
    broker="127.0.0.1:1",
    api_username=USER,
    api_password=PASSWORD,
    api_tokens=f" {TOKEN} , other-token-xyz ,",
    api_max_body_bytes=4096,
)
OPEN = Settings(broker="127.0.0.1:1", api_max_body_bytes=4096)
WEBHOOK = "/api/v1/{tenant}/executions/webhook/{namespace}/{flowId}/{key}"
FLOWS = "/api/v1/main/flows"

Client = TestClient  # type: ignore[type-arg]
MakeClient = Callable[..., Any]


def settings_with(**changes: Any) -> Settings:
    """SECURED with ``changes``, validated as the environment's values are."""
    return Settings(**{**SECURED.model_dump(), **changes})


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def role_app(role: str, settings: Settings) -> web.Application:
    """The application a role's faust web server serves, with the routes the role installs."""
    app = web.Application()
    RoleService(role, settings, port=0).install_routes(app)
    return app


@pytest.fixture
async def serve() -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(app: web.Application) -> Client:
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def concrete(path: str) -> str:
    """A path of the route's pattern: the tenant is this installation's, the rest made up."""
    return re.sub(r"\{(\w+)\}", lambda m: "main" if m[1] == "tenant" else f"x-{m[1]}", path)


def served_routes(app: web.Application) -> list[tuple[str, str]]:
    routes = []
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        routes.append((route.method, resource.canonical))
    return routes


# -- credentials -------------------------------------------------------------------------------


def test_credentials_accept_basic_and_each_token_and_nothing_else() -> None:
    credentials = Credentials.of(SECURED)
    assert credentials is not None
    assert credentials.accept(basic()["Authorization"])
    assert credentials.accept("basic " + basic()["Authorization"].split()[1])  # any case
    assert credentials.accept(bearer()["Authorization"])
    assert credentials.accept("Bearer other-token-xyz")
    refused = [
        None,
        "",
        basic(USER, "wrong")["Authorization"],
        basic("root", PASSWORD)["Authorization"],
        basic(USER, PASSWORD + "x")["Authorization"],
        "Basic " + base64.b64encode(USER.encode()).decode(),  # no colon
        "Basic !!not-base64!!",
        "Bearer " + TOKEN[:-1],
        "Bearer ",
        f"Token {TOKEN}",
        TOKEN,
    ]
    for header in refused:
        assert not credentials.accept(header), header


def test_tokens_alone_are_credentials_and_basic_is_then_refused() -> None:
    credentials = Credentials.of(Settings(api_tokens="t-1"))
    assert credentials is not None
    assert credentials.accept("Bearer t-1")
    assert not credentials.accept(basic("", "")["Authorization"])
    assert Credentials.of(OPEN) is None


def test_settings_refuse_half_credentials_and_bad_origins() -> None:
    with pytest.raises(ValidationError, match="go together"):
        Settings(api_username="admin")
    with pytest.raises(ValidationError, match="go together"):
        Settings(api_password="secret")
    with pytest.raises(ValidationError, match="empty"):
        Settings(api_username="admin", api_password="")
    for bad in ("*", "example.com", "https://example.com/app", "ftp://example.com"):
        with pytest.raises(ValidationError, match="not an origin"):
            Settings(api_cors_origins=bad)
    origins = Settings(api_cors_origins=" https://UI.example.com/ ,http://localhost:3000,")
    assert origins.cors_origins == {"https://ui.example.com", "http://localhost:3000"}
    assert "pa:ss" not in repr(SECURED) and TOKEN not in repr(SECURED)


# -- the bind rule -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_binds_need_no_credentials(host: str) -> None:
    assert is_loopback(host)
    assert bind_refusal(Settings(web_host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.1", "kestream"])
def test_other_binds_need_credentials(host: str) -> None:
    refusal = bind_refusal(Settings(web_host=host))
    assert refusal is not None
    assert "KESTREAM_API_USERNAME" in refusal and "KESTREAM_API_PASSWORD" in refusal
    assert bind_refusal(Settings(web_host=host, api_username="a", api_password="b")) is None
    assert bind_refusal(Settings(web_host=host, api_tokens="t")) is None


def test_host_headers_name_loopback_only_by_address_or_localhost() -> None:
    for host in ("127.0.0.1:8080", "[::1]:8080", "localhost", "LOCALHOST:1"):
        assert host_is_loopback(host), host
    for host in (None, "", "evil.example:8080", "127.0.0.1.evil.example", "[::1"):
        assert not host_is_loopback(host), host


@pytest.mark.parametrize("command", ["api", "standalone"])
def test_the_commands_refuse_an_open_bind_before_listening(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    # A broker that does not exist: the refusal comes before anything connects or listens.
    env.update(KESTREAM_WEB_HOST="0.0.0.0", KESTREAM_BROKER="127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-m", "kestream.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "KESTREAM_WEB_HOST=0.0.0.0" in done.stderr
    assert "KESTREAM_API_PASSWORD" in done.stderr
    assert "Traceback" not in done.stderr


# -- the route walk ----------------------------------------------------------------------------


async def test_every_route_of_the_api_role_needs_credentials_but_the_exempt_ones(
    serve: MakeClient,
) -> None:
    app = role_app("api", SECURED)
    client = await serve(app)
    guard = app[GUARD]
    routes = served_routes(app)
    exempt = {(m, p) for m, p in routes if guard._access.get(p) is not Access.CREDENTIALS}
    # The UI's files carry no data (kestream.api.ui_routes): every call they make is guarded.
    assert {p for _, p in exempt} == {"/health/live", "/health/ready", WEBHOOK, *UI_PATHS}
    assert len(routes) > 25  # the API's routes, their HEAD twins, the document, ops
    for method, path in routes:
        url = concrete(path)
        anonymous = await client.request(method, url)
        if (method, path) in exempt:
            assert anonymous.status != 401, (method, path)
            continue
        assert anonymous.status == 401, (method, path, anonymous.status)
        assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="kestream"'
        if method != "HEAD":
            body = await anonymous.json()
            assert body["message"].startswith("Unauthorized: credentials are required")
        for headers in (basic(), bearer()):
            answer = await client.request(method, url, headers=headers)
            assert answer.status not in (401, 403), (method, path, answer.status)
        wrong = await client.request(method, url, headers=basic(USER, "nope"))
        assert wrong.status == 401
    unknown = await client.get("/api/v1/main/no/such/route/at/all")
    assert unknown.status == 401  # an anonymous caller cannot tell which paths exist
    assert (await client.get("/api/v1/main/no/such/route/at/all", headers=basic())).status == 404


async def test_the_other_roles_metrics_follow_the_switch(serve: MakeClient) -> None:
    for role in ("executor", "worker", "scheduler"):
        closed = await serve(role_app(role, SECURED))
        assert (await closed.get("/metrics")).status == 401
        assert (await closed.get("/metrics", headers=bearer())).status == 200
        assert (await closed.get("/health/live")).status in (200, 503)
        opened = await serve(role_app(role, settings_with(metrics_auth=False)))
        assert (await opened.get("/metrics")).status == 200
        assert (await opened.get("/api/v1/main/flows/search")).status == 401


async def test_without_credentials_every_route_is_open_to_loopback_only(
    serve: MakeClient,
) -> None:
    client = await serve(role_app("api", OPEN))
    assert (await client.get("/api/v1/main/flows/search")).status == 503  # the route's answer
    assert (await client.get("/metrics")).status == 200
    rebound = await client.get("/api/v1/main/flows/search", headers={"Host": "evil.example:80"})
    assert rebound.status == 403
    assert "loopback" in (await rebound.json())["message"]


async def test_invalid_credentials_are_logged_without_them(
    serve: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await serve(role_app("api", SECURED))
    with caplog.at_level(logging.INFO, logger="kestream.api.auth"):
        reply = await client.get("/api/v1/main/flows/search", headers=basic(USER, "guess-1"))
    assert reply.status == 401
    assert (await reply.json())["message"].startswith("Unauthorized: invalid credentials")
    assert "/api/v1/{tenant}/flows/search" in caplog.text
    assert "guess-1" not in caplog.text and basic(USER, "guess-1")["Authorization"][6:] not in (
        caplog.text
    )


# -- cross-origin ------------------------------------------------------------------------------


async def test_cross_origin_writes_are_refused_and_same_origin_ones_pass(
    serve: MakeClient,
) -> None:
    client = await serve(role_app("api", SECURED))
    own = f"http://{client.host}:{client.port}"

    async def post(path: str, headers: dict[str, str]) -> int:
        reply = await client.post(path, data=b"id: x", headers={**basic(), **headers})
        return reply.status

    assert await post(FLOWS, {"Origin": "https://evil.example"}) == 403
    assert await post(FLOWS, {"Origin": "null"}) == 403
    assert await post(FLOWS, {"Sec-Fetch-Site": "cross-site"}) == 403
    assert await post(FLOWS, {"Origin": own, "Sec-Fetch-Site": "same-origin"}) == 503
    assert await post(FLOWS, {}) == 503  # curl, kestrapy: no Origin
    refused = await client.delete(
        "/api/v1/main/executions/abc/kill", headers={"Origin": "https://evil.example"}
    )
    assert refused.status == 403  # refused before credentials are even asked for
    assert "KESTREAM_API_CORS_ORIGINS" in (await refused.json())["message"]
    # Reads are not refused (the browser does not let the page read the answer) ...
    read = await client.get(
        "/api/v1/main/flows/search", headers={**basic(), "Origin": "https://evil.example"}
    )
    assert read.status == 503 and "Access-Control-Allow-Origin" not in read.headers
    # ... and webhooks are meant to be called from anywhere.
    hook = await client.post(
        "/api/v1/main/executions/webhook/ns/f/k",
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert hook.status == 503


async def test_listed_origins_get_preflights_and_cors_headers(serve: MakeClient) -> None:
    settings = settings_with(api_cors_origins="https://UI.example/")
    client = await serve(role_app("api", settings))
    preflight = {
        "Origin": "https://ui.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    answer = await client.options(FLOWS, headers=preflight)
    assert answer.status == 204
    assert answer.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert answer.headers["Access-Control-Allow-Headers"] == "authorization,content-type"
    other = await client.options(FLOWS, headers={**preflight, "Origin": "https://evil.example"})
    assert other.status == 403 and "Access-Control-Allow-Origin" not in other.headers
    post = await client.post(
        FLOWS, data=b"id: x", headers={**basic(), "Origin": "https://ui.example"}
    )
    assert post.status == 503
    assert post.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert "Origin" in post.headers.getall("Vary")
    # a page on that origin may read kestream's own headers, such as a capped total's
    exposed = {h.strip() for h in post.headers["Access-Control-Expose-Headers"].split(",")}
    assert {TOTAL_CAPPED_HEADER, TRUNCATED_HEADER, "Retry-After"} <= exposed
    anonymous = await client.post(FLOWS, headers={"Origin": "https://ui.example"})
    assert anonymous.status == 401  # a listed origin still needs credentials


# -- the OpenAPI document ----------------------------------------------------------------------


def test_the_document_states_the_security_of_each_operation() -> None:
    from kestream.api.app import api_routes
    from kestream.api.handle import ApiHandle

    document = openapi_document(api_routes(ApiHandle(SECURED)))
    assert document["components"]["securitySchemes"]["basicAuth"]["scheme"] == "basic"
    assert {"bearerAuth": []} in document["security"]
    for (method, path), operation in OPERATIONS.items():
        entry = document["paths"][path][method.lower()]
        if operation.access is Access.KEY:
            assert entry["security"] == [] and "401" not in entry["responses"]
        else:
            assert "security" not in entry and "401" in entry["responses"]
