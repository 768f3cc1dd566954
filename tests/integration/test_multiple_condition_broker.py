"""MultipleCondition end to end on a running standalone: the scheduler keeps the window in the
triggers topic and starts the listening flow once both upstream flows succeeded."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_stack import Stack, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.multi.{uuid.uuid4().hex[:10]}."
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("multi"))


def deploy(stack: Stack, source: str) -> None:
    reply = stack.post_yaml("/flows", source)
    assert reply.status == 200, reply.body


def run(stack: Stack, ns: str, flow_id: str) -> str:
    reply = stack.post_form(f"/executions/{ns}/{flow_id}?wait=true", {})
    assert reply.status == 200 and reply.json()["state"]["current"] == "SUCCESS", reply.body
    return str(reply.json()["id"])


def started_by(
    stack: Stack, ns: str, execution_id: str, flow_id: str = "listener"
) -> dict[str, Any] | None:
    """The execution of ``flow_id`` that ``execution_id`` started, once it has succeeded."""
    for _ in range(50):
        for execution in listeners(stack, ns, flow_id):
            variables = execution["trigger"]["variables"]
            if variables["executionId"] == execution_id and execution["state"]["current"] == (
                "SUCCESS"
            ):
                return execution
        time.sleep(0.2)
    return None


def listeners(stack: Stack, ns: str, flow_id: str = "listener") -> list[dict[str, Any]]:
    query = f"filters[namespace][EQUALS]={ns}&filters[flowId][EQUALS]={flow_id}"
    page = stack.get("/executions/search?" + query).json()
    return [stack.get(f"/executions/{e['id']}").json() for e in page["results"]]


def test_the_listener_starts_once_both_flows_succeeded(stack: Stack) -> None:
    ns = f"it.multi.n{uuid.uuid4().hex[:8]}"
    for flow_id in ("a", "b", "ping"):
        deploy(
            stack,
            f"id: {flow_id}\nnamespace: {ns}\ntasks:\n  - id: t\n"
            "    type: io.kestra.plugin.core.log.Log\n    message: done\n",
        )
    deploy(
        stack,
        f"""id: listener
namespace: {ns}
tasks:
  - id: seen
    type: io.kestra.plugin.core.output.OutputValues
    values:
      last: "{{{{ trigger.flowId }}}}"
triggers:
  - id: both
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionStatus
        in: [SUCCESS]
      - id: multiple
        type: io.kestra.plugin.core.condition.MultipleCondition
        timeWindow:
          type: SLIDING_WINDOW
          window: PT1H
        conditions:
          flow_a:
            type: io.kestra.plugin.core.condition.ExecutionFlow
            namespace: {ns}
            flowId: a
          flow_b:
            type: io.kestra.plugin.core.condition.ExecutionFlow
            namespace: {ns}
            flowId: b
""",
    )
    # The scheduler reads flows in the order of the flows topic: once it starts ``probe``,
    # deployed after the listener, it has the listener too.
    deploy(
        stack,
        f"""id: probe
namespace: {ns}
tasks:
  - id: t
    type: io.kestra.plugin.core.log.Log
    message: seen
triggers:
  - id: on-ping
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: {ns}
        flowId: ping
""",
    )
    probed = None
    for _ in range(10):
        probed = started_by(stack, ns, run(stack, ns, "ping"), "probe")
        if probed is not None:
            break
    assert probed is not None, stack.log_tail()

    alone = run(stack, ns, "a")
    completing = run(stack, ns, "b")
    first = started_by(stack, ns, completing)
    assert first is not None, stack.log_tail()
    assert first["taskRunList"][0]["outputs"] == {"values": {"last": "b"}}
    # The window started over: a alone again starts nothing, b then completes it again.
    again = run(stack, ns, "a")
    assert started_by(stack, ns, run(stack, ns, "b")) is not None, stack.log_tail()
    started = {e["trigger"]["variables"]["executionId"] for e in listeners(stack, ns)}
    assert len(started) == 2 and not {alone, again} & started
