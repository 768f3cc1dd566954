"""The flow routes' webhook keys and the guard, on an API service reading a real broker.

One API service (client, index, feed) in this process, served twice: as a server without
credentials (loopback mode: nobody is authenticated, so keys are masked) and as one with
credentials (the callers who pass get the keys).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kestream.api.app import install_api
from kestream.api.handle import ApiHandle
from kestream.api.service import ApiService
from kestream.api.webhook_keys import MASK
from kestream.runtime.context import connect
from kestream.settings import Settings

pytestmark = pytest.mark.integration

Eventually = Callable[..., Awaitable[Any]]
KEY = "hook-key-7f3a9c"
BASIC = {"Authorization": "Basic " + base64.b64encode(b"admin:pw-0123").decode()}
FLOW = f"""\
id: hook
namespace: it.auth
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ trigger.body }}}}"
triggers:
  - id: web
    type: io.kestra.plugin.core.trigger.Webhook
    key: {KEY}
"""


@pytest.fixture
async def service(  # type: ignore[no-untyped-def]
    broker, topic_prefix: str, tmp_path: Path, eventually: Eventually
) -> AsyncIterator[tuple[Settings, ApiService]]:
    settings = Settings(
        broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=1, data_dir=str(tmp_path)
    )
    api = await ApiService.start(await connect(settings))
    try:
        await eventually(lambda: api.ready, 60.0, message="the index caught up")
        yield settings, api
    finally:
        await api.stop()


async def _serve(settings: Settings, api: ApiService) -> TestClient:  # type: ignore[type-arg]
    app = web.Application()
    install_api(app, ApiHandle(settings, api))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_keys_are_masked_without_credentials_and_shown_with_them(
    service: tuple[Settings, ApiService], eventually: Eventually
) -> None:
    settings, api = service
    secured = Settings(
        **{**settings.model_dump(), "api_username": "admin", "api_password": "pw-0123"}
    )
    opened, closed = await _serve(settings, api), await _serve(secured, api)
    try:
        created = await opened.post(
            "/api/v1/main/flows", data=FLOW, headers={"Content-Type": "application/x-yaml"}
        )
        assert created.status == 200, await created.text()
        assert KEY not in await created.text()  # nobody is authenticated on an open server

        async def deployed() -> bool:
            return api.flow("it.auth", "hook") is not None

        await eventually(deployed, 30.0, message="the flow reached the API's flows table")
        reads = [
            "/api/v1/main/flows/it.auth/hook?source=true",
            "/api/v1/main/flows/it.auth",
            "/api/v1/main/flows/search?namespace=it.auth",
        ]
        for path in reads:
            anonymous = await opened.get(path)
            text = await anonymous.text()
            assert anonymous.status == 200 and KEY not in text and MASK in text, path
            assert (await closed.get(path)).status == 401, path
            shown = await closed.get(path, headers=BASIC)
            assert shown.status == 200 and KEY in await shown.text(), path
        flow = await (await opened.get(reads[0])).json()
        assert flow["triggers"][0]["key"] == MASK
        assert f'key: "{MASK}"' in flow["source"]
        # The key itself still works, from anywhere and without credentials.
        hook = await closed.post(
            f"/api/v1/main/executions/webhook/it.auth/hook/{KEY}",
            data=b"hi",
            headers={"Origin": "https://elsewhere.example"},
        )
        assert hook.status == 200, await hook.text()
    finally:
        await opened.close()
        await closed.close()
