"""kestream's internal storage: files by ``kestra://`` URI, on a local disk or S3."""

from kestream.storage.backend import Storage
from kestream.storage.current import get_storage, set_storage, storage_from_settings, using_storage
from kestream.storage.keys import (
    StorageUriError,
    TaskRunFiles,
    execution_prefix,
    input_key,
    is_uri,
    parse_uri,
    to_uri,
)

__all__ = [
    "Storage",
    "StorageUriError",
    "TaskRunFiles",
    "execution_prefix",
    "get_storage",
    "input_key",
    "is_uri",
    "parse_uri",
    "set_storage",
    "storage_from_settings",
    "to_uri",
    "using_storage",
]
