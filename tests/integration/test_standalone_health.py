"""``kestream standalone``'s /health while a child is killed and restarted (the real command on
its embedded broker, as tests/integration/test_standalone_supervisor.py runs it).

Readiness must say "not ready" from the kill of the second executor until its replacement is
ready again, naming the child and how it exited; liveness stays 200 throughout (the supervisor
restarting a child is doing its job: restarting everything would not help).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kestream.runtime.embedded_broker import free_port
from tests.integration.api_stack import READY_TIMEOUT_S, Stack, _wait_ready
from tests.integration.test_standalone_supervisor import _children, _env, _launch, _stop

pytestmark = pytest.mark.integration

CHILD = "executor-2"


def _health(stack: Stack, path: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON of an open /health route."""
    try:
        with urllib.request.urlopen(stack.base + path, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503: the body still says why
        return exc.code, json.loads(exc.read())


def test_readiness_names_a_killed_child_until_its_replacement_is_ready(tmp_path: Path) -> None:
    env = _env(tmp_path / "data", free_port())  # two executors: the second its own process
    stack = _launch(tmp_path, env, "standalone.log")
    try:
        _wait_ready(stack)
        status, body = _health(stack, "/health/ready")
        assert status == 200, body
        assert body["supervisor"]["children"][CHILD] == {"state": "running", "ready": True}
        (victim,) = _children(stack)["executor"]
        os.kill(victim, signal.SIGKILL)

        reasons: list[str] = []
        lives: list[int] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:  # until seen not ready, then ready again
            assert stack.process.poll() is None, stack.log_tail()
            assert time.monotonic() < deadline, (reasons, stack.log_tail())
            lives.append(_health(stack, "/health/live")[0])
            status, body = _health(stack, "/health/ready")
            supervisor = body["supervisor"]
            if status == 503 and CHILD in supervisor["notReady"]:
                reasons.append(supervisor["children"][CHILD]["reason"])
            elif status == 200 and reasons:
                break
            time.sleep(0.05)
        (replacement,) = _children(stack)["executor"]
    finally:
        _stop(stack, signal.SIGTERM)
    assert replacement != victim
    assert "exited with signal SIGKILL; the supervisor starts it again" in reasons
    assert reasons[0] == "exited with signal SIGKILL; the supervisor starts it again"
    assert lives and set(lives) == {200}
