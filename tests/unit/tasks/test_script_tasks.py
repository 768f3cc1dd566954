"""Script tasks (shell and Python, Script and Commands) run end to end through the driver.

The processes are real (``/bin/sh`` and the test's own Python); each test gets its own
``KESTREAM_DATA_DIR`` so the output files it keeps land in a temporary folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kestream.models.execution import Execution
from kestream.models.flow import FlowValidationError
from kestream.models.state import StateType
from kestream.settings import get_settings
from kestream.storage import get_storage, parse_uri, set_storage
from kestream.tasks.scripts import runners
from kestream.tasks.scripts.workdir import AttemptDirs
from kestream.testing import Driver

S = StateType
HEAD = "id: t\nnamespace: test.scripts\ntasks:\n"
EXAMPLES = Path(__file__).parent / "script_examples"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private KESTREAM_DATA_DIR, and this interpreter first on PATH (``python`` = it, with
    the ``kestra`` package installed)."""
    monkeypatch.setenv("KESTREAM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    get_settings.cache_clear()
    set_storage(None)  # the storage is built again from these settings
    yield tmp_path / "data"
    get_settings.cache_clear()
    set_storage(None)


def _run(flow: str) -> tuple[Execution, list[tuple[str | None, str, str]]]:
    with Driver() as driver:
        deployed = driver.deploy(flow)
        execution = driver.start(deployed.namespace, deployed.id)
        logs = [(line.taskId, str(line.level), line.message) for line in driver.logs(execution.id)]
    return execution, logs


def _task(execution: Execution, task_id: str) -> Any:
    (run,) = [run for run in execution.taskRunList if run.taskId == task_id]
    return run


def test_shell_commands_outputs_env_before_commands_and_log_levels() -> None:
    execution, logs = _run(
        HEAD
        + """  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    containerImage: alpine:3
    env:
      GREETING: "hello {{ flow.id }}"
      COUNT: 3
    beforeCommands:
      - export PREPARED=yes
    commands:
      - echo "$GREETING $COUNT $PREPARED"
      - echo '::{"outputs":{"test":"value","int":2,"nested":{"a":[1,2]}}}::'
      - echo '::{"outputs":{"int":3}}::'
      - echo "to stderr" >&2
      - echo '::{"metrics":[{"name":"rows","type":"counter","value":5,"tags":{"t":"x"}}]}::'
      - echo '::{"logs":[{"level":"WARN","message":"from the protocol"}]}::'
      - "echo '::{\\"outputs\\": broken}::'"
      - test "$PWD" = "{{ workingDir }}" && test "$WORKING_DIR" = "$PWD" && echo same-dir
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.sh.vars.test }}-{{ outputs.sh.vars.int }}-{{ outputs.sh.exitCode }}"
"""
    )
    assert execution.state.current is S.SUCCESS
    sh = _task(execution, "sh")
    assert sh.outputs == {
        "exitCode": 0,
        "vars": {"test": "value", "int": 3, "nested": {"a": [1, 2]}},
    }
    assert _task(execution, "after").outputs == {"value": "value-3-0"}
    mine = [(level, message) for task, level, message in logs if task == "sh"]
    assert mine[0] == ("DEBUG", "containerImage 'alpine:3' ignored by the Process task runner")
    assert mine[1] == ("INFO", "hello t 3 yes")
    assert ("ERROR", "to stderr") in mine
    assert ("DEBUG", 'Metric counter \'rows\' = 5 {"t":"x"}') in mine
    assert ("WARN", "from the protocol") in mine
    assert any(level == "WARN" and "Invalid outputs" in text for level, text in mine)
    assert ("INFO", "same-dir") in mine
    assert not any("::{" in text for _, text in mine)  # protocol lines are not logged as text


def test_non_zero_exit_fails_with_the_code_and_keeps_outputs() -> None:
    execution, logs = _run(
        HEAD
        + """  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo '::{"outputs":{"before":"failing"}}::'
      - exit 3
"""
    )
    assert execution.state.current is S.FAILED
    sh = _task(execution, "sh")
    assert sh.state.current is S.FAILED
    assert sh.outputs == {"exitCode": 3, "vars": {"before": "failing"}}
    assert ("sh", "ERROR", "Command failed with code 3") in logs


def test_fail_fast_stops_at_the_first_failing_command_unless_disabled() -> None:
    body = """  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    failFast: {fast}
    commands:
      - "false"
      - echo reached
"""
    stopped, logs = _run(HEAD + body.format(fast="true"))
    assert _task(stopped, "sh").outputs["exitCode"] == 1
    assert not any(message == "reached" for _, _, message in logs)
    carried_on, logs = _run(HEAD + body.format(fast="false"))
    assert carried_on.state.current is S.SUCCESS
    assert ("sh", "INFO", "reached") in logs


def test_stderr_changes_the_state_only_when_warning_on_stderr_is_set() -> None:
    body = """  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    {option}
    commands:
      - echo oops >&2
"""
    default, _ = _run(HEAD + body.format(option=""))
    assert default.state.current is S.SUCCESS  # Kestra >= 0.23: stderr is only logged
    asked, _ = _run(HEAD + body.format(option="warningOnStdErr: true"))
    assert _task(asked, "sh").state.current is S.WARNING
    off, _ = _run(HEAD + body.format(option="warningOnStdErr: false"))
    assert off.state.current is S.SUCCESS


def test_input_files_output_files_and_output_dir(data_dir: Path) -> None:
    execution, logs = _run(
        HEAD
        + """  - id: make
    type: io.kestra.plugin.scripts.shell.Script
    inputFiles:
      data/in.txt: "input of {{ flow.id }}"
      run.sh: |
        cat data/in.txt > copy.txt
        echo extra > {{ outputDir }}/from-output-dir.txt
    outputFiles:
      - "*.txt"
      - data/*.txt
      - missing-*.csv
    script: sh run.sh
  - id: use
    type: io.kestra.plugin.scripts.shell.Commands
    inputFiles:
      again.txt: "{{ outputs.make.outputFiles['copy.txt'] }}"
      extra.txt: "{{ outputs.make.outputFiles['from-output-dir.txt'] }}"
    commands:
      - cat extra.txt
      - cat again.txt
"""
    )
    assert execution.state.current is S.SUCCESS, logs
    files = _task(execution, "make").outputs["outputFiles"]
    assert set(files) == {"copy.txt", "data/in.txt", "from-output-dir.txt"}
    run_id = _task(execution, "make").id
    folder = f"kestra:///test/scripts/t/executions/{execution.id}/tasks/make/{run_id}/"
    assert files == {name: folder + name for name in files}
    stored = data_dir / "storage" / folder.removeprefix("kestra:///")
    assert (stored / "copy.txt").read_text() == "input of t"
    assert (stored / "data" / "in.txt").read_text() == "input of t"
    used = [message for task, _, message in logs if task == "use"]
    assert used == ["extra", "input of t"]


def test_each_attempt_gets_a_fresh_directory_that_is_removed_afterwards() -> None:
    execution, logs = _run(
        HEAD
        + """  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    retry:
      type: constant
      interval: PT0.01S
      maxAttempt: 2
    commands:
      - echo "$WORKING_DIR"
      - test -e marker && exit 0
      - touch marker
      - exit 1
"""
    )
    sh = _task(execution, "sh")
    assert sh.state.current is S.FAILED and len(sh.attempts) == 2  # the marker never survives
    dirs = [message for task, level, message in logs if task == "sh" and level == "INFO"]
    assert len(dirs) == 2 and dirs[0] != dirs[1]
    assert not any(Path(path).exists() for path in dirs)


def test_python_script_with_the_kestra_package_unchanged() -> None:
    execution, logs = _run(
        HEAD
        + """  - id: py
    type: io.kestra.plugin.scripts.python.Script
    script: |
      import os
      from kestra import Kestra
      Kestra.outputs({"x": 1, "unbuffered": os.environ["PYTHONUNBUFFERED"]})
      Kestra.counter("calls", 2, {"kind": "test"})
      Kestra.logger().warning("careful")
      print("plain line")
"""
    )
    assert execution.state.current is S.SUCCESS, logs
    assert _task(execution, "py").outputs == {
        "exitCode": 0,
        "vars": {"x": 1, "unbuffered": "true"},
    }
    mine = [(level, message) for task, level, message in logs if task == "py"]
    assert ("INFO", "plain line") in mine
    assert ("DEBUG", 'Metric counter \'calls\' = 2 {"kind":"test"}') in mine
    assert any(level == "WARN" and message.endswith(" - careful") for level, message in mine)


def test_python_commands_and_a_failing_python_script() -> None:
    execution, logs = _run(
        HEAD
        + """  - id: cmds
    type: io.kestra.plugin.scripts.python.Commands
    inputFiles:
      main.py: |
        import sys
        print("args", sys.argv[1:])
    commands:
      - python main.py a b
  - id: boom
    type: io.kestra.plugin.scripts.python.Script
    script: |
      raise ValueError("broken on purpose")
"""
    )
    assert ("cmds", "INFO", "args ['a', 'b']") in logs
    boom = _task(execution, "boom")
    assert boom.state.current is S.FAILED and boom.outputs["exitCode"] == 1
    assert ("boom", "ERROR", "ValueError: broken on purpose") in logs


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        (
            """inputFiles:
      data.csv: kestra:///company/team/file.csv
    commands: [cat data.csv]""",
            "inputFiles: Unable to read the file 'kestra:///company/team/file.csv' as it didn't "
            "belong to the current execution",
        ),
        (
            """inputFiles:
      ../escape.txt: x
    commands: [ls]""",
            "inputFiles '../escape.txt': give a relative path inside the working directory",
        ),
        (
            """namespaceFiles:
      enabled: true
      folderPerNamespace: true
    commands: [ls]""",
            "namespaceFiles: folderPerNamespace not supported",
        ),
    ],
)
def test_what_cannot_run_yet_fails_saying_why(task: str, reason: str) -> None:
    execution, logs = _run(
        HEAD + "  - id: sh\n    type: io.kestra.plugin.scripts.shell.Commands\n    " + task
    )
    assert execution.state.current is S.FAILED
    assert any(level == "ERROR" and reason in message for _, level, message in logs), logs


