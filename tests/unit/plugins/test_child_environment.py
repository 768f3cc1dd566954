"""Blocking Python task code runs in a pool child that forgot the worker's secrets and settings
variables: a process the code starts inherits none of them, while the code keeps the settings."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import kestream
from kestream.executor.commands import RunTask
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.settings import get_settings
from kestream.tasks.base import RunnableTask
from kestream.worker.runner import TaskRunner

ENCODED = base64.b64encode(b"hunter2-very-secret").decode()


def environment() -> dict[str, Any]:
    started = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    return {
        "own": sorted(os.environ),
        "started": started,
        "data_dir": str(get_settings().data_dir),
    }


@pytest.fixture(autouse=True)
def worker_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("SECRET_DB_PASSWORD", ENCODED)
    monkeypatch.setenv("KESTREAM_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    kestream.task("acme.tasks.Environment")(environment)
    yield
    get_settings.cache_clear()


@pytest.fixture
async def runner() -> AsyncIterator[TaskRunner]:
    runner = TaskRunner(threads=1)  # its own pool: forked now, with the variables above set
    yield runner
    runner.close()


async def test_the_pool_child_forgets_secrets_but_keeps_settings(
    runner: TaskRunner, tmp_path: Path
) -> None:
    flow = parse_flow("id: f\nnamespace: acme\ntasks:\n  - id: t\n    type: acme.tasks.Environment")
    task = flow.task_index()["t"]
    assert isinstance(task, RunnableTask) and task.isolation != "thread"
    result, _ = await runner.run(RunTask("ex", "r", 1, "acme", "f", 1, task, {}, None))
    assert result.state is StateType.SUCCESS, result.error
    outputs = result.outputs or {}
    assert not [name for name in outputs["own"] if name.startswith(("SECRET_", "KESTREAM_"))]
    assert "SECRET_" not in outputs["started"] and ENCODED not in outputs["started"]
    assert "KESTREAM_" not in outputs["started"]
    assert outputs["data_dir"] == str(tmp_path / "data")
    assert os.environ["SECRET_DB_PASSWORD"] == ENCODED  # the worker itself keeps them
