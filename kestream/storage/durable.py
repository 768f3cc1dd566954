"""Durable writes to a local store: a file a reference points at is whole, or absent.

obstore's ``LocalStore`` stages a put in a file of its own and renames it into place, but
never calls ``fsync``: after a power loss or a kernel crash the renamed file may be empty or
hold part of its bytes, while the record that names it (a ``kestra://`` reference, a FILE
input, a snapshot) was already acknowledged by the broker. Puts to a local directory go
through :func:`durable_write` instead:

1. the bytes go to a temporary file beside the target (``name#<random digits>``: the form of
   object_store's own staging files, which its listing skips, so a half-written one is never
   listed);
2. that file is flushed and ``fsync``-ed;
3. it is renamed over the target (atomic on POSIX);
4. the directory is ``fsync``-ed, and so is the parent of every directory the write created,
   so the new names survive too.

A crash before 3 leaves a stray temporary file and no target; after 4 the target is whole.
The cost per put is measured in docs/storage.md (one ``fsync`` of the file and one or more of
directories). ``fsync=False`` (``KESTREAM_STORAGE_LOCAL_FSYNC=false``) skips steps 2 and 4: the
rename stays atomic for the processes reading the directory, but a power loss may lose a file
whose reference was acknowledged.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

#: Chunk size of copies from a reader or a file into the temporary file.
COPY_BYTES = 1 << 20


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; the directories whose entries changed
    (the parent of each one created), deepest first."""
    missing: list[Path] = []
    node = directory
    while not node.exists():
        missing.append(node)
        node = node.parent
    directory.mkdir(parents=True, exist_ok=True)
    return [path.parent for path in missing]


@contextmanager
def durable_file(target: Path, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file to write ``target`` through: it replaces ``target`` when the block ends
    without an error, durably unless ``fsync`` is off (module doc); on an error the temporary
    file is removed."""
    changed = _make_parents(target.parent)
    temporary = target.with_name(f"{target.name}#{secrets.randbelow(10**12)}")
    try:
        with temporary.open("wb") as out:
            yield out
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if fsync:
        for directory in [target.parent, *changed]:
            fsync_directory(directory)


def durable_write(target: Path, data: bytes | Path | IO[bytes], *, fsync: bool = True) -> int:
    """Write ``data`` (bytes, a file's path, a binary reader) to ``target`` durably (unless
    ``fsync`` is off); its size."""
    written = 0
    with durable_file(target, fsync=fsync) as out:
        if isinstance(data, bytes | bytearray | memoryview):
            written = out.write(data)
        elif isinstance(data, Path):
            with data.open("rb") as source:
                written = _copy(source, out)
        else:
            written = _copy(data, out)
    return written


def _copy(source: IO[bytes], out: IO[bytes]) -> int:
    written = 0
    while chunk := source.read(COPY_BYTES):
        written += out.write(chunk)
    return written
