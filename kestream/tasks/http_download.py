"""``io.kestra.plugin.core.http.Download``: an HTTP response body saved as a stored file.

The request is built as :class:`~kestream.tasks.http.Request` builds it (method, body, form
data, headers, ``options`` with auth and timeouts); the body streams to a temporary file and
from it to the internal storage, so its size is bounded by neither the worker's memory nor a
record. The file keeps the name the server gives (``Content-Disposition``) or the last segment
of the URI's path, made safe. Outputs, as Kestra's: ``uri`` (the stored file), ``code``,
``length`` and ``headers``. An empty body fails the run unless ``failOnEmptyResponse`` is false;
a code outside 2xx fails it unless ``options.allowFailed``.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import aiohttp
from pydantic import ValidationError
from yarl import URL

from kestream.models.state import StateType
from kestream.storage.current import get_storage
from kestream.storage.keys import to_uri
from kestream.tasks.base import LogLevel, RunInfo, TaskError, TaskOutcome
from kestream.tasks.files import new_file_name, run_files
from kestream.tasks.http import (
    _CHUNK,
    HttpOptions,
    Request,
    _auth,
    _headers,
    _masked_in,
    _payload,
    _timeout,
    masked,
)

_DISPOSITION_NAME = re.compile(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", re.IGNORECASE)


class Download(Request):
    """Download a file over HTTP into the internal storage."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.http.Download"
    aliases: ClassVar[tuple[str, ...]] = (
        "io.kestra.plugin.fs.http.Download",
        "io.kestra.core.tasks.http.Download",
    )
    dynamic: ClassVar[tuple[str, ...]] = (*Request.dynamic, "failOnEmptyResponse")

    failOnEmptyResponse: bool | str = True

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
        handle, temp = tempfile.mkstemp(prefix="kestream-download-")
        os.close(handle)
        path = Path(temp)
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=_timeout(options), middlewares=_auth(options, headers)
                ) as http,
                http.request(
                    method, uri, data=data, headers=headers,
                    allow_redirects=options.followRedirects,
                    ssl=not self.sslOptions.insecureTrustAllCertificates,
                ) as response,
            ):  # fmt: skip
                code = response.status
                if not 200 <= code < 300 and not options.allowFailed:
                    raise TaskError(f"Failed to download '{shown}': response code {code}")
                length = await _save(response, path)
                name = _name(response, str(response.url))
                answer_headers = _headers(response.headers)
            if length == 0 and props.get("failOnEmptyResponse", True) not in (False, "false"):
                raise TaskError(f"No response from server '{shown}' (empty body)")
            key = run_files(run).key(name)
            await asyncio.to_thread(get_storage().put, key, path)
        except TimeoutError:
            raise TaskError(f"HTTP {method} {shown} timed out") from None
        except aiohttp.ClientError as exc:
            raise TaskError(f"HTTP {method} {shown} failed: {_masked_in(str(exc), uri)}") from None
        finally:
            await asyncio.to_thread(path.unlink, True)
        run.log(LogLevel.DEBUG, f"Downloaded {length} bytes from {shown}")
        outputs = {"uri": to_uri(key), "code": code, "length": length, "headers": answer_headers}
        return TaskOutcome(StateType.SUCCESS, outputs)


async def _save(response: aiohttp.ClientResponse, path: Path) -> int:
    """Write the body to ``path`` chunk by chunk; returns its length."""
    length = 0
    with path.open("wb") as out:
        async for chunk in response.content.iter_chunked(_CHUNK):
            await asyncio.to_thread(out.write, chunk)
            length += len(chunk)
    return length


def _name(response: aiohttp.ClientResponse, url: str) -> str:
    """The server's file name, else the URI path's last segment, made safe for a key."""
    disposition = response.headers.get("Content-Disposition", "")
    found = _DISPOSITION_NAME.search(disposition)
    raw = found.group(1) if found else PurePosixPath(URL(url).path).name
    raw = PurePosixPath(raw.replace("\\", "/")).name
    stem, dot, ext = raw.rpartition(".")
    if not dot:
        stem, ext = raw, ""
    return new_file_name(ext, stem)
