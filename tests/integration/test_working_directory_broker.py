"""WorkingDirectory on a real broker: the children run on a real worker, in one directory.

Executor, worker, flows table and client run as in ``kestream standalone``. A shell child writes
a file and reports the directory it ran in; a Python child reads the file; once the execution
ends, the executor's ``release`` record reaches the worker, which removes the directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from executor_harness import running_roles

from kestream.client import Client
from kestream.models.state import StateType

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SHARED = """
id: shared
namespace: test.workdir
tasks:
  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      seed.txt: "seed {{ flow.id }}"
    tasks:
      - id: write
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo "$(cat seed.txt)" > data.txt
          - echo "rows=3" >> data.txt
          - echo "::{\\"outputs\\":{\\"dir\\":\\"$PWD\\"}}::"
      - id: read
        type: io.kestra.plugin.scripts.python.Script
        script: |
          import json, pathlib
          lines = pathlib.Path("data.txt").read_text().splitlines()
          print("::" + json.dumps({"outputs": {"lines": lines}}) + "::")
  - id: outside
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - test ! -e data.txt
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(broker: Any, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    prefix = f"workdir-{broker.backend}-{id(request)}."
    async with running_roles(broker.bootstrap, prefix) as client:
        yield client


async def _until(check: Callable[[], bool], within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_children_share_files_on_the_worker_and_the_directory_is_removed(
    runtime: Client,
) -> None:
    flow = await runtime.deploy(SHARED)
    execution_id = await runtime.submit(flow.namespace, flow.id, {})
    execution = await runtime.wait(execution_id, timeout=120)
    assert execution.state.current is StateType.SUCCESS, execution
    runs = {run.taskId: run for run in execution.taskRunList}
    assert (runs["read"].outputs or {})["vars"] == {"lines": ["seed shared", "rows=3"]}
    shared = Path((runs["write"].outputs or {})["vars"]["dir"])
    assert shared.name.startswith("kestream-wd-")
    await _until(lambda: not shared.exists())  # the release record reached the worker
