"""WorkingDirectory end to end through the driver: children share one directory, on real processes.

Each test gets its own ``KESTREAM_DATA_DIR`` (where exported files are kept) and this interpreter
first on PATH, as the script-task tests do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kestream
from kestream.executor import commands as cmd
from kestream.models.execution import Execution
from kestream.models.flow import FlowValidationError
from kestream.models.state import StateType
from kestream.plugins import loading
from kestream.plugins.context import RunContext
from kestream.settings import get_settings
from kestream.storage import get_storage, parse_uri, set_storage
from kestream.tasks import registry
from kestream.tasks.base import TaskError
from kestream.testing import Driver
from kestream.worker import workdirs
from kestream.worker.workdirs import SharedWorkdirs

S = StateType
HEAD = "id: wd\nnamespace: test.workdir\ntasks:\n"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KESTREAM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    get_settings.cache_clear()
    set_storage(None)  # the storage is built again from these settings
    yield tmp_path / "data"
    get_settings.cache_clear()
    set_storage(None)


@pytest.fixture
def clean_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_plugins", {})
    monkeypatch.setattr(registry, "_plugin_modules", [])
    monkeypatch.setattr(loading, "_loaded", {})
    monkeypatch.setattr(loading, "_entry_points_scanned", False)


def _run(flow: str, driver: Driver | None = None) -> Execution:
    if driver is not None:
        deployed = driver.deploy(flow)
        return driver.start(deployed.namespace, deployed.id)
    with Driver() as own:
        return _run(flow, own)


def _task(execution: Execution, task_id: str) -> Any:
    (run,) = [run for run in execution.taskRunList if run.taskId == task_id]
    return run


def test_a_shell_child_writes_a_file_a_python_child_reads_it_a_third_exports_it() -> None:
    with Driver() as driver:
        execution = _run(
            HEAD
            + """  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: write
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo "rows=3" > data.txt
          - echo "::{\\"outputs\\":{\\"dir\\":\\"$PWD\\"}}::"
      - id: log
        type: io.kestra.plugin.core.log.Log
        message: "between the two"
      - id: read
        type: io.kestra.plugin.scripts.python.Script
        script: |
          import json, pathlib
          text = pathlib.Path("data.txt").read_text().strip()
          pathlib.Path("more.txt").write_text(text + ";read")
          print("::" + json.dumps({"outputs": {"text": text}}) + "::")
      - id: export
        type: io.kestra.plugin.scripts.shell.Commands
        outputFiles:
          - "*.txt"
        commands:
          - cat more.txt
  - id: outside
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - test ! -e data.txt
""",
            driver,
        )
        assert len(driver.runner.workdirs) == 0  # released when the task run ended
    assert execution.state.current is S.SUCCESS, execution
    assert _task(execution, "read").outputs["vars"] == {"text": "rows=3"}
    files = _task(execution, "export").outputs["outputFiles"]
    assert sorted(files) == ["data.txt", "more.txt"]
    assert get_storage().get(parse_uri(files["more.txt"])) == b"rows=3;read"
    shared = Path(_task(execution, "write").outputs["vars"]["dir"])
    assert not shared.exists()  # the directory itself was removed
    assert _task(execution, "log").state.current is S.SUCCESS


def test_a_python_task_sees_the_shared_directory_as_its_working_dir(clean_plugins: None) -> None:
    @kestream.task("acme.tasks.CountLines")
    def count_lines(name: str, *, run: RunContext) -> dict[str, Any]:
        path = run.working_dir / name
        return {"lines": len(path.read_text().splitlines()), "dir": str(run.working_dir)}

    execution = _run(
        HEAD
        + """  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: write
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - printf 'a\\nb\\nc\\n' > lines.txt
      - id: count
        type: acme.tasks.CountLines
        name: lines.txt
