"""Flow ``concurrency`` through the HTTP API of a ``kestream standalone`` on the broker under
test: QUEUED executions listed by the search's state filter (Kestra's ``filters`` and the older
``state=``), a queued one killed without running, and the line moving on as slots free up,
then a restart and a replay that wait for a slot of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_stack import Stack, start_stack

pytestmark = pytest.mark.integration

DONE = {"SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED"}


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"conc-{broker.backend}-{uuid.uuid4().hex[:8]}."
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("concurrency"))


def _flow(ns: str) -> str:
    return f"""
id: gate
namespace: {ns}
concurrency:
  limit: 1
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def _start(stack: Stack, ns: str) -> str:
    reply = stack.post_form(f"/executions/{ns}/gate", {})
    assert reply.status == 200, reply.body
    return str(reply.json()["id"])


def _queued(stack: Stack, query: str) -> set[str]:
    reply = stack.get(f"/executions/search?{query}")
    assert reply.status == 200, reply.body
    return {execution["id"] for execution in reply.json()["results"]}


def _history(execution: dict[str, Any]) -> list[str]:
    return [item["state"] for item in execution["state"]["histories"]]


def test_queued_executions_are_listed_killed_and_started_in_order(stack: Stack) -> None:
    ns = f"conc.{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", _flow(ns)).status == 200
    first = _start(stack, ns)
    stack.wait_state(first, {"PAUSED"})
    second, third, fourth = (_start(stack, ns) for _ in range(3))
    for execution_id in (second, third, fourth):
        stack.wait_state(execution_id, {"QUEUED"})
    wanted = {second, third, fourth}
    modern = f"filters[namespace][EQUALS]={ns}&filters[state][EQUALS]=QUEUED"
    assert _queued(stack, modern) == wanted
    assert _queued(stack, f"namespace={ns}&state=QUEUED") == wanted
    assert _queued(stack, f"filters[namespace][EQUALS]={ns}&filters[state][EQUALS]=PAUSED") == {
        first
    }

    assert stack.request("DELETE", f"/executions/{third}/kill").status == 202
    killed = stack.wait_state(third, DONE)
    assert _history(killed) == ["CREATED", "QUEUED", "KILLED"] and not killed.get("taskRunList")

    assert stack.request("POST", f"/executions/{first}/resume").status == 204
    assert stack.wait_state(first, DONE)["state"]["current"] == "SUCCESS"
    running = stack.wait_state(second, {"PAUSED"})
    assert _history(running)[:3] == ["CREATED", "QUEUED", "RUNNING"]
    assert stack.get(f"/executions/{fourth}").json()["state"]["current"] == "QUEUED"

    # A restart of a limited flow's execution asks for a slot again: it waits in line.
    assert stack.request("DELETE", f"/executions/{first}/kill").status == 202  # ended: no-op
    assert stack.request("DELETE", f"/executions/{second}/kill").status == 202
    assert stack.wait_state(second, DONE)["state"]["current"] == "KILLED"
    stack.wait_state(fourth, {"PAUSED"})  # the slot went to the next in line
    assert stack.request("POST", f"/executions/{second}/restart").status == 200
    waiting = stack.wait_state(second, {"QUEUED"})
    assert _history(waiting)[-2:] == ["RESTARTED", "QUEUED"]
    assert stack.request("POST", f"/executions/{fourth}/resume").status == 204
    assert stack.wait_state(second, {"PAUSED"})["state"]["current"] == "PAUSED"
    assert stack.request("DELETE", f"/executions/{second}/kill").status == 202
    assert stack.wait_state(second, DONE)["state"]["current"] == "KILLED"


def test_a_replay_from_a_task_run_waits_for_a_slot(stack: Stack) -> None:
    """A replay from a task run runs its chosen task run only once it holds a slot (it went
    straight to RUNNING, past the limit, before)."""
    ns = f"conc.{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", _flow(ns)).status == 200
    killed = _start(stack, ns)
    stack.wait_state(killed, {"PAUSED"})
    assert stack.request("DELETE", f"/executions/{killed}/kill").status == 202
    ended = stack.wait_state(killed, DONE)
    (run,) = ended["taskRunList"]
    holder = _start(stack, ns)
    stack.wait_state(holder, {"PAUSED"})
    reply = stack.request("POST", f"/executions/{killed}/replay?taskRunId={run['id']}")
    assert reply.status == 200, reply.body
    replay = str(reply.json()["id"])
    waiting = stack.wait_state(replay, {"QUEUED"})
    assert _history(waiting)[-3:] == ["KILLED", "RESTARTED", "QUEUED"]
    assert [r["state"]["current"] for r in waiting["taskRunList"]] == ["RESTARTED"]
    assert stack.request("POST", f"/executions/{holder}/resume").status == 204
    running = stack.wait_state(replay, {"PAUSED"})
    assert _history(running)[-3:] == ["QUEUED", "RUNNING", "PAUSED"]
    assert stack.request("POST", f"/executions/{replay}/resume").status == 204
    assert stack.wait_state(replay, DONE)["state"]["current"] == "SUCCESS"
