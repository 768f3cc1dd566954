"""The ``executions`` commands against an API that answers badly: a follow cut before its end,
an answer that is not JSON or not kestream's, a URL that carries a password. Each exits with 4
and a message, never 1 (read as FAILED) nor a traceback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from typer.testing import CliRunner

from kestream.cli import app
from kestream.cli_output import EXIT_UNUSABLE
from kestream.settings import get_settings

runner = CliRunner()
RUNNING = {
    "id": "E1",
    "originalId": "E1",
    "metadata": {"originalCreatedDate": "2026-12-05T10:00:00Z"},
    "namespace": "company.team",
    "flowId": "hello",
    "flowRevision": 1,
    "state": {"current": "RUNNING", "histories": []},
    "taskRunList": [],
}


def _sse(frame_id: str, data: dict[str, Any]) -> bytes:
    return f"id: {frame_id}\nevent: {frame_id}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


async def _cut_follow(request: web.Request) -> web.StreamResponse:
    """The execution, then the stream closes without its ``end`` (an API restart)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_sse("progress", RUNNING))
    return response


async def _cut_logs(request: web.Request) -> web.StreamResponse:
    """The log stream's start, then it closes while the execution still runs."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_sse("start", {"executionId": "E1"}))
    return response


async def _execution(request: web.Request) -> web.Response:
    return web.json_response(RUNNING)


async def _login_page(request: web.Request) -> web.Response:
    return web.Response(text="<html><body>Sign in</body></html>", content_type="text/html")


async def _not_kestream(request: web.Request) -> web.Response:
    return web.json_response({"items": []})


Routes = Callable[[web.Application], None]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Routes], int]]:
    """Start an aiohttp app (on its own loop, in a thread) and point KESTREAM_API_URL at it."""
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def start(routes: Routes) -> int:
        application = web.Application()
        routes(application)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])

        async def _start() -> None:
            app_runner = web.AppRunner(application, access_log=None)
            await app_runner.setup()
            await web.TCPSite(app_runner, "127.0.0.1", port).start()
            runners.append(app_runner)

        asyncio.run_coroutine_threadsafe(_start(), loop).result(10)
        monkeypatch.setenv("KESTREAM_API_URL", f"http://127.0.0.1:{port}")
        get_settings.cache_clear()
        return port

    for name in ("KESTREAM_API_TOKENS", "KESTREAM_API_PASSWORD", "KESTREAM_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    yield start
    for app_runner in runners:
        asyncio.run_coroutine_threadsafe(app_runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    get_settings.cache_clear()


def test_a_follow_cut_before_the_end_is_unusable_not_failed(
    serve: Callable[[Routes], int],
) -> None:
    def routes(application: web.Application) -> None:
        application.router.add_get("/api/v1/main/executions/E1/follow", _cut_follow)
        application.router.add_get("/api/v1/main/logs/E1/follow", _cut_logs)
        application.router.add_get("/api/v1/main/executions/E1", _execution)

    serve(routes)
    for args in (["follow", "E1"], ["logs", "E1", "--follow"]):
        result = runner.invoke(app, ["executions", *args])
        assert result.exit_code == EXIT_UNUSABLE, result.output
        assert "closed the follow of execution E1 before it ended" in result.output


def _ended_with_notify(notify: str) -> dict[str, Any]:
    """The execution at its end state, its ``afterExecution`` task ``notify`` in ``notify``."""
    run = {
        "id": "R1",
        "executionId": "E1",
        "namespace": "company.team",
        "flowId": "hello",
        "taskId": "notify",
        "state": {"current": notify, "histories": []},
    }
    return {**RUNNING, "state": {"current": "SUCCESS", "histories": []}, "taskRunList": [run]}


def _follow_of(*frames: tuple[str, dict[str, Any]]) -> Callable[[web.Request], Any]:
    async def follow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_sse("start", {"id": "E1", "deleted": False}))
        for frame_id, data in frames:
            await response.write(_sse(frame_id, data))
        return response

    return follow


def _follow_route(follow: Callable[[web.Request], Any]) -> Routes:
    def routes(application: web.Application) -> None:
        application.router.add_get("/api/v1/main/executions/E1/follow", follow)

    return routes


def test_a_follow_ends_at_the_end_frame_not_at_the_end_state(
    serve: Callable[[Routes], int],
) -> None:
    """While its afterExecution task runs, the execution shows its end state in ``progress``
    frames; the follow prints it as the ``end`` frame has it, that task ended."""
    follow = _follow_of(
        ("progress", _ended_with_notify("RUNNING")),
        ("progress", _ended_with_notify("RUNNING")),
        ("end", _ended_with_notify("SUCCESS")),
    )
    serve(_follow_route(follow))
    result = runner.invoke(app, ["executions", "follow", "E1", "--json"])
    assert result.exit_code == 0, result.output
    shown = orjson.loads(result.stdout)
    assert [run["state"]["current"] for run in shown["taskRunList"]] == ["SUCCESS"]


def test_a_follow_cut_while_after_execution_tasks_run_is_unusable(
    serve: Callable[[Routes], int],
) -> None:
    """An end state without the ``end`` frame is not the end: the stream was cut."""
    follow = _follow_of(("progress", _ended_with_notify("RUNNING")))
    serve(_follow_route(follow))
    result = runner.invoke(app, ["executions", "follow", "E1"])
    assert result.exit_code == EXIT_UNUSABLE, result.output
    assert "closed the follow of execution E1 before it ended" in result.output


def test_a_log_follow_cut_while_after_execution_tasks_run_is_unusable(
    serve: Callable[[Routes], int],
) -> None:
    """The execution shows SUCCESS, but the API does not call it over (its follow answers
    ``progress``): a log stream that closed then was cut, not ended."""
    ended = _ended_with_notify("RUNNING")

    async def execution(request: web.Request) -> web.Response:
        return web.json_response(ended)

    def routes(application: web.Application) -> None:
        application.router.add_get("/api/v1/main/logs/E1/follow", _cut_logs)
        application.router.add_get("/api/v1/main/executions/E1", execution)
        application.router.add_get(
            "/api/v1/main/executions/E1/follow", _follow_of(("progress", ended))
        )

    serve(routes)
    result = runner.invoke(app, ["executions", "logs", "E1", "--follow"])
    assert result.exit_code == EXIT_UNUSABLE, result.output
    assert "closed the follow of execution E1 before it ended" in result.output


def test_a_log_follow_of_an_execution_that_is_over_ends_well(
    serve: Callable[[Routes], int],
) -> None:
    def routes(application: web.Application) -> None:
        application.router.add_get("/api/v1/main/logs/E1/follow", _cut_logs)
        application.router.add_get(
            "/api/v1/main/executions/E1/follow", _follow_of(("end", _ended_with_notify("SUCCESS")))
        )

    serve(routes)
    result = runner.invoke(app, ["executions", "logs", "E1", "--follow"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("handler", "says"),
    [(_login_page, "is not JSON"), (_not_kestream, "not what kestream expects")],
)
def test_an_answer_that_is_not_kestream_s_is_unusable(
    serve: Callable[[Routes], int], handler: Any, says: str
) -> None:
    def routes(application: web.Application) -> None:
        application.router.add_get("/api/v1/main/executions/search", handler)
        application.router.add_get("/api/v1/main/executions/E1", handler)

    serve(routes)
    for args in (["list"], ["get", "E1"]):
        result = runner.invoke(app, ["executions", *args])
        assert result.exit_code == EXIT_UNUSABLE, result.output
        assert says in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_password_in_the_api_url_is_never_printed(
    serve: Callable[[Routes], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = serve(lambda application: None)
    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setenv("KESTREAM_API_URL", f"http://admin:pw12345@127.0.0.1:{closed}")
    get_settings.cache_clear()
    result = runner.invoke(app, ["executions", "get", "E1"])
    assert result.exit_code == EXIT_UNUSABLE
    assert f"cannot reach the API at http://127.0.0.1:{closed}/" in result.output
    assert "pw12345" not in result.output
    # With the API's token as well: one of the two, said so (aiohttp would raise).
    monkeypatch.setenv("KESTREAM_API_URL", f"http://admin:pw12345@127.0.0.1:{port}")
    monkeypatch.setenv("KESTREAM_API_TOKENS", "tok-1")
    get_settings.cache_clear()
    result = runner.invoke(app, ["executions", "get", "E1"])
    assert result.exit_code == EXIT_UNUSABLE, result.output
    assert "carries a user and password" in result.output and "pw12345" not in result.output


def test_logs_are_printed_a_page_at_a_time(serve: Callable[[Routes], int]) -> None:
    """The first page is printed before the second is read: an error on the second leaves
    the first on the terminal (all pages were held, then nothing printed)."""
    line = {
        "executionId": "E1",
        "namespace": "company.team",
        "flowId": "hello",
        "taskId": "t1",
        "taskRunId": "r1",
        "attemptNumber": 1,
        "level": "INFO",
        "message": "first page's line",
        "timestamp": "2026-12-05T10:00:00Z",
    }

    async def pages(request: web.Request) -> web.Response:
        if request.query.get("page") == "2":
            return web.json_response({"message": "index unavailable"}, status=503)
        following = request.rel_url.update_query(page="2")
        return web.json_response([line], headers={"Link": f'<{following}>; rel="next"'})

    serve(lambda application: application.router.add_get("/api/v1/main/logs/E1", pages))
    result = runner.invoke(app, ["executions", "logs", "E1", "--json"])
    assert result.exit_code == EXIT_UNUSABLE
    assert "first page's line" in result.output and "503" in result.output
