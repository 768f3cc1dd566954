"""The HTTP Download task against a local aiohttp server, into both storage backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from kestream.models.state import StateType
from kestream.storage import Storage, parse_uri
from kestream.testing import Driver

S = StateType
BIG = bytes(range(256)) * 8192  # 2 MiB, streamed in chunks


async def _report(request: web.Request) -> web.Response:
    return web.Response(
        body=b"id,total\n1,10\n",
        headers={"Content-Disposition": 'attachment; filename="../../report 2026.csv"'},
    )


async def _big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for start in range(0, len(BIG), 65536):
        await response.write(BIG[start : start + 65536])
    await response.write_eof()
    return response


async def _empty(request: web.Request) -> web.Response:
    return web.Response(body=b"")


async def _missing(request: web.Request) -> web.Response:
    return web.Response(status=404, text="nothing")


@pytest.fixture
async def base() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/report", _report)
    app.router.add_get("/data/orders.bin", _big)
    app.router.add_get("/empty", _empty)
    app.router.add_get("/missing", _missing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def _run(body: str) -> tuple[object, dict[str, object]]:
    driver = Driver()
    try:
        flow = driver.deploy("id: dl\nnamespace: company.team\n" + body)
        execution = await driver.astart(flow.namespace, flow.id)
    finally:
        driver.runner.close()
    return execution, {t.taskId: t for t in execution.taskRunList}


async def test_download_streams_into_storage(storage: Storage, base: str) -> None:
    execution, runs = await _run(
        f"""tasks:
  - id: big
    type: io.kestra.plugin.core.http.Download
    uri: {base}/data/orders.bin
  - id: report
    type: io.kestra.plugin.core.http.Download
    uri: {base}/report
  - id: size
    type: io.kestra.plugin.core.storage.Size
    uri: "{{{{ outputs.big.uri }}}}"
"""
    )
    assert execution.state.current is S.SUCCESS  # type: ignore[attr-defined]
    big = runs["big"].outputs  # type: ignore[attr-defined]
    assert big["code"] == 200 and big["length"] == len(BIG)
    assert big["uri"].endswith("/orders.bin")
    assert storage.get(parse_uri(big["uri"])) == BIG
    assert runs["size"].outputs == {"size": len(BIG)}  # type: ignore[attr-defined]
    report = runs["report"].outputs  # type: ignore[attr-defined]
    assert report["uri"].endswith("/report_2026.csv")  # the server's name, made safe
    assert storage.get(parse_uri(report["uri"])) == b"id,total\n1,10\n"
    assert report["headers"]["Content-Disposition"]


async def test_empty_and_failed_responses(storage: Storage, base: str) -> None:
    execution, runs = await _run(
        f"""tasks:
  - id: empty_ok
    type: io.kestra.plugin.core.http.Download
    uri: {base}/empty
    failOnEmptyResponse: false
  - id: empty
    type: io.kestra.plugin.core.http.Download
    uri: {base}/empty
    allowFailure: true
  - id: missing
    type: io.kestra.plugin.core.http.Download
    uri: {base}/missing
"""
    )
    assert execution.state.current is S.FAILED  # type: ignore[attr-defined]
    assert runs["empty_ok"].outputs["length"] == 0  # type: ignore[attr-defined]
    assert runs["empty"].state.current is S.WARNING  # type: ignore[attr-defined]
    assert runs["missing"].state.current is S.FAILED  # type: ignore[attr-defined]
