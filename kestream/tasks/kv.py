"""The KV tasks: ``io.kestra.plugin.core.kv.Set``, ``Get``, ``GetKeys``, ``Delete``, ``PurgeKV``.

Properties and outputs are Kestra's. ``namespace`` defaults to the flow's (rendered by the
executor like the other dynamic properties). The tasks run on the worker's event loop
(``is_async``) against the process's KV store (:func:`kestream.kv.current_store`): on a broker
the KV topic's table, in ``kestream.testing`` the driver's store. A write returns once every
later read of the store sees it, so the next task, or the next execution, reads it back.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field, field_validator

from kestream.kv.store import KVStore, KVUnavailable, current_store
from kestream.kv.values import (
    KVEntry,
    KVType,
    KVValueError,
    check_key,
    check_namespace,
    infer_value,
    typed_value,
)
from kestream.models.clock import utc_now
from kestream.models.durations import DurationError, parse_duration
from kestream.models.state import StateType
from kestream.tasks.base import LogLevel, RunInfo, RunnableTask, TaskError, TaskOutcome
from kestream.tasks.purge import namespace_matches

__all__ = ["Delete", "Get", "GetKeys", "PurgeKV", "Set"]

_FLOW_NAMESPACE = "{{ flow.namespace }}"
_TEMPLATE = re.compile(r"\{\{|\{%")


def _store() -> KVStore:
    try:
        return current_store()
    except KVUnavailable as exc:
        raise TaskError(str(exc)) from None


def _text(props: dict[str, Any], name: str) -> str:
    value = props.get(name)
    if not isinstance(value, str) or not value:
        raise TaskError(f"'{name}' must render to a non-empty string, got {value!r}")
    return value


def _namespace(props: dict[str, Any]) -> str:
    try:
        return check_namespace(_text(props, "namespace"))
    except KVValueError as exc:
        raise TaskError(str(exc)) from None


def _key(props: dict[str, Any]) -> str:
    try:
        return check_key(_text(props, "key"))
    except KVValueError as exc:
        raise TaskError(str(exc)) from None


def _flag(props: dict[str, Any], name: str, default: bool) -> bool:
    value = props.get(name, default)
    if isinstance(value, str):
        value = value.strip().lower() == "true"
    return bool(value)


class _KVTask(RunnableTask):
    is_async: ClassVar[bool] = True

    namespace: str = _FLOW_NAMESPACE


class Set(_KVTask):
    """Create or replace an entry (``overwrite: false`` refuses an existing key)."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.kv.Set"
    dynamic: ClassVar[tuple[str, ...]] = (
        "namespace",
        "key",
        "value",
        "overwrite",
        "ttl",
        "kvType",
        "kvDescription",
    )

    key: str
    value: Any
    overwrite: bool | str = True
    ttl: str | None = None
    kvType: str | None = None
    kvDescription: str | None = None

    @field_validator("kvType")
    @classmethod
    def _kv_type(cls, value: str | None) -> str | None:
        """A literal type must be one of Kestra's; an expression is checked once rendered."""
        if value is not None and not _TEMPLATE.search(value) and value not in KVType.__members__:
            names = ", ".join(KVType.__members__)
            raise ValueError(f"'kvType' should be one of {names}, got '{value}'")
        return value

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        namespace, key = _namespace(props), _key(props)
        raw = props.get("value")
        named = props.get("kvType")
        if named not in (None, "") and named not in KVType.__members__:
            raise TaskError(f"'kvType' rendered to '{named}', which is not a KV type")
        kv_type = KVType(named) if named else None
        try:
            kv_type, value = (
                (kv_type, typed_value(kv_type, raw)) if kv_type is not None else infer_value(raw)
            )
        except KVValueError as exc:
            raise TaskError(f"Value of key '{key}' is not a {kv_type}: {exc}") from None
        now = utc_now()
        expires = _expiry(props.get("ttl"), now)
        store = _store()
        existing = await store.aget(namespace, key)
        if existing is not None and not _flag(props, "overwrite", True):
            raise TaskError("Key already exists and `overwrite` is set to `false`")
        description = props.get("kvDescription")
        await store.aput(
            KVEntry(
                namespace=namespace,
                key=key,
                type=kv_type,
                value=value,
                description=str(description) if description is not None else None,
                creationDate=existing.creationDate if existing is not None else now,
                updateDate=now,
                expirationDate=expires,
            )
        )
        return TaskOutcome(StateType.SUCCESS, {})


