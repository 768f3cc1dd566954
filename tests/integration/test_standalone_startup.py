"""``kestream standalone``'s ``/health/ready`` is honest from its first 200: an execution
submitted at that moment runs to its end, and its end fires the Flow trigger of another flow.

The real command on its embedded broker (no ``KESTREAM_BROKER``), so these run once, whatever
``--kafka-backend`` says: a first start on an empty data dir, then a restart on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kestream.runtime.embedded_broker import free_port
from tests.integration.api_stack import PASSWORD, USERNAME, Stack

pytestmark = pytest.mark.integration

TERMINAL = {"SUCCESS", "FAILED", "KILLED", "WARNING"}
READY_TIMEOUT_S = 180.0

UPSTREAM = """
id: upstream
namespace: startup.test
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: up
"""

DOWNSTREAM = """
id: downstream
namespace: startup.test
tasks:
  - id: seen
    type: io.kestra.plugin.core.output.OutputValues
    values:
      from: "{{ trigger.executionId }}"
triggers:
  - id: after-upstream
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: startup.test
        flowId: upstream
"""


def _launch(workdir: Path, flows: Path, port: int, log_name: str) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env.update(
        KESTREAM_WEB_PORT=str(port),
        KESTREAM_EXECUTOR_STREAM_THREADS="2",
        KESTREAM_DATA_DIR=str(workdir / "data"),
        KESTREAM_API_USERNAME=USERNAME,
        KESTREAM_API_PASSWORD=PASSWORD,
    )
    log_path = workdir / log_name
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "kestream.cli", "standalone", "--flows", str(flows)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Stack(process, f"http://127.0.0.1:{port}", "main", log_path)


def _first_ready(stack: Stack) -> None:
    """Return at the first 200 of ``/health/ready``, polled often so nothing runs in between."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            raise AssertionError(f"standalone exited early:\n{stack.log_tail()}")
        try:
            if stack.get(stack.base + "/health/ready", timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"standalone never became ready:\n{stack.log_tail()}")


def _downstream_of(stack: Stack, upstream: str) -> list[dict[str, Any]]:
    page = stack.get(
        "/executions/search?filters[namespace][EQUALS]=startup.test"
        "&filters[flowId][EQUALS]=downstream"
    ).json()
    runs = [stack.get(f"/executions/{e['id']}").json() for e in page["results"]]
    return [
        run
        for run in runs
        if run["state"]["current"] in TERMINAL
        and run["taskRunList"][0].get("outputs", {}).get("values", {}).get("from") == upstream
    ]


def _stop(stack: Stack) -> int:
    if stack.process.poll() is None:
        os.killpg(stack.process.pid, signal.SIGINT)
    try:
        return stack.process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(stack.process.pid, signal.SIGKILL)
        return stack.process.wait()


def test_an_execution_submitted_at_the_first_ready_runs_and_fires_its_flow_trigger(
    tmp_path: Path,
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "upstream.yaml").write_text(UPSTREAM)
    (flows / "downstream.yaml").write_text(DOWNSTREAM)
    port = free_port()
    for attempt, log_name in enumerate(("fresh.log", "restart.log")):
        stack = _launch(tmp_path, flows, port, log_name)
        try:
            _first_ready(stack)
            reply = stack.post_form("/executions/startup.test/upstream", {})
            assert reply.status == 200, reply.body
            upstream = str(reply.json()["id"])
            ended = stack.wait_state(upstream, TERMINAL, timeout=60)
            assert ended["state"]["current"] == "SUCCESS", (attempt, stack.log_tail())
            deadline = time.monotonic() + 60
            while not (fired := _downstream_of(stack, upstream)):
                assert time.monotonic() < deadline, f"no downstream run:\n{stack.log_tail()}"
                time.sleep(0.2)
            assert [run["state"]["current"] for run in fired] == ["SUCCESS"]
        finally:
            assert _stop(stack) == 0, stack.log_tail()
