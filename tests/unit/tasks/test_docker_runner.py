"""The Docker task runner's command line: the task's environment never on it, and the options
that reach the host (``volumes``, ``privileged``) only where the operator allows them."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from kestream.settings import Settings
from kestream.tasks.base import TaskError
from kestream.tasks.scripts import runners
from kestream.tasks.scripts.workdir import AttemptDirs

SECRET = "s3cret-value"


def _argv(
    root: Path, options: dict[str, Any], settings: Settings | None = None, **env: str
) -> list[str]:
    return runners.docker_argv(
        name="kestream-run-1",
        image="alpine",
        dirs=AttemptDirs(root / "work", root / "output"),
        env=env,
        command=["sh", "-c", "true"],
        options=options,
        settings=settings or Settings(),
    )


def test_env_values_go_to_a_private_env_file_not_the_command_line(tmp_path: Path) -> None:
    argv = _argv(tmp_path, {}, TOKEN=SECRET, EMPTY="", SPACED=" a b ")
    assert not any(SECRET in part for part in argv)
    assert "-e" not in argv
    env_file = Path(argv[argv.index("--env-file") + 1])
    # in the attempt's root: outside both mounted directories, removed with the attempt
    assert env_file == tmp_path / runners.ENV_FILE_NAME
    assert env_file.read_text() == f"TOKEN={SECRET}\nEMPTY=\nSPACED= a b \n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PEM": "line 1\nline 2"}, "line break"),
        ({"A": "x\r"}, "line break"),
        ({"A=B": "x"}, "cannot be passed"),
        ({"#A": "x"}, "cannot be passed"),
        ({"A B": "x"}, "cannot be passed"),
    ],
)
def test_what_an_env_file_cannot_carry_is_refused(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(TaskError, match=message):
        _argv(tmp_path, {}, **env)
    assert not (tmp_path / runners.ENV_FILE_NAME).exists()


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"volumes": ["/:/host"]}, "KESTREAM_DOCKER_ALLOW_VOLUMES"),
        ({"privileged": True}, "KESTREAM_DOCKER_ALLOW_PRIVILEGED"),
        ({"privileged": "true"}, "KESTREAM_DOCKER_ALLOW_PRIVILEGED"),
    ],
)
def test_host_reaching_options_are_refused_by_default(
    tmp_path: Path, options: dict[str, Any], setting: str
) -> None:
    with pytest.raises(TaskError, match=setting):
        _argv(tmp_path, options)
    assert not (tmp_path / runners.ENV_FILE_NAME).exists()  # refused before anything is written


def test_the_operator_allows_volumes_and_privileged(tmp_path: Path) -> None:
    allowed = Settings(docker_allow_volumes=True, docker_allow_privileged=True)
    argv = _argv(tmp_path, {"volumes": ["/data:/data"], "privileged": True}, allowed)
    joined = " ".join(argv)
    assert "-v /data:/data" in joined and "--privileged" in argv
    (tmp_path / runners.ENV_FILE_NAME).unlink()
    only_volumes = Settings(docker_allow_volumes=True)
    assert "-v /data:/data" in " ".join(_argv(tmp_path, {"volumes": ["/data:/data"]}, only_volumes))
    with pytest.raises(TaskError, match="privileged"):
        _argv(tmp_path, {"privileged": True}, only_volumes)


def test_the_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Settings().docker_allow_volumes and not Settings().docker_allow_privileged
    monkeypatch.setenv("KESTREAM_DOCKER_ALLOW_VOLUMES", "true")
    monkeypatch.setenv("KESTREAM_DOCKER_ALLOW_PRIVILEGED", "true")
    assert Settings().docker_allow_volumes and Settings().docker_allow_privileged
