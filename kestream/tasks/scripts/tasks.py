"""Kestra's script tasks: ``io.kestra.plugin.scripts.{shell,python}.{Script,Commands}``.

One attempt: a fresh working directory; ``inputFiles`` written into it; the interpreter
(``/bin/sh -c`` by default) given ``beforeCommands`` and the commands (or the script) joined by
line breaks, after ``set -e`` when ``failFast`` (the default); stdout logged at INFO and stderr at
ERROR line by line while the process runs; ``::{json}::`` protocol lines turned into ``vars``,
metrics and logs (:mod:`.protocol`); ``outputFiles`` stored (:mod:`.workdir`); the directory
removed. The process gets the task's ``env`` over an allow-list of the worker's environment
(:mod:`kestream.secrets.environment`): never a ``SECRET_*`` nor a ``KESTREAM_*`` variable.

Outputs: ``exitCode``, ``vars`` and, when the task exports files, ``outputFiles``. A non-zero exit
fails the attempt with Kestra's message ("Command failed with code N") and keeps these outputs.
Metrics are recorded as DEBUG log lines of the task run (kestream has no metrics store for them).

``warningOnStdErr`` is deprecated in Kestra, where since 0.23 stderr output no longer changes the
state: kestream does the same when it is not set; set to ``true`` it gives Kestra 0.21's
behaviour (WARNING when anything was written to stderr).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from functools import partial
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, field_validator

from kestream.models.state import StateType
from kestream.secrets.environment import DOCKER_CLIENT, task_environment
from kestream.settings import get_settings
from kestream.tasks.base import LogLevel, RunInfo, RunnableTask, TaskError, TaskOutcome
from kestream.tasks.files import readable_key, run_files
from kestream.tasks.scripts import runners
from kestream.tasks.scripts.process import run_process, run_to_end
from kestream.tasks.scripts.protocol import Capture, ProtocolError, parse_line
from kestream.tasks.scripts.runners import RunnerKind, TaskRunnerSpec
from kestream.tasks.scripts.workdir import (
    WORKER_VARS,
    AttemptDirs,
    attempt_dirs,
    collect_output_files,
    fill,
    localize_uris,
    mount_namespace_files,
    write_input_files,
)

_PYTHON_ENV = {
    "PYTHONUNBUFFERED": "true",
    "PIP_ROOT_USER_ACTION": "ignore",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}
#: The properties whose ``kestra://`` URIs become paths of local copies (as in Kestra).
_LOCALIZED = ("beforeCommands", "commands", "script")


class ScriptTask(RunnableTask):
    """What every script task shares (Kestra's ``AbstractExecScript``)."""

    is_async: ClassVar[bool] = True
    worker_vars: ClassVar[dict[str, str]] = WORKER_VARS
    dynamic: ClassVar[tuple[str, ...]] = (
        "beforeCommands", "env", "interpreter", "failFast", "warningOnStdErr", "inputFiles",
        "outputFiles", "containerImage", "taskRunner", "docker", "runner", "namespaceFiles",
    )  # fmt: skip
    #: The image Kestra's Docker runner uses when ``containerImage`` is not set.
    default_image: ClassVar[str] = "ubuntu"
    #: Environment Kestra sets for this kind of script.
    script_env: ClassVar[dict[str, str]] = {}

    beforeCommands: list[str] | str | None = None
    env: dict[str, Any] | str | None = None
    interpreter: list[str] | str = Field(default_factory=lambda: ["/bin/sh", "-c"])
    failFast: bool | str = True
    warningOnStdErr: bool | str | None = None
    inputFiles: dict[str, Any] | str | None = None
    outputFiles: list[str] | str | None = None
    namespaceFiles: dict[str, Any] | None = None
    outputDirectory: bool | str | None = None
    targetOS: Literal["AUTO", "LINUX", "WINDOWS"] = "AUTO"
    containerImage: str | None = None
    taskRunner: dict[str, Any] | None = None
    runner: Literal["PROCESS", "DOCKER"] | None = None
    docker: dict[str, Any] | None = None

    @field_validator("taskRunner")
    @classmethod
    def _runner_known(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            TaskRunnerSpec.model_validate(value)  # refused at deploy, naming what is supported
        return value

    def body(self, props: dict[str, Any], dirs: AttemptDirs) -> list[str]:
        """The commands to run after ``beforeCommands`` (may write files into ``dirs``)."""
        raise NotImplementedError

    async def arun(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        self._refuse_unsupported(props)
        placement = runners.choose(
            props.get("taskRunner"), props.get("runner"), props.get("docker"),
            get_settings().docker_runner,
        )  # fmt: skip
        image = str(props.get("containerImage") or self.default_image)
        _note_placement(run, placement, image, given_image=bool(props.get("containerImage")))
        capture = Capture()
        async with attempt_dirs(run.working_dir) as dirs:
            props = fill(props, dirs)
            spaces = _mapping(props.get("namespaceFiles"), "namespaceFiles")
            if _flag(spaces.get("enabled"), default=False):
                namespace = run_files(run).namespace
                await asyncio.to_thread(mount_namespace_files, spaces, dirs, namespace)
            inputs = _mapping(props.get("inputFiles"), "inputFiles")
            readable = partial(readable_key, run, what="inputFiles")
            await asyncio.to_thread(write_input_files, inputs, dirs, readable)
            for name in _LOCALIZED:
                if props.get(name) is not None:
                    props[name] = await asyncio.to_thread(
                        localize_uris, props[name], dirs, readable
                    )
            command = [*_strings(props["interpreter"], "interpreter"), self._script(props, dirs)]
            env = self._env(props, dirs)
            if placement.kind is RunnerKind.DOCKER:
                code = await _in_docker(run, image, dirs, env, command, placement, capture)
            else:
                local_env = {**task_environment(), **env}
                code = await _run(command, dirs, local_env, run, capture)
            globs = _strings(props.get("outputFiles"), "outputFiles")
            files = await asyncio.to_thread(collect_output_files, globs, dirs, run_files(run))
        outputs: dict[str, Any] = {"exitCode": code, "vars": capture.vars}
        if files or globs:
            outputs["outputFiles"] = files
        if code != 0:
            return TaskOutcome(StateType.FAILED, outputs, error=f"Command failed with code {code}")
        warn = _flag(props.get("warningOnStdErr"), default=False) and capture.stderr_lines > 0
        return TaskOutcome(StateType.WARNING if warn else StateType.SUCCESS, outputs)

    def _refuse_unsupported(self, props: dict[str, Any]) -> None:
        """Fail the run for a property this task type accepts but kestream does not do."""

    def _script(self, props: dict[str, Any], dirs: AttemptDirs) -> str:
        lines = _strings(props.get("beforeCommands"), "beforeCommands")
        if _flag(props.get("failFast"), default=True) and self.targetOS != "WINDOWS":
            lines = ["set -e", *lines]
        return "\n".join([*lines, *self.body(props, dirs)])

    def _env(self, props: dict[str, Any], dirs: AttemptDirs) -> dict[str, str]:
        given = _mapping(props.get("env"), "env")
        return {
            "WORKING_DIR": str(dirs.work),
            "OUTPUT_DIR": str(dirs.output),
            **self.script_env,
            **{str(key): _env_text(value) for key, value in given.items()},
        }


class ShellCommands(ScriptTask):
    """Run shell commands, one after the other."""

    type_name: ClassVar[str] = "io.kestra.plugin.scripts.shell.Commands"
    dynamic: ClassVar[tuple[str, ...]] = (*ScriptTask.dynamic, "commands")

    commands: list[str] | str

    def body(self, props: dict[str, Any], dirs: AttemptDirs) -> list[str]:
        return _strings(props["commands"], "commands")


class ShellScript(ScriptTask):
    """Run an inline shell script."""

    type_name: ClassVar[str] = "io.kestra.plugin.scripts.shell.Script"
    dynamic: ClassVar[tuple[str, ...]] = (*ScriptTask.dynamic, "script")

    script: str = Field(min_length=1)

    def body(self, props: dict[str, Any], dirs: AttemptDirs) -> list[str]:
        return [str(props["script"])]


class _PythonTask(ScriptTask):
    """Properties Kestra's Python tasks add (dependency management through uv)."""

    default_image: ClassVar[str] = "ghcr.io/kestra-io/kestrapy:latest"
    script_env: ClassVar[dict[str, str]] = _PYTHON_ENV

    dependencies: list[str] | str | None = None
    pythonVersion: str | None = None
    dependencyCacheEnabled: bool | str = True
    packageManager: Literal["UV", "PIP"] | None = None

    def _refuse_unsupported(self, props: dict[str, Any]) -> None:
        super()._refuse_unsupported(props)
        if self.dependencies:
            raise TaskError(
                "dependencies are not supported yet: install packages in beforeCommands "
                "(for example: pip install requests)"
            )


class PythonCommands(_PythonTask):
    """Run commands with Python's environment variables set (``python main.py``)."""

    type_name: ClassVar[str] = "io.kestra.plugin.scripts.python.Commands"
    dynamic: ClassVar[tuple[str, ...]] = (*ScriptTask.dynamic, "commands")

    commands: list[str] | str

    def body(self, props: dict[str, Any], dirs: AttemptDirs) -> list[str]:
        return _strings(props["commands"], "commands")


class PythonScript(_PythonTask):
    """Run an inline Python script: written to a ``.py`` file, run as ``python <file>``."""

    type_name: ClassVar[str] = "io.kestra.plugin.scripts.python.Script"
    dynamic: ClassVar[tuple[str, ...]] = (*ScriptTask.dynamic, "script")

    script: str = Field(min_length=1)

    def body(self, props: dict[str, Any], dirs: AttemptDirs) -> list[str]:
        handle, name = tempfile.mkstemp(suffix=".py", dir=dirs.work)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(str(props["script"]))
        return [f"{_python()} {name}"]


SCRIPT_TASKS: tuple[type[ScriptTask], ...] = (
    ShellCommands, ShellScript, PythonCommands, PythonScript,
)  # fmt: skip


# -- running ---------------------------------------------------------------------------------


def _note_placement(
    run: RunInfo, placement: runners.Placement, image: str, *, given_image: bool
) -> None:
    """Say when the image a flow names is not used (DEBUG under Process, INFO when substituted)."""
    if placement.substituted:
        run.log(
            LogLevel.INFO,
            "Docker task runner replaced by a local process (KESTREAM_DOCKER_RUNNER=process); "
            f"image '{image}' not used",
        )
    elif placement.kind is RunnerKind.PROCESS and given_image:
        run.log(LogLevel.DEBUG, f"containerImage '{image}' ignored by the Process task runner")


async def _run(
    argv: list[str], dirs: AttemptDirs, env: dict[str, str], run: RunInfo, capture: Capture
) -> int:
    def on_line(text: str, is_stderr: bool) -> None:
        if is_stderr:
            capture.stderr_lines += 1
        else:
            capture.stdout_lines += 1
        try:
            message = parse_line(text)
        except ProtocolError as exc:
            run.log(LogLevel.WARN, str(exc))
            return
        if message is None:
            run.log(LogLevel.ERROR if is_stderr else LogLevel.INFO, text)
            return
        capture.take(message)
        for metric in message.metrics:
            run.log(LogLevel.DEBUG, metric.describe())
        for level, line in message.logs:
            run.log(level, line)

    try:
        return await run_process(argv, cwd=dirs.work, env=env, on_line=on_line)
    except FileNotFoundError as exc:
        raise TaskError(f"Cannot start the interpreter: {exc}") from None


async def _in_docker(
    run: RunInfo,
    image: str,
    dirs: AttemptDirs,
    env: dict[str, str],
    command: list[str],
    placement: runners.Placement,
    capture: Capture,
) -> int:
    name = f"kestream-{run.task_run_id}-{run.attempt}"
    argv = runners.docker_argv(
        name=name, image=image, dirs=dirs, env=env, command=command, options=placement.options
    )
    try:
        return await _run(argv, dirs, task_environment(also=DOCKER_CLIENT), run, capture)
    except asyncio.CancelledError:  # the CLI's end does not stop the container
        await run_to_end(_remove_container(name))
        raise


async def _remove_container(name: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *runners.docker_remove_argv(name),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await proc.wait()


# -- helpers ---------------------------------------------------------------------------------


def _python() -> str:
    """``python``, as Kestra runs it; ``python3`` where only that one is installed."""
    if shutil.which("python") is None and shutil.which("python3") is not None:
        return "python3"
    return "python"


def _strings(value: Any, name: str) -> list[str]:
    """A list property that may also be given as one string (a rendered JSON list or a line)."""
    if value is None:
        return []
    if isinstance(value, str):
        parsed = _json(value)
        if isinstance(parsed, list):
            return [str(item) for item in parsed]
        return [value]
    if isinstance(value, list):
        return [str(item) for item in value]
    raise TaskError(f"{name} must be a list of strings")


def _mapping(value: Any, name: str) -> dict[str, Any]:
    """A map property that may also be given as one string holding a JSON object."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = _json(value)
    if not isinstance(value, dict):
        raise TaskError(f"{name} must be a map (or a JSON object)")
    return value


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _flag(value: Any, *, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise TaskError(f"expected true or false, got '{value}'")


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
