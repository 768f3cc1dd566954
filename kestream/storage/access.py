"""Which stored files an execution may read: its own, its parent's, and its namespace's.

As Kestra does, a template of an execution reaches only files under that execution's folder,
under the folder of the execution that triggered it (a subflow's parent, a Flow trigger's
source), and the namespace's own files (``_files``, what a path without scheme names). Anything
else is refused before the storage is asked, so a template cannot probe which other files exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kestream.storage.backend import Storage
from kestream.storage.current import get_storage
from kestream.storage.keys import (
    StorageUriError,
    check_relative,
    execution_prefix,
    is_uri,
    namespace_files_prefix,
    parse_uri,
    to_uri,
)


class FileAccessError(ValueError):
    """A path the execution may not read, or a file that is not there (the message says which)."""


@dataclass(frozen=True, slots=True)
class ExecutionFiles:
    """The files one execution may reach (see the module doc)."""

    namespace: str
    flow_id: str
    execution_id: str
    #: ``(namespace, flow id, execution id)`` of the execution that started this one.
    trigger: tuple[str, str, str] | None = None

    @classmethod
    def of(
        cls, namespace: str, flow_id: str, execution_id: str, trigger_vars: Any = None
    ) -> ExecutionFiles:
        """``trigger_vars``: the execution's ``trigger`` variables; when they name an
        execution (subflow, Flow trigger), that one's files are readable too."""
        source = None
        if isinstance(trigger_vars, Mapping):
            ids = (trigger_vars.get("namespace"), trigger_vars.get("flowId"))
            execution = trigger_vars.get("executionId")
            if all(isinstance(v, str) for v in (*ids, execution)):
                source = (str(ids[0]), str(ids[1]), str(execution))
        return cls(namespace, flow_id, execution_id, source)

    @property
    def prefixes(self) -> tuple[str, ...]:
        own = execution_prefix(self.namespace, self.flow_id, self.execution_id)
        if self.trigger is None:
            return (own,)
        return (own, execution_prefix(*self.trigger))

    def key(self, path: Any) -> str:
        """The key ``path`` names: a ``kestra://`` URI inside one of this execution's folders,
        or a namespace file's relative path. :class:`FileAccessError` otherwise."""
        if not isinstance(path, str) or not path:
            raise FileAccessError("expects a file path or a kestra:// URI")
        try:
            if not is_uri(path):  # a namespace file: ``scripts/q.sql`` or ``/scripts/q.sql``
                return namespace_files_prefix(self.namespace) + check_relative(path.lstrip("/"))
            key = parse_uri(path)
        except StorageUriError as exc:
            raise FileAccessError(str(exc)) from None
        if key.startswith(namespace_files_prefix(self.namespace)) or key.startswith(self.prefixes):
            return key
        raise FileAccessError(
            f"Unable to read the file '{path}' as it didn't belong to the current execution"
        )

    def namespace_uri(self, path: Any) -> str:
        """``fileURI``: the URI of the namespace file ``path``."""
        return to_uri(self.key(path))

    def read_bytes(self, path: Any, limit: int, storage: Storage | None = None) -> bytes:
        """The whole file, refused past ``limit`` bytes (a template holds it in memory)."""
        store = storage or get_storage()
        key = self.key(path)
        size = self._size(store, key, path)
        if size > limit:
            raise FileAccessError(
                f"The file '{path}' is {size} bytes, more than the {limit} a template may read"
            )
        return store.get(key)

    def size(self, path: Any, storage: Storage | None = None) -> int:
        store = storage or get_storage()
        return self._size(store, self.key(path), path)

    def exists(self, path: Any, storage: Storage | None = None) -> bool:
        return (storage or get_storage()).exists(self.key(path))

    @staticmethod
    def _size(store: Storage, key: str, path: Any) -> int:
        try:
            return store.size(key)
        except FileNotFoundError:
            raise FileAccessError(f"The file '{path}' does not exist") from None
