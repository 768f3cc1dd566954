"""``kestream standalone`` on its embedded broker, as a user runs it: it keeps its roles running
and keeps its state in ``KESTREAM_DATA_DIR`` across stops, kill -9 included.

These tests start the real command (no ``KESTREAM_BROKER``: the embedded Tansu, mirrored into
the data dir), so they run once, whatever ``--kafka-backend`` says. Each runs in the default
layout (the worker, the scheduler, the API and the first executor in one process, the second
executor in its own) and, where the layout matters, with a process per role too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from kestream.runtime.embedded_broker import free_port
from tests.integration.api_stack import (
    PASSWORD,
    USERNAME,
    Stack,
    _wait_ready,
)

pytestmark = pytest.mark.integration

TERMINAL = {"SUCCESS", "FAILED", "KILLED", "WARNING"}

#: The process that hosts several roles in the default layout, as :func:`_children` names it.
SHARED = "executor,worker,scheduler,api"
#: ``KESTREAM_STANDALONE_PROCESS_PER_ROLE`` of each layout.
LAYOUTS = {"shared": "false", "per-role": "true"}

WORK_FLOW = """
id: work
namespace: sup.test
inputs:
  - id: n
    type: INT
    defaults: 0
tasks:
  - id: pause
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.2S
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: "run {{ inputs.n }}"
"""

APPROVAL_FLOW = """
id: approval
namespace: sup.test
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: resumed
"""

TICK_FLOW = """
id: tick
namespace: sup.test
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ trigger.date }}"
triggers:
  - id: every2s
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "*/2 * * * * *"
    withSeconds: true
"""


def _env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env.update(
        KESTREAM_TOPIC_PREFIX="kestream.",
        KESTREAM_WEB_PORT=str(port),
        KESTREAM_EXECUTOR_STREAM_THREADS="2",
        KESTREAM_DATA_DIR=str(data_dir),
        KESTREAM_SCHEDULER_TICK_MS="200",
        KESTREAM_API_USERNAME=USERNAME,
        KESTREAM_API_PASSWORD=PASSWORD,
    )
    env.update(extra)
    return env


def _launch(workdir: Path, env: dict[str, str], log_name: str) -> Stack:
    """The command in a process group of its own (as a shell starts it), logging to a file."""
    log_path = workdir / log_name
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "kestream.cli", "standalone"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Stack(process, f"http://127.0.0.1:{env['KESTREAM_WEB_PORT']}", "main", log_path)


def _stop(stack: Stack, sig: signal.Signals) -> int:
    """``sig`` to the whole process group (Ctrl-C sends SIGINT so), then wait for the exit."""
    if stack.process.poll() is None:
        os.killpg(stack.process.pid, sig)
    try:
        return stack.process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(stack.process.pid, signal.SIGKILL)
        return stack.process.wait()


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[Stack]]:
    """Every stack a test started; each is stopped at the end, whatever happened."""
    stacks: list[Stack] = []
    yield stacks
    for stack in stacks:
        if stack.process.poll() is None:
            _stop(stack, signal.SIGKILL)


def _start(tmp_path: Path, launched: list[Stack], env: dict[str, str], name: str) -> Stack:
    stack = _launch(tmp_path, env, name)
    launched.append(stack)
    _wait_ready(stack)
    return stack


def _children(stack: Stack) -> dict[str, list[int]]:
    """The supervisor's children by role (``tansu`` for the broker), from /proc."""
    out: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != stack.process.pid:
            continue
        args = [a.decode() for a in cmdline if a]
        role = "tansu" if args and args[0].endswith("tansu") else args[-1]
        out.setdefault(role, []).append(int(entry.name))
    return out


def _deploy(stack: Stack, source: str) -> None:
    reply = stack.post_yaml("/flows", source)
    assert reply.status == 200, reply.body


def _submit(stack: Stack, flow: str, **inputs: str) -> str:
    reply = stack.post_form(f"/executions/sup.test/{flow}", dict(inputs))
    assert reply.status == 200, reply.body
    return str(reply.json()["id"])


