"""Kestra's storage tasks: ``io.kestra.plugin.core.storage.{Write,Concat,Split,Size,Delete}``.

Each keeps Kestra's properties and outputs. Files are written under the task run's folder of the
internal storage and named by ``kestra://`` URIs; a task reads only the files its execution may
read (:mod:`kestream.tasks.files`). Reading and writing stream, so a file larger than the
worker's memory can be concatenated or split.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any, ClassVar

import orjson
from pydantic import Field

from kestream.models.state import StateType
from kestream.storage.backend import Storage, Writer
from kestream.storage.current import get_storage
from kestream.storage.keys import file_name, to_uri
from kestream.tasks.base import RunInfo, RunnableTask, TaskError, TaskOutcome
from kestream.tasks.files import new_file_name, readable_key, run_files

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class StorageTask(RunnableTask):
    """Runs its blocking storage calls in a thread of the worker, off the event loop."""

    is_async: ClassVar[bool] = True

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        outputs = await asyncio.to_thread(self.run_storage, props, run, get_storage())
        return TaskOutcome(StateType.SUCCESS, outputs)

    def run_storage(self, props: dict[str, Any], run: RunInfo, storage: Storage) -> dict[str, Any]:
        raise NotImplementedError


class Write(StorageTask):
    """Write ``content`` to a new file; ``uri`` names it."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.storage.Write"
    dynamic: ClassVar[tuple[str, ...]] = ("content", "extension")

    content: str
    extension: str = ".tmp"

    def run_storage(self, props: dict[str, Any], run: RunInfo, storage: Storage) -> dict[str, Any]:
        content = props.get("content")
        data = content if isinstance(content, str) else orjson.dumps(content).decode()
        key = run_files(run).key(new_file_name(str(props.get("extension") or "")))
        storage.put(key, data.encode("utf-8"))
        return {"uri": to_uri(key)}


class Concat(StorageTask):
    """Concatenate ``files`` (a list of URIs, or its JSON text) into one, ``separator`` between."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.storage.Concat"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.storages.Concat",)
    dynamic: ClassVar[tuple[str, ...]] = ("files", "separator", "extension")

    files: list[str] | str
    separator: str | None = None
    extension: str = ".tmp"

    def run_storage(self, props: dict[str, Any], run: RunInfo, storage: Storage) -> dict[str, Any]:
        uris = uri_list(props.get("files"), "files")
        keys = [readable_key(run, uri, "files") for uri in uris]
        separator = (props.get("separator") or "").encode("utf-8")
        target = run_files(run).key(new_file_name(str(props.get("extension") or "")))
        with storage.writer(target) as out:
            for index, key in enumerate(keys):
                for chunk in _chunks(storage, key, "files"):
                    out.write(chunk)
                if separator and index < len(keys) - 1:
                    out.write(separator)
        return {"uri": to_uri(target)}


class Size(StorageTask):
    """The size in bytes of the file ``uri``."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.storage.Size"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.storages.Size",)
    dynamic: ClassVar[tuple[str, ...]] = ("uri",)

    uri: str

    def run_storage(self, props: dict[str, Any], run: RunInfo, storage: Storage) -> dict[str, Any]:
        key = readable_key(run, props.get("uri"), "uri")
        try:
            return {"size": storage.size(key)}
        except FileNotFoundError:
            raise TaskError(f"uri: the file '{props.get('uri')}' does not exist") from None


class Delete(StorageTask):
    """Delete the file ``uri`` (of this execution); ``deleted`` says whether there was one."""

    type_name: ClassVar[str] = "io.kestra.plugin.core.storage.Delete"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.storages.Delete",)
    dynamic: ClassVar[tuple[str, ...]] = ("uri", "errorOnMissing")

    uri: str
    errorOnMissing: bool | str = False

    def run_storage(self, props: dict[str, Any], run: RunInfo, storage: Storage) -> dict[str, Any]:
        uri = props.get("uri")
        deleted = storage.delete(readable_key(run, uri, "uri"))
        if not deleted and props.get("errorOnMissing") in (True, "true"):
            raise TaskError(f"Unable to find file '{uri}'")
        return {"uri": uri, "deleted": deleted}


