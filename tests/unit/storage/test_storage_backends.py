"""The storage interface, the same on a local directory and on a real S3-compatible server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kestream.settings import Settings
from kestream.storage import Storage, StorageUriError, storage_from_settings


def test_put_get_size_exists(storage: Storage) -> None:
    assert storage.put("ns/f/a.txt", b"hello") == 5
    assert storage.get("ns/f/a.txt") == b"hello"
    assert storage.size("ns/f/a.txt") == 5
    assert storage.exists("ns/f/a.txt")
    assert not storage.exists("ns/f/b.txt")


def test_missing_file_is_file_not_found(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.get("ns/missing")
    with pytest.raises(FileNotFoundError):
        storage.size("ns/missing")
    assert storage.delete("ns/missing") is False


def test_streams_a_file_larger_than_a_chunk(storage: Storage, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB: multipart on S3, several chunks when read
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    assert storage.put("ns/big.bin", source) == len(data)
    chunks = list(storage.chunks("ns/big.bin", chunk_bytes=1 << 20))
    assert len(chunks) > 1
    assert b"".join(chunks) == data
    copy = tmp_path / "copy.bin"
    assert storage.download("ns/big.bin", copy) == len(data)
    assert copy.read_bytes() == data
    assert storage.head("ns/big.bin", 10) == data[:10]


def test_writer_streams_pieces(storage: Storage) -> None:
    with storage.writer("ns/w.txt") as out:
        for i in range(3):
            out.write(f"line {i}\n".encode())
    assert storage.get("ns/w.txt") == b"line 0\nline 1\nline 2\n"
    storage.put("ns/r.txt", io.BytesIO(b"from a reader"))
    assert storage.get("ns/r.txt") == b"from a reader"


def test_list_and_delete_by_prefix(storage: Storage) -> None:
    for key in ("a/e1/x.txt", "a/e1/sub/y.txt", "a/e10/z.txt", "b/e1/x.txt"):
        storage.put(key, b"1")
    assert storage.list("a/e1/") == ["a/e1/sub/y.txt", "a/e1/x.txt"]  # not a/e10
    assert storage.delete_prefix("a/e1") == 2
    assert storage.list("a") == ["a/e10/z.txt"]
    assert storage.delete("a/e10/z.txt") is True
    assert storage.list("a") == []
    assert storage.get("b/e1/x.txt") == b"1"


def test_head_of_an_empty_file(storage: Storage) -> None:
    storage.put("ns/empty", b"")
    assert storage.size("ns/empty") == 0
    assert storage.head("ns/empty", 100) == b""


@pytest.mark.parametrize("key", ["../x", "a/../../x", "a//b", "./a", "a\\..\\b", "a/\x00"])
def test_keys_that_leave_their_folder_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(StorageUriError):
        storage.put(key, b"x")
    with pytest.raises(StorageUriError):
        storage.get(key)


def test_local_delete_prefix_removes_the_folders(tmp_path: Path) -> None:
    storage = Storage.local(tmp_path)
    storage.put("ns/flow/executions/e1/tasks/t/r/a.txt", b"x")
    storage.delete_prefix("ns/flow/executions/e1/")
    assert not (tmp_path / "ns/flow/executions/e1").exists()
    assert (tmp_path / "ns/flow/executions").is_dir()


def test_settings_choose_the_backend(tmp_path: Path) -> None:
    default = storage_from_settings(Settings(data_dir=str(tmp_path)))
    assert default.local_root == (tmp_path / "storage").resolve()
    assert (
        storage_from_settings(Settings(storage_url=f"file://{tmp_path}/x")).local_root
        == (tmp_path / "x").resolve()
    )
    s3 = storage_from_settings(
        Settings(storage_url="s3://bucket/pre/fix", storage_s3_endpoint="http://127.0.0.1:9")
    )
    assert s3.local_root is None
    assert s3.description == "s3://bucket/pre/fix at http://127.0.0.1:9"


def test_s3_files_land_under_the_prefix(s3_endpoint: object) -> None:
    from tests.s3_server import S3Endpoint

    assert isinstance(s3_endpoint, S3Endpoint)
    bucket = s3_endpoint.create_bucket()
    s3_endpoint.storage(bucket, "team/a").put("ns/x.txt", b"1")
    whole = s3_endpoint.storage(bucket)
    assert whole.list("team") == ["team/a/ns/x.txt"]
