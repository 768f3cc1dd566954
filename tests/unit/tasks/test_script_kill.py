"""A killed or timed-out script stops with everything it started: no process is left behind.

Each script starts a background ``sleep 1000`` and prints its process group id (``$$``: the shell
leads a session of its own) and the child's pid; after the attempt ends, no process of that group
may still run. Zombies do not count: a killed child is re-parented to init, which reaps it when
it likes, but it runs nothing any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kestream.executor.commands import LogLine, RunTask
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.tasks.base import RunnableTask
from kestream.tasks.scripts.process import group_alive, live_members, run_process, run_to_end
from kestream.testing import Driver
from kestream.worker.runner import TaskRunner

S = StateType
SPAWN = """id: t
namespace: test.kill
tasks:
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    {extra}
    commands:
      - sleep 1000 &
      - echo "group $$ child $!"
      - {last}
"""


def _job(last: str = "wait", extra: str = "", timeout_s: float | None = None) -> RunTask:
    flow = parse_flow(SPAWN.format(last=last, extra=extra))
    task = flow.task_index()["sh"]
    assert isinstance(task, RunnableTask)
    props = {name: getattr(task, name) for name in task.dynamic if getattr(task, name) is not None}
    return RunTask("ex", "run", 1, flow.namespace, flow.id, 1, task, props, timeout_s)


async def _until(condition: Callable[[], Any], within: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not (value := condition()):
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
    return value


def _spawned(lines: list[LogLine]) -> tuple[int, int] | None:
    for line in lines:
        if line.message.startswith("group "):
            _, group, _, child = line.message.split()
            return int(group), int(child)
    return None


def _runs(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def _assert_nothing_left(group: int, child: int) -> None:
    assert live_members(group) == []
    assert not group_alive(group)
    assert not _runs(child)
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        pass  # gone, zombies reaped too
    else:  # only reaped-later zombies may remain: nothing of the group runs
        assert live_members(group) == []


async def test_a_kill_through_the_worker_runner_stops_the_whole_group() -> None:
    runner = TaskRunner(threads=1)
    lines: list[LogLine] = []
    job = _job()
    running = asyncio.ensure_future(runner.run(job, on_line=lines.append))
    group, child = await _until(lambda: _spawned(lines))
    assert group_alive(group) and _runs(child)
    assert runner.kill(job.execution_id, job.task_run_id)
    result, _ = await running
    assert result.state is S.KILLED
    _assert_nothing_left(group, child)
    runner.close()


async def test_a_child_that_ignores_sigterm_is_killed_too() -> None:
    runner = TaskRunner(threads=1)
    lines: list[LogLine] = []
    job = _job(extra="beforeCommands: [\"trap '' TERM\"]")
    running = asyncio.ensure_future(runner.run(job, on_line=lines.append))
    group, child = await _until(lambda: _spawned(lines))
    runner.kill(job.execution_id, job.task_run_id)
    result, _ = await running
    assert result.state is S.KILLED
    _assert_nothing_left(group, child)
    runner.close()


async def test_a_timeout_stops_the_whole_group_before_the_result() -> None:
    runner = TaskRunner(threads=1)
    lines: list[LogLine] = []
    result, _ = await runner.run(_job(timeout_s=0.5), on_line=lines.append)
    assert result.state is S.FAILED and result.error == "Task timed out after 0.5s"
    spawned = _spawned(lines)
    assert spawned is not None
    _assert_nothing_left(*spawned)
    runner.close()


async def test_what_a_finished_script_left_running_is_stopped() -> None:
    runner = TaskRunner(threads=1)
    result, lines = await runner.run(_job(last="echo done"))  # no emit: lines come back
    assert result.state is S.SUCCESS
    assert [line.message for line in lines][-1] == "done"
    spawned = _spawned(lines)
    assert spawned is not None
    _assert_nothing_left(*spawned)
    runner.close()


def test_a_task_timeout_through_the_driver(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    flow_yaml = SPAWN.format(last="wait", extra="timeout: PT0.5S").replace(
        'echo "group $$ child $!"', f'echo "group $$ child $!" > {pids}'
    )
    with Driver() as driver:
        flow = driver.deploy(flow_yaml)
        execution = driver.start(flow.namespace, flow.id)
        assert execution.state.current is S.FAILED
        messages = [line.message for line in driver.logs(execution.id)]
        assert any(message.startswith("Task timed out after") for message in messages)
    # The execution ends at the timeout; closing the driver waits for the clean-up.
    _, group, _, child = pids.read_text().split()
    _assert_nothing_left(int(group), int(child))


@pytest.mark.parametrize("signal_exit", ["kill -TERM $$", "kill -KILL $$"])
def test_a_script_ended_by_a_signal_reports_128_plus_the_signal(signal_exit: str) -> None:
    with Driver() as driver:
        flow = driver.deploy(SPAWN.format(last=signal_exit, extra=""))
        execution = driver.start(flow.namespace, flow.id)
        (run,) = execution.taskRunList
        expected = 143 if "TERM" in signal_exit else 137
        assert run.state.current is S.FAILED and run.outputs is not None
        assert run.outputs["exitCode"] == expected


def _detached(lines: list[LogLine]) -> int | None:
    for line in lines:
        if line.message.startswith("detached "):
            return int(line.message.split()[1])
    return None


def _stop(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


#: A process in a session of its own, out of the group's reach, holding the output pipes open.
DETACH = 'setsid sleep 1000 & echo "detached $!"'


async def test_a_detached_process_holding_the_output_does_not_keep_the_attempt() -> None:
    runner = TaskRunner(threads=1)
    lines: list[LogLine] = []
    try:
        # a hang guard, not a timing: without the fix this waits for ``sleep 1000``
        result, _ = await asyncio.wait_for(
            runner.run(_job(last=f"{DETACH}; echo done"), on_line=lines.append), 60
        )
        assert result.state is S.SUCCESS
        assert [line.message for line in lines][-1] == "done"
        detached = _detached(lines)
        assert detached is not None and _runs(detached)  # it escaped, as documented
        spawned = _spawned(lines)
        assert spawned is not None
        _assert_nothing_left(*spawned)
    finally:
        _stop(_detached(lines))
        runner.close()


async def test_a_kill_ends_the_attempt_despite_a_detached_process_holding_the_output() -> None:
    runner = TaskRunner(threads=1)
    lines: list[LogLine] = []
    job = _job(last=f"{DETACH}; wait")
    try:
        running = asyncio.ensure_future(runner.run(job, on_line=lines.append))
        detached = await _until(lambda: _detached(lines))
        group, child = await _until(lambda: _spawned(lines))
        assert runner.kill(job.execution_id, job.task_run_id)
        result, _ = await asyncio.wait_for(running, 60)  # a hang guard, as above
        assert result.state is S.KILLED
        _assert_nothing_left(group, child)
        assert _runs(detached)
    finally:
        _stop(_detached(lines))
        runner.close()


def test_a_kill_while_the_process_starts_stops_its_whole_group(tmp_path: Path) -> None:
    """A kill that comes while asyncio still connects the new process's pipes: asyncio's own
    clean-up would SIGKILL the leader alone and wait for pipes its background child holds, so
    the attempt never ended and the child ran on (seen under load: the kill of an
    afterExecution script hung its test). The start is awaited, then the group stopped."""
    marker = tmp_path / "child"
    script = f"sleep 1000 & echo $! > {marker}.tmp && mv {marker}.tmp {marker}; wait"

    async def scenario() -> tuple[int, bool]:
        attempt = asyncio.ensure_future(
            run_process(["sh", "-c", script], cwd=tmp_path, env={"PATH": os.defpath},
                        on_line=lambda text, is_stderr: None)
        )  # fmt: skip
        # One loop turn at a time, the loop held between them until the child has started:
        # the kill comes before the pipes are connected (they take several turns).
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the script never started its child"
            await asyncio.sleep(0)
            time.sleep(0.01)
        child = int(marker.read_text())
        attempt.cancel()
        done, _ = await asyncio.wait([attempt], timeout=30)
        return child, bool(done)

    child, ended = asyncio.run(scenario())
    try:
        assert ended, "the killed attempt never ended"
        assert not _runs(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_clean_up_that_fails_after_a_kill_still_ends_as_killed() -> None:
    """``run_to_end``: a kill that came while the clean-up (or a process's start) was awaited
    goes on as a kill when that work then fails; the work's error is its cause."""

    async def scenario() -> BaseException:
        started = asyncio.Event()

        async def failing_work() -> None:
            started.set()
            await asyncio.sleep(0.05)
            raise FileNotFoundError("no such command")

        caller = asyncio.ensure_future(run_to_end(failing_work()))
        await started.wait()
        caller.cancel()
        try:
            await caller
        except BaseException as exc:  # what ended it is the assertion
            return exc
        raise AssertionError("the caller ended without an error")

    ended = asyncio.run(scenario())
    assert isinstance(ended, asyncio.CancelledError)
    assert isinstance(ended.__cause__, FileNotFoundError)
