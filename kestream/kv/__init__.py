"""The KV store: namespace-scoped keys holding typed values, with an optional expiry.

:mod:`.values` says what an entry is (Kestra's types and their parsing), :mod:`.store` what a
store can do and which one the running code uses, :mod:`.memory` the in-process store of
``kestream.testing``. The broker-backed store, a compacted topic read as a global table, lives in
:mod:`kestream.runtime.kv_table`.
"""

from kestream.kv.store import KVStore, KVUnavailable, current_store, install_store, use_store
from kestream.kv.values import KVEntry, KVType, KVValueError, infer_value, typed_value

__all__ = [
    "KVEntry",
    "KVStore",
    "KVType",
    "KVUnavailable",
    "KVValueError",
    "current_store",
    "infer_value",
    "install_store",
    "typed_value",
    "use_store",
]
