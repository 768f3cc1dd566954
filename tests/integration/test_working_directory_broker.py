"""WorkingDirectory on a real broker: the children run on a real worker, in one directory.

Executor, worker, flows table and client run as in ``kestream standalone``. A shell child writes
a file and reports the directory it ran in; a Python child reads the file; once the execution
ends, the executor's ``release`` record reaches the worker, which removes the directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from executor_harness import running_roles

from kestream.client import Client
from kestream.models.state import StateType
from kestream.storage import Storage, parse_uri, using_storage

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


KEPT = """
id: kept
namespace: test.workdir
tasks:
  - id: workdir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    outputFiles:
      - data.txt
    cache:
      ttl: PT1H
      patterns:
        - "*.txt"
    tasks:
      - id: write
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - if [ -e data.txt ]; then echo again >> data.txt; else echo first > data.txt; fi
          - echo "::{\\"outputs\\":{\\"dir\\":\\"$PWD\\"}}::"
"""


@pytest.fixture(scope="module")
def stored_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    """The internal storage of the roles (in this process) and of the test's own reads."""
    with using_storage(Storage.local(tmp_path_factory.mktemp("storage"))) as storage:
        yield storage


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(
    broker: Any, stored_files: Storage, request: pytest.FixtureRequest
) -> AsyncIterator[Client]:
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


async def test_output_files_and_cache_of_the_working_directory(
    runtime: Client, stored_files: Storage
) -> None:
    """The worker collects the directory's outputFiles and saves its cache after the last
    child, and restores the cache into the next execution's directory before the first."""
    flow = await runtime.deploy(KEPT)
    contents = []
    for _ in range(2):
        execution_id = await runtime.submit(flow.namespace, flow.id, {})
        execution = await runtime.wait(execution_id, timeout=120)
        assert execution.state.current is StateType.SUCCESS, execution
        runs = {run.taskId: run for run in execution.taskRunList}
        assert len(runs) == 2
        uri = (runs["workdir"].outputs or {})["outputFiles"]["data.txt"]
        contents.append(stored_files.get(parse_uri(uri)).decode())
        shared = Path((runs["write"].outputs or {})["vars"]["dir"])
        await _until(lambda: not shared.exists())  # noqa: B023 (awaited within the iteration)
    assert contents == ["first\n", "first\nagain\n"]
