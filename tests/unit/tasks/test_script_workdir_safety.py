"""Script files never cross their directory: no symlink is followed, no name escapes.

A script (in a container too) may leave symlinks in its working or output directory. Collecting
``outputFiles`` must not copy the file a link points to (a host secret), and ``inputFiles`` must
not write through a linked folder or file to somewhere outside the working directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestream.settings import get_settings
from kestream.storage import Storage, TaskRunFiles, parse_uri, set_storage, using_storage
from kestream.tasks.base import TaskError
from kestream.tasks.scripts.workdir import (
    AttemptDirs,
    attempt_dirs,
    collect_output_files,
    write_input_files,
)
from kestream.testing import Driver

FILES = TaskRunFiles("ns", "flow", "E1", "task", "R1")


def _no_uris(uri: str) -> str:
    raise AssertionError(f"no storage URI expected here, got {uri}")


@pytest.fixture()
def dirs(tmp_path: Path) -> AttemptDirs:
    work, output = tmp_path / "work", tmp_path / "output"
    work.mkdir()
    output.mkdir()
    return AttemptDirs(work, output)


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    """A file outside the attempt's directories, as a host file would be."""
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text("hunter2")
    return path


@pytest.mark.parametrize("name", ["/etc/x", "a/../../x", "..", ""])
def test_input_names_must_be_relative_without_parent_steps(
    dirs: AttemptDirs, tmp_path: Path, name: str
) -> None:
    with pytest.raises(TaskError, match="give a relative path inside the working directory"):
        write_input_files({name: "x"}, dirs, _no_uris)


def test_an_input_is_not_written_through_a_symlinked_folder(
    dirs: AttemptDirs, secret: Path, tmp_path: Path
) -> None:
    (dirs.work / "sub").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(TaskError, match="'sub' is a symlink"):
        write_input_files({"sub/planted.txt": "x"}, dirs, _no_uris)
    assert sorted(path.name for path in secret.parent.iterdir()) == ["secret.txt"]


def test_an_input_is_not_written_through_a_symlinked_file(
    dirs: AttemptDirs, secret: Path, tmp_path: Path
) -> None:
    (dirs.work / "in.txt").symlink_to(secret)
    with pytest.raises(TaskError, match=re.escape("inputFiles 'in.txt': cannot write it")):
        write_input_files({"in.txt": "overwritten"}, dirs, _no_uris)
    assert secret.read_text() == "hunter2"


def test_inputs_in_new_and_existing_folders_are_written(dirs: AttemptDirs, tmp_path: Path) -> None:
    (dirs.work / "old").mkdir()
    (dirs.work / "old" / "a.txt").write_text("previous, longer contents")
    write_input_files({"old/a.txt": "new", "x/y/b.txt": "b"}, dirs, _no_uris)
    assert (dirs.work / "old" / "a.txt").read_text() == "new"
    assert (dirs.work / "x" / "y" / "b.txt").read_text() == "b"


def test_output_symlinks_are_never_followed(
    dirs: AttemptDirs, secret: Path, tmp_path: Path
) -> None:
    (dirs.output / "plain.txt").write_text("mine")
    (dirs.output / "link.txt").symlink_to(secret)
    (dirs.output / "linked-dir").symlink_to(secret.parent, target_is_directory=True)
    (dirs.work / "w-link.txt").symlink_to(secret)
    (dirs.work / "w-dir").symlink_to(secret.parent, target_is_directory=True)
    (dirs.work / "w.txt").write_text("work")
    keep = tmp_path / "kept"
    with using_storage(Storage.local(keep)) as storage:
        kept = collect_output_files(["*.txt", "w-dir/*", "**/*.txt"], dirs, FILES)
        assert sorted(kept) == ["plain.txt", "w.txt"]
        assert storage.get(parse_uri(kept["plain.txt"])) == b"mine"
    assert "hunter2" not in {path.read_text() for path in keep.rglob("*") if path.is_file()}


@pytest.mark.parametrize("pattern", ["../*", "/etc/*", "**/../*"])
def test_output_globs_that_leave_the_working_directory_are_refused(
    dirs: AttemptDirs, tmp_path: Path, pattern: str
) -> None:
    with pytest.raises(TaskError, match=re.escape(f"outputFiles '{pattern}'")):
        collect_output_files([pattern], dirs, FILES)


async def test_attempt_dirs_are_removed_afterwards_even_with_many_files() -> None:
    async with attempt_dirs() as made:
        for index in range(200):
            (made.work / f"f{index}").write_text("x")
        root = made.work.parent
    assert not root.exists()


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KESTREAM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    set_storage(None)  # the storage is built again from these settings
    yield tmp_path / "data"
    get_settings.cache_clear()
    set_storage(None)


def test_a_script_linking_a_host_file_into_its_output_exports_nothing_of_it(
    data_dir: Path, secret: Path
) -> None:
    flow = f"""id: t
namespace: test.scripts
tasks:
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    outputFiles: ["*"]
    commands:
      - ln -s {secret} "$OUTPUT_DIR/stolen.txt"
      - ln -s {secret} stolen-too.txt
      - echo ok > "$OUTPUT_DIR/ok.txt"
"""
    with Driver() as driver:
        deployed = driver.deploy(flow)
        execution = driver.start(deployed.namespace, deployed.id)
    (run,) = execution.taskRunList
    assert run.outputs is not None and run.outputs["outputFiles"].keys() == {"ok.txt"}
    copies = [path.read_text() for path in data_dir.rglob("*") if path.is_file()]
    assert copies == ["ok\n"]
