"""Webhook ``wait``, ``returnOutputs``, ``responseContentType`` and ``conditions`` through the
whole stack (``kestream standalone`` on a real broker), called without credentials as a webhook
caller would."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_stack import Stack, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.hook.{uuid.uuid4().hex[:10]}."
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("hook"))


@pytest.fixture
def ns() -> str:
    return f"it.hook.n{uuid.uuid4().hex[:8]}"


def _flow(ns: str, trigger_extra: str) -> str:
    return f"""
id: hook
namespace: {ns}
tasks:
  - id: greet
    type: io.kestra.plugin.core.debug.Return
    format: "hello {{{{ trigger.body.name }}}}"
  - id: label
    type: io.kestra.plugin.core.execution.Labels
    labels:
      caller: "{{{{ trigger.body.name }}}}"
outputs:
  - id: greeting
    type: STRING
    value: "{{{{ outputs.greet.value }}}}"
triggers:
  - id: web
    type: io.kestra.plugin.core.trigger.Webhook
    key: k3y
{trigger_extra}"""


def _deploy(stack: Stack, source: str) -> None:
    reply = stack.post_yaml("/flows", source)
    assert reply.status == 200, reply.body


def _call(stack: Stack, ns: str, name: str) -> Any:
    body = json.dumps({"name": name})
    path = f"/executions/webhook/{ns}/hook/k3y"
    return stack.request("POST", path, body, content_type="application/json", auth=None)


def test_wait_answers_with_the_ended_execution(stack: Stack, ns: str) -> None:
    _deploy(stack, _flow(ns, "    wait: true\n"))
    reply = _call(stack, ns, "Ada")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["state"]["current"] == "SUCCESS"
    assert body["outputs"] == {"greeting": "hello Ada"}
    labels = {label["key"]: label["value"] for label in body["labels"]}
    assert labels["caller"] == "Ada"  # set at run time by the Labels task
    assert body["url"].endswith(f"/executions/{body['id']}")


def test_return_outputs_answers_the_outputs_with_the_content_type(stack: Stack, ns: str) -> None:
    extra = (
        "    wait: true\n    returnOutputs: true\n    responseContentType: application/vnd.x+json\n"
    )
    _deploy(stack, _flow(ns, extra))
    reply = _call(stack, ns, "Linus")
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("application/vnd.x+json")
    assert json.loads(reply.body) == {"greeting": "hello Linus"}


def test_without_wait_the_answer_is_the_created_execution(stack: Stack, ns: str) -> None:
    _deploy(stack, _flow(ns, ""))
    reply = _call(stack, ns, "Grace")
    assert reply.status == 200, reply.body
    assert reply.json()["state"]["current"] == "CREATED"
    done = stack.wait_state(reply.json()["id"], {"SUCCESS", "FAILED"})
    assert done["outputs"] == {"greeting": "hello Grace"}


def test_conditions_not_met_answer_204_and_create_nothing(stack: Stack, ns: str) -> None:
    extra = (
        "    wait: true\n    conditions:\n"
        "      - type: io.kestra.plugin.core.condition.Expression\n"
        "        expression: \"{{ trigger.body.name == 'Ada' }}\"\n"
    )
    _deploy(stack, _flow(ns, extra))
    refused = _call(stack, ns, "Mallory")
    assert refused.status == 204 and refused.body == b""
    accepted = _call(stack, ns, "Ada")
    assert accepted.status == 200 and accepted.json()["state"]["current"] == "SUCCESS"
    assert _indexed_ids(stack, ns, accepted.json()["id"]) == [accepted.json()["id"]]


def _indexed_ids(stack: Stack, ns: str, expected: str) -> list[str]:
    """The namespace's execution ids once the index holds ``expected`` (it follows a little
    behind the API)."""
    deadline = time.monotonic() + 60
    while True:
        page = stack.get(f"/executions/search?filters[namespace][EQUALS]={ns}").json()
        ids = [e["id"] for e in page["results"]]
        if expected in ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.2)
