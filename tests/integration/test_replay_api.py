"""Replay through the HTTP API on a running standalone: ``/replay`` and ``/replay-with-inputs``.

The replayed execution's JSON comes from the API's index, as a user's replay sends it; the new
execution runs on the executor and worker processes, over the broker under test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_stack import Stack, start_stack

pytestmark = pytest.mark.integration

DONE = {"SUCCESS", "FAILED", "KILLED", "WARNING", "CANCELLED"}
PAUSE = "io.kestra.plugin.core.flow.Pause"


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.replay.{uuid.uuid4().hex[:10]}."
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("replay"))


def _flow(ns: str) -> str:
    return f"""
id: seq
namespace: {ns}
inputs:
  - id: ok
    type: BOOLEAN
    defaults: false
tasks:
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: "first {{{{ inputs.ok }}}}"
  - id: check
    type: io.kestra.plugin.core.execution.Assert
    conditions:
      - "{{{{ inputs.ok }}}}"
  - id: last
    type: io.kestra.plugin.core.debug.Return
    format: "after {{{{ outputs.first.value }}}}"
"""


def _run(execution: dict[str, Any], task_id: str) -> dict[str, Any]:
    (run,) = [run for run in execution["taskRunList"] if run["taskId"] == task_id]
    return run


def _history(execution: dict[str, Any]) -> list[str]:
    return [h["state"] for h in execution["state"]["histories"]]


def test_replay_from_a_task_run_with_new_inputs_then_without(stack: Stack) -> None:
    ns = f"it.replay.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", _flow(ns)).status == 200
    started = stack.post_form(f"/executions/{ns}/seq", {})
    assert started.status == 200, started.body
    failed = stack.wait_state(started.json()["id"], DONE)
    assert failed["state"]["current"] == "FAILED"
    check = _run(failed, "check")

    reply = stack.post_form(
        f"/executions/{failed['id']}/replay-with-inputs?taskRunId={check['id']}", {"ok": "true"}
    )
    assert reply.status == 200, reply.body
    answered = reply.json()  # the new execution as the executor starts it
    assert answered["id"] != failed["id"] and answered["parentId"] == failed["id"]
    assert answered["state"]["current"] == "RESTARTED"
    assert answered["originalId"] == failed["originalId"]
    assert answered["metadata"]["attemptNumber"] == 2
    assert {"key": "system.replay", "value": "true"} in answered["labels"]
    assert [run["taskId"] for run in answered["taskRunList"]] == ["first", "check"]

    done = stack.wait_state(answered["id"], DONE)
    assert done["state"]["current"] == "SUCCESS"
    assert done["inputs"] == {"ok": True}
    assert _history(done) == [*_history(failed), "RESTARTED", "RUNNING", "SUCCESS"]
    first = _run(done, "first")  # kept from the replayed execution, not run again
    assert first["id"] == _run(answered, "first")["id"] != _run(failed, "first")["id"]
    assert first["outputs"] == {"value": "first false"}
    assert _run(done, "last")["outputs"] == {"value": "after first false"}

    again = stack.request("POST", f"/executions/{failed['id']}/replay?taskRunId={check['id']}")
    assert again.status == 200, again.body
    assert stack.wait_state(again.json()["id"], DONE)["state"]["current"] == "FAILED"

    whole = stack.request("POST", f"/executions/{failed['id']}/replay")
    assert whole.status == 200, whole.body
    assert whole.json()["state"]["current"] == "CREATED"
    rerun = stack.wait_state(whole.json()["id"], DONE)
    assert _history(rerun) == ["CREATED", "RUNNING", "FAILED"]
    assert rerun["parentId"] == failed["id"]

    original = stack.get(f"/executions/{failed['id']}").json()
    assert original["state"]["current"] == "FAILED"
    assert [run["id"] for run in original["taskRunList"]] == [
        run["id"] for run in failed["taskRunList"]
    ]


def test_replays_that_cannot_be_made_are_refused(stack: Stack) -> None:
    ns = f"it.replay.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", _flow(ns)).status == 200
    pause = f"id: gate\nnamespace: {ns}\ntasks:\n  - id: wait\n    type: {PAUSE}\n"
    assert stack.post_yaml("/flows", pause).status == 200
    failed = stack.wait_state(stack.post_form(f"/executions/{ns}/seq", {}).json()["id"], DONE)
    paused = stack.wait_state(
        stack.post_form(f"/executions/{ns}/gate", {}).json()["id"], {"PAUSED"}
    )

    assert stack.request("POST", f"/executions/{paused['id']}/replay").status == 409
    assert stack.request("POST", "/executions/nope/replay").status == 404
    unknown = stack.request("POST", f"/executions/{failed['id']}/replay?taskRunId=nope")
    assert unknown.status == 422 and b"has no task run 'nope'" in unknown.body
    assert stack.request("POST", f"/executions/{failed['id']}/replay?revision=9").status == 404
    bad = stack.post_form(f"/executions/{failed['id']}/replay-with-inputs", {"ok": "maybe"})
    assert bad.status == 422, bad.body


def test_a_task_run_of_an_errors_block_is_refused_naming_the_block(stack: Stack) -> None:
    ns = f"it.replay.n{uuid.uuid4().hex[:8]}"
    source = _flow(ns) + "errors:\n  - id: on_error\n    type: io.kestra.plugin.core.log.Log\n"
    assert stack.post_yaml("/flows", source + "    message: failed\n").status == 200
    failed = stack.wait_state(stack.post_form(f"/executions/{ns}/seq", {}).json()["id"], DONE)
    assert failed["state"]["current"] == "FAILED"
    on_error = _run(failed, "on_error")

    refused = stack.request("POST", f"/executions/{failed['id']}/replay?taskRunId={on_error['id']}")
    assert refused.status == 422, refused.body
    assert b"ran in the flow's errors block" in refused.body
    assert b"replay from the task run the block followed" in refused.body

    # From the task run that failed, the errors block runs again when its turn comes.
    check = _run(failed, "check")
    again = stack.request("POST", f"/executions/{failed['id']}/replay?taskRunId={check['id']}")
    assert again.status == 200, again.body
    done = stack.wait_state(again.json()["id"], DONE)
    assert done["state"]["current"] == "FAILED"
    assert _run(done, "on_error")["state"]["current"] == "SUCCESS"
    assert _run(done, "on_error")["id"] != on_error["id"]
