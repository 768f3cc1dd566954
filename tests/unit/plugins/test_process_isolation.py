"""Blocking Python tasks run in worker processes: a kill or a timeout stops the code itself.

Each test runs ``def`` tasks through the worker's :class:`TaskRunner` (one slot, so a following
task only runs once the slot is free again) and looks at the child processes with /proc: a stopped
attempt leaves no process behind, and the pool goes on with a fresh child.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

import kestream
from kestream.executor.commands import LogLine, RunTask, SharedWorkdir
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.plugins.context import RunContext
from kestream.tasks.base import RunInfo, RunnableTask, TaskOutcome
from kestream.tasks.scripts.process import group_alive, live_members
from kestream.worker.pool import ProcessPool
from kestream.worker.runner import TaskRunner

S = StateType


def spin(*, run: RunContext) -> None:
    run.logger.info("spinning")
    while True:
        pass


def nap(*, run: RunContext) -> None:
    run.logger.info("napping")
    time.sleep(1000)


def stubborn(*, run: RunContext) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run.logger.info("ignoring SIGTERM")
    time.sleep(1000)


def crash() -> None:
    os._exit(3)


def broken() -> None:
    raise ValueError("boom")


def pid(*, run: RunContext) -> dict[str, Any]:
    run.logger.info("in %s", os.getpid())
    return {"pid": os.getpid()}


def handshake(ready: str, *, run: RunContext) -> dict[str, Any]:
    """Logs, then waits for the file the test writes only once it has received that line."""
    run.logger.info("waiting for %s", ready)
    while not Path(ready).exists():
        time.sleep(0.01)
    return {"done": True}


def _refuse_to_load() -> None:
    raise RuntimeError("only the child can build this")


class Unloadable:
    """Pickles fine in the child; unpickling it (in the worker) raises."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _refuse_to_load, ()


class UnloadableAnswer(RunnableTask):
    """Answers with an outcome the worker cannot unpickle (a Python task's outputs are JSON by
    then: a task type of kestream's own kind is needed to send anything else)."""

    type_name: ClassVar[str] = "acme.tasks.UnloadableAnswer"

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        return TaskOutcome(StateType.SUCCESS, outputs={"value": Unloadable()})


TASKS: dict[str, Callable[..., Any]] = {
    "acme.tasks.Spin": spin, "acme.tasks.Nap": nap, "acme.tasks.Stubborn": stubborn,
    "acme.tasks.Crash": crash, "acme.tasks.Broken": broken, "acme.tasks.Pid": pid,
    "acme.tasks.Handshake": handshake,
}  # fmt: skip


@pytest.fixture(autouse=True)
def registered() -> None:
    """Registered per test: the plugins' conftest gives each test an empty registry."""
    for type_name, fn in TASKS.items():
        kestream.task(type_name)(fn)


@pytest.fixture
async def runner() -> AsyncIterator[TaskRunner]:
    runner = TaskRunner(threads=1)
    yield runner
    pids = runner._processes.pids()
    runner.close()
    assert runner._processes.pids() == []
    assert not any(_alive(child) for child in pids)


def _job(
    type_name: str, extra: str = "", timeout_s: float | None = None, run_id: str = "r"
) -> RunTask:
    flow = parse_flow(f"id: f\nnamespace: acme\ntasks:\n  - id: t\n    type: {type_name}\n{extra}")
    task = flow.task_index()["t"]
    assert isinstance(task, RunnableTask)
    props = {name: getattr(task, name) for name in task.dynamic if getattr(task, name) is not None}
    return RunTask("ex", run_id, 1, flow.namespace, flow.id, 1, task, props, timeout_s)


def _alive(process_id: int) -> bool:
    """The process or anything of its group still runs (zombies do not count)."""
    try:
        with open(f"/proc/{process_id}/stat", "rb") as stat:
            runs = stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        runs = False
    return runs or group_alive(process_id) or bool(live_members(process_id))


async def _until(condition: Callable[[], Any]) -> Any:
    while not (value := condition()):
        await asyncio.sleep(0.01)
    return value


