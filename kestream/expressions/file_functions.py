"""Kestra's file functions: ``read``, ``fileURI``, ``fileSize``, ``fileExists``, ``isFileEmpty``.

They ask the :class:`~kestream.storage.access.ExecutionFiles` the caller put in the render
context's ``@files`` (the executor puts the rendering execution's), which decides what the
template may reach: its execution's files, its trigger's, and its namespace's files. Without one
(a render outside an execution) they fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kestream.storage.access import ExecutionFiles, FileAccessError

from .budget import current_budget
from .errors import RenderError
from .limits import MAX_TEXT
from .registry import template_function


def _files(ctx: Mapping[str, Any]) -> ExecutionFiles:
    files = ctx.get("@files")
    if not isinstance(files, ExecutionFiles):
        raise RenderError("stored files cannot be read here (no execution)")
    return files


@template_function("read", uses_ctx=True)
def read(ctx: Mapping[str, Any], path: Any) -> str:
    """The file's text (UTF-8): a ``kestra://`` URI of the execution, or a namespace file."""
    try:
        data = _files(ctx).read_bytes(path, MAX_TEXT)
    except FileAccessError as exc:
        raise RenderError(str(exc)) from None
    current_budget().spend(1 + (len(data) >> 10))
    return data.decode("utf-8", errors="replace")


@template_function("fileURI", uses_ctx=True)
def file_uri(ctx: Mapping[str, Any], path: Any) -> str:
    """The ``kestra://`` URI of the namespace file ``path``."""
    try:
        return _files(ctx).namespace_uri(path)
    except FileAccessError as exc:
        raise RenderError(str(exc)) from None


@template_function("fileSize", uses_ctx=True)
def file_size(ctx: Mapping[str, Any], path: Any) -> int:
    try:
        return _files(ctx).size(path)
    except FileAccessError as exc:
        raise RenderError(str(exc)) from None


@template_function("fileExists", uses_ctx=True)
def file_exists(ctx: Mapping[str, Any], path: Any) -> bool:
    try:
        return _files(ctx).exists(path)
    except FileAccessError as exc:
        raise RenderError(str(exc)) from None


@template_function("isFileEmpty", uses_ctx=True)
def is_file_empty(ctx: Mapping[str, Any], path: Any) -> bool:
    return file_size(ctx, path) == 0