class Split(StorageTask):
    """Split the file ``from`` by ``rows``, ``bytes``, ``partitions`` or ``regexPattern``.

    Rows end at ``separator`` (a newline by default), which ends every row written. ``bytes``
    keeps whole rows (a row longer than the limit is a file of its own); ``partitions`` deals
    the rows round-robin, so the file is read once; ``regexPattern`` groups the rows by the
    pattern's first group, one file per value, in order of first appearance.
    """

    type_name: ClassVar[str] = "io.kestra.plugin.core.storage.Split"
    aliases: ClassVar[tuple[str, ...]] = ("io.kestra.core.tasks.storages.Split",)
    dynamic: ClassVar[tuple[str, ...]] = (
        "from_", "bytes", "partitions", "rows", "regexPattern", "separator",
    )  # fmt: skip

    from_: str = Field(alias="from")
    bytes: str | int | None = None
    partitions: int | str | None = None
    rows: int | str | None = None
    regexPattern: str | None = None
    separator: str = "\n"

    def run_storage(self, props: dict[str, Any], run: RunInfo, storage: Storage) -> dict[str, Any]:
        key = readable_key(run, props.get("from_"), "from")
        separator = str(props.get("separator") or "\n").encode("utf-8")
        chosen = [n for n in ("bytes", "partitions", "rows", "regexPattern") if props.get(n)]
        if len(chosen) != 1:
            raise TaskError("Split: give exactly one of bytes, partitions, rows, regexPattern")
        stem = PurePosixPath(file_name(key))
        folder = run_files(run)
        sink = _Sink(storage, lambda i: folder.key(new_file_name(stem.suffix, f"{stem.stem}-{i}")))
        rows = _rows(_chunks(storage, key, "from"), separator)
        try:
            if props.get("rows"):
                _by_rows(rows, _positive(props["rows"], "rows"), sink, separator)
            elif props.get("bytes"):
                _by_bytes(rows, _byte_size(props["bytes"]), sink, separator)
            elif props.get("partitions"):
                _by_partitions(rows, _positive(props["partitions"], "partitions"), sink, separator)
            else:
                _by_pattern(rows, str(props["regexPattern"]), sink, separator)
        finally:
            sink.close()
        return {"uris": [to_uri(k) for k in sink.keys]}


class _Sink:
    """Open output files by index, each a streamed writer; ``keys`` in order of creation."""

    def __init__(self, storage: Storage, key_of: Any) -> None:
        self._storage = storage
        self._key_of = key_of
        self._open: dict[int, tuple[Any, Writer]] = {}
        self.keys: list[str] = []

    def out(self, index: int) -> Writer:
        if index not in self._open:
            key = self._key_of(len(self.keys))
            self.keys.append(key)
            manager = self._storage.writer(key)
            self._open[index] = (manager, manager.__enter__())
        return self._open[index][1]

    def finish(self, index: int) -> None:
        manager, _ = self._open.pop(index)
        manager.__exit__(None, None, None)

    def close(self) -> None:
        for index in list(self._open):
            self.finish(index)


def _by_rows(rows: Iterator[bytes], size: int, sink: _Sink, sep: bytes) -> None:
    for count, row in enumerate(rows):
        if count and count % size == 0:
            sink.finish(count // size - 1)
        sink.out(count // size).write(row + sep)


def _by_bytes(rows: Iterator[bytes], limit: int, sink: _Sink, sep: bytes) -> None:
    index, used = 0, 0
    for row in rows:
        length = len(row) + len(sep)
        if used and used + length > limit:
            sink.finish(index)
            index, used = index + 1, 0
        sink.out(index).write(row + sep)
        used += length


def _by_partitions(rows: Iterator[bytes], partitions: int, sink: _Sink, sep: bytes) -> None:
    for count, row in enumerate(rows):
        sink.out(count % partitions).write(row + sep)


def _by_pattern(rows: Iterator[bytes], pattern: str, sink: _Sink, sep: bytes) -> None:
    try:
        compiled = re.compile(pattern.encode("utf-8"))
    except re.error as exc:
        raise TaskError(f"regexPattern: {exc}") from None
    groups: dict[bytes, int] = {}
    for row in rows:
        found = compiled.search(row)
        value = b"" if found is None else (found.group(1) if compiled.groups else found.group(0))
        index = groups.setdefault(value or b"", len(groups))
        sink.out(index).write(row + sep)


def _rows(chunks: Iterator[bytes], separator: bytes) -> Iterator[bytes]:
    """The rows of a stream of chunks, without their separator; no empty last row."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *rows, pending = pending.split(separator)
        yield from rows
    if pending:
        yield pending


def _chunks(storage: Storage, key: str, what: str) -> Iterator[bytes]:
    try:
        yield from storage.chunks(key)
    except FileNotFoundError:
        raise TaskError(f"{what}: the file 'kestra:///{key}' does not exist") from None


def uri_list(value: Any, what: str) -> list[str]:
    """A list of URIs given as a list or as its JSON text (a rendered expression); a single
    URI is a list of one. TaskError naming the property ``what`` otherwise."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise TaskError(f"{what}: invalid JSON list: {exc}") from None
        else:
            value = [text]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TaskError(f"{what}: expects a list of kestra:// URIs")
    return value


def _positive(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise TaskError(f"{what}: expects a number, got '{value}'") from None
    if number < 1:
        raise TaskError(f"{what}: expects a number above 0, got {number}")
    return number


def _byte_size(value: Any) -> int:
    """``10MB``, ``200KB``, ``512`` or a number: a size in bytes (Kestra's binary units)."""
    match = _SIZE.match(str(value))
    if match is None:
        raise TaskError(f"bytes: '{value}' is not a size such as 10MB or 200KB")
    number = int(match.group(1)) * _UNITS[match.group(2).upper().rstrip("B") or ""]
    if number < 1:
        raise TaskError("bytes: expects a size above 0")
    return number
