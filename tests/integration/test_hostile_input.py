"""Hostile input at every public door of a running installation: none takes kestream down.

One ``kestream standalone`` per broker takes, through its HTTP API, payloads built to break it:
maps shaped like the changelog codec's tags, integers past 64 bits, infinities, unpaired
surrogates, nesting deeper than JSON encoders allow, NUL characters, bytes that are not UTF-8,
alias bombs. Each either runs, with the value coming back unchanged, or is refused with 4xx naming
where the bad value is. After each class of payload a normal execution still runs to SUCCESS and
no role process has exited (``standalone`` stops everything, and exits, when one role dies).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from api_stack import Stack, start_stack

pytestmark = pytest.mark.integration

DONE = {"SUCCESS", "FAILED", "KILLED", "WARNING"}

#: Maps shaped like the codec's own tags (and its escape): data, to be carried as data.
LOOKALIKES: list[Any] = [
    {"$td": 1e300},
    {"$dt": "garbage"},
    {"$d": [1, 2]},
    {"$t": {"$td": -1}},
    {"$esc": 5},
    {"$esc": {"$esc": {}}},
    {"nested": [{"$td": "x"}, {"$dt": None}]},
]

#: JSON texts that hold what no record can carry, with the path the answer must name.
UNPORTABLE_JSON = [
    ('{"a": 123456789012345678901234567890}', "a"),
    ('{"a": [1, -99999999999999999999]}', "a[1]"),
    ('{"a": 1e400}', "a"),
    ('{"a": ["\\ud800"]}', "a[0]"),
    ("[" * 300 + "]" * 300, "[0][0]"),
    ("[" * 20_000 + "]" * 20_000, ""),
]


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.hostile.{uuid.uuid4().hex[:10]}."
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def ns(stack: Stack) -> str:
    namespace = f"it.hostile.n{uuid.uuid4().hex[:8]}"
    for source in (
        _probe(namespace),
        _hook(namespace),
        _typed(namespace),
        _pause(namespace),
        _out(namespace),
    ):
        reply = stack.post_yaml("/flows", source)
        assert reply.status == 200, reply.body
    return namespace


def _probe(ns: str) -> str:
    return f"""
id: probe
namespace: {ns}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: still alive
"""


def _hook(ns: str) -> str:
    return f"""
id: hook
namespace: {ns}
tasks:
  - id: echo
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ trigger.body | json }}}}"
triggers:
  - id: web
    type: io.kestra.plugin.core.trigger.Webhook
    key: hostile-key
"""


def _typed(ns: str) -> str:
    return f"""
id: typed
namespace: {ns}
inputs:
  - id: doc
    type: JSON
    defaults: "{{}}"
  - id: n
    type: INT
    defaults: 1
  - id: f
    type: FLOAT
    defaults: 1.5
  - id: s
    type: STRING
    defaults: x
  - id: d
    type: DURATION
    defaults: PT1S
  - id: t
    type: DATETIME
    defaults: "2024-01-01T00:00:00Z"
  - id: u
    type: URI
    defaults: "https://example.org"
  - id: e
    type: EMAIL
    defaults: "a@example.org"
tasks:
  - id: out
    type: io.kestra.plugin.core.output.OutputValues
    values:
      doc: "{{{{ inputs.doc | json }}}}"
      s: "{{{{ inputs.s }}}}"
outputs:
  - id: doc
    type: JSON
    value: "{{{{ inputs.doc | json }}}}"
"""


def _out(ns: str) -> str:
    """Outputs built at run time from text: the task-output and flow-output doors."""
    return f"""
id: out
namespace: {ns}
inputs:
  - id: text
    type: STRING
tasks:
  - id: values
    type: io.kestra.plugin.core.output.OutputValues
    values:
      text: "{{{{ inputs.text }}}}"
      parsed: "{{{{ fromJson(inputs.text) }}}}"
outputs:
  - id: doc
    type: JSON
    value: "{{{{ inputs.text }}}}"
"""


def _pause(ns: str) -> str:
    return f"""
