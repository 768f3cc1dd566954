"""The API's route table, its OpenAPI document, and the request helpers, without a broker.

Routes are served by an aiohttp test server whose API service is not started: every route must
answer, and answer with Kestra's JSON error body (503 while starting, 404 for another tenant or
an unknown path, 413 past the body limit, 400 for bad parameters).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kestream.api.app import api_routes, install_api
from kestream.api.handle import ApiHandle
from kestream.api.http import ApiError, parse_labels
from kestream.api.openapi import OPERATIONS, openapi_document
from kestream.api.sse import frame
from kestream.settings import Settings

SETTINGS = Settings(broker="127.0.0.1:1", tenant="main", api_max_body_bytes=4096)


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    install_api(app, ApiHandle(SETTINGS))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def test_the_document_covers_every_route_and_nothing_else() -> None:
    routes = api_routes(ApiHandle(SETTINGS))
    document = openapi_document(routes)
    served = {(r.method, r.path) for r in routes}
    assert served == set(OPERATIONS)
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    assert documented == served
    follow = document["paths"]["/api/v1/{tenant}/executions/{executionId}/follow"]["get"]
    assert [p["name"] for p in follow["parameters"]] == ["tenant", "executionId"]
    create = document["paths"]["/api/v1/{tenant}/executions/{namespace}/{flowId}"]["post"]
    labels = next(p for p in create["parameters"] if p["name"] == "labels")
    assert labels["schema"]["type"] == "array"


def test_a_route_without_a_document_entry_is_refused() -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(ValueError, match="no OpenAPI entry"):
        openapi_document([web.get("/api/v1/{tenant}/undocumented", handler)])


def test_fixed_segments_are_matched_before_path_variables() -> None:
    paths = [(r.method, r.path) for r in api_routes(ApiHandle(SETTINGS))]
    index = paths.index
    create = ("POST", "/api/v1/{tenant}/executions/{namespace}/{flowId}")
    assert index(("POST", "/api/v1/{tenant}/executions/{executionId}/resume")) < index(create)
    assert index(("GET", "/api/v1/{tenant}/executions/search")) < index(
        ("GET", "/api/v1/{tenant}/executions/{executionId}")
    )
    assert index(("GET", "/api/v1/{tenant}/flows/search")) < index(
        ("GET", "/api/v1/{tenant}/flows/{namespace}")
    )


async def test_routes_answer_503_while_the_service_starts(client: TestClient) -> None:  # type: ignore[type-arg]
    reply = await client.get("/api/v1/main/executions/abc")
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "1"
    assert "starting" in (await reply.json())["message"]


async def test_another_tenant_is_not_found(client: TestClient) -> None:  # type: ignore[type-arg]
    reply = await client.get("/api/v1/other/flows/search")
    assert reply.status == 404
    assert "Tenant 'other'" in (await reply.json())["message"]


async def test_unknown_paths_and_methods_answer_json(client: TestClient) -> None:  # type: ignore[type-arg]
    missing = await client.get("/api/v1/main/nothing/here/at/all/really")
    assert missing.status == 404 and "message" in await missing.json()
    wrong = await client.patch("/api/v1/main/executions/search")
    assert wrong.status == 405 and "message" in await wrong.json()


async def test_bodies_past_the_limit_are_refused_before_they_are_read(client: TestClient) -> None:  # type: ignore[type-arg]
    reply = await client.post("/api/v1/main/flows/validate", data=b"x" * 5000)
    assert reply.status == 413
    assert "4096" in (await reply.json())["message"]


async def test_the_openapi_document_is_served(client: TestClient) -> None:  # type: ignore[type-arg]
    document = await (await client.get("/swagger/kestra.json")).json()
    assert document["openapi"].startswith("3.")
    as_yaml = await client.get("/swagger/kestra.yml")
    assert as_yaml.status == 200 and "paths:" in await as_yaml.text()


def test_labels_are_key_colon_value() -> None:
    assert parse_labels(["a:1", "b:x:y", "c:"]) == {"a": "1", "b": "x:y", "c": ""}
    with pytest.raises(ApiError) as bad:
        parse_labels(["novalue"])
    assert bad.value.status == 400


def test_an_error_body_is_kestras() -> None:
    error = ApiError(422, "Invalid inputs", [{"path": "inputs.x", "message": "bad"}])
    assert error.status == 422
    assert error.text is not None and '"_embedded":{"errors":[{"path":"inputs.x"' in error.text


def test_event_frames_carry_the_kind_as_their_id() -> None:
    assert frame({"id": "e1"}, event_id="end") == b'id: end\ndata: {"id":"e1"}\n\n'
