"""Append-only files of one topic partition's records, as :mod:`.broker_store` keeps them.

One frame per record: ``crc32 | body length | offset | timestamp`` (big-endian ``>IIqq``),
then the body: key and value (``i32`` length, ``-1`` for none, then the bytes) and the headers
(``u16`` count, then per header a ``u16``-long name and an ``i32``-long value). The CRC covers
offset, timestamp and body, so a frame torn by a kill in the middle of a write is found when
the file is opened and cut off there: what precedes it is intact, and the mirror writes the
lost records again from the broker.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("kestream.broker_store")

_HEAD = struct.Struct(">IIqq")
_CRC_FROM = 4  # the CRC covers everything after itself
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class StoredRecord:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def encode(record: StoredRecord) -> bytes:
    parts = [_blob(record.key), _blob(record.value), _U16.pack(len(record.headers))]
    for name, value in record.headers:
        raw = name.encode()
        parts += [_U16.pack(len(raw)), raw, _blob(value)]
    body = b"".join(parts)
    head = _HEAD.pack(0, len(body), record.offset, record.timestamp)
    crc = zlib.crc32(body, zlib.crc32(head[_CRC_FROM:]))
    return _HEAD.pack(crc, len(body), record.offset, record.timestamp) + body


def _blob(data: bytes | None) -> bytes:
    return _I32.pack(-1) if data is None else _I32.pack(len(data)) + data


def _decode_body(offset: int, timestamp: int, body: bytes) -> StoredRecord:
    pos = 0

    def blob() -> bytes | None:
        nonlocal pos
        (size,) = _I32.unpack_from(body, pos)
        pos += 4
        if size < 0:
            return None
        pos += size
        return body[pos - size : pos]

    key, value = blob(), blob()
    (count,) = _U16.unpack_from(body, pos)
    pos += 2
    headers = []
    for _ in range(count):
        (size,) = _U16.unpack_from(body, pos)
        name = body[pos + 2 : pos + 2 + size].decode()
        pos += 2 + size
        headers.append((name, blob() or b""))
    return StoredRecord(offset, timestamp, key, value, tuple(headers))


def read_frames(data: bytes) -> tuple[list[StoredRecord], int]:
    """The intact records at the start of ``data``, and the length they take."""
    records: list[StoredRecord] = []
    pos = 0
    for record, end in _frames(io.BytesIO(data)):
        records.append(record)
        pos = end
    return records, pos


def _frames(source: BinaryIO) -> Iterator[tuple[StoredRecord, int]]:
    """Each intact record of ``source`` from its position, and where it ends; a file is read a
    frame at a time, so a partition's history never has to fit in memory."""
    pos = source.tell()
    while True:
        head = source.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return
        crc, size, offset, timestamp = _HEAD.unpack(head)
        body = source.read(size)
        if len(body) < size or zlib.crc32(body, zlib.crc32(head[_CRC_FROM:])) != crc:
            return
        pos += _HEAD.size + size
        yield _decode_body(offset, timestamp, body), pos


class PartitionLog:
    """One partition's file: opened (a torn tail cut off), appended to, read back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.next_offset = self.count = intact = 0
        if path.exists():
            with path.open("rb") as existing:
                for record, end in _frames(existing):
                    self.next_offset, intact = record.offset + 1, end
                    self.count += 1
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 - open as long as the store
        #: Whether the disk may not hold all of the file yet: records appended (or its torn tail
        #: cut) since the last :meth:`sync`, and at first, what an earlier process wrote.
        self._unsynced = True
        if self._file.tell() != intact:
            log.warning(
                "%s: cut a torn tail of %d bytes (a write interrupted by a kill)",
                path,
                self._file.tell() - intact,
            )
            self._file.truncate(intact)

    def append(self, records: Sequence[StoredRecord]) -> None:
        """Write ``records`` (the OS has them once this returns: a process kill loses none)."""
        self._file.write(b"".join(encode(r) for r in records))
        self._file.flush()
        self.next_offset = records[-1].offset + 1
        self.count += len(records)
        self._unsynced = True

    def sync(self) -> None:
        """To the disk, not only to the OS (what a power loss would keep). A file with nothing
        written since its last sync is left alone: the mirror syncs every partition's file at
        each offset snapshot, and an idle standalone's snapshots were some 200 fsyncs each."""
        if not self._unsynced:
            return
        os.fsync(self._file.fileno())
        self._unsynced = False

    def records(self) -> Iterator[StoredRecord]:
        """The records written so far, read from the file one by one."""
        with self.path.open("rb") as source:
            for record, _ in _frames(source):
                yield record

    def close(self) -> None:
        self._file.close()
