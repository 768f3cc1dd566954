"""KV routes (Kestra 1.x paths and shapes), on the process's KV store.

- ``GET .../namespaces/{namespace}/kv``: the namespace's live keys, Kestra's list of
  ``{key, description, creationDate, updateDate, expirationDate}``;
- ``GET .../namespaces/{namespace}/kv/{key}``: ``{"type": ..., "value": ...}`` (404 when missing
  or expired);
- ``PUT .../namespaces/{namespace}/kv/{key}``: the body is the value, typed as Kestra types it
  (:func:`~kestream.kv.values.parse_text`); an optional ``ttl`` header (ISO-8601 duration) sets
  its expiry. Answered once the value is readable everywhere (read-your-writes,
  :mod:`kestream.runtime.kv_table`);
- ``DELETE .../namespaces/{namespace}/kv/{key}``: ``true`` if the key existed, else ``false``.

The store is the process's (:func:`~kestream.kv.current_store`): the API role installs the KV
table before its routes serve.
"""

from __future__ import annotations

from aiohttp import web

from kestream.api.handle import ApiHandle
from kestream.api.http import ApiError, bad_request, json_response, not_found, read_text
from kestream.kv.store import KVStore, KVUnavailable, current_store
from kestream.kv.values import KVEntry, KVValueError, check_key, check_namespace, parse_text
from kestream.models.clock import utc_now
from kestream.models.durations import DurationError, parse_duration

PREFIX = "/api/v1/{tenant}/namespaces/{namespace}/kv"


def _store() -> KVStore:
    try:
        return current_store()
    except KVUnavailable as exc:
        raise ApiError(503, f"The KV store is not available: {exc}") from None


class KVRoutes:
    def __init__(self, api: ApiHandle) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX, self.list),
            web.get(PREFIX + "/{key}", self.get),
            web.put(PREFIX + "/{key}", self.put),
            web.delete(PREFIX + "/{key}", self.delete),
        ]

    def _where(self, request: web.Request) -> tuple[str, str]:
        self.api.tenant(request.match_info["tenant"])
        namespace = request.match_info["namespace"]
        key = request.match_info.get("key", "")
        try:
            check_namespace(namespace)
            if key:
                check_key(key)
        except KVValueError as exc:
            raise bad_request(str(exc)) from None
        return namespace, key

    async def list(self, request: web.Request) -> web.Response:
        """The namespace's keys, without their values."""
        namespace, _ = self._where(request)
        try:
            entries = await _store().alist(namespace)
        except KVUnavailable as exc:
            raise ApiError(503, str(exc)) from None
        return json_response([entry.listing() for entry in entries])

    async def get(self, request: web.Request) -> web.Response:
        """A key's typed value."""
        namespace, key = self._where(request)
        try:
            entry = await _store().aget(namespace, key)
        except KVUnavailable as exc:
            raise ApiError(503, str(exc)) from None
        if entry is None:
            raise not_found(f"No value found for key '{key}' in namespace '{namespace}'")
        return json_response({"type": entry.type.value, "value": entry.value})

    async def put(self, request: web.Request) -> web.Response:
        """Set a key: the body is the value; header ``ttl`` an ISO-8601 duration."""
        namespace, key = self._where(request)
        text = await read_text(request, self.api.max_body)
        kv_type, value = parse_text(text)
        now = utc_now()
        ttl = request.headers.get("ttl")
        try:
            expires = now + parse_duration(ttl) if ttl else None
        except DurationError as exc:
            raise bad_request(f"Invalid ttl header: {exc}") from None
        store = _store()
        try:
            existing = await store.aget(namespace, key)
            await store.aput(
                KVEntry(
                    namespace=namespace,
                    key=key,
                    type=kv_type,
                    value=value,
                    description=existing.description if existing is not None else None,
                    creationDate=existing.creationDate if existing is not None else now,
                    updateDate=now,
                    expirationDate=expires,
                )
            )
        except KVUnavailable as exc:
            raise ApiError(503, str(exc)) from None
        return web.Response(status=200)

    async def delete(self, request: web.Request) -> web.Response:
        """Delete a key: ``true`` if it existed."""
        namespace, key = self._where(request)
        store = _store()
        try:
            found = await store.aget(namespace, key) is not None
            if found:
                await store.adelete(namespace, key)
        except KVUnavailable as exc:
            raise ApiError(503, str(exc)) from None
        return json_response(found)
