"""A job whose attempt never awaits (an inline task's synchronous body) runs in the worker's own
turn of the event loop, without a task, a shield and a timeout of its own; every other job
keeps them, so that a kill or a timeout can stop it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kestream.executor.commands import RunTask, SharedWorkdir
from kestream.models.state import StateType
from kestream.secrets.deferred import SECRETS_KEY
from kestream.tasks.base import RunnableTask
from kestream.tasks.registry import task_class
from kestream.worker.runner import TaskRunner, runs_in_one_turn

LOG = "io.kestra.plugin.core.log.Log"
SLEEP = "io.kestra.plugin.core.flow.Sleep"


def _job(type_name: str, props: dict[str, Any], **extra: Any) -> RunTask:
    cls = task_class(type_name)
    assert cls is not None
    fields = {k: v for k, v in props.items() if k != SECRETS_KEY}  # rendered beside, not a field
    task = cls.model_validate({"id": "t", "type": type_name, **fields})
    assert isinstance(task, RunnableTask)
    return RunTask("ex", "run", 1, "acme", "f", 1, task, props, **extra)


def test_which_jobs_run_in_one_turn() -> None:
    log = {"message": "hello"}
    assert runs_in_one_turn(_job(LOG, log))
    assert not runs_in_one_turn(_job(SLEEP, {"duration": "PT0.01S"}))  # awaits its timer
    assert not runs_in_one_turn(_job(LOG, log, workdir=SharedWorkdir("wd")))  # files first
    deferred = {**log, SECRETS_KEY: []}  # secret() texts are resolved here, maybe after a sync
    assert not runs_in_one_turn(_job(LOG, deferred))


async def test_an_inline_job_never_gives_the_loop_up() -> None:
    runner = TaskRunner(threads=1)
    others: list[str] = []
    asyncio.get_running_loop().call_soon(others.append, "another callback")
    try:
        result, lines = await runner.run(_job(LOG, {"message": "hello"}, timeout_s=5.0))
        assert others == []  # the attempt ran from start to end in this turn
    finally:
        runner.close()
    assert result.state is StateType.SUCCESS
    assert [line.message for line in lines] == ["hello"]
    assert runner.in_flight == 0


async def test_an_awaiting_job_is_still_killed_and_timed_out() -> None:
    runner = TaskRunner(threads=1)
    try:
        running = asyncio.ensure_future(runner.run(_job(SLEEP, {"duration": "PT10S"})))
        await asyncio.sleep(0.05)
        assert runner.in_flight == 1
        assert runner.kill("ex", "run")
        killed, _ = await running
        timed_out, _ = await runner.run(_job(SLEEP, {"duration": "PT10S"}, timeout_s=0.05))
    finally:
        runner.close()
    assert killed.state is StateType.KILLED
    assert timed_out.state is StateType.FAILED and "timed out" in (timed_out.error or "")


@pytest.mark.parametrize("timeout_s", [None, 0.0001])
async def test_an_inline_job_ends_as_its_task_says_whatever_its_timeout(
    timeout_s: float | None,
) -> None:
    """A synchronous body cannot be interrupted: its own outcome stands, as it did when it ran
    as a task whose timeout could only be seen after the body's one turn."""
    runner = TaskRunner(threads=1)
    try:
        result, _ = await runner.run(_job(LOG, {"message": "x"}, timeout_s=timeout_s))
    finally:
        runner.close()
    assert result.state is StateType.SUCCESS
