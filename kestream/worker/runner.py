"""Runs one attempt of a runnable task: no Kafka here, a task run in, a result out.

Async tasks (Sleep, scripts, HTTP) are awaited on the event loop and hold no slot while they wait;
tasks marked ``inline`` (pure rendering, cheap) run directly on the loop, in the caller's own turn
(:func:`runs_in_one_turn`: nothing can stop them once begun, so they need no task of their own to
cancel). Blocking task code (Python tasks' ``def`` functions and classes) runs in a pool of
``threads`` worker processes (:mod:`kestream.worker.pool`), where a kill or a timeout stops it; a
task with ``isolation = "thread"`` runs in a thread pool of as many slots instead, where a kill
only sets ``run.killed``. Every other running attempt can be cancelled by a kill.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any

from kestream.executor.commands import LogLine, RunTask
from kestream.executor.context import kv_lookup
from kestream.executor.events import WorkerResult
from kestream.executor.references import (
    fit_outputs,
    measured,
    outputs_keys,
    resolving_variables,
)
from kestream.expressions import RenderError
from kestream.kv.store import calls_kv, sync_current_store
from kestream.models.clock import Clock, utc_now
from kestream.models.state import StateType
from kestream.models.values import find_unportable, safe_text
from kestream.secrets.deferred import SECRETS_KEY, reveal
from kestream.secrets.encryption import EncryptionError, holds_sealed, scope_of, unseal_within
from kestream.secrets.masking import Masker
from kestream.secrets.resolver import process_resolver
from kestream.settings import get_settings
from kestream.storage.access import ExecutionFiles
from kestream.storage.keys import TaskRunFiles
from kestream.tasks.base import LOG_LEVEL_ORDER, LogLevel, RunInfo, TaskError, TaskOutcome
from kestream.tasks.files import readable_key
from kestream.tasks.scripts.workdir import AttemptDirs, write_input_files
from kestream.worker.blocking import run_blocking, task_bug
from kestream.worker.pool import ProcessPool
from kestream.worker.workdirs import SharedWorkdirs

#: How long a timed-out attempt may take to clean up (stop its processes) before its result.
STOP_WAIT_S = 10.0
#: ERROR lines a result carries for ``errorLogs()`` (the executor keeps 100 per execution).
ERROR_LINES_KEPT = 100


class TaskRunner:
    """Executes :class:`RunTask` commands and keeps the running ones cancellable."""

    def __init__(
        self,
        *,
        threads: int = 8,
        clock: Clock = utc_now,
        max_output_bytes: int | None = None,
        processes: ProcessPool | None = None,
        workdirs: SharedWorkdirs | None = None,
        inline_max_bytes: int | None = None,
    ) -> None:
        """``max_output_bytes``: the largest outputs a task run may have (the executor step's
        rule, :mod:`kestream.executor.sizes`); larger ones fail the run here, on the worker,
        so the result is never too large to send. ``processes``: a pool shared with other
        runners (kept open by :meth:`close`); else the runner has its own of ``threads``.
        ``workdirs``: where the directories of ``WorkingDirectory`` groups are kept.
        ``inline_max_bytes``: outputs larger than this go to the internal storage, a reference
        in their place (default: ``KESTREAM_OUTPUT_INLINE_MAX_BYTES``; 0: never)."""
        self._pool = ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="task")
        self._owns_processes = processes is None
        self._processes = ProcessPool(threads) if processes is None else processes
        self._clock = clock
        self.max_output_bytes = max_output_bytes
        if inline_max_bytes is None:
            inline_max_bytes = get_settings().output_inline_max_bytes
        self.inline_max_bytes = inline_max_bytes
        self._running: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self.workdirs = SharedWorkdirs() if workdirs is None else workdirs

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run(
        self, job: RunTask, on_line: Callable[[LogLine], None] | None = None
    ) -> tuple[WorkerResult, list[LogLine]]:
        """Run the attempt; always returns a result (failures and kills included).

        ``on_line``: where the lines the task logs while it runs go, at once (on the event
        loop's thread, whichever thread logs them); they are then not among the returned lines.
        Without it they come first in the returned lines.
        """
        key = (job.execution_id, job.task_run_id)
        streamed_errors: list[str] = []
        masker = Masker()  # the values of the secrets this attempt resolves
        emit = None if on_line is None else self._emitter(job, on_line, streamed_errors, masker)
        files = _task_run_files(job)
        info = RunInfo(
            job.execution_id, job.task_run_id, job.attempt, emit=emit, files=files,
            source=job.source,
        )  # fmt: skip
        if runs_in_one_turn(job):
            outcome = self._execute_now(job, info, masker)
        else:
            outcome = await self._attempt(key, job, info, masker)
        outcome.logs[:0] = info.lines  # what the task logged as it ran comes first
        outcome = _masked(outcome, masker)
        data = measured(outcome.outputs) if self.inline_max_bytes > 0 else None
        if data is not None and len(data) > self.inline_max_bytes:  # a storage write: a thread
            return await asyncio.to_thread(self._result, job, outcome, streamed_errors, data)
        return self._result(job, outcome, streamed_errors, data)

    async def _attempt(
        self, key: tuple[str, str], job: RunTask, info: RunInfo, masker: Masker
    ) -> TaskOutcome:
        """The attempt as a task of its own, cancellable by :meth:`kill` and by its timeout."""
        body = asyncio.ensure_future(self._execute(job, info, masker))
        self._running[key] = body
        try:
            return await asyncio.wait_for(asyncio.shield(body), job.timeout_s)
        except TimeoutError:
            body.cancel()
            await asyncio.wait([body], timeout=STOP_WAIT_S)  # its clean-up (a process group)
            return TaskOutcome(StateType.FAILED, error=f"Task timed out after {job.timeout_s}s")
        except asyncio.CancelledError:
            if not body.cancelled():  # this call was cancelled, not the attempt: stop it too
                body.cancel()
                await asyncio.wait([body], timeout=STOP_WAIT_S)
                raise
            return TaskOutcome(StateType.KILLED, error="Task was killed")
        finally:
            self._running.pop(key, None)

    def _execute_now(self, job: RunTask, info: RunInfo, masker: Masker) -> TaskOutcome:
        """:meth:`_execute` of a job that :func:`runs_in_one_turn`, run to its end here: it
        never awaits, so as a task of its own it would end in its first turn all the same, with
        no moment for a kill or a timeout to come between; only the task, the shield, the
        timeout's handle and the loop turns between them are saved."""
        coro = self._execute(job, info, masker)
        try:
            coro.send(None)
        except StopIteration as done:
            outcome: TaskOutcome = done.value
            return outcome
        coro.close()  # awaited after all: a bug of runs_in_one_turn, never a lost attempt
        raise RuntimeError(f"job {job.task_run_id} awaited; runs_in_one_turn is wrong for it")

    def _emitter(
        self,
        job: RunTask,
        on_line: Callable[[LogLine], None],
        errors: list[str],
        masker: Masker,
    ) -> Callable[[LogLevel, str], None]:
        """``RunInfo.emit`` for one attempt: the task's level floor applied, the line handed to
        ``on_line`` on the loop's thread (task code in a pool thread logs through it too), the
        first ERROR lines kept in ``errors`` for the result (``errorLogs()``)."""
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        floor = _floor(job)

        def emit(level: LogLevel, message: str) -> None:
            if LOG_LEVEL_ORDER[level] < floor:
                return
            line = _line(job, level, masker.text(message), self._clock())
            if level is LogLevel.ERROR and len(errors) < ERROR_LINES_KEPT:
                errors.append(line.message)
            if threading.get_ident() == loop_thread:
                on_line(line)
            else:
                loop.call_soon_threadsafe(on_line, line)

        return emit

    def kill(self, execution_id: str, task_run_id: str) -> bool:
        """Cancel a running attempt; its result reports KILLED."""
        body = self._running.get((execution_id, task_run_id))
        if body is None:
            return False
        body.cancel()
        return True

    def release_workdir(self, execution_id: str, owner_id: str) -> bool:
        """A ``WorkingDirectory`` task run ended: remove the directory its children shared."""
        return self.workdirs.release(execution_id, owner_id)

    def close(self) -> None:
        """Stop the threads and, if the runner's own, the worker processes (running attempts
        are killed: call it once they are done or given up); remove the shared directories."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.workdirs.close()
        if self._owns_processes:
            self._processes.close()

    async def _execute(self, job: RunTask, info: RunInfo, masker: Masker) -> TaskOutcome:
        try:
            await _kv_synced(job.props)
            job = self._revealed(job, masker)
            if job.workdir is None:
                return await self._call(job, info)
            shared = job.workdir
            # The directory outlives a release that comes while this job runs (a kill first).
            with self.workdirs.use(job.execution_id, shared, job.task_run_id) as (path, new):
                if new and shared.input_files:
                    dirs = AttemptDirs(path, path)  # inputFiles go to the working directory only
                    readable = partial(readable_key, info, what="inputFiles")
                    write_input_files(shared.input_files, dirs, readable)
                info.working_dir = path
                return await self._call(job, info)
        except (TaskError, RenderError) as exc:
            return TaskOutcome(StateType.FAILED, error=str(exc))
        except asyncio.CancelledError:
            info.killed.set()  # code still running in a pool thread can see it and stop
            raise
        except Exception as exc:  # a task's own bug must fail its task run, not the worker
            return task_bug(exc, info)

    def _revealed(self, job: RunTask, masker: Masker) -> RunTask:
        """The job with the property texts that call ``secret()`` rendered here, at the last
        moment (:mod:`kestream.secrets.deferred`), and SECRET inputs of the job's own flow
        decrypted (:mod:`kestream.secrets.encryption`); their values go to ``masker``."""
        props = job.props
        if SECRETS_KEY in props:
            files = ExecutionFiles(job.namespace, job.flow_id, job.execution_id, job.source)
            deferred = [
                {**item, "vars": resolving_variables(item["vars"], files)}
                for item in props[SECRETS_KEY]
            ]  # stored values read through their references, as on the executor
            props = {**props, SECRETS_KEY: deferred}
            extra = {"@kv": kv_lookup, "@now": self._clock}
            resolver = partial(process_resolver, get_settings().secrets_file)
            props = reveal(props, resolver, masker, extra)
        if holds_sealed(props):
            try:
                props = unseal_within(props, masker, scope_of(job.namespace, job.flow_id))
            except EncryptionError as exc:
                raise TaskError(str(exc)) from None
        return job if props is job.props else dataclasses.replace(job, props=props)

    async def _call(self, job: RunTask, info: RunInfo) -> TaskOutcome:
        """The task's code, where its kind runs (see the module's doc)."""
        task = job.task
        if task.is_async:
            return await task.arun(job.props, info)
        if task.inline:
            return task.execute(job.props, info)
        if task.isolation == "thread":
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, run_blocking, task, job.props, info)
        return await self._processes.run(task, job.props, info)

    def _result(
        self,
        job: RunTask,
        outcome: TaskOutcome,
        streamed_errors: list[str],
        data: bytes | None = None,
    ) -> tuple[WorkerResult, list[LogLine]]:
        now: datetime = self._clock()
        outcome = self._checked_outputs(job, outcome, data)
        floor = _floor(job)
        lines = [
            _line(job, lvl, msg, now) for lvl, msg in outcome.logs if LOG_LEVEL_ORDER[lvl] >= floor
        ]
        errors = [line.message for line in lines if line.level == LogLevel.ERROR.value]
        errors = [*streamed_errors, *errors][:ERROR_LINES_KEPT]
        if outcome.error is not None:
            # The executor logs the failure message itself (also for inline tasks), once.
            state = StateType.KILLED if outcome.state is StateType.KILLED else StateType.FAILED
        else:
            state = outcome.state
        result = WorkerResult(
            job.execution_id, job.task_run_id, job.attempt, state, outcome.outputs,
            None if outcome.error is None else safe_text(outcome.error), errors,
        )  # fmt: skip
        return result, lines

    def _checked_outputs(
        self, job: RunTask, outcome: TaskOutcome, data: bytes | None = None
    ) -> TaskOutcome:
        """``outcome`` with outputs the result record can carry: unportable or oversized ones
        fail a successful run; a failed run keeps its own error and loses only the outputs,
        with a WARN line saying why (a size error must not hide why the task failed)."""
        unportable = find_unportable(outcome.outputs, "outputs")
        if unportable is not None:
            problem: str | None = f"Task '{job.task.id}' outputs cannot be stored: {unportable}"
        else:  # past the inline threshold they go to the storage (:mod:`.references`)
            outputs, problem = fit_outputs(
                job.task.id, outcome.outputs, self.max_output_bytes, self.inline_max_bytes,
                lambda: outputs_keys(_task_run_files(job), job.attempt), data,
            )  # fmt: skip
            if outputs is not outcome.outputs:
                outcome = dataclasses.replace(outcome, outputs=outputs)
        if problem is None:
            return outcome
        if outcome.error is None:
            return TaskOutcome(StateType.FAILED, logs=outcome.logs, error=problem)
        note = (LogLevel.WARN, f"{problem}; the failed run's outputs were dropped")
        return TaskOutcome(outcome.state, logs=[*outcome.logs, note], error=outcome.error)


def runs_in_one_turn(job: RunTask) -> bool:
    """Whether the job's attempt never awaits: an ``inline`` task's synchronous ``execute``
    (Log, OutputValues...) with no shared working directory and no ``secret()`` text to
    resolve here (the one await before the task, :func:`_kv_synced`). Such an attempt cannot
    be interrupted once begun, so it runs in the caller's turn of the event loop."""
    task = job.task
    return (
        task.inline and not task.is_async and job.workdir is None and SECRETS_KEY not in job.props
    )


