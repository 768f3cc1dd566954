"""An execution's stored files through the API: download, preview and metadata (Kestra's routes).

``GET .../executions/{id}/file?path=kestra:///...`` streams the file; ``/file/metas`` gives its
``size``; ``/file/preview`` its first lines as text (``maxRows``, 100 by default, at most 5 000,
and never more than 1 MiB). ``path`` must be a file of that execution (its folder in the
storage, :func:`~kestream.storage.keys.execution_prefix`): any other path, an escape attempt
(``..``, encoded dots) or another execution's file answers 404 before the storage is asked, so
the routes cannot be used to learn what else the storage holds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from kestream.api.handle import ApiHandle
from kestream.api.http import bad_request, json_response, not_found, query_int
from kestream.storage.backend import Storage
from kestream.storage.current import get_storage
from kestream.storage.keys import StorageUriError, execution_prefix, file_name, parse_uri
from kestream.storage.uploads import store_input_file

PREFIX = "/api/v1/{tenant}/executions/{executionId}/file"
PREVIEW_BYTES = 1 << 20
DEFAULT_ROWS, MAX_ROWS = 100, 5000


class FileRoutes:
    def __init__(self, api: ApiHandle, storage: Storage | None = None) -> None:
        self.api = api
        self._storage = storage

    @property
    def storage(self) -> Storage:
        return self._storage or get_storage()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "/metas", self.metas),
            web.get(PREFIX + "/preview", self.preview),
            web.get(PREFIX, self.download),
        ]

    async def download(self, request: web.Request) -> web.StreamResponse:
        """The file's bytes, streamed (``Content-Disposition`` names it)."""
        key, size = await self._file(request)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{_quoted(file_name(key))}"',
                "Content-Length": str(size),
            }
        )
        await response.prepare(request)
        chunks = self.storage.chunks(key)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def metas(self, request: web.Request) -> web.Response:
        """``{"size": bytes}``."""
        _, size = await self._file(request)
        return json_response({"size": size})

    async def preview(self, request: web.Request) -> web.Response:
        """The first ``maxRows`` lines as text (``encoding``, UTF-8 by default)."""
        rows = query_int(request, "maxRows", DEFAULT_ROWS, low=1, high=MAX_ROWS)
        encoding = request.query.get("encoding") or "utf-8"
        try:
            "".encode(encoding)
        except LookupError:
            raise bad_request(f"Unknown encoding '{encoding}'") from None
        key, size = await self._file(request)
        head = await asyncio.to_thread(self.storage.head, key, PREVIEW_BYTES)
        lines = head.decode(encoding, errors="replace").splitlines(keepends=True)
        shown = "".join(lines[:rows])
        truncated = len(lines) > rows or size > len(head)
        extension = file_name(key).rpartition(".")[2] if "." in file_name(key) else ""
        body: dict[str, Any] = {
            "extension": extension,
            "type": "TEXT",
            "content": shown,
            "truncated": truncated,
        }
        return json_response(body)

    async def _file(self, request: web.Request) -> tuple[str, int]:
        """The key and size of ``?path=``, checked to be a file of the execution (404 else)."""
        _, execution = await self.api.execution_for(request)
        path = request.query.get("path")
        if not path:
            raise bad_request("Query parameter 'path' is required")
        folder = execution_prefix(execution["namespace"], execution["flowId"], execution["id"])
        try:
            key = parse_uri(path)
        except StorageUriError:
            key = None
        if key is None or not key.startswith(folder):
            raise not_found(f"File '{path}' of execution '{execution['id']}'")
        try:
            size = await asyncio.to_thread(self.storage.size, key)
        except FileNotFoundError:
            raise not_found(f"File '{path}'") from None
        return key, size


def _quoted(name: str) -> str:
    return name.replace('"', "").replace("\r", "").replace("\n", "")


async def store_uploads(
    form: dict[str, Any], flow: Any, execution_id: str, storage: Storage | None = None
) -> dict[str, Any]:
    """``form`` with each uploaded file stored (:mod:`kestream.storage.uploads`) and replaced
    by its ``kestra://`` URI: the value a FILE input takes."""
    store = storage or get_storage()

    async def value(input_id: str, item: Any) -> Any:
        if not isinstance(item, web.FileField):
            return item
        return await asyncio.to_thread(
            store_input_file, store, flow.namespace, flow.id, execution_id, input_id,
            item.filename or input_id, item.file,
        )  # fmt: skip

    out: dict[str, Any] = {}
    for input_id, given in form.items():
        if isinstance(given, list):
            out[input_id] = [await value(input_id, item) for item in given]
        else:
            out[input_id] = await value(input_id, given)
    return out