async def _the_next_task_runs(runner: TaskRunner, stopped: int) -> None:
    """The slot is free again: a following task runs, in a fresh child."""
    result, _ = await runner.run(_job("acme.tasks.Pid", run_id="next"))
    assert result.state is S.SUCCESS
    assert result.outputs is not None and result.outputs["pid"] != stopped


@pytest.mark.parametrize("type_name", ["acme.tasks.Spin", "acme.tasks.Nap", "acme.tasks.Stubborn"])
async def test_a_kill_stops_the_blocking_code_and_frees_the_slot(
    runner: TaskRunner, type_name: str
) -> None:
    lines: list[LogLine] = []
    job = _job(type_name)
    running = asyncio.ensure_future(runner.run(job, on_line=lines.append))
    await _until(lambda: lines)  # its code runs (and its SIGTERM handler is in place)
    (child,) = runner._processes.pids()
    assert _alive(child)
    assert runner.kill(job.execution_id, job.task_run_id)
    result, _ = await asyncio.wait_for(running, 30)  # a hang guard, not a timing claim
    assert result.state is S.KILLED
    assert not _alive(child) and child not in runner._processes.pids()
    await _the_next_task_runs(runner, child)


async def test_a_release_after_a_kill_waits_for_the_child_to_end(runner: TaskRunner) -> None:
    """The worker handles a kill and its group's release one after the other: the directory is
    removed only once the killed child (here ignoring SIGTERM, so in its grace) is gone."""
    lines: list[LogLine] = []
    job = dataclasses.replace(_job("acme.tasks.Stubborn"), workdir=SharedWorkdir("wd"))
    running = asyncio.ensure_future(runner.run(job, on_line=lines.append))
    await _until(lambda: lines)
    directory = runner.workdirs.path("ex", "wd")
    assert directory is not None and directory.is_dir()
    (child,) = runner._processes.pids()
    assert runner.kill("ex", job.task_run_id) and runner.release_workdir("ex", "wd")
    await asyncio.sleep(0)  # the kill reaches the pool: SIGTERM, ignored
    assert directory.is_dir()
    result, _ = await asyncio.wait_for(running, 30)  # a hang guard
    assert result.state is S.KILLED and not _alive(child)
    assert not directory.exists()
    late, _ = await runner.run(dataclasses.replace(job, attempt=2))  # redelivered
    assert late.state is S.FAILED and late.error is not None and "already ended" in late.error


@pytest.mark.parametrize("type_name", ["acme.tasks.Spin", "acme.tasks.Nap"])
async def test_a_timeout_stops_the_blocking_code_and_frees_the_slot(
    runner: TaskRunner, type_name: str
) -> None:
    started: list[int] = []

    async def watch() -> None:
        started.extend(await _until(runner._processes.pids))

    watcher = asyncio.ensure_future(watch())
    result, _ = await asyncio.wait_for(runner.run(_job(type_name, timeout_s=0.3)), 30)
    await watcher
    assert result.state is S.FAILED and result.error == "Task timed out after 0.3s"
    (child,) = started
    assert not _alive(child)
    await _the_next_task_runs(runner, child)


async def test_a_crashing_child_fails_its_run_and_the_pool_recovers(runner: TaskRunner) -> None:
    result, _ = await runner.run(_job("acme.tasks.Crash"))
    assert result.state is S.FAILED
    assert result.error == "Task 't': its worker process exited with code 3"
    assert runner._processes.pids() == []
    await _the_next_task_runs(runner, 0)


async def test_an_answer_the_worker_cannot_unpickle_fails_the_run_and_replaces_the_child(
    runner: TaskRunner,
) -> None:
    task = UnloadableAnswer(id="t", type=UnloadableAnswer.type_name)
    running = runner._processes.run(task, {}, RunInfo("ex", "r", 1))
    outcome = await asyncio.wait_for(running, 30)  # a hang guard
    assert outcome.state is S.FAILED and outcome.outputs is None
    assert outcome.error == (
        "Task 't': its worker process's answer cannot be read: "
        "RuntimeError: only the child can build this"
    )
    assert runner._processes.pids() == []  # the child was stopped, not reused
    await _the_next_task_runs(runner, 0)


