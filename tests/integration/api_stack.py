"""A running ``kestream standalone`` on the broker under test, and a small HTTP client for it.

The stack is the real thing: the supervisor starts the executor, worker, scheduler and API role
processes (faust workers), and the API answers on faust's web server. Requests go through the
standard library, so what is tested is the HTTP a user's curl or Kestra client sends. The API
requires credentials (:data:`USERNAME`/:data:`PASSWORD` and the bearer :data:`TOKEN`); every
request sends them, unless told otherwise (``auth=None``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kestream.runtime.embedded_broker import free_port

READY_TIMEOUT_S = 120.0
USERNAME = "kestream-test"
PASSWORD = "s3cret: with spaces"
TOKEN = "test-token-5b1f0c2e9d"


def basic_auth(username: str = USERNAME, password: str = PASSWORD) -> str:
    """An ``Authorization`` header value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


BASIC = basic_auth()


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    base: str
    tenant: str
    log_path: Path

    @property
    def api(self) -> str:
        return f"{self.base}/api/v1/{self.tenant}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        *,
        content_type: str | None = None,
        timeout: float = 60.0,
        auth: str | None = BASIC,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """``auth`` is the ``Authorization`` header (None: send none)."""
        url = path if path.startswith("http") else self.api + path
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if content_type:
            req.add_header("Content-Type", content_type)
        if auth is not None:
            req.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Reply(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.read(), dict(err.headers))

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post_yaml(self, path: str, source: str) -> Reply:
        return self.request("POST", path, source, content_type="application/x-yaml")

    def post_form(self, path: str, fields: dict[str, str]) -> Reply:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        ]
        body = "".join(parts) + f"--{boundary}--\r\n"
        return self.request(
            "POST", path, body, content_type=f"multipart/form-data; boundary={boundary}"
        )

    def events(self, path: str, timeout: float = 60.0) -> list[tuple[str, Any]]:
        """Read a server-sent event stream to its end: ``(id, data)`` per frame."""
        frames: list[tuple[str, Any]] = []
        req = urllib.request.Request(self.api + path, headers={"Authorization": BASIC})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            frame_id = ""
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    frame_id = line[4:]
                elif line.startswith("data: "):
                    frames.append((frame_id, json.loads(line[6:])))
        return frames

    def wait_state(
        self, execution_id: str, states: set[str], timeout: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            reply = self.get(f"/executions/{execution_id}")
            if reply.status == 200:
                last = reply.json()
                if last["state"]["current"] in states:
                    return last
            time.sleep(0.1)
        raise AssertionError(f"execution {execution_id} never reached {states}; last: {last}")

    def wait_logs(self, execution_id: str, message: str, timeout: float = 30.0) -> list[str]:
        """The execution's log messages once one is ``message``: the index feeds its logs and
        its updates from two topics, so an execution seen ended may not have its lines yet."""
        deadline = time.monotonic() + timeout
        messages: list[str] = []
        while time.monotonic() < deadline:
            reply = self.get(f"/logs/{execution_id}")
            if reply.status == 200:
                messages = [line["message"] for line in reply.json()]
                if message in messages:
                    return messages
            time.sleep(0.1)
        raise AssertionError(f"no log line {message!r} for {execution_id}; lines: {messages}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def start_stack(
    bootstrap: str | None, prefix: str, workdir: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[Stack]:
    """Start ``kestream standalone`` on ``bootstrap`` (None: on its own embedded broker, its
    data in ``workdir``); yields once the API says it is ready.

    ``extra_env`` adds ``KESTREAM_*`` variables (the others come from the process's own environment
    minus every ``KESTREAM_*`` one, so the caller's shell cannot change what is tested)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    if bootstrap is not None:
        env["KESTREAM_BROKER"] = bootstrap
    env.update(
        KESTREAM_TOPIC_PREFIX=prefix,
        KESTREAM_WEB_PORT=str(port),
        KESTREAM_EXECUTOR_STREAM_THREADS="1",
        KESTREAM_DATA_DIR=str(workdir / "data"),
        KESTREAM_SCHEDULER_TICK_MS="200",
        KESTREAM_API_USERNAME=USERNAME,
        KESTREAM_API_PASSWORD=PASSWORD,
        KESTREAM_API_TOKENS=f"another-token,{TOKEN}",
    )
    env.update(extra_env or {})
    log_path = workdir / "standalone.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "kestream.cli", "standalone"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    stack = Stack(process, f"http://127.0.0.1:{port}", "main", log_path)
    try:
        _wait_ready(stack)
        yield stack
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            raise AssertionError(f"standalone exited early:\n{stack.log_tail()}")
        try:
            last = stack.get(stack.base + "/health/ready", timeout=5)
            if last.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    detail = last.body.decode() if last else "no answer"
    raise AssertionError(f"the API never became ready: {detail}\n{stack.log_tail()}")