def _metric(stack: Stack, name: str, **labels: str) -> float:
    body = stack.get(stack.base + "/metrics").body.decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kill_9_of_each_child_under_load_loses_nothing(
    tmp_path: Path, launched: list, layout: str
) -> None:
    env = _env(tmp_path / "data", free_port(), KESTREAM_STANDALONE_PROCESS_PER_ROLE=LAYOUTS[layout])
    stack = _start(tmp_path, launched, env, "standalone.log")
    victims = (
        ("executor", "worker", "scheduler", "api", "tansu")
        if layout == "per-role"
        else (SHARED, "executor", "tansu")
    )
    assert sorted(_children(stack)) == sorted(victims)  # the second executor: its own
    _deploy(stack, WORK_FLOW)
    before = [_submit(stack, "work", n=str(i)) for i in range(10)]
    submitted: list[str] = []
    stop_load = threading.Event()

    def load() -> None:  # light load the whole time: one execution every 0.25 s
        n = 100
        while not stop_load.is_set():
            with contextlib.suppress(AssertionError, OSError):  # the API may be the one killed
                submitted.append(_submit(stack, "work", n=str(n)))
            n += 1
            stop_load.wait(0.25)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    killed: dict[str, int] = {}
    try:
        for role in victims:
            victim = _children(stack)[role][0]
            os.kill(victim, signal.SIGKILL)
            killed[role] = victim
            time.sleep(1.0)  # let the loss show before checking it healed
            _wait_ready(stack)
            assert all(victim not in pids for pids in _children(stack).values())
        # The load goes on after the last kill until it has sent more than ten: the roles come
        # back within seconds, and the API is down for part of that, so few may have gone in.
        deadline = time.monotonic() + 60
        while len(submitted) <= 10 and time.monotonic() < deadline:
            time.sleep(0.25)
    finally:
        stop_load.set()
        loader.join()
    after = [_submit(stack, "work", n=str(i)) for i in range(1000, 1010)]
    for execution_id in before + submitted + after:
        assert stack.wait_state(execution_id, TERMINAL, timeout=120)["state"]["current"] == (
            "SUCCESS"
        ), execution_id
    assert len(submitted) > 10
    for role in ("executor", "worker", "scheduler", "api"):
        assert (
            _metric(
                stack, "kestream_standalone_role_crashes_total", role=role, cause="signal SIGKILL"
            )
            >= 1
        ), role
        assert _metric(stack, "kestream_standalone_role_restarts_total", role=role) >= 1, role
    assert (
        _metric(
            stack, "kestream_standalone_role_crashes_total", role="broker", cause="signal SIGKILL"
        )
        == 1
    )
    log = stack.log_tail()
    assert "exited with signal SIGKILL; starting it again" in stack.log_path.read_text()
    assert stack.process.poll() is None, log


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_role_that_keeps_crashing_stops_standalone_naming_it(
    tmp_path: Path, launched: list, layout: str
) -> None:
    """The API's port is taken, so every API process fails at start; the others are fine (in
    the shared layout, the process that hosts the API is the one named)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(
            tmp_path / "data",
            port,
            KESTREAM_STANDALONE_CRASH_LIMIT="3",
            KESTREAM_STANDALONE_CRASH_WINDOW_S="300",
            KESTREAM_STANDALONE_PROCESS_PER_ROLE=LAYOUTS[layout],
        )
        stack = _launch(tmp_path, env, "standalone.log")
        launched.append(stack)
        code = stack.process.wait(240)
    text = stack.log_path.read_text(errors="replace")
    assert code == 1, text[-3000:]
    name = "api" if layout == "per-role" else "executor-1+worker+scheduler+api"
    assert f"{name} keeps crashing: 3 crashes within 300 s" in text
    assert text.count(f"{name} process") == 2  # two restarts, the third crash gives up


def _states(stack: Stack, flow: str) -> list[dict]:
    reply = stack.get(f"/executions/search?namespace=sup.test&flowId={flow}&size=500")
    assert reply.status == 200, reply.body
    return list(reply.json()["results"])


def _slots(stack: Stack) -> list[str]:
    return sorted(e["trigger"]["variables"]["date"] for e in _states(stack, "tick"))


@pytest.mark.parametrize(
    ("how", "layout"),
    [(signal.SIGINT, "shared"), (signal.SIGKILL, "shared"), (signal.SIGKILL, "per-role")],
    ids=["ctrl-c", "kill-9-group", "kill-9-group-per-role"],
)
def test_stop_and_start_on_the_same_data_dir_brings_the_state_back(
    tmp_path: Path, launched: list, how: signal.Signals, layout: str
) -> None:
    env = _env(tmp_path / "data", free_port(), KESTREAM_STANDALONE_PROCESS_PER_ROLE=LAYOUTS[layout])
    stack = _start(tmp_path, launched, env, "first.log")
    assert f"data in {tmp_path / 'data'}" in stack.log_path.read_text()
    for source in (WORK_FLOW, APPROVAL_FLOW, TICK_FLOW):
        _deploy(stack, source)  # through the API, not --flows
    done = _submit(stack, "work", n="1")
    assert stack.wait_state(done, TERMINAL)["state"]["current"] == "SUCCESS"
    paused = _submit(stack, "approval")
    stack.wait_state(paused, {"PAUSED"})
    deadline = time.monotonic() + 60
    while len(_slots(stack)) < 3:
        assert time.monotonic() < deadline, "the schedule never started three executions"
        time.sleep(0.5)
    in_flight = _submit(stack, "work", n="2")
    slots_before = _slots(stack)
    time.sleep(1.5)  # let the mirror's offset snapshot catch up with the last commits

    assert _stop(stack, how) == (0 if how is signal.SIGINT else -signal.SIGKILL)
    again = _start(tmp_path, launched, env, "second.log")
    assert "restored" in again.log_path.read_text()

    flows = again.get("/flows/search?namespace=sup.test").json()["results"]
    assert sorted(f["id"] for f in flows) == ["approval", "tick", "work"]
    assert again.get(f"/executions/{done}").json()["state"]["current"] == "SUCCESS"
    assert again.wait_state(in_flight, TERMINAL, timeout=90)["state"]["current"] == "SUCCESS"
    assert again.get(f"/executions/{paused}").json()["state"]["current"] == "PAUSED"
    reply = again.request("POST", f"/executions/{paused}/resume")
    assert reply.status == 204, reply.body
    assert again.wait_state(paused, TERMINAL, timeout=90)["state"]["current"] == "SUCCESS"

    # Every slot from the first on, once each: those missed while it was stopped are fired at
    # the restart (recoverMissedSchedules ALL), and the index shows each one once it has it.
    deadline = time.monotonic() + 90
    while True:
        slots = _slots(again)
        assert len(slots) == len(set(slots)), f"a schedule slot ran twice: {slots}"
        assert slots[: len(slots_before)] == slots_before  # history kept
        gaps = {
            (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()
            for a, b in itertools.pairwise(slots)
        }
        if len(slots) >= len(slots_before) + 3 and gaps == {2.0}:
            break
        assert time.monotonic() < deadline, f"the schedule did not go on slot by slot: {slots}"
        time.sleep(0.5)
    assert _stop(again, signal.SIGINT) == 0
