"""The files the embedded broker's mirror writes: records come back as written, and a frame
torn by a kill is cut off when the file is opened again."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestream.runtime import broker_log
from kestream.runtime.broker_log import PartitionLog, StoredRecord, encode, read_frames

RECORDS = [
    StoredRecord(0, 1_700_000_000_000, b"key", b"value", (("h", b"1"), ("empty", b""))),
    StoredRecord(1, 1_700_000_000_001, None, b"no key", ()),
    StoredRecord(2, 1_700_000_000_002, b"tombstone", None, ()),
    StoredRecord(3, 1_700_000_000_003, b"", b"\x00" * 70_000, (("\u00e9", b"\xff"),)),
]


def test_records_come_back_as_written(tmp_path: Path) -> None:
    part = PartitionLog(tmp_path / "t" / "0.log")
    part.append(RECORDS[:2])
    part.append(RECORDS[2:])
    part.sync()
    assert list(part.records()) == RECORDS
    assert part.next_offset == 4
    part.close()
    reopened = PartitionLog(tmp_path / "t" / "0.log")
    assert (reopened.next_offset, reopened.count) == (4, 4)
    assert list(reopened.records()) == RECORDS


def test_a_torn_tail_is_cut_and_writing_goes_on_after_it(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    whole = b"".join(encode(r) for r in RECORDS[:3])
    torn = encode(RECORDS[3])[:-10]
    path.write_bytes(whole + torn)
    part = PartitionLog(path)
    assert part.next_offset == 3
    assert path.stat().st_size == len(whole)
    part.append([RECORDS[3]])
    assert list(part.records()) == RECORDS


def test_a_corrupt_frame_ends_what_is_read(tmp_path: Path) -> None:
    frames = [encode(r) for r in RECORDS]
    damaged = bytearray(frames[1])
    damaged[-1] ^= 0xFF
    records, intact = read_frames(frames[0] + bytes(damaged) + frames[2])
    assert records == RECORDS[:1]
    assert intact == len(frames[0])


def test_only_a_file_written_since_its_last_sync_is_synced_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every offset snapshot syncs every partition's file: some 200 fsyncs each while idle."""
    synced: list[int] = []
    monkeypatch.setattr(broker_log.os, "fsync", synced.append)
    part = PartitionLog(tmp_path / "0.log")
    part.sync()  # what an earlier process wrote is synced once
    part.sync()
    assert len(synced) == 1
    part.append(RECORDS[:1])
    part.sync()
    part.sync()
    assert len(synced) == 2
    part.close()
    PartitionLog(tmp_path / "0.log").sync()  # opened again: once more
    assert len(synced) == 3
