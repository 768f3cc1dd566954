"""A small HTTP client of kestream's API (Kestra 1.x routes), for the ``executions`` commands.

It reaches the API at ``KESTREAM_API_URL`` (else ``KESTREAM_WEB_HOST``:``KESTREAM_WEB_PORT``)
with the API's own credentials, ``KESTREAM_API_USERNAME``/``KESTREAM_API_PASSWORD`` or the
first of ``KESTREAM_API_TOKENS``: the settings the API itself reads, as the purge tasks do
(:mod:`kestream.tasks.purge_api`). Credentials sent over plain ``http`` to another machine are
warned about, once.

Follows read the API's server-sent events (:mod:`kestream.api.sse`) with a parser of their own:
an execution's frame is one ``data:`` line that may hold megabytes (10 000 task runs), longer
than aiohttp's line reader accepts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from kestream.settings import Settings
from kestream.tasks.purge_api import (
    api_base,
    auth_headers,
    check_clear_credentials,
    shown_url,
)

__all__ = ["ApiClient", "ApiError", "SearchFilters", "sse_frames"]

log = logging.getLogger("kestream.api_client")

#: A request that is not a follow: the API answers from its index.
REQUEST_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
_ERROR_TEXT_MAX = 500


class ApiError(Exception):
    """The API could not be reached, or answered with an error (``status``: None when it could
    not be reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """A listing's filters, as Kestra 1.x's ``filters[field][OPERATION]`` parameters."""

    namespace: str | None = None
    flow_id: str | None = None
    states: Sequence[str] = ()
    labels: Mapping[str, str] | None = None
    page: int = 1
    size: int = 25

    def params(self) -> list[tuple[str, str]]:
        """The query parameters; newest executions first. A namespace matches its children too
        (``PREFIX``, as Kestra's namespace filter)."""
        params: list[tuple[str, str]] = []
        if self.namespace:
            params.append(("filters[namespace][PREFIX]", self.namespace))
        if self.flow_id:
            params.append(("filters[flowId][EQUALS]", self.flow_id))
        if self.states:
            params.append(("filters[state][IN]", ",".join(self.states)))
        for key, value in (self.labels or {}).items():
            params.append((f"filters[labels][EQUALS][{key}]", value))
        params += [
            ("page", str(self.page)),
            ("size", str(self.size)),
            ("sort", "state.startDate:desc"),
        ]
        return params


class ApiClient:
    """Calls to one API (module docs); use as an async context manager."""

    def __init__(
        self, base: str, tenant: str, headers: Mapping[str, str], *, plain_http: bool = False
    ) -> None:
        self.root = f"{base.rstrip('/')}/api/v1/{quote(tenant, safe='')}"
        self.headers = dict(headers)
        self._session: aiohttp.ClientSession | None = None
        if self.headers and shown_url(base) != base:
            raise ApiError(
                "KESTREAM_API_URL carries a user and password, and the API's credentials are "
                "set too (KESTREAM_API_PASSWORD or KESTREAM_API_TOKENS): give one"
            )
        refused = check_clear_credentials(base, self.headers, plain_http)
        if refused is not None:
            raise ApiError(refused)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClient:
        return cls(
            api_base(settings),
            settings.tenant,
            auth_headers(settings),
            plain_http=settings.api_plain_http,
        )

    async def __aenter__(self) -> ApiClient:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
        self._session = aiohttp.ClientSession(headers=self.headers, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    # -- executions --------------------------------------------------------------------------

    async def search(self, filters: SearchFilters) -> dict[str, Any]:
        """``{"results": [...], "total": N}``: one page of executions."""
        answer = await self._json("GET", "/executions/search", filters.params())
        if not (
            isinstance(answer, dict)
            and isinstance(answer.get("results"), list)
            and isinstance(answer.get("total"), int)
        ):
            raise ApiError(
                "the API's answer is not what kestream expects (a listing without results and "
                "total); is KESTREAM_API_URL a kestream API of this version?"
            )
        return answer

    async def execution(self, execution_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._json("GET", _one(execution_id))
        return answer

    async def follow(self, execution_id: str) -> AsyncIterator[dict[str, Any]]:
        """The execution now, then at each change, ending with its last state (``end``).

        A stream that closes without ``end`` (the API restarted, a proxy's idle timeout) is an
        :class:`ApiError`: the execution has not ended as far as this client knows, and its
        state then is no answer. Not reconnected: a proxy that cuts every long stream would
        make a reconnecting follow run forever; a new follow starts from the state as it is.
        """
        events = self._events(_one(execution_id) + "/follow")
        async with contextlib.aclosing(events):  # the stream closes with the last state
            async for frame_id, data in events:
                if frame_id in ("progress", "end"):
                    yield _loads(data, shown_url(self.root))
                if frame_id == "end":
                    return
        raise ApiError(_cut_follow(execution_id))

    async def kill(self, execution_id: str) -> None:
        await self._send("DELETE", _one(execution_id) + "/kill")

    async def restart(self, execution_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._json("POST", _one(execution_id) + "/restart")
        return answer

    async def resume(self, execution_id: str, inputs: Mapping[str, str]) -> None:
        """Resume a paused execution with the Pause's ``onResume`` inputs (a form)."""
        form = aiohttp.FormData()
        for key, value in inputs.items():
            form.add_field(key, value)
        await self._send("POST", _one(execution_id) + "/resume", data=form)

    # -- logs --------------------------------------------------------------------------------

    async def logs(self, execution_id: str, min_level: str | None = None) -> list[dict[str, Any]]:
        """Every log line of the execution, oldest first (the API's pages, one after another)."""
        return [line async for line in self.log_lines(execution_id, min_level)]

    async def log_lines(
        self, execution_id: str, min_level: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The execution's log lines, oldest first, a page read only once the last is taken
        (an execution's lines are unbounded: a caller that prints them holds one page)."""
        path = _logs(execution_id)
        params = [("minLevel", min_level)] if min_level else []
        page = 1
        while True:
            async with self._request("GET", path, [*params, ("page", str(page))]) as response:
                lines = _loads(await response.read(), shown_url(str(response.url)))
                more = 'rel="next"' in response.headers.get("Link", "")
            for line in lines:
                yield line
            if not more:
                return
            page += 1

    async def follow_logs(
        self, execution_id: str, min_level: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The execution's lines, then each new one, until the execution is over and the API
        has sent its every line. The stream has no ``end`` frame: once it closes, whether the
        API calls the execution over (:meth:`over`) tells an end from a stream cut short (an
        :class:`ApiError`)."""
        params = [("minLevel", min_level)] if min_level else []
        async for frame_id, data in self._events(_logs(execution_id) + "/follow", params):
            if frame_id == "progress":
                yield _loads(data, shown_url(self.root))
        if not await self.over(execution_id):
            raise ApiError(_cut_follow(execution_id))

    async def over(self, execution_id: str) -> bool:
        """Whether the API calls the execution over: its end state reached and its
        ``afterExecution`` tasks ended, which its state alone does not say (they run under
        it). The API's execution follow answers ``end`` right after ``start`` then, and
        ``progress`` otherwise; one frame is read, and the stream closed."""
        events = self._events(_one(execution_id) + "/follow")
        async with contextlib.aclosing(events):
            async for frame_id, _ in events:
                if frame_id != "start":
                    return frame_id == "end"
        return False

    # -- HTTP --------------------------------------------------------------------------------

    async def _json(self, method: str, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        async with self._request(method, path, params) as response:
            return _loads(await response.read(), shown_url(str(response.url)))

    async def _send(self, method: str, path: str, **kwargs: Any) -> None:
        async with self._request(method, path, **kwargs):
            return

    async def _events(
        self, path: str, params: Sequence[tuple[str, str]] = ()
    ) -> AsyncGenerator[tuple[str, bytes], None]:
        async with self._request("GET", path, params, follow=True) as response:
            async for frame in sse_frames(response.content.iter_any()):
                yield frame

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        *,
        follow: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request's answer; an :class:`ApiError` for an API that cannot be reached, that
        answers an error, or whose answer breaks off. A follow has no overall timeout."""
        if self._session is None:
            raise RuntimeError("use the ApiClient as an async context manager")
        if not follow:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        url = self.root + path
        try:
            response = await self._session.request(method, url, params=list(params), **kwargs)
        except (aiohttp.ClientError, TimeoutError) as exc:
            url = shown_url(url)
            raise ApiError(
                f"cannot reach the API at {url} ({type(exc).__name__}: {exc}); set "
                "KESTREAM_API_URL to where it listens"
            ) from None
        try:
            if response.status >= 400:
                text = (await response.text(errors="replace"))[:_ERROR_TEXT_MAX]
                raise ApiError(
                    f"the API answered {response.status}: {_message(text)}", response.status
                )
            yield response
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(f"the API's answer from {shown_url(url)} broke off ({exc})") from None
        finally:
            response.release()


def _loads(data: bytes, where: object) -> Any:
    """An answer's JSON; an :class:`ApiError` for one that is not (a login page of a proxy,
    a server that is not kestream's)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        head = data[:80].decode(errors="replace").strip()
        raise ApiError(
            f"the answer from {where} is not JSON ({head!r}...): is KESTREAM_API_URL kestream's "
            "API, not a proxy's login page?"
        ) from None


def _cut_follow(execution_id: str) -> str:
    return (
        f"the API closed the follow of execution {execution_id} before it ended (an API "
        f"restart or a proxy's idle timeout?); follow it again: kestream executions follow "
        f"{execution_id}"
    )


def _message(text: str) -> str:
    """The ``message`` of the API's JSON error, else the text as it came."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip()
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return text.strip()


def _one(execution_id: str) -> str:
    return f"/executions/{quote(execution_id, safe='')}"


def _logs(execution_id: str) -> str:
    return f"/logs/{quote(execution_id, safe='')}"


async def sse_frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, bytes]]:
    """``(id, data)`` of each server-sent event frame in a byte stream: comments and frames
    without data are skipped, several ``data:`` lines of a frame are joined by new lines, and a
    frame the stream ends in the middle of is dropped (the SSE rules). A long line that comes
    in many chunks costs its length once, not once per chunk."""
    pending: list[bytes] = []  # the pieces of the line not ended yet
    frame_id = ""
    data: list[bytes] = []
    async for chunk in chunks:
        *ended, rest = chunk.split(b"\n")
        for piece in ended:
            line = (b"".join(pending) + piece if pending else piece).rstrip(b"\r")
            pending = []
            if not line:
                if data:
                    yield frame_id, b"\n".join(data)
                frame_id, data = "", []
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"id":
                frame_id = value.decode("utf-8", "replace")
            elif name == b"data":
                data.append(value)
        if rest:
            pending.append(rest)
