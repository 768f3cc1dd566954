"""The directories of one script attempt: its working directory, its output directory, its files.

Each attempt gets a fresh directory under the system temp dir, removed when the attempt ends; it
holds ``work`` (the process's current directory, ``{{ workingDir }}``, ``WORKING_DIR``) and
``output`` (``{{ outputDir }}``, ``OUTPUT_DIR``). Inside a ``WorkingDirectory`` the working
directory is the one the group shares (:mod:`kestream.worker.workdirs`) instead.

The executor renders a script's properties before the job reaches a worker, when the directory
does not exist yet: ``{{ workingDir }}`` and ``{{ outputDir }}`` render to the placeholders
:data:`WORKING_DIR_MARK` and :data:`OUTPUT_DIR_MARK`, which :func:`fill` replaces here.

**Files through the internal storage.** The files an attempt exports (``outputFiles`` globs, and
everything written to the output directory) are stored under the task run's folder of the
internal storage, and the ``outputFiles`` output maps each relative name to its ``kestra://``
URI, as in Kestra. An ``inputFiles`` value that is such a URI (of the execution, or a namespace
file) is downloaded into the working directory; any other value is the file's contents.

**Symlinks.** A script (in a container, too) can leave symlinks in its directories; the worker
never follows one. Collecting outputs skips a symlink, and any file whose real path is not inside
the directory it was found in, so a link to a host file is never copied out. An ``inputFiles``
name must be relative without ``..``, and is refused when a folder on its way, or the file
itself, is a symlink, so nothing is written outside the working directory.

Creating and removing directories and copying files may take long (many files, a large kept
file): the async callers run them in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from kestream.storage.current import get_storage
from kestream.storage.keys import (
    StorageUriError,
    TaskRunFiles,
    file_name,
    is_uri,
    namespace_files_prefix,
    to_uri,
)
from kestream.tasks.base import TaskError

WORKING_DIR_MARK = "@@kestream.workingDir@@"
OUTPUT_DIR_MARK = "@@kestream.outputDir@@"
#: Render variables that only the worker can know: what the executor renders in their place.
WORKER_VARS = {"workingDir": WORKING_DIR_MARK, "outputDir": OUTPUT_DIR_MARK}
#: A storage URI inside a command (Kestra's pattern for the URIs its script tasks download).
_URI_IN_TEXT = re.compile(r"kestra://[-a-zA-Z0-9%._+~#=/]*")


@dataclass(frozen=True, slots=True)
class AttemptDirs:
    work: Path
    output: Path


@asynccontextmanager
async def attempt_dirs(shared: Path | None = None) -> AsyncIterator[AttemptDirs]:
    """A fresh working and output directory, removed (with everything in them) afterwards.

    ``shared``: the working directory of an enclosing ``WorkingDirectory``
    (:attr:`~kestream.tasks.base.RunInfo.working_dir`), used as is and left in place for the
    next sibling; the output directory is still the attempt's own.
    """
    root = Path(tempfile.mkdtemp(prefix="kestream-script-"))
    try:
        dirs = AttemptDirs(shared if shared is not None else root / "work", root / "output")
        dirs.work.mkdir(exist_ok=shared is not None)
        dirs.output.mkdir()
        yield dirs
    finally:
        await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)


def fill(value: Any, dirs: AttemptDirs) -> Any:
    """``value`` with the directory placeholders replaced by the attempt's real paths."""
    if isinstance(value, str):
        return value.replace(WORKING_DIR_MARK, str(dirs.work)).replace(
            OUTPUT_DIR_MARK, str(dirs.output)
        )
    if isinstance(value, dict):
        return {fill(k, dirs): fill(v, dirs) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(item, dirs) for item in value]
    return value


def inside(base: Path, name: str, what: str) -> Path:
    """``base / name`` for a relative ``name`` that stays inside ``base``."""
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise TaskError(f"{what} '{name}': give a relative path inside the working directory")
    return base.joinpath(*relative.parts)


def write_input_files(
    files: Mapping[str, Any], dirs: AttemptDirs, readable: Callable[[str], str]
) -> None:
    """Write each ``name: contents`` into the working directory.

    A value that is a ``kestra://`` URI is the stored file it names, streamed from the storage;
    ``readable`` turns it into its key, or raises :class:`TaskError` when the execution may not
    read it.
    """
    storage = get_storage()
    for name, value in files.items():
        text = "" if value is None else str(value)
        key = readable(text.strip()) if is_uri(text.strip()) else None
        with _open_input(dirs.work, str(name)) as target:
            if key is None:
                target.write(text.encode("utf-8"))
                continue
            try:
                for chunk in storage.chunks(key):
                    target.write(chunk)
            except FileNotFoundError:
                raise TaskError(f"inputFiles '{name}': the file '{text}' does not exist") from None


#: The ``namespaceFiles`` options kestream applies; any other one fails the task run.
NAMESPACE_FILES_OPTIONS = frozenset({"enabled", "include", "exclude"})


