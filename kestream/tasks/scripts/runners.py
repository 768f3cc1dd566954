"""Where a script runs: Kestra's task runners (``taskRunner``) and the legacy ``runner``/``docker``.

- ``io.kestra.plugin.core.runner.Process`` (kestream's default, and ``runner: PROCESS``): a local
  process group on the worker (:mod:`.process`).
- ``io.kestra.plugin.scripts.runner.docker.Docker`` (and ``runner: DOCKER``, or a ``docker:``
  block with no runner): ``docker run`` through the Docker CLI, when an engine is reachable
  (``DOCKER_HOST`` set, or ``/var/run/docker.sock``). Without one the attempt fails saying so,
  unless ``KESTREAM_DOCKER_RUNNER=process`` runs such tasks as local processes.

Kestra runs scripts on Docker by default; kestream runs them as processes unless a flow asks for
Docker, so that published flows run on a machine without Docker. The Docker path cannot be tested
where no engine runs: the command it builds is (:func:`docker_argv`).

What a flow may ask of the engine is bounded by the operator: ``volumes`` (a host path mounted in
the container) and ``privileged`` (root on the engine's host) are refused unless
``KESTREAM_DOCKER_ALLOW_VOLUMES`` / ``KESTREAM_DOCKER_ALLOW_PRIVILEGED`` allow them, as Kestra
keeps volume mounts off unless its plugin configuration enables them. The task's environment
goes through an ``--env-file`` (mode 0600, in the attempt's own directory, which is not mounted
and is removed with the attempt), never on the command line, which every local user can read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from kestream.settings import Settings, get_settings
from kestream.tasks.base import TaskError
from kestream.tasks.scripts.workdir import AttemptDirs

PROCESS_RUNNER = "io.kestra.plugin.core.runner.Process"
DOCKER_RUNNER = "io.kestra.plugin.scripts.runner.docker.Docker"
_DOCKER_SOCKET = Path("/var/run/docker.sock")
_PULL = {"IF_NOT_PRESENT": "missing", "ALWAYS": "always", "NEVER": "never"}
#: The env file's name, in the attempt's root (the parent of its mounted output directory).
ENV_FILE_NAME = "docker.env"


class RunnerKind(StrEnum):
    PROCESS = "PROCESS"
    DOCKER = "DOCKER"


class TaskRunnerSpec(BaseModel):
    """A ``taskRunner`` block: its ``type`` and that runner's own properties (kept as given)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in (PROCESS_RUNNER, DOCKER_RUNNER):
            raise ValueError(
                f"task runner '{value}' is not supported: kestream runs {PROCESS_RUNNER} and "
                f"{DOCKER_RUNNER}"
            )
        return value

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


@dataclass(frozen=True, slots=True)
class Placement:
    """The runner an attempt uses, with the Docker options when it is Docker."""

    kind: RunnerKind
    options: Mapping[str, Any]
    #: Asked for Docker, run as a process (``KESTREAM_DOCKER_RUNNER=process``).
    substituted: bool = False


def choose(
    task_runner: Mapping[str, Any] | None,
    runner: str | None,
    docker: Mapping[str, Any] | None,
    docker_mode: str,
) -> Placement:
    """The placement of one attempt from the task's (rendered) runner properties.

    ``taskRunner`` wins; then the legacy ``runner``; then a legacy ``docker`` block means Docker;
    otherwise a process. ``docker_mode`` is ``KESTREAM_DOCKER_RUNNER``.
    """
    if task_runner is not None:
        spec = TaskRunnerSpec.model_validate(task_runner)
        wants_docker, options = spec.type == DOCKER_RUNNER, spec.options()
    elif runner is not None:
        wants_docker, options = str(runner).upper() == RunnerKind.DOCKER, dict(docker or {})
    else:
        wants_docker, options = docker is not None, dict(docker or {})
    if not wants_docker:
        return Placement(RunnerKind.PROCESS, {})
    if docker_mode == "process":
        return Placement(RunnerKind.PROCESS, {}, substituted=True)
    if not engine_reachable():
        raise TaskError(
            "The Docker task runner needs a Docker engine and none is reachable (DOCKER_HOST is "
            f"unset and {_DOCKER_SOCKET} does not exist, or the docker command is missing); use "
            f"taskRunner type {PROCESS_RUNNER}, or set KESTREAM_DOCKER_RUNNER=process to run "
            "such tasks as local processes"
        )
    return Placement(RunnerKind.DOCKER, options)


def engine_reachable() -> bool:
    """A Docker CLI and an engine address (``DOCKER_HOST`` or the default socket)."""
    if shutil.which("docker") is None:
        return False
    return bool(os.environ.get("DOCKER_HOST")) or _DOCKER_SOCKET.exists()