def test_python_dependencies_are_refused_with_the_alternative() -> None:
    execution, logs = _run(
        HEAD
        + """  - id: py
    type: io.kestra.plugin.scripts.python.Script
    dependencies: [requests]
    script: print(1)
"""
    )
    assert execution.state.current is S.FAILED
    assert any("install packages in beforeCommands" in message for _, _, message in logs)


def test_an_unknown_task_runner_is_refused_at_deploy() -> None:
    with Driver() as driver, pytest.raises(FlowValidationError, match="is not supported"):
        driver.deploy(
            HEAD
            + """  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.ee.kubernetes.runner.Kubernetes
    commands: [ls]
"""
        )


DOCKER_TASK = (
    HEAD
    + """  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    containerImage: alpine:3
    taskRunner:
      type: io.kestra.plugin.scripts.runner.docker.Docker
    commands:
      - echo ran
"""
)


def test_the_docker_runner_without_an_engine_fails_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(runners, "_DOCKER_SOCKET", tmp_path / "no-docker.sock")
    execution, logs = _run(DOCKER_TASK)
    assert execution.state.current is S.FAILED
    assert any("needs a Docker engine and none is reachable" in m for _, _, m in logs), logs
    assert any("KESTREAM_DOCKER_RUNNER=process" in m for _, _, m in logs)