def mount_namespace_files(spec: Mapping[str, Any], dirs: AttemptDirs, namespace: str) -> int:
    """Copy the namespace's files (``include``/``exclude`` globs over their paths, ``**`` and
    ``*`` crossing folders) into the working directory, at their paths; returns how many."""
    unknown = sorted(set(spec) - NAMESPACE_FILES_OPTIONS)
    if unknown:
        raise TaskError(
            f"namespaceFiles: {', '.join(unknown)} not supported (only include/exclude)"
        )
    include = _globs(spec.get("include"), ["**"])
    exclude = _globs(spec.get("exclude"), [])
    storage = get_storage()
    root = namespace_files_prefix(namespace)
    copied = 0
    for key in storage.list(root):
        path = key[len(root) :]
        wanted = any(_glob_match(path, g) for g in include)
        if not wanted or any(_glob_match(path, g) for g in exclude):
            continue
        with _open_input(dirs.work, path) as target:
            for chunk in storage.chunks(key):
                target.write(chunk)
        copied += 1
    return copied


def _globs(value: Any, default: list[str]) -> list[str]:
    if value is None:
        return default
    items = value if isinstance(value, list) else [value]
    return [str(item).lstrip("/") for item in items]


def _glob_match(path: str, pattern: str) -> bool:
    """``**/`` also matches no folder at all (``**/*.py`` takes ``main.py``)."""
    return fnmatch.fnmatchcase(path, pattern) or (
        pattern.startswith("**/") and fnmatch.fnmatchcase(path, pattern[3:])
    )


def localize_uris(value: Any, dirs: AttemptDirs, readable: Callable[[str], str]) -> Any:
    """``value`` (a command, a script, lists of them) with each ``kestra://`` URI in its text
    replaced by the path of a local copy, as Kestra's script tasks do: ``cat {{ outputs.t.uri }}``
    reads the stored file. Copies go beside the working directory (``dirs.output``'s parent,
    the attempt's own), so ``outputFiles`` globs never pick them up."""
    copies: dict[str, str] = {}
    storage = get_storage()

    def local(match: re.Match[str]) -> str:
        uri = match.group(0)
        if uri not in copies:
            key = readable(uri)
            target = dirs.output.parent / "inputs" / str(len(copies)) / file_name(key)
            target.parent.mkdir(parents=True)
            try:
                storage.download(key, target)
            except FileNotFoundError:
                raise TaskError(f"the file '{uri}' does not exist") from None
            copies[uri] = str(target)
        return copies[uri]

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return _URI_IN_TEXT.sub(local, item)
        if isinstance(item, list):
            return [walk(part) for part in item]
        return item

    return walk(value)


def _open_input(base: Path, name: str) -> BinaryIO:
    """Create (or truncate) the file ``name`` under ``base`` for writing, never through a symlink.

    Each folder on the way is created when missing and refused when it is a symlink; the file is
    opened with ``O_NOFOLLOW``, so a symlink planted in its place is refused too.
    """
    target = inside(base, name, "inputFiles")
    folder = base
    for part in target.relative_to(base).parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise TaskError(f"inputFiles '{name}': '{part}' is a symlink; refusing to write there")
        folder.mkdir(exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        handle = os.open(target, flags, 0o644)
    except OSError as exc:  # ELOOP: the file itself is a symlink
        raise TaskError(f"inputFiles '{name}': cannot write it ({exc.strerror})") from exc
    return os.fdopen(handle, "wb")


def collect_output_files(
    globs: list[str], dirs: AttemptDirs, files: TaskRunFiles
) -> dict[str, str]:
    """Store the files matching ``globs`` (relative to the working directory) and every file of
    the output directory under the task run's folder; map each relative name to its URI."""
    found: dict[str, Path] = {}
    work = dirs.work.resolve()
    output = dirs.output.resolve()
    for pattern in globs:
        inside(dirs.work, pattern, "outputFiles")  # the same rule as input names
        for path in sorted(dirs.work.glob(pattern)):
            if _plain_file_in(path, work):
                found.setdefault(path.relative_to(dirs.work).as_posix(), path)
    for path in sorted(dirs.output.rglob("*")):
        if _plain_file_in(path, output):
            found.setdefault(path.relative_to(dirs.output).as_posix(), path)
    storage = get_storage()
    stored: dict[str, str] = {}
    for name, path in found.items():
        try:  # O_NOFOLLOW: a file swapped for a symlink since it was looked at is not read
            handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise TaskError(f"outputFiles '{name}': cannot read it ({exc.strerror})") from exc
        try:
            key = files.key(name)
        except StorageUriError as exc:
            raise TaskError(f"outputFiles '{name}': {exc}") from None
        with os.fdopen(handle, "rb") as source:
            storage.put(key, source)
        stored[name] = to_uri(key)
    return stored


def _plain_file_in(path: Path, base: Path) -> bool:
    """``path`` is a regular file, not a symlink, whose real path is inside ``base`` (resolved)."""
    return not path.is_symlink() and path.is_file() and path.resolve().is_relative_to(base)
