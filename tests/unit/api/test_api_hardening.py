"""Hostile requests at the API's edge: header bytes that are not UTF-8, wrong credentials in
numbers, HEAD on a webhook, bad log query parameters, and what the open health shows.

Like test_auth, these run the roles' real web applications without a broker: the API service
is not started, so a request that gets past the guard and the checks under test is answered 503
by its route. A 503 therefore shows the request went through; anything else shows where it
stopped.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from kestream.api.auth import Credentials
from kestream.api.guard import GUARD
from kestream.api.http import ApiError
from kestream.api.index.postgres import POSTGRES
from kestream.api.index.sqlite import SQLITE
from kestream.api.index.store import upgrades_in_place
from kestream.runtime.health import Check, Health
from kestream.runtime.metrics import Metrics
from kestream.runtime.ops_routes import UNMATCHED, ops_routes, route_pattern
from kestream.settings import Settings
from tests.unit.api.test_auth import (
    OPEN,
    SECURED,
    TOKEN,
    MakeClient,
    basic,
    role_app,
)

WEBHOOK_URL = "/api/v1/main/executions/webhook/ns/flow/the-key"
LOGS_URL = "/api/v1/main/logs/some-execution"


@pytest.fixture
async def serve() -> AsyncIterator[MakeClient]:
    clients: list[TestClient] = []

    async def make(app: web.Application) -> TestClient:
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def raw_request(port: int, head: bytes) -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, any bytes) and read the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Connection: close\r\n\r\n")
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# -- header bytes that are not UTF-8 -------------------------------------------------------------


async def test_non_utf8_credentials_and_origins_are_refused_as_json(serve: MakeClient) -> None:
    client = await serve(role_app("api", SECURED))
    search = b"GET /api/v1/main/flows/search HTTP/1.1\r\nHost: x\r\n"
    for header in (b"Bearer \xff\xfe", b"Basic \xff", b"\xff\xfe " + TOKEN.encode()):
        status, body = await raw_request(
            client.port, search + b"Authorization: " + header + b"\r\n"
        )
        assert status == 401, header
        assert orjson.loads(body)["message"].startswith("Unauthorized: invalid credentials")
    post = b"POST /api/v1/main/flows HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    status, body = await raw_request(client.port, post + b"Origin: http://\xff\xfe.example\r\n")
    assert status == 403
    message = orjson.loads(body)["message"]
    assert message.startswith("Forbidden: cross-origin request from 'http://")
    assert "\\udcff\\udcfe.example" in message  # the bytes escaped, not a 500


def test_error_bodies_escape_text_that_is_not_utf8() -> None:
    error = ApiError(
        404, "Not Found: Execution '\udcffx' not found", [{"path": "a\udcfe", "message": 1}]
    )
    body = orjson.loads(error.text or "")
    assert body["message"] == "Not Found: Execution '\\udcffx' not found"
    assert body["_embedded"]["errors"] == [{"path": "a\\udcfe", "message": 1}]


# -- credentials ----------------------------------------------------------------------------------


def test_credentials_are_kept_and_compared_as_digests_of_the_bytes_sent() -> None:
    credentials = Credentials.of(Settings(api_username="u", api_password="p", api_tokens="tök-1"))
    assert credentials is not None
    kept = [credentials.username, credentials.password, *credentials.tokens]
    assert {len(digest or b"") for digest in kept} == {32}  # one length, whatever the secret
    assert b"t\xc3\xb6k-1" not in credentials.tokens
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: valid UTF-8 is the text ...
    assert credentials.accept("Bearer tök-1")
    # ... and other bytes are surrogates, which are hashed as the bytes they were.
    assert not credentials.accept("Bearer t\udcf6k-1")
    assert not credentials.accept("Basic " + base64.b64encode(b"u:p\xff").decode())
    assert credentials.accept("Basic " + base64.b64encode(b"u:p").decode())


def test_a_user_name_with_a_colon_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="cannot contain ':'"):
        Settings(api_username="ad:min", api_password="secret")


async def test_invalid_credentials_are_logged_at_info_once_a_minute_and_counted(
    serve: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    app = role_app("api", SECURED)
    client = await serve(app)
    guard = app[GUARD]

    async def guess(n: int) -> None:
        reply = await client.get("/api/v1/main/flows/search", headers=basic(password=f"g{n}"))
        assert reply.status == 401

    async def refusals_counted() -> float:
        """The 401s of the route in /metrics (the registry is the process's: read a delta)."""
        text = await (await client.get("/metrics", headers=basic())).text()
        series = (
            'kestream_http_server_requests_seconds_count{method="GET",'
            'route="/api/v1/{tenant}/flows/search",status="401"} '
        )
        found = [line for line in text.splitlines() if line.startswith(series)]
        return float(found[0][len(series) :]) if found else 0.0

    counted = await refusals_counted()
    with caplog.at_level(logging.DEBUG, logger="kestream.api.auth"):
        for n in range(5):
            await guess(n)
    levels = [r.levelno for r in caplog.records if "invalid credentials" in r.getMessage()]
    assert levels == [logging.INFO] + [logging.DEBUG] * 4
    assert guard.refused == 5
    caplog.clear()
    guard._reported_at -= 61  # a minute later
    with caplog.at_level(logging.INFO, logger="kestream.api.auth"):
        await guess(5)
    assert "(5 refused since the last such line)" in caplog.text
    assert "g5" not in caplog.text
    assert await refusals_counted() == counted + 6


# -- webhooks ------------------------------------------------------------------------------------


async def test_head_on_a_webhook_starts_nothing(serve: MakeClient) -> None:
    client = await serve(role_app("api", OPEN))
    assert (await client.get(WEBHOOK_URL)).status == 503  # the handler runs for GET ...
    head = await client.head(WEBHOOK_URL)
    assert head.status == 405  # ... never for HEAD
    assert set(head.headers["Allow"].split(",")) == {"GET", "POST", "PUT"}
    secured = await serve(role_app("api", SECURED))
    assert (await secured.head(WEBHOOK_URL, headers=basic())).status == 405


# -- log routes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("minLevel=LOUD", "minLevel"),
        ("attempt=first", "attempt"),
        ("attempt=" + "9" * 5000, "attempt"),
        ("page=0", "page"),
        ("page=x", "page"),
    ],
)
async def test_bad_log_parameters_are_400_before_anything_is_read(
    serve: MakeClient, query: str, named: str
) -> None:
    client = await serve(role_app("api", OPEN))
    paths = [LOGS_URL, LOGS_URL + "/follow"] if named != "page" else [LOGS_URL]
    for path in paths:
        reply = await client.get(f"{path}?{query}")
        assert reply.status == 400, (path, query)
        assert reply.content_type == "application/json"
        assert f"'{named}'" in (await reply.json())["message"]
    ok = await client.get(LOGS_URL + "/follow?minLevel=warn&attempt=2")
    assert ok.status == 503  # valid: on to the (not started) service