async def _kv_synced(props: dict[str, Any]) -> None:
    """One KV sync before the texts rendered here at the last moment, when one calls ``kv()``:
    the render then reads the store without waiting (:mod:`kestream.kv.store`)."""
    deferred = props.get(SECRETS_KEY) or []
    if any(calls_kv(str(item.get("template", ""))) for item in deferred):
        await sync_current_store()


def _masked(outcome: TaskOutcome, masker: Masker) -> TaskOutcome:
    """``outcome`` with the attempt's secret values masked in its lines, error and outputs."""
    if not masker:
        return outcome
    return TaskOutcome(
        outcome.state,
        masker.value(outcome.outputs),
        [(level, masker.text(message)) for level, message in outcome.logs],
        None if outcome.error is None else masker.text(outcome.error),
    )


def _task_run_files(job: RunTask) -> TaskRunFiles:
    """The storage folder of the job's task run: its files and its offloaded outputs."""
    return TaskRunFiles(job.namespace, job.flow_id, job.execution_id, job.task.id, job.task_run_id)


def _floor(job: RunTask) -> int:
    """The lowest level logged for the task (its ``logLevel``; everything when unset)."""
    return LOG_LEVEL_ORDER[job.task.logLevel] if job.task.logLevel else 0


def _line(job: RunTask, level: LogLevel, message: str, now: datetime) -> LogLine:
    return LogLine(
        job.execution_id, job.task_run_id, job.task.id, job.attempt, level, safe_text(message), now
    )