def _expiry(ttl: Any, now: datetime) -> datetime | None:
    if ttl in (None, ""):
        return None
    try:
        return now + parse_duration(str(ttl))
    except DurationError as exc:
        raise TaskError(f"Invalid 'ttl': {exc}") from None


class Get(_KVTask):
    """Read an entry into the ``value`` output: ``null`` when missing, unless ``errorOnMissing``."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.kv.Get"
    dynamic: ClassVar[tuple[str, ...]] = ("namespace", "key", "errorOnMissing")

    key: str
    errorOnMissing: bool | str = False

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        namespace, key = _namespace(props), _key(props)
        entry = await _store().aget(namespace, key)
        if entry is None and _flag(props, "errorOnMissing", False):
            raise TaskError(f"The key '{key}' does not exist in the namespace '{namespace}'.")
        return TaskOutcome(StateType.SUCCESS, {"value": None if entry is None else entry.value})


class GetKeys(_KVTask):
    """The namespace's live keys, optionally those starting with ``prefix``: output ``keys``."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.kv.GetKeys"
    dynamic: ClassVar[tuple[str, ...]] = ("namespace", "prefix")

    prefix: str | None = None

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        namespace = _namespace(props)
        prefix = props.get("prefix") or ""
        entries = await _store().alist(namespace)
        keys = [entry.key for entry in entries if entry.key.startswith(str(prefix))]
        return TaskOutcome(StateType.SUCCESS, {"keys": keys})


class Delete(_KVTask):
    """Remove an entry: output ``deleted`` says whether there was one."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.kv.Delete"
    dynamic: ClassVar[tuple[str, ...]] = ("namespace", "key", "errorOnMissing")

    key: str
    errorOnMissing: bool | str = False

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        namespace, key = _namespace(props), _key(props)
        store = _store()
        found = await store.aget(namespace, key) is not None
        if not found and _flag(props, "errorOnMissing", False):
            raise TaskError(f"The key '{key}' does not exist in the namespace '{namespace}'.")
        if found:
            await store.adelete(namespace, key)
        return TaskOutcome(StateType.SUCCESS, {"deleted": found})


class PurgeKV(RunnableTask):
    """Delete keys across namespaces: expired ones only by default (Kestra's ``PurgeKV``).

    ``namespaces`` (with their children unless ``includeChildNamespaces`` is false) or
    ``namespacePattern`` (a glob) choose the namespaces, every one when neither is given;
    ``keyPattern`` (a glob) the keys. ``expiredOnly`` (deprecated in Kestra, still honoured) or
    ``behavior: {type: key, expiredOnly: ...}`` say whether live keys go too. Output ``size``:
    how many keys were deleted.
    """

    type_name: ClassVar[str] = "io.kestra.plugin.core.kv.PurgeKV"
    dynamic: ClassVar[tuple[str, ...]] = ("namespaces", "namespacePattern", "keyPattern")
    is_async: ClassVar[bool] = True

    namespaces: list[str] | None = None
    namespacePattern: str | None = None
    includeChildNamespaces: bool = True
    keyPattern: str | None = None
    expiredOnly: bool | None = None
    behavior: dict[str, Any] = Field(default_factory=lambda: {"type": "key", "expiredOnly": True})

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        namespaces = props.get("namespaces")
        pattern = props.get("namespacePattern")
        if namespaces and pattern:
            raise TaskError("Use either 'namespaces' or 'namespacePattern', not both")
        expired_only = (
            self.expiredOnly
            if self.expiredOnly is not None
            else bool(self.behavior.get("expiredOnly", True))
        )
        key_pattern = props.get("keyPattern")
        store = _store()
        now = utc_now()
        doomed = [
            (entry.namespace, entry.key)
            for entry in await store.aall()
            if not (expired_only and not entry.expired(now))
            and self._namespace_matches(entry.namespace, namespaces, pattern)
            and not (key_pattern and not fnmatch.fnmatchcase(entry.key, str(key_pattern)))
        ]
        await store.adelete_many(doomed)  # one sync for all of them
        run.log(LogLevel.INFO, f"Purged {len(doomed)} KV entries")
        return TaskOutcome(StateType.SUCCESS, {"size": len(doomed)})

    def _namespace_matches(self, namespace: str, namespaces: Any, pattern: Any) -> bool:
        if pattern:
            return fnmatch.fnmatchcase(namespace, str(pattern))
        if not namespaces:
            return True
        exact = not self.includeChildNamespaces
        return any(namespace_matches(namespace, str(wanted), exact=exact) for wanted in namespaces)