async def test_closing_stops_busy_children_together(tmp_path: Path) -> None:
    """Both children are signalled at once and both are gone when close returns, the one that
    ignores SIGTERM included (SIGKILL after the one grace)."""
    pool = ProcessPool(2)
    runner = TaskRunner(threads=2, processes=pool)
    lines: list[LogLine] = []
    running = [
        asyncio.ensure_future(runner.run(_job(name, run_id=name), on_line=lines.append))
        for name in ("acme.tasks.Nap", "acme.tasks.Stubborn")
    ]
    await _until(lambda: len(lines) == 2)  # both run (the stubborn one ignores SIGTERM now)
    children = pool.pids()
    assert len(children) == 2 and all(_alive(child) for child in children)
    pool.close()
    assert pool.pids() == [] and not any(_alive(child) for child in children)
    results = await asyncio.wait_for(asyncio.gather(*running), 30)  # a hang guard
    assert [result.state for result, _ in results] == [S.FAILED, S.FAILED]
    assert all("its worker process was killed by signal" in (r.error or "") for r, _ in results)
    runner.close()


async def test_an_exception_fails_the_run_with_its_last_line_and_logs_the_traceback(
    runner: TaskRunner,
) -> None:
    result, lines = await runner.run(_job("acme.tasks.Broken"))
    assert result.state is S.FAILED and result.error == "ValueError: boom"
    (error,) = [line for line in lines if line.level == "ERROR"]
    assert error.message.startswith("Traceback (most recent call last):")
    assert error.message.endswith("ValueError: boom") and "in broken" in error.message
    assert result.error_logs == [error.message]
    (child,) = runner._processes.pids()  # the child survived its task's exception
    await _the_next_task_runs(runner, 0)
    assert runner._processes.pids() == [child]  # and was reused


async def test_lines_stream_from_the_child_while_the_task_runs(
    runner: TaskRunner, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    streamed: list[LogLine] = []
    job = _job("acme.tasks.Handshake", f"    ready: {ready}\n")
    running = asyncio.ensure_future(runner.run(job, on_line=streamed.append))
    await _until(lambda: streamed)
    assert not running.done()  # the task waits for the file: the line came while it ran
    assert [line.message for line in streamed] == [f"waiting for {ready}"]
    ready.touch()
    result, rest = await running
    assert result.state is S.SUCCESS and result.outputs == {"done": True}
    assert rest == []  # streamed lines are not repeated with the result


async def test_a_task_registered_after_the_children_forked_runs_in_a_fresh_child(
    runner: TaskRunner,
) -> None:
    first, _ = await runner.run(_job("acme.tasks.Pid"))
    assert first.outputs is not None

    @kestream.task("acme.tasks.Late")
    def late() -> dict[str, Any]:
        return {"pid": os.getpid()}

    result, _ = await runner.run(_job("acme.tasks.Late"))
    assert result.state is S.SUCCESS, result.error
    assert result.outputs is not None and result.outputs["pid"] != first.outputs["pid"]
    assert not _alive(first.outputs["pid"])


async def test_attempts_beyond_the_pool_size_wait_for_a_free_child() -> None:
    pool = ProcessPool(2)
    runner = TaskRunner(threads=2, processes=pool)
    try:
        results = await asyncio.gather(
            *(runner.run(_job("acme.tasks.Pid", run_id=f"r{i}")) for i in range(6))
        )
        assert [result.state for result, _ in results] == [S.SUCCESS] * 6
        pids = {result.outputs["pid"] for result, _ in results if result.outputs}
        assert len(pids) <= 2 and len(pool.pids()) <= 2
    finally:
        runner.close()
        pool.close()
    assert pool.pids() == [] and not any(_alive(child) for child in pids)


async def test_a_child_does_not_hold_the_workers_pipes_and_sockets(runner: TaskRunner) -> None:
    """A pipe the worker had open when the child forked still ends when the worker closes it."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        result, _ = await runner.run(_job("acme.tasks.Pid"))  # forks the child now
        assert result.state is S.SUCCESS and runner._processes.pids()
        os.close(write_end)
        assert os.read(read_end, 1) == b""  # end of file: no child keeps the write end open
    finally:
        os.close(read_end)