# -- the open health ------------------------------------------------------------------------------


async def test_the_open_health_shows_numbers_and_flags_never_texts(serve: MakeClient) -> None:
    secret = "connection to server at db.internal failed: password for user kestream"

    def broken() -> dict[str, Any]:
        raise RuntimeError(secret)

    health = Health("api")
    health.add(
        Check(
            "index", lambda: False, detail=lambda: {"refused": 2, "retrying": True, "error": secret}
        ),
        Check("executor", lambda: True, detail=lambda: {"partitions": [0, 1], "failure": secret}),
        Check("flows", lambda: True, detail=broken),
    )
    app = web.Application()
    app.router.add_routes(ops_routes(Metrics(process_collectors=False), health))
    client = await serve(app)
    for path in ("/health/ready", "/health/live"):
        reply = await client.get(path)
        assert reply.status == 503
        text = await reply.text()
        assert "db.internal" not in text and "RuntimeError" not in text
    checks = (await (await client.get("/health/ready")).json())["checks"]
    assert checks["index"] == {"live": True, "ready": False, "refused": 2, "retrying": True}
    assert checks["executor"] == {"live": True, "ready": True, "partitions": [0, 1]}
    assert checks["flows"] == {"live": False, "ready": False, "checkFailed": True}


# -- the route's pattern --------------------------------------------------------------------------


async def test_requests_are_named_by_their_route_pattern_or_unmatched(serve: MakeClient) -> None:
    seen: list[str] = []

    @web.middleware
    async def note(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(route_pattern(request))
        return await handler(request)

    async def thing(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[note])
    app.router.add_get("/things/{id}", thing)
    client = await serve(app)
    assert (await client.get("/things/secret-1")).status == 200
    assert (await client.get("/nothing/here")).status == 404
    assert (await client.post("/things/secret-2")).status == 405
    assert seen == ["/things/{id}", UNMATCHED, UNMATCHED]


# -- the index's schema ---------------------------------------------------------------------------


def test_schema_1_is_upgraded_in_place_only_where_text_is_stored_unescaped() -> None:
    assert upgrades_in_place(1, SQLITE)
    assert not upgrades_in_place(1, POSTGRES)  # its U+FDD0 would read as an escape
    assert not upgrades_in_place(99, SQLITE)
