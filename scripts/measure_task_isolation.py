"""Measure what running a blocking Python task in a worker process costs, against a thread.

A trivial ``def`` task (it returns ``{"n": n}``) runs ``--calls`` times one after the other through
the worker's :class:`~kestream.worker.runner.TaskRunner`, once on each path; each attempt is timed
from ``runner.run`` to its result, so the figures hold the runner's own work (rendering checks,
the result record) plus the path's: a pool thread, or a pickled round trip to a warm child over
its pipe. Then ``--kills`` attempts of ``while True: pass`` are killed and timed from the kill to
the result (the child is gone by then).

    .venv/bin/python scripts/measure_task_isolation.py --calls 3000 --kills 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import kestream
from kestream.executor.commands import LogLine, RunTask
from kestream.models.flow import parse_flow
from kestream.tasks.base import RunnableTask
from kestream.worker.runner import TaskRunner


@kestream.task("measure.Thread", isolation="thread")
def on_thread(n: int) -> dict[str, Any]:
    return {"n": n}


@kestream.task("measure.Process")
def in_process(n: int) -> dict[str, Any]:
    return {"n": n}


@kestream.task("measure.Spin")
def spin(*, run: kestream.RunContext) -> None:
    run.logger.info("spinning")
    while True:
        pass


def job(type_name: str, run_id: str, extra: str = "") -> RunTask:
    flow = parse_flow(
        f"id: m\nnamespace: measure\ntasks:\n  - id: t\n    type: {type_name}\n{extra}"
    )
    task = flow.task_index()["t"]
    assert isinstance(task, RunnableTask)
    props = {name: getattr(task, name) for name in task.dynamic if getattr(task, name) is not None}
    return RunTask("ex", run_id, 1, flow.namespace, flow.id, 1, task, props, None)


def percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=10)
    return f"p50 {cuts[4] * 1e6:7.0f} us   p90 {cuts[8] * 1e6:7.0f} us"


async def calls(runner: TaskRunner, type_name: str, count: int) -> list[float]:
    one = job(type_name, "r", "    n: 1\n")
    await runner.run(one)  # warm: the child is forked, the thread started
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        result, _ = await runner.run(one)
        samples.append(time.perf_counter() - start)
        assert result.outputs == {"n": 1}, result
    return samples


async def kills(runner: TaskRunner, count: int) -> list[float]:
    samples = []
    for index in range(count):
        spinning = job("measure.Spin", f"k{index}")
        started = asyncio.Event()
        running = asyncio.ensure_future(runner.run(spinning, on_line=_setter(started)))
        await started.wait()
        start = time.perf_counter()
        runner.kill(spinning.execution_id, spinning.task_run_id)
        await running
        samples.append(time.perf_counter() - start)
    return samples


def _setter(event: asyncio.Event) -> Callable[[LogLine], None]:
    """An ``on_line`` that sets ``event``: the task's first line says its code runs."""
    return lambda _line: event.set()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args()
    runner = TaskRunner(threads=1)
    try:
        thread = await calls(runner, "measure.Thread", args.calls)
        process = await calls(runner, "measure.Process", args.calls)
        killed = await kills(runner, args.kills)
    finally:
        runner.close()
    print(f"thread path,  {args.calls} calls: {percentiles(thread)}")
    print(f"process pool, {args.calls} calls: {percentiles(process)}")
    print(f"kill to result, {args.kills} kills: {percentiles(killed)}  max {max(killed):.3f} s")


if __name__ == "__main__":
    asyncio.run(main())
