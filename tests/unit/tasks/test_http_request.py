"""The HTTP Request task against a local aiohttp server on 127.0.0.1 (plain and TLS)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kestream.models.flow import FlowValidationError, parse_flow
from kestream.models.state import StateType
from kestream.tasks import http
from kestream.tasks.base import RunInfo, TaskError
from kestream.tasks.http import Request
from kestream.testing import Driver

S = StateType


async def _echo(request: web.Request) -> web.Response:
    """Answers with what it received, so each test can check what was sent."""
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        received: Any = {key: str(value) for key, value in form.items()}
    elif request.content_type == "application/x-www-form-urlencoded":
        received = dict(await request.post())
    else:
        received = await request.text()
    return web.json_response(
        {
            "method": request.method,
            "contentType": request.content_type,
            "headers": dict(request.headers),
            "received": received,
        },
        headers={"X-Reply": "yes"},
    )


async def _missing(request: web.Request) -> web.Response:
    return web.Response(status=404, text="no such thing " + "x" * 5000)


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/echo")


async def _hang(request: web.Request) -> web.Response:
    await asyncio.Event().wait()  # never answers: only the client's read timeout ends it
    raise AssertionError("unreachable")


async def _big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()  # chunked: no Content-Length to refuse it up front
    await response.prepare(request)
    for _ in range(64):
        await response.write(b"y" * 1024)
    await response.write_eof()
    return response


async def _trickle(request: web.Request) -> web.StreamResponse:
    """A byte well within every read timeout, for ever: only a total deadline ends the read."""
    response = web.StreamResponse()
    await response.prepare(request)
    while True:
        await response.write(b"t")
        await asyncio.sleep(0.02)


async def _protected(request: web.Request) -> web.Response:
    expected = "Basic " + base64.b64encode(b"ann:s3cret").decode()
    if request.headers.get("Authorization") != expected:
        return web.Response(status=401, text="who are you")
    return web.Response(text="welcome")


def _app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/echo", _echo)
    app.router.add_get("/missing", _missing)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/hang", _hang)
    app.router.add_get("/big", _big)
    app.router.add_get("/protected", _protected)
    app.router.add_get("/trickle", _trickle)
    return app


async def _serve(ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(_app(), shutdown_timeout=0.1)  # /hang never ends by itself
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{port}"


@pytest.fixture
async def base() -> AsyncIterator[str]:
    runner, url = await _serve()
    yield url
    await runner.cleanup()


def _task(**props: Any) -> Request:
    return Request.model_validate({"id": "req", "type": Request.type_name, **props})


async def _call(task: Request, **overrides: Any) -> dict[str, Any]:
    props = task.model_dump(include=set(Request.dynamic), exclude_none=True)
    props.update(overrides)
    outcome = await task.arun(props, RunInfo("e", "r", 1))
    assert outcome.state is S.SUCCESS and outcome.outputs is not None
    return outcome.outputs


async def test_get_gives_code_headers_body_and_uri(base: str) -> None:
    outputs = await _call(_task(uri=f"{base}/echo", headers={"X-Token": 7}))
    assert outputs["code"] == 200
    assert outputs["uri"] == f"{base}/echo"
    assert outputs["headers"]["X-Reply"] == ["yes"]
    body = json.loads(outputs["body"])  # the body stays text, as in Kestra
    assert body["method"] == "GET"
    assert body["headers"]["X-Token"] == "7"


async def test_post_json_body_from_a_map(base: str) -> None:
    outputs = await _call(_task(uri=f"{base}/echo", method="post", body={"a": [1, 2]}))
    body = json.loads(outputs["body"])
    assert body["method"] == "POST"
    assert body["contentType"] == "application/json"
    assert json.loads(body["received"]) == {"a": [1, 2]}


async def test_form_data_url_encoded_and_multipart(base: str) -> None:
    plain = await _call(
        _task(
            uri=f"{base}/echo",
            method="POST",
            contentType="application/x-www-form-urlencoded",
            formData={"user": "John Doe", "n": 3},
        )
    )
    assert json.loads(plain["body"])["received"] == {"user": "John Doe", "n": "3"}
    multi = await _call(
        _task(
            uri=f"{base}/echo",
            method="POST",
            contentType="multipart/form-data",
            formData={"user": "John Doe"},
        )
    )
    body = json.loads(multi["body"])
    assert body["contentType"] == "multipart/form-data"
    assert body["received"] == {"user": "John Doe"}


@pytest.mark.parametrize(
    "options",
    [
        {"basicAuthUser": "ann", "basicAuthPassword": "s3cret"},
        {"auth": {"type": "BASIC", "username": "ann", "password": "s3cret"}},
    ],
)
async def test_basic_auth(base: str, options: dict[str, Any]) -> None:
    outputs = await _call(_task(uri=f"{base}/protected", options=options))
    assert (outputs["code"], outputs["body"]) == (200, "welcome")


async def test_bearer_auth_sets_the_header(base: str) -> None:
    outputs = await _call(
        _task(uri=f"{base}/echo", options={"auth": {"type": "BEARER", "token": "abc"}})
    )
    assert json.loads(outputs["body"])["headers"]["Authorization"] == "Bearer abc"


async def test_redirects_are_followed_unless_told_not_to(base: str) -> None:
    followed = await _call(_task(uri=f"{base}/redirect"))
    assert (followed["code"], followed["uri"]) == (200, f"{base}/echo")
    kept = await _call(
        _task(uri=f"{base}/redirect", options={"followRedirects": False, "allowFailed": True})
    )
    assert kept["code"] == 302
    assert kept["headers"]["Location"] == ["/echo"]


async def test_404_fails_with_the_code_and_a_cut_body(base: str) -> None:
    task = _task(uri=f"{base}/missing")
    with pytest.raises(TaskError) as failure:
        await _call(task)
    message = str(failure.value)
    assert message.startswith("Request failed with response code '404' and body: no such thing")
    assert len(message) < 1100


async def test_404_allowed_gives_the_outputs(base: str) -> None:
    outputs = await _call(_task(uri=f"{base}/missing", options={"allowFailed": True}))
    assert outputs["code"] == 404
    assert outputs["body"].startswith("no such thing")


async def test_read_timeout_fails_the_task(base: str) -> None:
    with pytest.raises(TaskError, match="timed out"):
        await _call(_task(uri=f"{base}/hang", options={"readTimeout": "PT0.2S"}))


async def test_a_trickling_body_ends_at_the_total_deadline(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "DEADLINE_READS", 3)  # 3 x 0.2 s instead of 30 x 10 s
    with pytest.raises(TaskError, match="timed out"):
        await _call(_task(uri=f"{base}/trickle", options={"readTimeout": "PT0.2S"}))


async def test_a_password_in_the_uri_is_sent_but_never_shown(base: str) -> None:
    uri = base.replace("http://", "http://ann:s3cret@") + "/protected"
    run = RunInfo("e", "r", 1)
    outcome = await _task(uri=uri).arun({"uri": uri}, run)
    assert outcome.outputs is not None and outcome.outputs["body"] == "welcome"  # it was sent
    shown = [outcome.outputs["uri"], *(message for _, message in run.lines)]
    assert "s3cret" not in " ".join(shown)
    refused = base.replace("http://", "http://ann:s3cret@").replace(
        base.rsplit(":", 1)[1], "1"
    )  # nothing listens on port 1
    with pytest.raises(TaskError) as failed:
        await _task(uri=refused).arun({"uri": refused}, RunInfo("e", "r", 1))
    assert "s3cret" not in str(failed.value) and "ann:***@" in str(failed.value)


def test_masked_hides_only_the_password() -> None:
    assert http.masked("https://u:p%40ss@h.io/x?q=1") == "https://u:***@h.io/x?q=1"
    assert http.masked("https://u@h.io/") == "https://u@h.io/"
    assert http.masked("https://h.io/a") == "https://h.io/a"
    assert http.masked("https://u:pw@[::1:80/") == "https://u:***@[::1:80/"  # unparseable


async def test_a_body_over_max_content_length_fails_while_reading(base: str) -> None:
    with pytest.raises(TaskError, match="exceeds maxContentLength"):
        await _call(_task(uri=f"{base}/big", options={"maxContentLength": 10_000}))
    outputs = await _call(_task(uri=f"{base}/big", options={"maxContentLength": 65_536}))
    assert len(outputs["body"]) == 65_536


async def test_connection_refused_fails_the_task() -> None:
    runner, url = await _serve()
    await runner.cleanup()  # nothing listens there any more
    with pytest.raises(TaskError, match="failed"):
        await _call(_task(uri=f"{url}/echo"))


def test_options_are_checked_at_deploy() -> None:
    head = "id: f\nnamespace: t\ntasks:\n  - id: r\n    type: io.kestra.plugin.core.http.Request\n"
    with pytest.raises(FlowValidationError, match="proxyAddress"):
        parse_flow(head + "    uri: http://x\n    options:\n      proxyAddress: y\n")
    with pytest.raises(FlowValidationError, match="maxContentLength"):
        parse_flow(head + "    uri: http://x\n    options:\n      maxContentLength: 1e12\n")
    parse_flow(head + '    uri: http://x\n    options:\n      allowFailed: "{{ true }}"\n')


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("the TLS test needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_self_signed_needs_insecure_trust(self_signed: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)
    runner, url = await _serve(context)
    try:
        with pytest.raises(TaskError, match="certificate"):
            await _call(_task(uri=f"{url}/echo"))
        trusting = _task(uri=f"{url}/echo", sslOptions={"insecureTrustAllCertificates": True})
        outputs = await _call(trusting)
        assert outputs["code"] == 200
    finally:
        await runner.cleanup()


async def test_a_flow_reads_the_response_through_the_driver(base: str) -> None:
    flow = f"""id: api
namespace: test.http
tasks:
  - id: call
    type: io.kestra.plugin.core.http.Request
    uri: "{base}/echo"
    method: POST
    body: '{{{{ {{"who": flow.id}} | json }}}}'
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ json(outputs.call.body).received }}}}/{{{{ outputs.call.code }}}}"
"""
    with Driver() as driver:
        driver.deploy(flow)
        execution = await driver.astart("test.http", "api")
    assert execution.state.current is S.SUCCESS
    runs = {run.taskId: run for run in execution.taskRunList}
    assert runs["use"].outputs == {"value": '{"who":"api"}/200'}
