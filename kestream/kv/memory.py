"""The KV store of one process (``kestream.testing``): a dict, read and written at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from kestream.kv.values import KVEntry
from kestream.models.clock import utc_now

__all__ = ["MemoryKVStore"]


class MemoryKVStore:
    """:class:`~kestream.kv.store.KVStore` in memory; ``clock`` decides what has expired."""

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self.clock = clock
        self._entries: dict[tuple[str, str], KVEntry] = {}

    def peek(self, namespace: str, key: str) -> KVEntry | None:
        entry = self._entries.get((namespace, key))
        return None if entry is None or entry.expired(self.clock()) else entry

    async def async_sync(self) -> None:
        """Nothing to wait for: every write is in the dict when it returns."""

    async def aget(self, namespace: str, key: str) -> KVEntry | None:
        return self.peek(namespace, key)

    async def alist(self, namespace: str) -> list[KVEntry]:
        now = self.clock()
        return [
            entry
            for (ns, _), entry in sorted(self._entries.items())
            if ns == namespace and not entry.expired(now)
        ]

    async def aall(self) -> list[KVEntry]:
        return [entry for _, entry in sorted(self._entries.items())]

    async def aput(self, entry: KVEntry) -> None:
        self._entries[(entry.namespace, entry.key)] = entry

    async def adelete(self, namespace: str, key: str) -> None:
        self._entries.pop((namespace, key), None)

    async def adelete_many(self, keys: Sequence[tuple[str, str]]) -> None:
        for namespace, key in keys:
            self._entries.pop((namespace, key), None)