def test_the_docker_runner_can_be_run_as_local_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KESTREAM_DOCKER_RUNNER", "process")
    get_settings.cache_clear()
    for flow in (
        DOCKER_TASK,
        DOCKER_TASK.replace(
            "    taskRunner:\n      type: io.kestra.plugin.scripts.runner.docker.Docker\n",
            "    runner: DOCKER\n",
        ),
    ):
        execution, logs = _run(flow)
        assert execution.state.current is S.SUCCESS
        assert ("sh", "INFO", "ran") in logs
        assert any("replaced by a local process" in message for _, _, message in logs)


def test_docker_command_line(tmp_path: Path) -> None:
    dirs = AttemptDirs(tmp_path / "work", tmp_path / "output")
    argv = runners.docker_argv(
        name="kestream-run-1",
        image="python:3.12-slim",
        dirs=dirs,
        env={"A": "1", "WORKING_DIR": "/tmp/a/work"},
        command=["/bin/sh", "-c", "set -e\necho hi"],
        options={
            "pullPolicy": "NEVER",
            "user": "1000",
            "memory": {"memory": "512Mb"},
            "cpu": {"cpus": 1},
        },
    )
    assert argv[:6] == ["docker", "run", "--rm", "--name", "kestream-run-1", "--init"]
    assert argv[-4:] == ["python:3.12-slim", "/bin/sh", "-c", "set -e\necho hi"]
    joined = " ".join(argv[:-4])
    for part in [
        f"-v {tmp_path}/work:{tmp_path}/work",
        f"-v {tmp_path}/output:{tmp_path}/output",
        f"-w {tmp_path}/work",
        f"--env-file {tmp_path}/docker.env",
        "--pull never",
        "--user 1000",
        "--memory 512Mb",
        "--cpus 1",
        "--entrypoint ",
    ]:
        assert part in joined
    (tmp_path / "docker.env").unlink()  # each attempt has its own directory, hence its file
    legacy = runners.docker_argv(
        name="n", image="ubuntu", dirs=dirs, env={}, command=["ls"], options={"image": "php"}
    )
    assert legacy[-2:] == ["php", "ls"] and "--pull missing" in " ".join(legacy)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.stem)
