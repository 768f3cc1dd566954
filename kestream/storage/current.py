"""The storage a process uses: built once from the settings, replaceable for a test or a driver.

``KESTREAM_STORAGE_URL`` unset: a local directory, ``<KESTREAM_DATA_DIR>/storage``;
``file:///path`` or a plain path: that directory; ``s3://bucket/prefix``: an S3 bucket (with
``KESTREAM_STORAGE_S3_*`` for the endpoint, region and credentials). Every role of a deployment
must name the same storage: a file one worker writes is read by the executor (``read()``),
another worker and the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from kestream.settings import Settings, get_settings
from kestream.storage.backend import Storage
from kestream.storage.keys import execution_prefix

_current: Storage | None = None


def storage_from_settings(settings: Settings) -> Storage:
    """The storage ``settings`` describe (see the module doc)."""
    url = settings.storage_url
    fsync = settings.storage_local_fsync
    if not url:
        return Storage.local(settings.data_path / "storage", fsync=fsync)
    parts = urlsplit(url)
    if parts.scheme == "s3":
        secret = settings.storage_s3_secret_access_key
        return Storage.s3(
            parts.netloc,
            parts.path,
            endpoint=settings.storage_s3_endpoint,
            region=settings.storage_s3_region,
            access_key_id=settings.storage_s3_access_key_id,
            secret_access_key=None if secret is None else secret.get_secret_value(),
        )
    if parts.scheme == "file":
        return Storage.local(Path(parts.path), fsync=fsync)
    return Storage.local(Path(url).expanduser(), fsync=fsync)


def remove_execution_files(
    namespace: str, flow_id: str, execution_id: str, storage: Storage | None = None
) -> int:
    """Delete every stored file of one execution (a deletion, a purge); returns how many."""
    return (storage or get_storage()).delete_prefix(
        execution_prefix(namespace, flow_id, execution_id)
    )


def get_storage() -> Storage:
    """The process's storage (built from the settings at first use)."""
    global _current
    if _current is None:
        _current = storage_from_settings(get_settings())
    return _current


def set_storage(storage: Storage | None) -> None:
    """Replace the process's storage (None: build it from the settings again at next use)."""
    global _current
    _current = storage


@contextmanager
def using_storage(storage: Storage) -> Iterator[Storage]:
    """Use ``storage`` for the block, then the previous one again."""
    global _current
    previous = _current
    _current = storage
    try:
        yield storage
    finally:
        _current = previous