"""
    )
    assert execution.state.current is S.SUCCESS, execution
    assert _task(execution, "count").outputs["lines"] == 3
    assert not Path(_task(execution, "count").outputs["dir"]).exists()


def test_input_files_are_rendered_and_written_before_the_first_child() -> None:
    execution = _run(
        HEAD
        + """  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      conf/app.txt: "flow {{ flow.id }}"
    tasks:
      - id: read
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo "::{\\"outputs\\":{\\"conf\\":\\"$(cat conf/app.txt)\\"}}::"
"""
    )
    assert execution.state.current is S.SUCCESS, execution
    assert _task(execution, "read").outputs["vars"] == {"conf": "flow wd"}


def test_errors_tasks_run_in_the_same_directory_after_a_failed_child() -> None:
    execution = _run(
        HEAD
        + """  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: write
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo partial > state.txt
          - exit 3
    errors:
      - id: inspect
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo "::{\\"outputs\\":{\\"found\\":\\"$(cat state.txt)\\"}}::"
"""
    )
    assert execution.state.current is S.FAILED
    assert _task(execution, "write").state.current is S.FAILED
    assert _task(execution, "inspect").outputs["vars"] == {"found": "partial"}


def test_two_working_directories_do_not_share_files() -> None:
    execution = _run(
        HEAD
        + """  - id: first
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: write
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo x > mine.txt
  - id: second
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: look
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - test ! -e mine.txt
"""
    )
    assert execution.state.current is S.SUCCESS, execution


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("namespaceFiles:\n      enabled: true\n", "set namespaceFiles on the script tasks"),
    ],
)  # fmt: skip
def test_unsupported_properties_are_refused_at_deploy(extra: str, message: str) -> None:
    flow = (
        HEAD
        + f"""  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    {extra}    tasks:
      - id: t
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [echo hi]
"""
    )
    with Driver() as driver, pytest.raises(FlowValidationError, match=message):
        driver.deploy(flow)


def test_disabled_namespace_files_are_accepted() -> None:
    flow = (
        HEAD
        + """  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    namespaceFiles:
      enabled: false
    tasks:
      - id: t
        type: io.kestra.plugin.core.log.Log
        message: hi
"""
    )
    assert _run(flow).state.current is S.SUCCESS


def test_children_that_name_different_worker_groups_are_refused_at_deploy() -> None:
    flow = (
        HEAD
        + """  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: gpu
        type: io.kestra.plugin.scripts.shell.Commands
        workerGroup: {key: gpu}
        commands: [echo a]
      - id: plain
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [echo b]
      - id: log
        type: io.kestra.plugin.core.log.Log
        message: inline, not counted