def test_examples_from_kestras_documentation_run_unchanged(example: Path) -> None:
    execution, logs = _run(example.read_text(encoding="utf-8"))
    assert execution.state.current is S.SUCCESS, logs
    outputs = {run.taskId: run.outputs for run in execution.taskRunList}
    expected = EXAMPLE_CHECKS[example.stem]
    expected(outputs, logs)


def _files(outputs: dict[str, Any], task: str) -> dict[str, str]:
    storage = get_storage()
    files = outputs[task]["outputFiles"].items()
    return {name: storage.get(parse_uri(uri)).decode() for name, uri in files}


EXAMPLE_CHECKS: dict[str, Any] = {
    "outputs-from-shell-commands": lambda outputs, logs: (
        (
            outputs["process"]["vars"] == {"test": "value", "int": 2, "bool": True, "float": 3.65}
            and outputs["return"] == {"value": "value"}
        )
        or pytest.fail(str(outputs))
    ),
    "shell_single_command": lambda outputs, logs: (
        any(message.startswith("The current execution is: ") for _, _, message in logs)
        or pytest.fail(str(logs))
    ),
    "shell_generate_files": lambda outputs, logs: (
        (_files(outputs, "commands") == {"first.txt": "1\n", "second.txt": "2\n"})
        or pytest.fail(str(outputs))
    ),
    "new_shell": lambda outputs, logs: (
        ("shell", "INFO", "Hello World") in logs or pytest.fail(str(logs))
    ),
    "shell_script_example": lambda outputs, logs: (
        (_files(outputs, "hello") == {"hello.txt": "Hello world!\n"}) or pytest.fail(str(outputs))
    ),
    "python_output_file": lambda outputs, logs: (
        (_files(outputs, "python") == {"myfile.txt": "Hello from a Kestra task!"})
        or pytest.fail(str(outputs))
    ),
    "output_text_files": lambda outputs, logs: (
        (("read_output", "INFO", "Hi, this is output from a script 👋") in logs)
        or pytest.fail(str(logs))
    ),
    "python_logs": lambda outputs, logs: (
        (
            [level for task, level, _ in logs if task == "python_logger"]
            == ["DEBUG", "INFO", "WARN", "ERROR", "ERROR"]
        )
        or pytest.fail(str(logs))
    ),
}
