"""What the ``kestream`` commands print, and the exit codes they end with.

One place for both, so that ``run`` and the ``executions`` commands print an execution, its
progress and its log lines the same way: readable text on stdout (progress on stderr), or with
``--json`` only the JSON on stdout.

Exit codes (README, "Command line"):

- 0 SUCCESS, 1 FAILED or KILLED, 2 WARNING, 3 PAUSED: the state of the execution a command ran
  or followed to its end (``run``, ``executions follow``, ``--wait``);
- 4: the input was unusable and nothing was done: a flow file or directory that does not exist,
  an invalid flow or input, a broker or API that cannot be reached, a request the API refused;
- 64 (``EX_USAGE`` of sysexits.h): the command line itself is wrong (an unknown option, a
  missing argument). Click's own code for it, 2, would read as WARNING.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import typer

from kestream.models.state import StateType

if TYPE_CHECKING:  # the models' import is heavy: `standalone` and the roles' start skip it
    from kestream.models.execution import Execution, LogEntry

EXIT_CODES = {
    StateType.SUCCESS: 0,
    StateType.FAILED: 1,
    StateType.KILLED: 1,
    StateType.WARNING: 2,
    StateType.PAUSED: 3,
}
EXIT_UNUSABLE = 4
EXIT_USAGE = 64
#: Task-run changes printed one by one while following; past it, a summary once a second.
DETAILED_CHANGES = 50


def exit_code(state: StateType) -> int:
    """The exit code of a command that ends with an execution in ``state`` (module docs)."""
    return EXIT_CODES.get(state, 1)


def say(message: str) -> None:
    """Progress for people: always on stderr, so ``--json`` keeps stdout clean."""
    typer.echo(message, err=True)


def fail(message: str) -> typer.Exit:
    """Print ``message`` in red on stderr; the exit to raise for unusable input."""
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(EXIT_UNUSABLE)


async def follow_progress(updates: AsyncIterator[Execution], *, until_paused: bool) -> Execution:
    """Report progress on stderr until the execution is over (or pauses, with
    ``until_paused``); the execution as it was then.

    Over is the updates' own end (:meth:`kestream.Client.follow`, the API's ``end`` frame),
    not the first end state they show: the ``afterExecution`` tasks run after it, under that
    state, and the execution printed must hold their task runs.

    The first task-run changes are printed one by one; past that, a summary at most once a
    second, so a 10 000-iteration loop does not flood the terminal.
    """
    seen: dict[str, StateType] = {}
    printed, last_summary = 0, 0.0
    execution: Execution | None = None
    async for execution in updates:
        for task_run in execution.taskRunList:
            state = task_run.state.current
            if seen.get(task_run.id) is state:
                continue
            seen[task_run.id] = state
            if printed < DETAILED_CHANGES and state is not StateType.CREATED:
                printed += 1
                value = f" [{task_run.value}]" if task_run.value is not None else ""
                say(f"  {task_run.taskId}{value}: {state}")
        if printed >= DETAILED_CHANGES and time.monotonic() - last_summary >= 1.0:
            last_summary = time.monotonic()
            ended = sum(1 for s in seen.values() if s.is_terminal)
            say(f"  ... {ended} of {len(seen)} task runs ended")
        if until_paused and execution.state.current is StateType.PAUSED:
            return execution
    if execution is None:
        raise RuntimeError("no update received for the execution")
    return execution


def print_execution(execution: Execution, logs: Iterable[LogEntry]) -> None:
    """The readable report of an execution: its state, task-run tree, outputs and log lines."""
    state = execution.state
    where = f"{execution.namespace}.{execution.flowId}, revision {execution.flowRevision}"
    typer.echo(f"Execution {execution.id} ({where}): {state.current} in {state.duration}")
    typer.echo("\nTask runs:")
    depth: dict[str, int] = {}
    for run_ in execution.taskRunList:
        level = depth[run_.parentTaskRunId] + 1 if run_.parentTaskRunId in depth else 0
        depth[run_.id] = level
        value = f" [{run_.value}]" if run_.value is not None else ""
        attempts = len(run_.attempts or [])
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        outputs = f"  outputs: {short(run_.outputs)}" if run_.outputs else ""
        typer.echo(f"  {'  ' * level}{run_.taskId}{value}: {run_.state.current}{tries}{outputs}")
    if execution.outputs:
        typer.echo(f"\nOutputs: {short(execution.outputs, 400)}")
    lines = list(logs)
    if lines:
        typer.echo("\nLogs:")
        for entry in lines:
            typer.echo(log_line(entry))


def log_line(entry: LogEntry) -> str:
    """One log line of an execution, as ``run`` and ``executions logs`` print it."""
    return f"  {entry.level:<5} {entry.taskId or '-'}: {entry.message}"


def short(value: Any, limit: int = 120) -> str:
    """``value`` as compact JSON, cut at ``limit`` characters."""
    import orjson

    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."
