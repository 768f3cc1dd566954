"""What a script sees of its worker's environment: an allow-list plus its own ``env``, never a
``SECRET_*`` variable (plain or base64) nor one of kestream's settings."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestream.models.state import StateType
from kestream.secrets.environment import DOCKER_CLIENT, forget_secrets, task_environment
from kestream.settings import get_settings
from kestream.testing import Driver

VALUE = "hunter2-very-secret"
ENCODED = base64.b64encode(VALUE.encode()).decode()


@pytest.fixture(autouse=True)
def worker_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("SECRET_DB_PASSWORD", ENCODED)
    monkeypatch.setenv("KESTREAM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-scripts")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


FLOW = """
id: env
namespace: company.team
tasks:
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    env:
      GIVEN: by-the-task
    commands:
      - env
"""


def test_a_script_sees_no_secret_and_no_setting_of_its_worker() -> None:
    with Driver() as driver:
        driver.deploy(FLOW)
        execution = driver.start("company.team", "env", {})
        lines = [line.message for line in driver.logs(execution.id)]
    assert execution.state.current is StateType.SUCCESS
    names = {line.split("=", 1)[0] for line in lines if "=" in line}
    assert "PATH" in names and "GIVEN=by-the-task" in lines  # the allow-list and the task's env
    text = "\n".join(lines)
    for leaked in ("SECRET_", "KESTREAM_", VALUE, ENCODED, "AWS_SECRET_ACCESS_KEY"):
        assert leaked not in text


def test_the_allow_list() -> None:
    environ = {
        "PATH": "/bin", "LC_ALL": "C", "HTTPS_PROXY": "http://proxy:3128",
        "SECRET_X": "eA==", "KESTREAM_API_PASSWORD": "pw", "DOCKER_HOST": "tcp://d:2375",
        "GITHUB_TOKEN": "t",
    }  # fmt: skip
    assert task_environment(environ) == {
        "PATH": "/bin", "LC_ALL": "C", "HTTPS_PROXY": "http://proxy:3128",
    }  # fmt: skip
    docker = task_environment(environ, also=DOCKER_CLIENT)
    assert docker["DOCKER_HOST"] == "tcp://d:2375" and "SECRET_X" not in docker


def test_forget_secrets_keeps_the_rest() -> None:
    environ = {"PATH": "/bin", "SECRET_X": "eA==", "KESTREAM_DATA_DIR": "/d", "AWS_REGION": "eu"}
    forget_secrets(environ)
    assert environ == {"PATH": "/bin", "AWS_REGION": "eu"}