def docker_argv(
    *,
    name: str,
    image: str,
    dirs: AttemptDirs,
    env: Mapping[str, str],
    command: Sequence[str],
    options: Mapping[str, Any],
    settings: Settings | None = None,
) -> list[str]:
    """The ``docker run`` command line of one attempt; writes the attempt's env file.

    The working and output directories are mounted at their own paths, so ``{{ workingDir }}``
    means the same inside and outside the container; only the task's environment goes in (not
    the worker's), through :func:`write_env_file`. Options follow Kestra's Docker runner (and the
    legacy ``docker`` block): ``image``, ``pullPolicy``, ``user``, ``entryPoint``,
    ``networkMode``, ``volumes``, ``memory.memory``, ``cpu.cpus``, ``shmSize``, ``privileged``,
    ``extraHosts``; ``volumes`` and ``privileged`` only where ``settings`` (the worker's by
    default) allow them, else a :class:`TaskError`.
    """
    flags = _container_flags(options, settings or get_settings())
    argv = ["docker", "run", "--rm", "--name", name, "--init"]
    argv += ["-v", f"{dirs.work}:{dirs.work}", "-v", f"{dirs.output}:{dirs.output}"]
    argv += ["-w", str(dirs.work)]
    argv += ["--env-file", str(write_env_file(dirs.output.parent / ENV_FILE_NAME, env))]
    argv += flags
    entry = options.get("entryPoint")
    if entry is not None:  # Kestra's default is no entry point: the command runs as given
        argv += ["--entrypoint", str(entry[0]) if isinstance(entry, list) and entry else ""]
    else:
        argv += ["--entrypoint", ""]
    argv.append(str(options.get("image") or image))
    if isinstance(entry, list) and len(entry) > 1:
        argv += [str(part) for part in entry[1:]]
    argv += list(command)
    return argv


def write_env_file(path: Path, env: Mapping[str, str]) -> Path:
    """Write ``env`` as a Docker env file readable only by this user; returns ``path``.

    Docker's format has no quoting: one ``KEY=VALUE`` a line, taken as is. A value with a line
    break (or a name Docker would misread) cannot be written, and is refused rather than cut.
    """
    lines = []
    for key, value in env.items():
        if not key or "=" in key or key[0] == "#" or any(c.isspace() or c == "\0" for c in key):
            raise TaskError(f"Environment variable name {key!r} cannot be passed to Docker")
        if any(c in value for c in "\n\r\0"):
            raise TaskError(
                f"Environment variable {key}: the Docker task runner cannot pass a value with a "
                "line break (Docker's env file has one variable a line)"
            )
        lines.append(f"{key}={value}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(lines)
    return path


def _container_flags(options: Mapping[str, Any], settings: Settings) -> list[str]:
    volumes = list(options.get("volumes") or [])
    if volumes and not settings.docker_allow_volumes:
        raise TaskError(
            "The Docker task runner's 'volumes' are disabled on this worker (they mount host "
            "paths into the container); the operator enables them with "
            "KESTREAM_DOCKER_ALLOW_VOLUMES=true"
        )
    privileged = str(options.get("privileged", "")).lower() == "true"
    if privileged and not settings.docker_allow_privileged:
        raise TaskError(
            "The Docker task runner's 'privileged' is disabled on this worker (it gives the "
            "container root on the engine's host); the operator enables it with "
            "KESTREAM_DOCKER_ALLOW_PRIVILEGED=true"
        )
    flags: list[str] = []
    pull = _PULL.get(str(options.get("pullPolicy", "IF_NOT_PRESENT")).upper())
    if pull is not None:
        flags += ["--pull", pull]
    for option, flag in (
        ("user", "--user"),
        ("networkMode", "--network"),
        ("shmSize", "--shm-size"),
    ):
        if options.get(option):
            flags += [flag, str(options[option])]
    for volume in volumes:
        flags += ["-v", str(volume)]
    for host in options.get("extraHosts") or []:
        flags += ["--add-host", str(host)]
    memory, cpu = options.get("memory"), options.get("cpu")
    if isinstance(memory, Mapping) and memory.get("memory"):
        flags += ["--memory", str(memory["memory"])]
    if isinstance(cpu, Mapping) and cpu.get("cpus"):
        flags += ["--cpus", str(cpu["cpus"])]
    if privileged:
        flags.append("--privileged")
    return flags


def docker_remove_argv(name: str) -> list[str]:
    """Removes the container of a killed attempt (the CLI's death does not stop it)."""
    return ["docker", "rm", "--force", name]
