"""``kestream standalone`` on its own embedded broker shares the partitions out without consumer
groups (:mod:`kestream.runtime.static_assignment`): each executor process holds a fixed share
(``p % 2``), a restarted one takes its predecessor's, both run executions, and the offsets are
committed under the groups' names.

The real command (no ``KESTREAM_BROKER``: the embedded Tansu), so these run once, whatever
``--kafka-backend`` says.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from kestream.runtime.embedded_broker import free_port
from kestream.runtime.kafka import make_consumer
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from tests.integration.api_stack import Stack, _wait_ready
from tests.integration.test_standalone_supervisor import (
    LAYOUTS,
    TERMINAL,
    WORK_FLOW,
    _children,
    _deploy,
    _env,
    _start,
    _submit,
    launched,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.integration

SETTINGS = Settings(topic_prefix="kestream.")
EVEN, ODD = list(range(0, SETTINGS.partitions, 2)), list(range(1, SETTINGS.partitions, 2))


def _executor_shares(stack: Stack) -> dict[int, list[int]]:
    """The partitions each live executor process says it owns, by pid (``/cluster``)."""
    alive = {pid for pids in _children(stack).values() for pid in pids}
    members = stack.get("/cluster").json()["members"]
    return {
        m["pid"]: sorted(m["checks"]["executor"]["partitions"])
        for m in members
        if "executor" in m["role"].split(",") and m["pid"] in alive and m["ready"]
    }


def _wait_shares(stack: Stack, not_pid: int | None = None) -> dict[int, list[int]]:
    deadline = time.monotonic() + 120
    while True:
        shares = _executor_shares(stack)
        if len(shares) == 2 and not_pid not in shares:
            return shares
        assert time.monotonic() < deadline, f"executors never both seen: {shares}"
        time.sleep(0.5)


def _broker(stack: Stack) -> str:
    """The embedded broker's address, as the log says it (its last start)."""
    found = re.findall(r"Tansu ready on (\S+) ", stack.log_path.read_text(errors="replace"))
    assert found, stack.log_tail()
    return str(found[-1])


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """What ``group`` committed of each partition of ``topic`` (0: nothing)."""
    consumer = make_consumer(SETTINGS, bootstrap, "tansu", group_id=group)
    await consumer.start()
    try:
        out: dict[int, int] = {}
        for partition in range(SETTINGS.partitions):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            out[partition] = await consumer.committed(tp) or 0
        return out
    finally:
        await consumer.stop()


def _wait_committed(stack: Stack, group: str, topic: str, check: Any) -> dict[int, int]:
    deadline = time.monotonic() + 60
    while True:
        committed = asyncio.run(_committed(_broker(stack), group, topic))
        if check(committed):
            return committed
        assert time.monotonic() < deadline, f"{group} committed only {committed}"
        time.sleep(0.5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_executor_runs_its_share_and_a_restart_takes_the_same(
    tmp_path: Path,
    launched: list[Stack],  # noqa: F811 - the fixture
    layout: str,
) -> None:
    env = _env(tmp_path / "data", free_port(), KESTREAM_STANDALONE_PROCESS_PER_ROLE=LAYOUTS[layout])
    stack = _start(tmp_path, launched, env, "standalone.log")
    shares = _wait_shares(stack)
    assert sorted(shares.values()) == [EVEN, ODD]
    _deploy(stack, WORK_FLOW)
    first = [_submit(stack, "work", n=str(i)) for i in range(20)]
    for execution_id in first:
        assert stack.wait_state(execution_id, TERMINAL, timeout=120)["state"]["current"] == (
            "SUCCESS"
        )

    # Both executors read (and committed) executions, under the executor group's name; the
    # worker read its jobs under the worker group's.
    topics = Topics.of(SETTINGS)

    def both_shares(committed: dict[int, int]) -> bool:
        return any(committed[p] for p in EVEN) and any(committed[p] for p in ODD)

    before = _wait_committed(stack, "kestream.executor", topics.executions, both_shares)
    _wait_committed(stack, "kestream.worker", topics.worker_tasks, lambda c: sum(c.values()) > 0)

    # kill -9 of the executor of its own process: the restarted one takes the same share,
    # reads on from its predecessor's commits, and runs what was submitted meanwhile.
    victim = _children(stack)["executor"][0]
    share = shares[victim]
    os.kill(victim, signal.SIGKILL)
    during = [_submit(stack, "work", n=str(i)) for i in range(100, 110)]
    _wait_ready(stack)
    again = _wait_shares(stack, not_pid=victim)
    assert sorted(again.values()) == [EVEN, ODD]
    (successor,) = (pid for pid, owned in again.items() if owned == share)
    assert successor != victim
    for execution_id in during:
        assert stack.wait_state(execution_id, TERMINAL, timeout=120)["state"]["current"] == (
            "SUCCESS"
        )
    after = _wait_committed(
        stack,
        "kestream.executor",
        topics.executions,
        lambda c: sum(c[p] for p in share) > sum(before[p] for p in share),
    )
    assert all(after[p] >= before[p] for p in range(SETTINGS.partitions))
