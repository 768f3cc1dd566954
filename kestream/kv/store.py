"""What a KV store does, and which store the code running now uses.

A store answers reads *as of now*: a value whose write was acknowledged before the read began is
seen (the broker store waits, bounded, until its table has read the topic up to the end it
asks the broker for; :mod:`kestream.runtime.kv_table`). That is what makes a value written by
one execution visible to the next one, wherever the two run.

Nothing here blocks: tasks and the API await the ``a``-prefixed coroutines, each answering as
of the moment it began. ``kv()`` renders inside synchronous code (the executor's step, the
worker's last-moment render of ``secret()`` texts), so it reads the store as it stands
(:meth:`KVStore.peek`) after the caller awaited one :meth:`KVStore.async_sync` begun before the
render: one sync per executor batch, or per task attempt, however many ``kv()`` calls follow,
and no event loop ever waits on the broker. :func:`calls_kv` tells whether a text needs it.

The store in use: ``kestream.testing`` sets one per driver around everything it runs
(:func:`use_store`, a context variable); a role installs its broker store for the whole process
at start (:func:`install_store`). Without either, :func:`current_store` raises
:class:`KVUnavailable` naming what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Protocol

from kestream.kv.values import KVEntry

__all__ = [
    "KV_STORE",
    "KVStore",
    "KVUnavailable",
    "calls_kv",
    "current_store",
    "install_store",
    "sync_current_store",
    "use_store",
]


class KVUnavailable(RuntimeError):
    """No KV store in this process, or the store could not answer in time."""


class KVStore(Protocol):
    """A namespace-scoped key -> typed value store (module docs). Expired entries are absent."""

    def peek(self, namespace: str, key: str) -> KVEntry | None:
        """The entry as the store holds it now, without waiting: as of the last
        :meth:`async_sync` (raises :class:`KVUnavailable` when that one failed)."""
        ...

    async def async_sync(self) -> None:
        """Return once later :meth:`peek` calls see every write acknowledged before this call."""
        ...

    async def aget(self, namespace: str, key: str) -> KVEntry | None: ...

    async def alist(self, namespace: str) -> list[KVEntry]:
        """Live entries of one namespace, by key."""
        ...

    async def aall(self) -> list[KVEntry]:
        """Every entry, expired ones included (what PurgeKV looks through)."""
        ...

    async def aput(self, entry: KVEntry) -> None:
        """Write ``entry``; returns once every later read of this store sees it."""
        ...

    async def adelete(self, namespace: str, key: str) -> None:
        """Remove a key (nothing happens for a missing one); returns once reads see it."""
        ...

    async def adelete_many(self, keys: Sequence[tuple[str, str]]) -> None:
        """Remove ``(namespace, key)`` pairs, all sent before one wait for reads to see them
        (``PurgeKV``: thousands of expired keys cost one sync, not one each)."""
        ...


_KV_CALL = re.compile(r"\bkv\s*\(")


def calls_kv(text: str) -> bool:
    """Whether ``text`` (a flow's source, a template) may call ``kv()``: a cheap scan."""
    return _KV_CALL.search(text) is not None


#: The store of this context (``kestream.testing`` sets it); unset: the process's store.
KV_STORE: ContextVar[KVStore | None] = ContextVar("kestream_kv_store", default=None)
_PROCESS: list[KVStore] = []


def install_store(store: KVStore | None) -> None:
    """Make ``store`` the process's KV store (a role at start); ``None`` removes it."""
    _PROCESS.clear()
    if store is not None:
        _PROCESS.append(store)


@contextmanager
def use_store(store: KVStore) -> Iterator[None]:
    """Use ``store`` in this context (``kestream.testing``: one store per driver)."""
    token = KV_STORE.set(store)
    try:
        yield
    finally:
        KV_STORE.reset(token)


def current_store() -> KVStore:
    store = KV_STORE.get()
    if store is None and _PROCESS:
        store = _PROCESS[0]
    if store is None:
        raise KVUnavailable(
            "no KV store in this process: the KV store is served by the executor, worker and "
            "API roles on a broker, and by kestream.testing"
        )
    return store


async def sync_current_store() -> None:
    """Await one sync of the store in use, so that ``kv()`` then reads it without waiting. A
    store that is missing or does not answer is left for ``kv()`` to report, naming why."""
    with suppress(KVUnavailable):
        await current_store().async_sync()
