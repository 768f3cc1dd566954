"""PurgeExecutions and PurgeLogs end to end on a running standalone: a flow purges another
flow's executions and logs by date; the API then finds them gone, and the counts are right.

The tasks run on the worker, which asks the API (``KESTREAM_API_URL``, here the default: the
API's own port, with its credentials) to purge; the deletions travel as records through the
logs topic into every index: a second API process, with an index of its own, drops them too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_stack import PASSWORD, USERNAME, Stack, start_stack

from kestream.runtime.embedded_broker import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stacks(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """A standalone, and a second API process on the same topics with an index of its own."""
    prefix = f"it.purge.{uuid.uuid4().hex[:10]}."
    for stack in start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("purge")):
        yield from _second_api(stack, broker.bootstrap, prefix, tmp_path_factory.mktemp("api2"))


def _second_api(
    stack: Stack, bootstrap: str, prefix: str, workdir: Path
) -> Iterator[tuple[Stack, Stack]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env.update(
        KESTREAM_BROKER=bootstrap,
        KESTREAM_TOPIC_PREFIX=prefix,
        KESTREAM_WEB_PORT=str(port),
        KESTREAM_DATA_DIR=str(workdir / "data"),
        KESTREAM_API_USERNAME=USERNAME,
        KESTREAM_API_PASSWORD=PASSWORD,
    )
    log_path = workdir / "api.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "kestream.cli", "api"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    other = Stack(process, f"http://127.0.0.1:{port}", "main", log_path)
    try:
        for _ in range(1200):
            assert process.poll() is None, other.log_tail()
            try:
                if other.get(other.api + "/flows/search", timeout=5).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        yield stack, other
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def target(ns: str) -> str:
    return f"""id: target
namespace: {ns}
tasks:
  - id: info
    type: io.kestra.plugin.core.log.Log
    message: hello
  - id: warn
    type: io.kestra.plugin.core.log.Log
    message: careful
    level: WARN
"""


def purging(ns: str, flow_id: str, task: str) -> str:
    return f"id: {flow_id}\nnamespace: {ns}.ops\ntasks:\n  - id: purge\n{task}"


def deploy(stack: Stack, source: str) -> None:
    reply = stack.post_yaml("/flows", source)
    assert reply.status == 200, reply.body


def run(stack: Stack, namespace: str, flow_id: str) -> dict[str, Any]:
    reply = stack.post_form(f"/executions/{namespace}/{flow_id}?wait=true", {})
    assert reply.status == 200, reply.body
    return stack.wait_state(reply.json()["id"], {"SUCCESS", "FAILED"})


def lines(
    stack: Stack, execution_id: str, expected: int, *, exactly: bool = False
) -> list[dict[str, Any]]:
    """The execution's lines, once the index holds ``expected`` of them (at least, or exactly)."""
    found: list[dict[str, Any]] = []
    for _ in range(600):
        reply = stack.get(f"/logs/{execution_id}")
        found = reply.json() if reply.status == 200 else []
        if len(found) == expected or (len(found) > expected and not exactly):
            return found
        time.sleep(0.1)
    raise AssertionError(f"the index never held {expected} lines of {execution_id}: {found}")


def gone(stack: Stack, path: str) -> bool:
    """Whether ``path`` answers 404 once this API's index has read what came before."""
    for _ in range(600):
        if stack.get(path).status == 404:
            return True
        time.sleep(0.1)
    return False


def test_a_flow_purges_another_flows_logs_then_executions(stacks: tuple[Stack, Stack]) -> None:
    stack, other = stacks
    ns = f"it.purge.n{uuid.uuid4().hex[:8]}"
    deploy(stack, target(ns))
    first, second = run(stack, ns, "target"), run(stack, ns, "target")
    for execution in (first, second):
        assert execution["state"]["current"] == "SUCCESS"
        assert len(lines(stack, execution["id"], 2)) == 2

    deploy(
        stack,
        purging(
            ns,
            "purge-info",
            f"""    type: io.kestra.plugin.core.log.PurgeLogs
    namespace: {ns}
    flowId: target
    logLevels: [INFO]
    endDate: "{{{{ now() }}}}"
""",
        ),
    )
    done = run(stack, f"{ns}.ops", "purge-info")
    assert done["state"]["current"] == "SUCCESS", done
    assert done["taskRunList"][0]["outputs"] == {"count": 2}
    for execution in (first, second):
        assert [line["level"] for line in stack.get(f"/logs/{execution['id']}").json()] == ["WARN"]
        # The other API's index applies the same records: its lines go too, once it read them.
        assert [line["level"] for line in lines(other, execution["id"], 1, exactly=True)] == [
            "WARN"
        ]

    deploy(
        stack,
        purging(
            ns,
            "purge-all",
            f"""    type: io.kestra.plugin.core.execution.PurgeExecutions
    namespace: {ns}
    flowId: target
    states: [SUCCESS]
    startDate: "{{{{ now() | dateAdd(-1, 'HOURS') }}}}"
    endDate: "{{{{ now() }}}}"
""",
        ),
    )
    done = run(stack, f"{ns}.ops", "purge-all")
    assert done["state"]["current"] == "SUCCESS", done
    assert done["taskRunList"][0]["outputs"] == {
        "executionsCount": 2,
        "logsCount": 2,
        "metricsCount": 0,
        "storagesCount": 0,
    }
    for execution in (first, second):
        assert stack.get(f"/executions/{execution['id']}").status == 404
        assert stack.get(f"/logs/{execution['id']}").status == 404  # lines went with it
        assert gone(other, f"/executions/{execution['id']}")
    for api in (stack, other):
        listed = api.get(f"/executions/search?filters[namespace][PREFIX]={ns}").json()
        # Only the purging flow's own executions are left (running when they purged: not taken).
        assert {e["flowId"] for e in listed["results"]} <= {"purge-info", "purge-all"}
    assert stack.get(f"/executions/search?filters[namespace][PREFIX]={ns}").json()["total"] == 2

    # DELETE of one execution travels the same way: gone from both indexes, lines included.
    third = run(stack, ns, "target")
    assert len(lines(other, third["id"], 2)) == 2
    assert stack.request("DELETE", f"/executions/{third['id']}").status == 204
    assert stack.get(f"/executions/{third['id']}").status == 404
    assert gone(other, f"/executions/{third['id']}")
    assert gone(other, f"/logs/{third['id']}")
