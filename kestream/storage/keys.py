"""Where files live in the internal storage, and the ``kestra://`` URIs that name them.

Keys follow Kestra's layout, so a URI a flow prints reads the same as on Kestra::

    kestra:///{namespace as folders}/{flow}/executions/{execution}/tasks/{task}/{taskrun}/{file}
    kestra:///{namespace as folders}/{flow}/executions/{execution}/inputs/{input}/{file}

The namespace's dots become folders; flow and task ids are slugged as Kestra slugs them (lower
case, ``_`` as ``-``). A key is the URI's path without its leading slash.

Every URI a flow, a user or the API hands in goes through :func:`parse_uri`, which refuses
anything that is not a plain path (``..``, ``.``, empty or encoded segments, backslashes, NUL,
a host, a query), so a key can never name a place outside the folder it claims to be in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SCHEME = "kestra"
URI_PREFIX = "kestra:///"
_SEGMENT_REFUSED = re.compile(r"[\x00-\x1f\\]")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class StorageUriError(ValueError):
    """A text that is not a storage URI kestream accepts."""


def slug(value: str) -> str:
    """Kestra's slug of a flow or task id in a storage key: lower case, ``_`` as ``-``."""
    return value.lower().replace("_", "-")


def namespace_path(namespace: str) -> str:
    return namespace.replace(".", "/")


def execution_prefix(namespace: str, flow_id: str, execution_id: str) -> str:
    """The folder holding every file of one execution (ends with ``/``)."""
    return f"{namespace_path(namespace)}/{slug(flow_id)}/executions/{execution_id}/"


def namespace_files_prefix(namespace: str) -> str:
    """The folder of a namespace's own files (Kestra's ``_files``)."""
    return f"{namespace_path(namespace)}/_files/"


@dataclass(frozen=True, slots=True)
class TaskRunFiles:
    """The storage folder of one task run; a task names its files with :meth:`key`."""

    namespace: str
    flow_id: str
    execution_id: str
    task_id: str
    task_run_id: str

    @property
    def prefix(self) -> str:
        return (
            f"{execution_prefix(self.namespace, self.flow_id, self.execution_id)}"
            f"tasks/{slug(self.task_id)}/{self.task_run_id}/"
        )

    def key(self, name: str) -> str:
        """The key of ``name`` (a relative path, checked) in this task run's folder."""
        return self.prefix + check_relative(name)


def input_key(namespace: str, flow_id: str, execution_id: str, input_id: str, name: str) -> str:
    """Where a FILE input's upload is kept (Kestra's ``.../executions/{id}/inputs/...``)."""
    folder = execution_prefix(namespace, flow_id, execution_id)
    return f"{folder}inputs/{check_relative(input_id)}/{check_relative(name)}"


def check_relative(path: str) -> str:
    """``path`` when it is a plain relative path: no ``..``/``.``/empty segment, no backslash,
    no control character; :class:`StorageUriError` otherwise."""
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or _SEGMENT_REFUSED.search(segment):
            raise StorageUriError(f"'{path}' is not a plain relative path")
    return path


def to_uri(key: str) -> str:
    return URI_PREFIX + key


def is_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(f"{SCHEME}://")


def parse_uri(uri: str) -> str:
    """The key a ``kestra:///...`` URI names; :class:`StorageUriError` for anything else.

    Percent-escapes are decoded once before the segments are checked, so ``%2e%2e`` is the
    ``..`` it stands for and is refused like it.
    """
    if not isinstance(uri, str) or not uri.startswith(f"{SCHEME}://"):
        raise StorageUriError(f"'{uri}' is not a {SCHEME}:// storage URI")
    parts = urlsplit(uri)
    if parts.netloc or parts.query or parts.fragment or "?" in uri or "#" in uri:
        raise StorageUriError(f"'{uri}' is not a {SCHEME}:/// storage URI (no host, no query)")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise StorageUriError(f"'{uri}' has no path")
    try:
        return check_relative(path[1:])
    except StorageUriError:
        raise StorageUriError(f"'{uri}' is not a plain storage path") from None


def file_name(key: str) -> str:
    """The last segment of a key (the file's own name)."""
    return key.rsplit("/", 1)[-1]


def safe_file_name(name: str, fallback: str = "file") -> str:
    """``name`` (a client's file name, a server's) as one safe key segment: its last path
    segment, characters other than letters, digits, ``.``, ``_``, ``-`` as ``_``."""
    last = name.replace("\\", "/").rsplit("/", 1)[-1]
    safe = _UNSAFE_NAME.sub("_", last).strip("._")
    return safe or fallback
