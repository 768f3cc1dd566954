"""The API's limits on a running standalone: the ``?wait=true`` cap and the cap on live follows.

A stack of its own, started with small limits (a 2 s wait, one follow at a time).
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_stack import BASIC, Stack, start_stack

pytestmark = pytest.mark.integration

WAIT_MAX_S = 2


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.limits.{uuid.uuid4().hex[:10]}."
    yield from start_stack(
        broker.bootstrap,
        prefix,
        tmp_path_factory.mktemp("limits"),
        extra_env={"KESTREAM_API_WAIT_MAX_S": str(WAIT_MAX_S), "KESTREAM_API_MAX_FOLLOWS": "1"},
    )


@pytest.fixture
def ns() -> str:
    return f"it.limits.n{uuid.uuid4().hex[:8]}"


def sleepy(stack: Stack, ns: str) -> None:
    source = f"""
id: sleepy
namespace: {ns}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: started
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT10M
"""
    reply = stack.post_yaml("/flows", source)
    assert reply.status == 200, reply.body


def test_wait_past_its_cap_answers_with_the_execution_as_it_stands(stack: Stack, ns: str) -> None:
    sleepy(stack, ns)
    reply = stack.post_form(f"/executions/{ns}/sleepy?wait=true", {})
    assert reply.status == 200, reply.body
    execution = reply.json()
    assert execution["state"]["current"] == "RUNNING"
    assert execution["url"].endswith(f"/executions/{execution['id']}")
    assert stack.request("DELETE", f"/executions/{execution['id']}/kill").status == 202
    stack.wait_state(execution["id"], {"KILLED"})


def test_a_follow_past_the_cap_is_refused_until_a_slot_is_free(stack: Stack, ns: str) -> None:
    sleepy(stack, ns)
    created = stack.post_form(f"/executions/{ns}/sleepy", {}).json()
    execution_id = created["id"]
    stack.wait_state(execution_id, {"RUNNING"})
    request = urllib.request.Request(
        f"{stack.api}/executions/{execution_id}/follow", headers={"Authorization": BASIC}
    )
    with urllib.request.urlopen(request, timeout=60) as first:
        assert first.readline().decode().startswith("id: start")
        for path in (f"/executions/{execution_id}/follow", f"/logs/{execution_id}/follow"):
            refused = stack.get(path)
            assert refused.status == 503, refused.body
            assert refused.headers["Retry-After"].isdigit()
            assert "at most 1 live follows" in refused.json()["message"]
        index = stack.get(stack.base + "/health/ready").json()["checks"]["index"]
        assert (index["follows"], index["follows_max"]) == (1, 1)
        assert (index["refused"], index["retrying"]) == (0, False)
        assert stack.request("DELETE", f"/executions/{execution_id}/kill").status == 202
        rest = first.read().decode()  # the stream ends with the execution
    assert "id: end" in rest and '"KILLED"' in rest
    frames = stack.events(f"/executions/{execution_id}/follow")  # the slot is free again
    assert [kind for kind, _ in frames] == ["start", "end"]
