"""A failed run's outputs go through the same size and portability checks as a successful one's:
its own error is kept, oversized or unportable outputs are dropped with a WARN line."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from kestream.executor.commands import RunTask
from kestream.models.state import StateType
from kestream.tasks.base import RunInfo, RunnableTask, TaskOutcome
from kestream.worker.runner import TaskRunner


class Fixed(RunnableTask):
    """Answers with the outcome the test set (inline: runs on the loop, no worker process)."""

    type_name: ClassVar[str] = "test.Fixed"
    inline: ClassVar[bool] = True
    answer: ClassVar[TaskOutcome]

    def execute(self, props: dict[str, Any], run: RunInfo) -> TaskOutcome:
        return self.answer


def _job() -> RunTask:
    task = Fixed(id="t", type=Fixed.type_name)
    return RunTask("ex", "r", 1, "acme", "f", 1, task, {}, None)


async def _run(outcome: TaskOutcome) -> tuple[Any, list[str]]:
    Fixed.answer = outcome
    runner = TaskRunner(threads=1, max_output_bytes=1_000)
    try:
        result, lines = await runner.run(_job())
    finally:
        runner.close()
    return result, [f"{line.level} {line.message}" for line in lines]


async def test_a_failed_runs_oversized_outputs_are_dropped_and_its_error_kept() -> None:
    outputs = {"vars": {"big": "x" * 5_000}, "exitCode": 3}
    result, lines = await _run(TaskOutcome(StateType.FAILED, outputs, error="Command failed (3)"))
    assert result.state is StateType.FAILED and result.error == "Command failed (3)"
    assert result.outputs is None
    (warn,) = [line for line in lines if line.startswith("WARN ")]
    assert "outputs of task 't'" in warn and warn.endswith("the failed run's outputs were dropped")


async def test_a_failed_runs_unportable_outputs_are_dropped_and_its_error_kept() -> None:
    outcome = TaskOutcome(StateType.FAILED, {"when": object()}, error="Command failed (1)")
    result, lines = await _run(outcome)
    assert (result.state, result.error, result.outputs) == (
        StateType.FAILED, "Command failed (1)", None,
    )  # fmt: skip
    assert any(line.startswith("WARN Task 't' outputs cannot be stored") for line in lines)


@pytest.mark.parametrize("state", [StateType.FAILED, StateType.SUCCESS])
async def test_outputs_that_fit_are_kept_whatever_the_state(state: StateType) -> None:
    error = None if state is StateType.SUCCESS else "Command failed (2)"
    result, lines = await _run(TaskOutcome(state, {"exitCode": 2}, error=error))
    assert (result.state, result.outputs, result.error) == (state, {"exitCode": 2}, error)
    assert not [line for line in lines if line.startswith("WARN ")]


async def test_a_successful_runs_oversized_outputs_fail_it() -> None:
    result, _ = await _run(TaskOutcome(StateType.SUCCESS, {"big": "x" * 5_000}))
    assert result.state is StateType.FAILED and result.outputs is None
    assert result.error is not None and "outputs of task 't'" in result.error
