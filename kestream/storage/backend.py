"""The internal storage: one small interface over an object store, local or S3-compatible.

Both backends are obstore stores (``LocalStore`` for a
directory, ``S3Store`` for S3 and the servers that speak its protocol), so the code above them is
one: puts stream from files or readers (multipart on S3 for large ones), reads stream in chunks,
listing and deleting go by key prefix. obstore is a thin binding of the Rust ``object_store``
crate: synchronous and asynchronous calls, no dependency on botocore or on an aiohttp version of
its own (faust and the API already pin aiohttp).

Callers on an event loop run these calls in a thread (``asyncio.to_thread``). The exceptions,
bounded and documented in docs/storage.md: the executor's template functions and its reads of
stored values while it renders (capped by size), and the outputs of tasks it runs inline.

A missing file is :class:`FileNotFoundError` on every call that reads one.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, Protocol

from kestream.storage.durable import durable_file, durable_write
from kestream.storage.keys import check_relative

if TYPE_CHECKING:
    from obstore.store import ClientConfig


def _obstore() -> ModuleType:
    """obstore, imported when a store is first made or used: its Rust library takes 4 MB in
    every process that imports it, and a role that never touches a file never needs it."""
    import obstore

    return obstore


#: Chunk size of streamed reads and copies.
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredFile:
    key: str
    size: int
    last_modified: datetime


class Writer(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class Storage:
    """Files by key (``ns/flow/executions/...``; see :mod:`kestream.storage.keys`)."""

    def __init__(
        self, store: Any, description: str, local_root: Path | None = None, *, fsync: bool = True
    ) -> None:
        self._store = store
        self.description = description
        #: The directory of a local store: emptied folders are removed with their files.
        self.local_root = local_root
        #: Whether a local store's writes are ``fsync``-ed (:mod:`kestream.storage.durable`).
        self.fsync = fsync

    @classmethod
    def local(cls, directory: Path, *, fsync: bool = True) -> Storage:
        """A local directory; ``fsync``: each write made durable (off: atomic, not durable)."""
        directory.mkdir(parents=True, exist_ok=True)
        root = directory.resolve()
        from obstore.store import LocalStore

        return cls(LocalStore(root, mkdir=True), f"local directory {root}", root, fsync=fsync)

    @classmethod
    def s3(
        cls,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> Storage:
        """An S3 bucket (or a folder of it). With ``endpoint`` (MinIO, a test server), requests
        use path-style addressing, and plain HTTP is allowed when the endpoint says ``http://``."""
        config: dict[str, Any] = {}
        if region:
            config["region"] = region
        if access_key_id:
            config["access_key_id"] = access_key_id
        if secret_access_key:
            config["secret_access_key"] = secret_access_key
        options: ClientConfig = {}
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
            options["allow_http"] = endpoint.startswith("http://")
        from obstore.store import S3Store

        store = S3Store(bucket, prefix=prefix.strip("/") or None, client_options=options, **config)
        where = f"s3://{bucket}/{prefix.strip('/')}" + (f" at {endpoint}" if endpoint else "")
        return cls(store, where)

    # -- writing -------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | Path | IO[bytes]) -> int:
        """Store ``data`` (bytes, a file path, or a binary reader, streamed) under ``key``;
        returns the stored size. On a local directory the write is durable (fsync, rename:
        :mod:`kestream.storage.durable`)."""
        check_relative(key)
        if self.local_root is not None:
            return durable_write(self.local_root / key, data, fsync=self.fsync)
        if isinstance(data, Path):
            with data.open("rb") as source:
                _obstore().put(self._store, key, source)
        else:
            _obstore().put(self._store, key, data)
        return self.size(key)

    @contextmanager
    def writer(self, key: str) -> Iterator[Writer]:
        """A stream to write ``key`` piece by piece (buffered, multipart on S3); the file
        appears when the block ends without an error (durably on a local directory)."""
        check_relative(key)
        if self.local_root is not None:
            with durable_file(self.local_root / key, fsync=self.fsync) as out:
                yield out
            return
        with _obstore().open_writer(self._store, key) as stream:
            yield stream

    def copy(self, source: str, target: str) -> None:
        """Copy the file ``source`` to ``target`` without holding it in memory: S3 copies it
        server side, a local directory streams it in chunks (durably). A missing ``source`` is
        :class:`FileNotFoundError` and leaves no ``target``."""
        check_relative(source)
        check_relative(target)
        if self.local_root is None:
            _obstore().copy(self._store, source, target)
            return
        chunks = self.chunks(source)
        first = next(chunks, b"")  # a missing source fails here, before the target exists
        with durable_file(self.local_root / target, fsync=self.fsync) as out:
            out.write(first)
            for chunk in chunks:
                out.write(chunk)

    # -- reading -------------------------------------------------------------------------------

    def chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The file's bytes in chunks, never whole in memory."""
        result = _obstore().get(self._store, check_relative(key))
        for chunk in result.stream(min_chunk_size=chunk_bytes):
            yield bytes(chunk)

    def get(self, key: str) -> bytes:
        return bytes(_obstore().get(self._store, check_relative(key)).bytes())

    def head(self, key: str, length: int) -> bytes:
        """The first ``length`` bytes (fewer for a shorter file): previews."""
        size = self.size(key)
        if size == 0:
            return b""
        return bytes(_obstore().get_range(self._store, key, start=0, end=min(length, size)))

    def download(self, key: str, target: Path) -> int:
        """Copy the file to ``target`` (a local path), streamed; returns its size."""
        written = 0
        with target.open("wb") as out:
            for chunk in self.chunks(key):
                out.write(chunk)
                written += len(chunk)
        return written

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(_obstore().head(self._store, check_relative(key))["size"])

    def entries(self, prefix: str) -> list[StoredFile]:
        """Every file under the folder ``prefix``, with its size and date, sorted by key."""
        folder = prefix.rstrip("/")
        found = [
            StoredFile(str(meta["path"]), int(meta["size"]), meta["last_modified"])
            for batch in _obstore().list(self._store, prefix=folder or None)
            for meta in batch
        ]
        return sorted(found, key=lambda entry: entry.key)

    def stat(self, key: str) -> StoredFile:
        """The file's size and date (:class:`FileNotFoundError` when missing)."""
        meta = _obstore().head(self._store, check_relative(key))
        return StoredFile(key, int(meta["size"]), meta["last_modified"])

    def list(self, prefix: str) -> list[str]:
        """Every key under the folder ``prefix`` (``a/b/`` or ``a/b``), sorted."""
        return [entry.key for entry in self.entries(prefix)]

    # -- deleting ------------------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        """Remove one file; False when there was none."""
        if not self.exists(key):
            return False
        _obstore().delete(self._store, key)
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Remove every file under the folder ``prefix``; returns how many."""
        folder = check_relative(prefix.rstrip("/"))
        keys = self.list(folder)
        if keys:
            _obstore().delete(self._store, keys)
        if self.local_root is not None:
            shutil.rmtree(self.local_root / folder, ignore_errors=True)
        return len(keys)
