"""``@kestream.task`` on functions: properties from the signature, coercion after rendering,
the run context, outputs; run through :mod:`kestream.testing` (the real executor step and
runner)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

import kestream
from kestream.models.flow import check_flow
from kestream.models.state import StateType
from kestream.plugins.context import RunContext
from kestream.tasks.base import LogLevel, RunInfo
from kestream.tasks.registry import task_class
from kestream.testing import Driver


def flow(tasks: str, inputs: str = "") -> str:
    return f"id: f\nnamespace: acme.team\n{inputs}tasks:\n{tasks}"


def errors(source: str) -> list[str]:
    return [str(p) for p in check_flow(source) if p.severity == "error"]


def test_rendered_text_is_coerced_by_the_type_hints() -> None:
    seen: list[tuple[Any, Any]] = []

    @kestream.task("acme.tasks.Add", isolation="thread")  # in-process: ``seen`` is shared
    def add(a: int, b: int = 2) -> dict[str, Any]:
        seen.append((a, b))
        return {"sum": a + b}

    source = flow(
        "  - id: add\n    type: acme.tasks.Add\n    a: \"{{ inputs.x }}\"\n    b: '{{ 3 * 2 }}'\n",
        "inputs:\n  - id: x\n    type: STRING\n",
    )
    execution = kestream.run(source, {"x": "20"})
    assert execution.state.current is StateType.SUCCESS
    assert seen == [(20, 6)]
    assert execution.taskRunList[0].outputs == {"sum": 26}
    assert add(1, 1) == {"sum": 2}  # the function itself is unchanged


def test_defaults_apply_and_a_coercion_failure_names_task_and_property() -> None:
    @kestream.task("acme.tasks.Add")
    def add(a: int, b: int = 2) -> dict[str, Any]:
        return {"sum": a + b}

    source = flow(
        '  - id: adder\n    type: acme.tasks.Add\n    a: "{{ inputs.x }}"\n',
        "inputs:\n  - id: x\n    type: STRING\n",
    )
    assert kestream.run(source, {"x": "5"}).taskRunList[0].outputs == {"sum": 7}
    with Driver() as driver:
        driver.deploy(source)
        execution = driver.start("acme.team", "f", {"x": "five"})
        assert execution.state.current is StateType.FAILED
        messages = [entry.message for entry in driver.logs(execution.id)]
    assert any(
        "Task 'adder' (acme.tasks.Add)" in m and "'a' should be a valid integer" in m
        for m in messages
    ), messages


def test_deploy_refuses_missing_unknown_and_mistyped_literal_properties() -> None:
    @kestream.task("acme.tasks.Add")
    def add(a: int, b: int = 2) -> dict[str, Any]:
        return {"sum": a + b}

    source = flow(
        "  - id: one\n"  # 4
        "    type: acme.tasks.Add\n"
        "    c: 1\n"  # 6
        "  - id: two\n"
        "    type: acme.tasks.Add\n"
        "    a: abc\n"  # 9
        "  - id: three\n"
        "    type: acme.tasks.Add\n"
        "    a: '{{ inputs.later }}'\n"  # a template: checked after rendering only
    )
    found = errors(source)
    assert "flow acme.team.f, task 'one' (line 4, tasks[0].a): missing required property 'a'" in (
        found
    )
    assert any("task 'one' (line 6, tasks[0].c): unknown property 'c'" in p for p in found)
    assert any("task 'two' (line 9, tasks[1].a): 'a' should be a valid integer" in p for p in found)
    assert len(found) == 3, found


def test_run_context_gives_ids_logger_working_dir_and_removes_it() -> None:
    @kestream.task("acme.tasks.Inspect")
    def inspect_run(*, run: RunContext) -> dict[str, Any]:
        run.logger.info("hello %s", "there")
        run.logger.warning("careful")
        (run.working_dir / "scratch.txt").write_text("x")
        return {
            "dir": str(run.working_dir),
            "execution": run.execution_id,
            "task_run": run.task_run_id,
            "attempt": run.attempt,
            "killed": run.killed.is_set(),
        }

    with Driver() as driver:
        driver.deploy(flow("  - id: look\n    type: acme.tasks.Inspect\n"))
        execution = driver.start("acme.team", "f")
        logs = [(entry.level, entry.taskId, entry.message) for entry in driver.logs(execution.id)]
    task_run = execution.taskRunList[0]
    seen = task_run.outputs or {}
    assert execution.state.current is StateType.SUCCESS
    assert logs == [("INFO", "look", "hello there"), ("WARN", "look", "careful")]
    assert (seen["execution"], seen["task_run"]) == (execution.id, task_run.id)
    assert seen["attempt"] == 1 and seen["killed"] is False
    assert seen["dir"] and not Path(seen["dir"]).exists()  # removed afterwards


def test_logger_lines_become_log_lines_with_kestra_levels() -> None:
    info = RunInfo("e", "t", 1)
    run = RunContext(info)
    run.logger.debug("d %d", 1)
    run.logger.info("i")
    run.logger.warning("w")
    run.logger.error("e")
    try:
        raise ValueError("boom")
    except ValueError:
        run.logger.exception("failed")
    assert [level for level, _ in info.lines] == [
        LogLevel.DEBUG, LogLevel.INFO, LogLevel.WARN, LogLevel.ERROR, LogLevel.ERROR
    ]  # fmt: skip
    assert info.lines[0][1] == "d 1"
    assert info.lines[4][1].startswith("failed\nTraceback")
    assert "ValueError: boom" in info.lines[4][1]


def test_a_detached_context_calls_a_task_function_directly() -> None:
    @kestream.task("acme.tasks.Touch")
    def touch(name: str, *, run: RunContext) -> dict[str, Any]:
        run.logger.info("touching %s", name)
        (run.working_dir / name).write_text("x")
        return {"files": sorted(p.name for p in run.working_dir.iterdir())}

    with RunContext.detached() as run:
        assert touch("a.txt", run=run) == {"files": ["a.txt"]}
        directory = run.working_dir
    assert run.log_lines == [("INFO", "touching a.txt")]
    assert not directory.exists()


def test_logger_streams_through_the_runners_emit_callback() -> None:
    emitted: list[tuple[LogLevel, str]] = []
    info = RunInfo("e", "t", 1, emit=lambda level, text: emitted.append((level, text)))
    RunContext(info).logger.info("now")
    assert emitted == [(LogLevel.INFO, "now")] and info.lines == []


def test_check_killed_raises_once_the_attempt_is_killed() -> None:
    info = RunInfo("e", "t", 1)
    run = RunContext(info)
    run.check_killed()  # not killed: returns
    info.killed.set()
    with pytest.raises(kestream.TaskError, match="killed"):
        run.check_killed()


async def test_a_killed_thread_task_sees_the_kill_flag() -> None:
    """On the thread path a kill cannot stop the code: it sets the flag the code looks at."""
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    stopped_by_flag: list[bool] = []
    finished = threading.Event()

    @kestream.task("acme.tasks.Busy", isolation="thread")
    def busy(*, run: RunContext) -> None:
        loop.call_soon_threadsafe(started.set)
        stopped_by_flag.append(run.killed.wait(60))
        finished.set()

    driver = Driver()
    driver.deploy(flow("  - id: busy\n    type: acme.tasks.Busy\n"))
    start = asyncio.ensure_future(driver.astart("acme.team", "f"))
    await started.wait()
    execution_id = next(iter(driver.states))
    killed = await driver.akill(execution_id)
    await start
    assert killed.state.current is StateType.KILLED
    assert await loop.run_in_executor(None, finished.wait, 60)
    assert stopped_by_flag == [True]
    driver.runner.close()


def test_a_timeout_sets_the_kill_flag_of_a_thread_task_and_fails_the_run() -> None:
    flags: list[bool] = []
    finished = threading.Event()

    @kestream.task("acme.tasks.Slow", isolation="thread")
    def slow(*, run: RunContext) -> None:
        flags.append(run.killed.wait(60))
        finished.set()

    with Driver() as driver:
        driver.deploy(flow("  - id: slow\n    type: acme.tasks.Slow\n    timeout: PT0.2S\n"))
        execution = driver.start("acme.team", "f")
        assert execution.state.current is StateType.FAILED
        assert finished.wait(60)
        messages = [entry.message for entry in driver.logs(execution.id)]
    assert flags == [True]
    assert any("timed out" in m for m in messages), messages


class Total(BaseModel):
    total: int
    label: str = Field(alias="displayLabel")


def test_a_pydantic_model_result_becomes_the_outputs_by_alias() -> None:
    @kestream.task("acme.tasks.Total")
    def total(values: list[int]) -> Total:
        return Total(total=sum(values), displayLabel="sum")

    execution = kestream.run(flow("  - id: t\n    type: acme.tasks.Total\n    values: [1, '2']\n"))
    assert execution.taskRunList[0].outputs == {"total": 3, "displayLabel": "sum"}


def test_none_means_no_outputs_and_other_results_fail_the_run() -> None:
    @kestream.task("acme.tasks.Nothing")
    def nothing() -> None:
        return None

    @kestream.task("acme.tasks.Wrong")
    def wrong() -> Any:
        return [1, 2]

    done = kestream.run(flow("  - id: n\n    type: acme.tasks.Nothing\n"))
    assert done.state.current is StateType.SUCCESS and done.taskRunList[0].outputs is None
    with Driver() as driver:
        driver.deploy(flow("  - id: w\n    type: acme.tasks.Wrong\n"))
        failed = driver.start("acme.team", "f")
        messages = [entry.message for entry in driver.logs(failed.id)]
    assert failed.state.current is StateType.FAILED
    assert any("returned list" in m for m in messages), messages


def test_async_functions_are_awaited_on_the_loop() -> None:
    @kestream.task("acme.tasks.Later")
    async def later(delay: float, *, run: RunContext) -> dict[str, Any]:
        await asyncio.sleep(delay)
        return {"attempt": run.attempt}

    cls = task_class("acme.tasks.Later")
    assert cls is not None and cls.is_async  # type: ignore[attr-defined]
    execution = kestream.run(flow("  - id: l\n    type: acme.tasks.Later\n    delay: '0.01'\n"))
    assert execution.taskRunList[0].outputs == {"attempt": 1}


def test_a_raised_error_fails_the_run_with_its_message() -> None:
    @kestream.task("acme.tasks.Refuse")
    def refuse(reason: str) -> None:
        raise kestream.TaskError(f"refused: {reason}")

    with Driver() as driver:
        driver.deploy(flow("  - id: r\n    type: acme.tasks.Refuse\n    reason: '{{ 1 + 1 }}'\n"))
        execution = driver.start("acme.team", "f")
        messages = [entry.message for entry in driver.logs(execution.id)]
    assert execution.state.current is StateType.FAILED
    assert "refused: 2" in messages


def test_a_bug_fails_the_run_and_logs_its_traceback() -> None:
    @kestream.task("acme.tasks.Buggy")
    def buggy(*, run: RunContext) -> None:
        (run.working_dir / "left.txt").write_text("x")
        raise ValueError("boom")

    with Driver() as driver:
        driver.deploy(flow("  - id: b\n    type: acme.tasks.Buggy\n"))
        execution = driver.start("acme.team", "f")
        messages = [entry.message for entry in driver.logs(execution.id)]
    assert execution.state.current is StateType.FAILED
    assert "ValueError: boom" in messages
    assert any(m.startswith("Traceback") and 'raise ValueError("boom")' in m for m in messages)


def test_aliases_name_the_same_task() -> None:
    @kestream.task("acme.tasks.New", aliases=("acme.tasks.Old",))
    def new() -> dict[str, Any]:
        return {"v": 1}

    assert task_class("acme.tasks.Old") is task_class("acme.tasks.New")
    assert kestream.run(flow("  - id: o\n    type: acme.tasks.Old\n")).taskRunList[0].outputs == {
        "v": 1
    }


def test_signatures_that_cannot_be_tasks_are_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="property 'timeout' is one every task has"):

        @kestream.task("acme.tasks.Clash")
        def clash(timeout: int) -> None: ...

    with pytest.raises(TypeError, match="must be keyword-only"):

        @kestream.task("acme.tasks.Positional")
        def positional(run: RunContext) -> None: ...

    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs"):

        @kestream.task("acme.tasks.Star")
        def star(**rest: Any) -> None: ...

    with pytest.raises(TypeError, match="needs the task type name"):
        kestream.task(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decorates functions"):
        kestream.task("acme.tasks.Cls")(dict)
    assert task_class("acme.tasks.Clash") is None
