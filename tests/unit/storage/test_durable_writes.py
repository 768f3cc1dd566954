"""Local puts are durable: fsync of the file and of the directories, rename into place, and no
torn or half-written object left behind by a failure."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from kestream.storage import Storage, durable


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsync-ed, in order (a file by its name, a directory by its path)."""
    calls: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", record)
    return calls


def test_put_fsyncs_the_file_then_its_directory_and_new_parents(
    tmp_path: Path, synced: list[str]
) -> None:
    store = Storage.local(tmp_path / "s")
    root = tmp_path.resolve() / "s"
    assert store.put("ns/flow/executions/e1/f.txt", b"hello") == 5
    # the temporary file (renamed since), then the target's folder and each folder created
    assert synced[0].startswith(str(root / "ns/flow/executions/e1/f.txt#"))
    assert synced[1:] == [
        str(root / "ns/flow/executions/e1"),
        str(root / "ns/flow/executions"),
        str(root / "ns/flow"),
        str(root / "ns"),
        str(root),
    ]
    assert store.get("ns/flow/executions/e1/f.txt") == b"hello"
    synced.clear()
    store.put("ns/flow/executions/e1/g.txt", io.BytesIO(b"again"))
    assert synced[1:] == [str(root / "ns/flow/executions/e1")]  # no folder was created


def test_a_failed_write_leaves_neither_the_target_nor_a_temporary(tmp_path: Path) -> None:
    store = Storage.local(tmp_path / "s")
    store.put("a/f.bin", b"old")

    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.reads = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise OSError("the source went away")
            return b"x" * 1000

    with pytest.raises(OSError, match="went away"):
        store.put("a/f.bin", Broken())  # type: ignore[arg-type]
    assert store.get("a/f.bin") == b"old"  # the previous object, whole
    assert sorted(p.name for p in (tmp_path / "s" / "a").iterdir()) == ["f.bin"]


def test_the_writer_is_durable_and_a_failed_block_writes_nothing(
    tmp_path: Path, synced: list[str]
) -> None:
    store = Storage.local(tmp_path / "s")
    with store.writer("w/out.ion") as out:
        out.write(b"1\n")
        out.write(b"2\n")
    assert store.get("w/out.ion") == b"1\n2\n"
    assert synced and synced[0].endswith("out.ion#" + synced[0].rsplit("#", 1)[1])
    with pytest.raises(RuntimeError), store.writer("w/never.ion") as out:
        out.write(b"part")
        raise RuntimeError("the task failed half-way")
    assert store.list("w") == ["w/out.ion"]
    assert sorted(p.name for p in (tmp_path / "s" / "w").iterdir()) == ["out.ion"]


def test_a_temporary_file_is_never_listed(tmp_path: Path) -> None:
    """What a crash between write and rename leaves is invisible to listings (and to purges'
    counts), and a put of the same key afterwards works."""
    store = Storage.local(tmp_path / "s")
    store.put("a/f.bin", b"1")
    (tmp_path / "s" / "a" / "f.bin#123456789012").write_bytes(b"torn")
    assert store.list("a") == ["a/f.bin"]
    store.put("a/f.bin", b"2")
    assert store.get("a/f.bin") == b"2"


def test_every_source_kind_is_copied_whole(tmp_path: Path) -> None:
    store = Storage.local(tmp_path / "s")
    big = os.urandom(durable.COPY_BYTES * 2 + 17)
    source = tmp_path / "src.bin"
    source.write_bytes(big)
    inputs: list[Any] = [big, source, io.BytesIO(big)]
    for index, data in enumerate(inputs):
        assert store.put(f"k/{index}", data) == len(big)
        assert store.get(f"k/{index}") == big


def test_with_fsync_off_writes_stay_whole_and_nothing_is_synced(
    tmp_path: Path, synced: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KESTREAM_STORAGE_LOCAL_FSYNC=false: puts, writers and copies rename whole files into
    place and call no fsync (the default storage from the settings included)."""
    from kestream.settings import Settings
    from kestream.storage.current import storage_from_settings

    monkeypatch.setenv("KESTREAM_STORAGE_LOCAL_FSYNC", "false")
    store = storage_from_settings(Settings(storage_url=str(tmp_path / "s")))
    assert store.fsync is False
    store.put("ns/f/executions/e1/a.txt", b"hello")
    with store.writer("ns/f/executions/e1/b.txt") as out:
        out.write(b"world")
    store.copy("ns/f/executions/e1/a.txt", "ns/f/executions/e2/a.txt")
    assert synced == []
    assert store.get("ns/f/executions/e2/a.txt") == b"hello"
    assert sorted(store.list("ns/")) == [
        "ns/f/executions/e1/a.txt",
        "ns/f/executions/e1/b.txt",
        "ns/f/executions/e2/a.txt",
    ]
    monkeypatch.delenv("KESTREAM_STORAGE_LOCAL_FSYNC")
    assert storage_from_settings(Settings(storage_url=str(tmp_path / "s"))).fsync is True