id: pause
namespace: {ns}
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    onResume:
      - id: doc
        type: JSON
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ outputs.wait.onResume.doc | json }}}}"
"""


def _alive(stack: Stack, ns: str) -> None:
    """The installation still works: every role process is up, a normal execution succeeds."""
    assert stack.process.poll() is None, f"standalone exited:\n{stack.log_tail()}"
    reply = stack.post_form(f"/executions/{ns}/probe?wait=true", {})
    assert reply.status == 200, reply.body
    assert reply.json()["state"]["current"] == "SUCCESS"
    health = stack.get(stack.base + "/health/ready")
    assert health.status == 200, health.body
    assert stack.process.poll() is None, f"standalone exited:\n{stack.log_tail()}"


def _log_line(stack: Stack, execution_id: str, texts: tuple[str, ...]) -> str:
    """The first log line of the execution holding one of ``texts`` (the index fills a little
    behind the execution)."""
    deadline = time.monotonic() + 30
    logs: Any = None
    while time.monotonic() < deadline:
        logs = stack.get(f"/logs/{execution_id}").json()
        found = [line["message"] for line in logs if any(t in line["message"] for t in texts)]
        if found:
            return str(found[0])
        time.sleep(0.2)
    raise AssertionError(f"no log line with {texts!r}: {logs}")


def _refused(reply: Any, path: str) -> None:
    assert reply.status in (400, 422), (reply.status, reply.body)
    body = reply.json()
    assert body["message"]
    if path:
        assert path in json.dumps(body), body


# -- webhook bodies ----------------------------------------------------------------------------


def test_webhook_bodies_shaped_like_codec_tags_come_back_unchanged(stack: Stack, ns: str) -> None:
    for value in LOOKALIKES:
        reply = stack.request(
            "POST",
            f"/executions/webhook/{ns}/hook/hostile-key",
            json.dumps(value),
            content_type="application/json",
        )
        assert reply.status == 200, reply.body
        done = stack.wait_state(reply.json()["id"], DONE)
        assert done["state"]["current"] == "SUCCESS", done
        assert done["trigger"]["variables"]["body"] == value
    _alive(stack, ns)


def test_webhook_bodies_no_record_can_carry_are_refused_with_the_path(
    stack: Stack, ns: str
) -> None:
    for text, path in UNPORTABLE_JSON:
        reply = stack.request(
            "POST",
            f"/executions/webhook/{ns}/hook/hostile-key",
            text,
            content_type="application/json",
        )
        _refused(reply, f"body{path}" if path[:1] in ("[", "") else f"body.{path}")
    _alive(stack, ns)


def test_webhook_bodies_that_are_not_json_are_kept_as_text(stack: Stack, ns: str) -> None:
    for raw, content_type in (
        (b'{"a": NaN}', "application/json"),
        (b"{not json", "application/json"),
        (b"\xff\xfe\x00binary", "text/plain"),
        (b"nul \x00 inside", "text/plain"),
        (b"", "application/json"),
    ):
        reply = stack.request(
            "POST", f"/executions/webhook/{ns}/hook/hostile-key", raw, content_type=content_type
        )
        assert reply.status == 200, (raw, reply.body)
        done = stack.wait_state(reply.json()["id"], DONE)
        assert done["state"]["current"] == "SUCCESS", done
    too_big = stack.request(
        "POST", f"/executions/webhook/{ns}/hook/hostile-key", b"x" * (11 * 1024 * 1024)
    )
    assert too_big.status == 413
    _alive(stack, ns)


# -- execution inputs --------------------------------------------------------------------------


def test_json_inputs_shaped_like_codec_tags_round_trip(stack: Stack, ns: str) -> None:
    for value in LOOKALIKES:
        reply = stack.post_form(f"/executions/{ns}/typed?wait=true", {"doc": json.dumps(value)})
        assert reply.status == 200, reply.body
        done = reply.json()
        assert done["state"]["current"] == "SUCCESS", done
        assert done["inputs"]["doc"] == value
        assert done["outputs"]["doc"] == value
        fetched = stack.get(f"/executions/{done['id']}").json()
        assert fetched["inputs"]["doc"] == value
    _alive(stack, ns)


def test_inputs_no_record_can_carry_are_refused_naming_the_input(stack: Stack, ns: str) -> None:
    for text, path in UNPORTABLE_JSON:
        reply = stack.post_form(f"/executions/{ns}/typed", {"doc": text})
        _refused(reply, "inputs.doc")
        if path and not path.startswith("["):
            assert f"doc.{path}" in reply.body.decode()
    for field, value in (
        ("n", str(2**70)),
        ("n", "-" + "9" * 40),
        ("n", "1" * 5000),  # past Python's own digit limit
        ("f", "1e400"),
        ("d", "PT" + "9" * 30 + "S"),
        ("t", "9999-12-31T23:59:59-23:59"),
        # almost-matching texts that would backtrack a naive pattern for seconds
        ("f", "1" * 32_000 + "x"),
        ("u", "a://" + "x" * 32_000 + " y"),
        ("e", "a@" + "." * 32_000 + " "),
    ):
        reply = stack.post_form(f"/executions/{ns}/typed", {field: value})
        _refused(reply, f"inputs.{field}")
    # the same through a JSON body, read exactly
    reply = stack.request(
        "POST",
        f"/executions/{ns}/typed",
        '{"doc": {"a": 123456789012345678901234567890}}',
        content_type="application/json",
    )
    _refused(reply, "inputs.doc.a")
    _alive(stack, ns)


def test_text_inputs_with_nul_and_odd_characters_round_trip(stack: Stack, ns: str) -> None:
    # The last is just under KESTREAM_OUTPUT_INLINE_MAX_BYTES (64 KiB), so it stays inline.
    for text in ("nul\x00inside", "é€😀", "\u2028line\u2029sep", "\ufeffbom", "x" * 60_000):
        reply = stack.post_form(f"/executions/{ns}/typed?wait=true", {"s": text})
        assert reply.status == 200, reply.body
        done = reply.json()
        assert done["state"]["current"] == "SUCCESS", done
        assert done["inputs"]["s"] == text
        fetched = stack.get(f"/executions/{done['id']}").json()
        assert fetched["inputs"]["s"] == text
    # Over it, the input is stored and the execution carries its reference (docs/storage.md).
    reply = stack.post_form(f"/executions/{ns}/typed?wait=true", {"s": "x" * 100_000})
    assert reply.status == 200, reply.body
    done = reply.json()
    assert done["state"]["current"] == "SUCCESS", done
    assert done["inputs"]["s"]["@ref"].startswith("kestra:///"), done["inputs"]
    _alive(stack, ns)


def test_labels_and_query_parameters_that_are_hostile_are_refused_or_kept(
    stack: Stack, ns: str
) -> None:
    for labels in ("labels=%ED%A0%80:x", "labels=k:%00", "labels=nocolon", "labels=" + "k" * 5000):
        reply = stack.post_form(f"/executions/{ns}/probe?{labels}", {})
        assert reply.status in (200, 400, 422), (labels, reply.status, reply.body)
    _alive(stack, ns)


# -- task and flow outputs --------------------------------------------------------------------


def test_outputs_built_at_run_time_are_data_or_fail_their_execution(stack: Stack, ns: str) -> None:
    for value in LOOKALIKES:
        reply = stack.post_form(f"/executions/{ns}/out?wait=true", {"text": json.dumps(value)})
        assert reply.status == 200, reply.body
        done = reply.json()
        assert done["state"]["current"] == "SUCCESS", done
        assert done["outputs"]["doc"] == value
        run = done["taskRunList"][0]
        assert json.loads(run["outputs"]["values"]["text"]) == value
    for text, _path in UNPORTABLE_JSON[:4]:
        reply = stack.post_form(f"/executions/{ns}/out?wait=true", {"text": text})
        assert reply.status == 200, reply.body
        done = reply.json()
        assert done["state"]["current"] == "FAILED", done
        # fromJson's surrogate fails the task (its rendered properties); the others its outputs
        message = _log_line(stack, done["id"], ("Unable to render the flow", "cannot be stored"))
        assert "outputs" in message or "properties" in message
    _alive(stack, ns)


# -- flow sources ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    deep: " + "[" * 300 + "]" * 300, "nested deeper"),
        ("    big: 123456789012345678901234567890", "64 bits"),
        ("    raw: !!binary aGVsbG8=", "bytes"),
    ],
)
def test_flow_sources_no_record_can_carry_are_refused_with_the_line(
    stack: Stack, ns: str, extra: str, message: str
) -> None:
    source = _probe(ns).replace("id: probe", "id: bad") + extra + "\n"
    for route, status in (("/flows", 422), ("/flows/validate", 200)):  # validate: 200 + list
        reply = stack.post_yaml(route, source)
        assert reply.status == status, reply.body
        assert message in reply.body.decode()
        assert "line 8" in reply.body.decode()  # the line of the bad value
    assert stack.get(f"/flows/{ns}/bad").status == 404
    _alive(stack, ns)


def test_flow_sources_that_are_bombs_or_not_text_are_refused(stack: Stack, ns: str) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)
    )
    for body in (bomb.encode(), b"id: x\nnamespace: \xff\xfe\n", b"id: x\x00\n", b"- [ {"):
        reply = stack.request("POST", "/flows", body, content_type="application/x-yaml")
        assert reply.status in (400, 422), (body[:40], reply.status, reply.body)
    deep = "id: x\nnamespace: n\ndeep: " + "[" * 5000 + "]" * 5000
    checked = stack.post_yaml("/flows/validate", deep)
    assert checked.status == 200, checked.body
    assert "nesting depth" in checked.json()[0]["constraints"]
    _alive(stack, ns)


# -- resume inputs -----------------------------------------------------------------------------


def test_resume_inputs_are_data_or_refused(stack: Stack, ns: str) -> None:
    for value in (LOOKALIKES[0], LOOKALIKES[5]):
        paused = stack.post_form(f"/executions/{ns}/pause?wait=true", {}).json()
        assert paused["state"]["current"] == "PAUSED", paused
        for text, _path in UNPORTABLE_JSON:
            bad = stack.post_form(f"/executions/{paused['id']}/resume", {"doc": text})
            _refused(bad, "inputs.doc")
        assert stack.get(f"/executions/{paused['id']}").json()["state"]["current"] == "PAUSED"
        good = stack.post_form(f"/executions/{paused['id']}/resume", {"doc": json.dumps(value)})
        assert good.status == 204, good.body
        done = stack.wait_state(paused["id"], DONE)
        assert done["state"]["current"] == "SUCCESS", done
        wait = next(run for run in done["taskRunList"] if run["taskId"] == "wait")
        assert wait["outputs"]["onResume"]["doc"] == value
    _alive(stack, ns)