"""
    )
    with Driver() as driver, pytest.raises(FlowValidationError, match="one workerGroup"):
        driver.deploy(flow)


def test_a_worker_group_on_the_working_directory_alone_is_refused_at_deploy() -> None:
    flow = (
        HEAD
        + """  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    workerGroup: {key: gpu}
    tasks:
      - id: plain
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [echo b]
"""
    )
    with Driver() as driver:
        with pytest.raises(FlowValidationError, match="give them workerGroup 'gpu' too"):
            driver.deploy(flow)
        driver.deploy(
            flow.replace(
                "commands: [echo b]", "workerGroup: {key: gpu}\n        commands: [echo b]"
            )
        )


def test_shared_workdirs_hand_out_one_directory_per_key_and_remove_it(tmp_path: Path) -> None:
    dirs = SharedWorkdirs(tmp_path)
    first, created = dirs.acquire("e1", cmd.SharedWorkdir("wd1"), "c1")
    again, created_again = dirs.acquire("e1", cmd.SharedWorkdir("wd1"), "c2")
    other, _ = dirs.acquire("e2", cmd.SharedWorkdir("wd1"), "c1")
    assert (created, created_again) == (True, False)
    assert first == again != other
    (first / "f.txt").write_text("x")
    assert dirs.release("e1", "wd1") and not first.exists()
    assert not dirs.release("e1", "wd1")
    dirs.close()
    assert not other.exists() and len(dirs) == 0


def test_a_child_that_comes_after_the_release_is_refused(tmp_path: Path) -> None:
    """A redelivered child of an ended group would create a directory nobody removes; a new
    child task run of the group (a restart runs the group again) gets a new directory."""
    dirs = SharedWorkdirs(tmp_path)
    dirs.acquire("e1", cmd.SharedWorkdir("wd1"), "c1")
    assert dirs.release("e1", "wd1")
    with pytest.raises(TaskError, match=r"'wd1' has already ended.*task run 'c1' came late"):
        dirs.acquire("e1", cmd.SharedWorkdir("wd1"), "c1")
    assert not dirs.release("e1", "wd1")  # a second release record: nothing held
    with pytest.raises(TaskError):
        dirs.acquire("e1", cmd.SharedWorkdir("wd1"), "c1")
    assert list(tmp_path.iterdir()) == [] and len(dirs) == 0
    restarted, created = dirs.acquire("e1", cmd.SharedWorkdir("wd1"), "c1-restarted")
    assert created and restarted.is_dir()
    dirs.close()
    assert list(tmp_path.iterdir()) == []


def test_released_children_are_remembered_up_to_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workdirs, "RELEASED_KEPT", 2)
    dirs = SharedWorkdirs(tmp_path)
    for child in ("c1", "c2", "c3"):
        dirs.acquire("e1", cmd.SharedWorkdir(f"wd-{child}"), child)
        dirs.release("e1", f"wd-{child}")
    _, created = dirs.acquire("e1", cmd.SharedWorkdir("wd-c1"), "c1")  # forgotten: the oldest
    assert created
    for child in ("c2", "c3"):
        with pytest.raises(TaskError):
            dirs.acquire("e1", cmd.SharedWorkdir(f"wd-{child}"), child)
    dirs.close()
    assert list(tmp_path.iterdir()) == []


def test_a_release_while_a_child_runs_removes_the_directory_once_it_ended(tmp_path: Path) -> None:
    dirs = SharedWorkdirs(tmp_path)
    with dirs.use("e1", cmd.SharedWorkdir("wd1"), "c1") as (path, created):
        assert created
        assert dirs.release("e1", "wd1")
        assert path.is_dir() and dirs.path("e1", "wd1") is None  # a killed child may still write
        (path / "late.txt").write_text("x")
    assert not path.exists()
    with dirs.use("e1", cmd.SharedWorkdir("wd2"), "c2") as (kept, _):
        pass
    assert kept.is_dir()  # no release: the directory stays for the next child
    dirs.close()
    assert not kept.exists()


def test_children_see_the_working_directory_run_as_worker_taskrun() -> None:
    execution = _run(
        HEAD
        + """  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["v1"]
    tasks:
      - id: workdir
        type: io.kestra.plugin.core.flow.WorkingDirectory
        tasks:
          - id: show
            type: io.kestra.plugin.core.debug.Return
            format: "{{ workerTaskrun.id }} {{ taskrun.value }}"
"""
    )
    assert execution.state.current is S.SUCCESS, execution
    owner = _task(execution, "workdir")
    assert _task(execution, "show").outputs["value"] == f"{owner.id} v1"


def test_a_restart_runs_the_whole_group_again_in_a_new_directory(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with Driver() as driver:
        deployed = driver.deploy(
            HEAD
            + f"""  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: write
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo line >> data.txt
      - id: check
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - test -e {gate}
          - echo "::{{\\"outputs\\":{{\\"lines\\":$(wc -l < data.txt)}}}}::"
"""
        )
        failed = driver.start(deployed.namespace, deployed.id)
        assert failed.state.current is S.FAILED
        gate.touch()
        execution = driver.restart(failed.id)
    assert execution.state.current is S.SUCCESS, execution
    assert _task(execution, "check").outputs["vars"] == {"lines": 1}  # written once, anew
