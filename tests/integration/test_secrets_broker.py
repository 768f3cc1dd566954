"""A secret never leaves the worker: after a flow that uses one in an HTTP header, a script's
environment and a log message, plus a SECRET input, every record of every topic, every file
under the data directory (the index database with it), the installation's own log and every API
answer are read back, and neither the values nor their base64 and URL-encoded forms are found.
The HTTP server the flow calls proves the header did carry the value. The script also prints its
whole environment (where a secret the flow never asked for must not be) and a multi-line secret
line by line, and a label quotes the SECRET input's encrypted text, which no answer shows.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiokafka import TopicPartition
from api_stack import Stack, start_stack

from kestream.runtime.compacted import read_partitions, topic_partitions
from kestream.runtime.kafka import make_consumer
from kestream.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "tok-9f2c/x+y=z"
INPUT = "input-secret-41d8"
UNUSED = "never-asked-for-7c1e"  # a worker's secret no flow resolves
PEM = "\n".join(
    (
        "-----BEGIN TEST KEY-----",
        "MIIEpemLINEone0123456789",
        "MIIEpemLINEtwo9876543210",
        "-----END TEST KEY-----",
    )
)
KEY = "an encryption key of 32 chars or more"


def _forms(value: str) -> list[str]:
    raw = value.encode()
    return [
        value,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        quote(value, safe=""),
        quote_plus(value),
    ]


NEEDLES = [
    form.encode()
    for value in (SECRET, INPUT, UNUSED, PEM, *PEM.splitlines())
    for form in _forms(value)
]


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        _Recorder.seen.append(self.headers.get("Authorization", ""))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"it.secrets.{time.time_ns()}."


@pytest.fixture(scope="module")
def stack(broker: Any, prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "SECRET_API_TOKEN": base64.b64encode(SECRET.encode()).decode(),
        "SECRET_UNUSED": base64.b64encode(UNUSED.encode()).decode(),
        "SECRET_PEM": base64.b64encode(PEM.encode()).decode(),
        "KESTREAM_ENCRYPTION_KEY": KEY,
    }
    yield from start_stack(broker.bootstrap, prefix, tmp_path_factory.mktemp("secrets"), env)


FLOW = """
id: leaks
namespace: company.secrets
inputs:
  - id: password
    type: SECRET
tasks:
  - id: call
    type: io.kestra.plugin.core.http.Request
    uri: "{server}/check"
    headers:
      Authorization: "Bearer {{{{ secret('api_token') }}}}"
  - id: script
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    env:
      TOKEN: "{{{{ secret('api_token') }}}}"
      PASSWORD: "{{{{ inputs.password }}}}"
      PEM: "{{{{ secret('pem') }}}}"
    commands:
      - echo "token=$TOKEN password=$PASSWORD"
      - printf %s "$TOKEN" | base64
      - printf '%s\\n' "$PEM"
      - env
  - id: label
    type: io.kestra.plugin.core.execution.Labels
    labels:
      quoted: "pw={{{{ inputs.password }}}}"
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "token {{{{ secret('api_token') }}}} and {{{{ inputs.password }}}}"
  - id: ret
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ secret('api_token') }}}}"
"""


async def _dump_topics(bootstrap: str, prefix: str) -> bytes:
    """Every record (keys, values, headers) of every topic of the installation."""
    settings = Settings(broker=bootstrap, topic_prefix=prefix)
    consumer = make_consumer(settings, bootstrap, "kafka", group_id=None)
    await consumer.start()
    chunks: list[bytes] = []

    def keep(record: Any) -> None:
        chunks.extend([record.key or b"", record.value or b""])
        chunks.extend(value for _, value in record.headers or ())

    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(prefix))
        assert len(topics) >= 10, topics
        for topic in topics:
            partitions: list[TopicPartition] = await topic_partitions(consumer, topic)
            await read_partitions(consumer, partitions, keep)
    finally:
        await consumer.stop()
    return b"\n".join(chunks)


def _answers(stack: Stack, execution_id: str) -> bytes:
    paths = [
        f"/executions/{execution_id}",
        "/executions/search?namespace=company.secrets",
        "/executions?namespace=company.secrets",
        f"/logs/{execution_id}",
        "/flows/company.secrets/leaks",
        "/flows/company.secrets/leaks?source=true",
    ]
    bodies = [stack.get(path).body for path in paths]
    frames = stack.events(f"/executions/{execution_id}/follow")
    bodies.append(repr(frames).encode())
    bodies.append(repr(stack.events(f"/logs/{execution_id}/follow")).encode())
    return b"\n".join(bodies)


def test_a_secret_is_found_nowhere(stack: Stack, server: str, broker: Any, prefix: str) -> None:
    _Recorder.seen.clear()  # the server outlives one broker's run: count this run's requests
    assert stack.post_yaml("/flows", FLOW.format(server=server)).status == 200
    created = stack.post_form("/executions/company.secrets/leaks", {"password": INPUT})
    assert created.status == 200, created.body
    execution = stack.wait_state(created.json()["id"], {"SUCCESS", "FAILED", "WARNING"})
    assert execution["state"]["current"] == "SUCCESS", execution
    assert _Recorder.seen == [f"Bearer {SECRET}"]  # the header carried the value, once
    assert execution["inputs"]["password"] == "******"
    messages = stack.wait_logs(execution["id"], "token ****** and ******")
    assert "token=****** password=******" in messages and "******" in messages
    assert any(message.startswith("PATH=") for message in messages)  # env ran
    assert {"key": "quoted", "value": "pw=******"} in execution["labels"]

    answers = _answers(stack, execution["id"])
    records = asyncio.run(_dump_topics(broker.bootstrap, prefix))
    data_dir = stack.log_path.parent / "data"
    files = b"\n".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    assert b"index.sqlite" in b"\n".join(str(p).encode() for p in data_dir.rglob("*"))
    process_log = stack.log_path.read_bytes()
    for where, haystack in [
        ("API answers", answers),
        ("topics", records),
        ("data directory (index database)", files),
        ("the installation's log", process_log),
    ]:
        for needle in NEEDLES:
            assert needle not in haystack, f"{needle!r} found in {where}"
    assert b"SECRET_" not in answers and b"KESTREAM_" not in answers  # env printed no such name
    assert b"kestream:enc:v1:" not in answers  # encrypted texts are masked, inside labels too
    assert b"kestream:enc:v1:" in records  # the SECRET input travels encrypted
