"""A user's task module runs flows on a real broker: through ``kestream run`` (KESTREAM_PLUGINS),
through ``kestream.Worker`` embedded in the test's own process, and under ``kestream standalone``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from api_stack import Stack, start_stack

import kestream
from kestream.client import Client
from kestream.models.state import StateType
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODULES = Path(__file__).resolve().parent / "plugin_modules"
WAIT_S = 90.0
T = TypeVar("T")


def flow(namespace: str) -> str:
    return f"""
id: plugged
namespace: {namespace}
inputs:
  - id: x
    type: STRING
    defaults: "20"
tasks:
  - id: add
    type: acme.tasks.Add
    a: "{{{{ inputs.x }}}}"
    b: 22
  - id: sum
    type: acme.tasks.Sum
    values: ["{{{{ outputs.add.sum }}}}", 8]
"""


def check_outputs(task_runs: list[Any]) -> None:
    outputs = {run["taskId"]: run.get("outputs") for run in task_runs}
    assert outputs == {"add": {"sum": 42}, "sum": {"total": 50, "parts": 2}}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env.update(extra)
    return env


def test_kestream_run_loads_the_modules_of_kestream_plugins(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "plugged.yaml"
    path.write_text(flow("acme.run"))
    env = _env(
        KESTREAM_BROKER=broker.bootstrap,
        KESTREAM_TOPIC_PREFIX=topic_prefix,
        KESTREAM_PLUGINS="acme_tasks",
        KESTREAM_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=os.pathsep.join([str(MODULES), str(ROOT)]),
    )
    result = subprocess.run(
        [sys.executable, "-m", "kestream.cli", "run", str(path), "--json", "-i", "x=20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    execution = json.loads(result.stdout)
    assert execution["state"]["current"] == "SUCCESS"
    check_outputs(execution["taskRunList"])


def test_without_the_plugin_the_flow_is_refused_naming_the_type(
    tmp_path: Path,
) -> None:
    path = tmp_path / "plugged.yaml"
    path.write_text(flow("acme.run"))
    result = subprocess.run(
        [sys.executable, "-m", "kestream.cli", "run", str(path)],
        capture_output=True,
        text=True,
        env=_env(PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert result.returncode == 4
    assert "unknown task type 'acme.tasks.Add'" in result.stderr
    assert "no plugin modules loaded" in result.stderr


async def test_an_embedded_worker_runs_the_users_tasks(
    broker: BrokerHandle, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(MODULES))
    settings = Settings(broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=2)
    async with (
        kestream.Executor(settings),
        kestream.Worker(settings, plugins=["acme_tasks"]) as worker,
        await Client.connect(settings) as client,
    ):
        assert worker.running
        deployed = await client.deploy(flow("acme.embedded"))
        execution_id = await client.submit(deployed.namespace, deployed.id, {"x": "20"})
        execution = await asyncio.wait_for(client.wait(execution_id), WAIT_S)
        logs = await client.logs(execution_id)
    assert execution.state.current is StateType.SUCCESS
    check_outputs([run.model_dump() for run in execution.taskRunList])
    assert any(entry.message == "adding 20 and 22 on attempt 1" for entry in logs), logs


WORKER_PROCESS = """
import kestream
kestream.Worker(plugins=["acme_tasks"]).run()
print("worker stopped")
"""


async def test_worker_run_serves_until_sigterm_in_a_users_process(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kestream.Worker(...).run()`` in a process of the user's own: it runs the task runs an
    executor sends, and stops cleanly on SIGTERM."""
    env = _env(
        KESTREAM_BROKER=broker.bootstrap,
        KESTREAM_TOPIC_PREFIX=topic_prefix,
        KESTREAM_PARTITIONS="2",
        KESTREAM_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=os.pathsep.join([str(MODULES), str(ROOT)]),
    )
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER_PROCESS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    monkeypatch.syspath_prepend(str(MODULES))
    settings = Settings(broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=2)
    executor = kestream.Executor(settings, plugins=["acme_tasks"])  # it validates the flow too
    try:
        async with executor, await Client.connect(settings) as client:
            deployed = await client.deploy(flow("acme.process"))
            execution_id = await client.submit(deployed.namespace, deployed.id, {"x": "20"})
            execution = await asyncio.wait_for(client.wait(execution_id), WAIT_S)
        assert execution.state.current is StateType.SUCCESS
        check_outputs([run.model_dump() for run in execution.taskRunList])
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output[-3000:]
    assert output.rstrip().endswith("worker stopped"), output[-3000:]


