"""Namespace files through the API, at Kestra's routes: upload, list, stat, download, delete.

A namespace file lives in the internal storage under ``{namespace as folders}/_files/{path}``
(:func:`~kestream.storage.keys.namespace_files_prefix`), where templates read it
(``read('scripts/q.sql')``) and script tasks mount it (``namespaceFiles``). Paths are Kestra's,
absolute from the namespace's root (``/scripts/q.sql``); every one is checked segment by segment
(no ``..``, no empty segment, no backslash), so a path can never leave the namespace's folder.
Folders are implied by the files under them, as in an object store: an empty folder does not
exist.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from aiohttp import web

from kestream.api.handle import ApiHandle
from kestream.api.http import bad_request, json_response, not_found, read_form
from kestream.storage.backend import Storage, StoredFile
from kestream.storage.current import get_storage
from kestream.storage.keys import StorageUriError, check_relative, file_name, namespace_files_prefix

PREFIX = "/api/v1/{tenant}/namespaces/{namespace}/files"
#: The multipart field an upload's file comes in (Kestra's).
UPLOAD_FIELD = "fileContent"


class NamespaceFileRoutes:
    def __init__(self, api: ApiHandle, storage: Storage | None = None) -> None:
        self.api = api
        self._storage = storage

    @property
    def storage(self) -> Storage:
        return self._storage or get_storage()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "/directory", self.directory),
            web.get(PREFIX + "/stats", self.stats),
            web.get(PREFIX + "/search", self.search),
            web.get(PREFIX, self.download),
            web.post(PREFIX, self.upload),
            web.delete(PREFIX, self.delete),
        ]

    async def download(self, request: web.Request) -> web.Response:
        """The file's content."""
        key = self._key(request, required=True)
        try:
            data = await asyncio.to_thread(self.storage.get, key)
        except FileNotFoundError:
            raise not_found(f"File '{request.query['path']}'") from None
        return web.Response(body=data, content_type="application/octet-stream")

    async def upload(self, request: web.Request) -> web.Response:
        """Store the multipart field ``fileContent`` at ``path`` (replacing a file there)."""
        key = self._key(request, required=True)
        form = await read_form(request, self.api.settings.api_max_upload_bytes, files=True)
        upload = form.get(UPLOAD_FIELD)
        if not isinstance(upload, web.FileField):
            raise bad_request(f"Upload the file as the multipart field '{UPLOAD_FIELD}'")
        await asyncio.to_thread(self.storage.put, key, upload.file)
        return web.Response(status=200)

    async def stats(self, request: web.Request) -> web.Response:
        """A file's or a folder's attributes (``type`` File or Directory)."""
        key = self._key(request)
        root = self._root(request)
        try:
            found = await asyncio.to_thread(self.storage.stat, key)
            return json_response(_attributes(found, file_name(key)))
        except (FileNotFoundError, StorageUriError):
            pass
        inside = await asyncio.to_thread(self.storage.entries, key + "/" if key != root else root)
        if not inside and key != root:
            raise not_found(f"File '{request.query.get('path')}'")
        return json_response(_directory(file_name(key) if key != root else "", inside))

    async def directory(self, request: web.Request) -> web.Response:
        """The files and folders right under ``path`` (the root without it)."""
        key = self._key(request)
        root = self._root(request)
        folder = key + "/" if key != root else root
        inside = await asyncio.to_thread(self.storage.entries, folder)
        children: dict[str, list[StoredFile]] = {}
        for entry in inside:
            name = entry.key[len(folder) :].split("/", 1)[0]
            children.setdefault(name, []).append(entry)
        listed = []
        for name, entries in sorted(children.items()):
            single = entries[0]
            if len(entries) == 1 and single.key == folder + name:
                listed.append(_attributes(single, name))
            else:
                listed.append(_directory(name, entries))
        return json_response(listed)

    async def search(self, request: web.Request) -> web.Response:
        """Paths of the namespace's files whose path contains ``q``."""
        root = self._root(request)
        query = request.query.get("q", "")
        entries = await asyncio.to_thread(self.storage.entries, root)
        paths = ["/" + e.key[len(root) :] for e in entries]
        return json_response([path for path in paths if query in path])

    async def delete(self, request: web.Request) -> web.Response:
        """Delete the file, or the folder with everything in it, at ``path``."""
        key = self._key(request, required=True)
        removed = await asyncio.to_thread(self.storage.delete, key)
        if not removed:
            removed = await asyncio.to_thread(self.storage.delete_prefix, key + "/") > 0
        if not removed:
            raise not_found(f"File '{request.query['path']}'")
        return web.Response(status=204)

    def _root(self, request: web.Request) -> str:
        self.api.tenant(request.match_info["tenant"])  # 404 for another tenant; no index needed
        namespace = request.match_info["namespace"]
        try:
            return namespace_files_prefix(check_relative(namespace.replace(".", "/")))
        except StorageUriError:
            raise bad_request(f"Invalid namespace '{namespace}'") from None

    def _key(self, request: web.Request, *, required: bool = False) -> str:
        """The key of ``?path=`` (the root's folder, without it, unless ``required``)."""
        root = self._root(request)
        path = request.query.get("path", "").strip("/")
        if not path:
            if required:
                raise bad_request("Query parameter 'path' names a file: /folder/name")
            return root
        try:
            return root + check_relative(path)
        except StorageUriError:
            raise bad_request(f"Invalid path '{request.query['path']}'") from None


def _attributes(found: StoredFile, name: str) -> dict[str, Any]:
    return {
        "fileName": name,
        "type": "File",
        "size": found.size,
        "lastModifiedTime": _millis(found.last_modified),
    }


def _directory(name: str, inside: list[StoredFile]) -> dict[str, Any]:
    latest = max((entry.last_modified for entry in inside), default=None)
    return {
        "fileName": name,
        "type": "Directory",
        "size": 0,
        "lastModifiedTime": _millis(latest) if latest is not None else None,
    }


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
