"""``kestream standalone`` answers an execution created through its API only once the embedded
broker's mirror holds it: a kill -9 right after the answer loses none (kestream.runtime.mirror_ack).

The embedded broker keeps everything in memory and the supervisor's mirror trails it by a fetch,
so without that wait an execution answered "created" a few milliseconds before a kill -9 was
lost. The window is forced open here by stopping the supervisor (SIGSTOP: its mirror stands
still) while creations are asked for: they must then be refused with a 503 that says why, not
answered 200 and lost. Runs the real command on its embedded broker, whatever
``--kafka-backend`` says.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kestream.runtime.embedded_broker import free_port
from tests.integration.api_stack import PASSWORD, USERNAME, Reply, Stack, _wait_ready
from tests.integration.test_standalone_supervisor import _launch

pytestmark = pytest.mark.integration

FLOW = """
id: acked
namespace: ack.test
inputs:
  - id: n
    type: INT
    defaults: 0
tasks:
  - id: say
    type: io.kestra.plugin.core.log.Log
    message: "run {{ inputs.n }}"
"""

#: The API's bound on the mirror's word, short so that a held-back mirror shows quickly.
ACK_TIMEOUT_S = 3


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env.update(
        KESTREAM_TOPIC_PREFIX="kestream.",
        KESTREAM_WEB_PORT=str(port),
        KESTREAM_EXECUTOR_STREAM_THREADS="2",
        KESTREAM_DATA_DIR=str(data_dir),
        KESTREAM_API_USERNAME=USERNAME,
        KESTREAM_API_PASSWORD=PASSWORD,
        KESTREAM_STANDALONE_ACK_TIMEOUT_S=str(ACK_TIMEOUT_S),
    )
    return env


@pytest.fixture
def launched() -> Iterator[list[Stack]]:
    stacks: list[Stack] = []
    yield stacks
    for stack in stacks:
        if stack.process.poll() is None:
            os.killpg(stack.process.pid, signal.SIGCONT)
            os.killpg(stack.process.pid, signal.SIGKILL)
            stack.process.wait()


def _start(workdir: Path, env: dict[str, str], launched: list[Stack], name: str) -> Stack:
    stack = _launch(workdir, env, name)
    launched.append(stack)
    _wait_ready(stack)
    return stack


def _tansu(stack: Stack) -> int:
    """The embedded broker's pid: the supervisor's child whose command is tansu."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == stack.process.pid and command.endswith(
            b"tansu"
        ):
            return int(entry.name)
    raise AssertionError(f"no embedded broker under {stack.process.pid}")


def _create_many(stack: Stack, first: int, count: int) -> list[Reply]:
    """``count`` creations at once (the API answers them side by side)."""

    def create(n: int) -> Reply:
        return stack.post_form("/executions/ack.test/acked", {"n": str(n)})

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(create, range(first, first + count)))


def _acknowledged(replies: list[Reply]) -> list[str]:
    return [str(reply.json()["id"]) for reply in replies if reply.status == 200]


def _missing(stack: Stack, execution_ids: list[str], timeout: float) -> list[str]:
    """The executions that have not reached SUCCESS within ``timeout`` (lost ones never do)."""
    waiting = set(execution_ids)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for execution_id in sorted(waiting):
            reply = stack.get(f"/executions/{execution_id}")
            if reply.status == 200 and reply.json()["state"]["current"] == "SUCCESS":
                waiting.discard(execution_id)
        time.sleep(0.2)
    return sorted(waiting)


def test_an_execution_answered_created_survives_a_kill_9_right_after(
    tmp_path: Path, launched: list[Stack]
) -> None:
    env = _env(tmp_path / "data", free_port())
    stack = _start(tmp_path, env, launched, "first.log")
    assert stack.post_yaml("/flows", FLOW).status == 200
    acknowledged: list[str] = []

    # 1. The broker killed the moment a burst of creations has been answered: the supervisor
    # starts it again from the data dir.
    burst = _create_many(stack, 0, 12)
    os.kill(_tansu(stack), signal.SIGKILL)
    assert all(reply.status == 200 for reply in burst), [r.body for r in burst]
    acknowledged += _acknowledged(burst)
    time.sleep(1.0)  # the supervisor sees the death and stops the roles
    _wait_ready(stack)

    # 2. The mirror held back (its process stopped) while creations are asked for, then the
    # whole standalone killed: anything answered 200 here is on disk only if the answer
    # waited for the mirror.
    assert stack.post_form("/executions/ack.test/acked", {"n": "99"}).status == 200
    os.kill(stack.process.pid, signal.SIGSTOP)
    held = _create_many(stack, 100, 4)
    acknowledged += _acknowledged(held)
    os.killpg(stack.process.pid, signal.SIGKILL)
    stack.process.wait()

    # 3. A new standalone on the same data dir has every execution that was answered created.
    again = _start(tmp_path, env, launched, "second.log")
    lost = _missing(again, acknowledged, timeout=90)
    assert not lost, (
        f"{len(lost)} of {len(acknowledged)} executions answered created are lost "
        f"({len(set(lost) & set(_acknowledged(held)))} of them answered while the mirror "
        f"was held back): {lost}\n{again.log_tail()}"
    )
    for reply in held:
        assert reply.status == 503, reply.body
        message = reply.json()["message"]
        assert "not known to be safe on disk" in message, message
        assert "KESTREAM_STANDALONE_ACK_TIMEOUT_S" in message, message
