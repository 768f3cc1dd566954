"""HTTP Request: one HTTP call from the worker's event loop, its response as the task's outputs.

Semantics follow Kestra's ``io.kestra.plugin.core.http.Request``: the outputs are ``uri``,
``code``, ``headers`` (each name to its list of values) and ``body`` (the response text, never
parsed: flows read JSON with ``json()`` or ``jq``); a response code outside 2xx fails the task run
unless ``options.allowFailed`` is set.

The body is read in chunks and the task fails as soon as it passes ``options.maxContentLength``
(10 MiB by default, as in Kestra). That limit is itself capped by :data:`MAX_CONTENT_CEILING`:
the body becomes a task output that must travel in one record, so reading more than any record
can hold would only let one response take the worker's memory.

Time is bounded twice: ``options.readTimeout`` (10 s by default) is the longest wait for the next
bytes, and the whole request, body included, must end within :data:`DEADLINE_READS` read
timeouts (5 minutes by default), so that a server trickling a byte now and then cannot hold the
task run for ever (kestream tasks have no default ``timeout``). A flow that downloads for longer
raises ``readTimeout``; a null ``readTimeout`` lifts both bounds.

A password in the URI (``https://user:pass@host/``) is sent, but masked as ``***`` wherever the
URI is shown: log lines, error messages and the ``uri`` output.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from yarl import URL

from kestream.models.durations import DurationError, parse_duration
from kestream.models.state import StateType
from kestream.tasks.base import (
    DurationText,
    LogLevel,
    RunInfo,
    RunnableTask,
    TaskError,
    TaskOutcome,
)

#: Kestra's default ``options.maxContentLength``.
DEFAULT_MAX_CONTENT = 10 * 1024 * 1024
#: No flow may raise the limit past this: no record carries a larger output.
MAX_CONTENT_CEILING = 64 * 1024 * 1024
#: How much of a failed response's body the error message quotes.
ERROR_BODY_CHARS = 1000
_CHUNK = 64 * 1024
#: The whole request must end within this many ``readTimeout``\ s.
DEADLINE_READS = 30
#: ``scheme://user:password@``, for a URI yarl cannot parse.
_USERINFO_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#]*@")


class HttpAuth(BaseModel):
    """Kestra's ``options.auth`` block (BASIC, BEARER or DIGEST)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["BASIC", "BEARER", "DIGEST"]
    username: str | None = None
    password: str | None = None
    token: str | None = None


class HttpOptions(BaseModel):
    """Kestra's ``options``; the proxy settings are refused (not supported) by ``extra``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connectTimeout: DurationText | None = None
    readTimeout: DurationText | None = "PT10S"
    connectionPoolIdleTimeout: DurationText | None = None
    maxContentLength: int = Field(default=DEFAULT_MAX_CONTENT, ge=1, le=MAX_CONTENT_CEILING)
    defaultCharset: str = "UTF-8"
    followRedirects: bool = True
    allowFailed: bool = False
    basicAuthUser: str | None = None
    basicAuthPassword: str | None = None
    auth: HttpAuth | None = None


class SslOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    insecureTrustAllCertificates: bool = False


class Request(RunnableTask):
    """Send an HTTP request; ``code``, ``headers``, ``body`` and ``uri`` become the outputs."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.http.Request"
    aliases: ClassVar[tuple[str, ...]] = (
        "io.kestra.plugin.fs.http.Request",
        "io.kestra.core.tasks.http.Request",
    )
    dynamic: ClassVar[tuple[str, ...]] = (
        "uri", "method", "body", "formData", "contentType", "headers", "options",
    )  # fmt: skip
    is_async: ClassVar[bool] = True

    uri: str
    method: str = "GET"
    body: Any = None
    formData: dict[str, Any] | None = None
    contentType: str = "application/json"
    headers: dict[str, Any] | None = None
    #: Kept as the mapping the flow wrote so that its values may be expressions; checked at
    #: deploy (every literal value) and again, rendered, when the task runs.
    options: dict[str, Any] = Field(default_factory=dict)
    sslOptions: SslOptions = Field(default_factory=SslOptions)

    @field_validator("options")
    @classmethod
    def _check_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        HttpOptions.model_validate(_literal_part(value))
        return value

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        try:
            options = HttpOptions.model_validate(props.get("options") or {})
        except ValidationError as exc:
            raise TaskError(f"Invalid options: {exc}") from None
        uri = str(props["uri"])
        shown = masked(uri)
        method = str(props.get("method") or "GET").upper()
        headers = {str(k): str(v) for k, v in (props.get("headers") or {}).items()}
        content_type = str(props.get("contentType") or "application/json")
        data = _payload(props.get("body"), props.get("formData"), content_type, headers)
        middlewares = _auth(options, headers)
        verify = not self.sslOptions.insecureTrustAllCertificates
        try:
            async with (
                aiohttp.ClientSession(timeout=_timeout(options), middlewares=middlewares) as http,
                http.request(
                    method,
                    uri,
                    data=data,
                    headers=headers,
                    allow_redirects=options.followRedirects,
                    ssl=verify,
                ) as response,
            ):
                raw = await _read_bounded(response, options.maxContentLength)
                text = raw.decode(response.charset or options.defaultCharset, errors="replace")
                code = response.status
                outputs = {
                    "uri": masked(str(response.url)),
                    "code": code,
                    "headers": _headers(response.headers),
                    "body": text,
                }
        except TimeoutError:
            raise TaskError(f"HTTP {method} {shown} timed out") from None
        except aiohttp.ClientError as exc:
            raise TaskError(f"HTTP {method} {shown} failed: {_masked_in(str(exc), uri)}") from None
        except LookupError:
            raise TaskError(f"Unknown charset '{options.defaultCharset}'") from None
        if not 200 <= code < 300 and not options.allowFailed:
            raise TaskError(
                f"Request failed with response code '{code}' and body: {text[:ERROR_BODY_CHARS]}"
            )
        run.log(LogLevel.DEBUG, f"HTTP {method} {shown}: {code}")
        return TaskOutcome(StateType.SUCCESS, outputs=outputs)