FAUST_APP = """
import sys
import faust
import kestream

settings = kestream.Settings()
app = faust.App(
    "acme-app", broker="kafka://" + settings.broker, datadir=sys.argv[1], web_enabled=False
)
kestream.Worker(settings, plugins=["acme_tasks"]).attach(app)
# no web server: two such apps (one per broker under pytest -n 2) would both take port 6066
sys.argv = ["acme-app", "worker", "--loglevel", "warn", "--without-web"]
app.main()
"""


async def test_an_attached_worker_runs_with_the_users_faust_app(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Worker.attach(app)``: the worker starts and stops with the user's own faust app."""
    env = _env(
        KESTREAM_BROKER=broker.bootstrap,
        KESTREAM_TOPIC_PREFIX=topic_prefix,
        KESTREAM_PARTITIONS="2",
        KESTREAM_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=os.pathsep.join([str(MODULES), str(ROOT)]),
    )
    log_path = tmp_path / "app.log"
    with log_path.open("wb") as log_file:  # a file: faust's output never blocks on a full pipe
        process = subprocess.Popen(
            [sys.executable, "-c", FAUST_APP, str(tmp_path)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    monkeypatch.syspath_prepend(str(MODULES))
    settings = Settings(broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=2)
    executor = kestream.Executor(settings, plugins=["acme_tasks"])
    try:
        async with executor, await Client.connect(settings) as client:
            deployed = await client.deploy(flow("acme.faust"))
            execution_id = await client.submit(deployed.namespace, deployed.id, {"x": "20"})
            # faust's own group join comes first (about 30 s on the embedded broker)
            execution = await _unless_exited(process, log_path, client.wait(execution_id))
        assert execution.state.current is StateType.SUCCESS, log_path.read_text()[-3000:]
        check_outputs([run.model_dump() for run in execution.taskRunList])
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log_path.read_text()[-3000:]


async def _unless_exited(
    process: subprocess.Popen[bytes], log_path: Path, waiting: Coroutine[Any, Any, T]
) -> T:
    """``waiting``'s result, or an assertion error with the app's log as soon as it exits."""

    async def exited() -> None:
        while process.poll() is None:
            await asyncio.sleep(0.2)

    result = asyncio.ensure_future(asyncio.wait_for(waiting, 3 * WAIT_S))
    watcher = asyncio.ensure_future(exited())
    await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if not result.done():
        result.cancel()
        raise AssertionError(f"the app exited early:\n{log_path.read_text()[-3000:]}")
    return result.result()


@pytest.fixture(scope="module")
def stack(broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.plugins.{uuid.uuid4().hex[:10]}."
    env = {
        "KESTREAM_PLUGINS": "acme_tasks",
        "PYTHONPATH": os.pathsep.join([str(MODULES), str(ROOT)]),
    }
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("plugins"), env)


def test_standalone_deploys_and_runs_a_flow_of_plugin_tasks(stack: Stack) -> None:
    namespace = f"acme.n{uuid.uuid4().hex[:8]}"
    reply = stack.post_yaml("/flows", flow(namespace))
    assert reply.status == 200, reply.body
    started = stack.post_form(f"/executions/{namespace}/plugged", {"x": "20"})
    assert started.status == 200, started.body
    execution = stack.wait_state(started.json()["id"], {"SUCCESS", "FAILED", "KILLED"}, WAIT_S)
    assert execution["state"]["current"] == "SUCCESS", stack.log_tail()
    check_outputs(execution["taskRunList"])


def test_standalone_refuses_a_type_no_plugin_provides(stack: Stack) -> None:
    source = flow(f"acme.n{uuid.uuid4().hex[:8]}").replace("acme.tasks.Sum", "acme.tasks.Summ")
    reply = stack.post_yaml("/flows", source)
    assert reply.status == 422, reply.body
    text = reply.body.decode()
    assert "unknown task type 'acme.tasks.Summ'" in text
    assert "did you mean 'acme.tasks.Sum'" in text
    assert "plugin modules loaded: acme_tasks" in text