def _literal_part(value: Any) -> Any:
    """``value`` without its expressions (they are only known once rendered)."""
    if isinstance(value, dict):
        return {k: _literal_part(v) for k, v in value.items() if not _is_template(v)}
    return value


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text).total_seconds()
    except DurationError as exc:
        raise TaskError(f"Invalid duration: {exc}") from None


def _timeout(options: HttpOptions) -> aiohttp.ClientTimeout:
    """``readTimeout`` between reads, and :data:`DEADLINE_READS` of them for the whole request."""
    read = _seconds(options.readTimeout)
    return aiohttp.ClientTimeout(
        total=None if read is None else read * DEADLINE_READS,
        sock_connect=_seconds(options.connectTimeout),
        sock_read=read,
    )


def masked(uri: str) -> str:
    """``uri`` with the password of its user information (if any) replaced by ``***``."""
    try:
        url = URL(uri)
    except (ValueError, TypeError):
        return _USERINFO_PASSWORD.sub(r"\1:***@", uri)
    if url.password is None:
        return uri
    return str(url.with_password("***"))


def _masked_in(text: str, uri: str) -> str:
    """``text`` (a client error's message, which may quote the URL) with the URI's password
    masked."""
    try:
        url = URL(uri)
    except (ValueError, TypeError):
        return text
    for password in (url.raw_password, url.password):
        if password:
            text = text.replace(password, "***")
    return text


def _payload(
    body: Any, form: dict[str, Any] | None, content_type: str, headers: dict[str, str]
) -> Any:
    """The request body: form data (url-encoded or multipart), or ``body`` as text.

    A ``body`` rendered to a map or a list (a YAML mapping in the flow) is sent as JSON.
    """
    if form is not None:
        if content_type.lower().startswith("multipart/form-data"):
            multipart = aiohttp.FormData(quote_fields=False, default_to_multipart=True)
            for key, value in form.items():
                multipart.add_field(str(key), _text(value))
            return multipart  # aiohttp writes the content type with its boundary
        return {str(key): _text(value) for key, value in form.items()}
    if body is None:
        return None
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = content_type
    return _text(body).encode()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _auth(
    options: HttpOptions, headers: dict[str, str]
) -> tuple[aiohttp.DigestAuthMiddleware, ...]:
    """Set the ``Authorization`` header (BASIC, BEARER), or give the DIGEST middleware."""
    auth = options.auth
    if auth is None:
        if options.basicAuthUser is not None:
            headers["Authorization"] = _basic(options.basicAuthUser, options.basicAuthPassword)
        return ()
    if auth.type == "BEARER":
        if not auth.token:
            raise TaskError("options.auth of type BEARER needs a 'token'")
        headers["Authorization"] = f"Bearer {auth.token}"
        return ()
    if auth.username is None:
        raise TaskError(f"options.auth of type {auth.type} needs a 'username'")
    if auth.type == "DIGEST":
        return (aiohttp.DigestAuthMiddleware(auth.username, auth.password or ""),)
    headers["Authorization"] = _basic(auth.username, auth.password)
    return ()


def _basic(user: str, password: str | None) -> str:
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
    return f"Basic {token}"


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or a :class:`TaskError` as soon as it passes ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise TaskError(f"Response body of {response.content_length} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise TaskError(f"Response body exceeds maxContentLength ({limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _headers(headers: Any) -> dict[str, list[str]]:
    """Each header name (as the server wrote it) to all its values, as Kestra outputs them."""
    out: dict[str, list[str]] = {}
    for name, value in headers.items():
        out.setdefault(name, []).append(value)
    return out
