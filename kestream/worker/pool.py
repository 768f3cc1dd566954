"""Blocking task code in worker processes, so that a kill or a timeout really stops it.

A thread cannot be stopped from outside: code in a ``while True`` loop or a long ``time.sleep``
goes on after its attempt was killed, holding its slot. Here each such attempt runs in a child
process of the worker instead, prefork style: children are forked on demand (up to ``size``),
inherit the task types (plugin modules) the worker imported, and take one attempt at a time, again
and again. Stopping an attempt is stopping its child: SIGTERM to the child's process group (what the
task started goes too), SIGKILL after :data:`KILL_GRACE_S`; the next attempt forks a fresh child.

The parent sends ``(task, props, ids)`` over a pipe (pickled: task properties are JSON values); the
child answers with ``("log", level, message)`` lines as the task logs them, so they stream while it
runs, then ``("done", outcome)``. A child that dies mid-attempt (``os._exit``, a segfault, the OOM
killer) fails that attempt with its exit status; the pool goes on without it.
A thread per attempt reads the answer (a large message never stalls the event loop); one that
cannot be read or unpickled here fails the attempt, and the child is replaced.

A child forked before a plugin task type was registered does not know it: children remember the
registry's generation and an idle child of an older one is replaced before it takes an attempt.

A child drops the ``SECRET_*`` and ``KESTREAM_*`` variables from its environment when it starts
(:func:`kestream.secrets.environment.forget_secrets`): the worker resolves secrets before the
attempt is sent, and the settings were read before the fork.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import multiprocessing
import os
import pickle
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from kestream.models.state import StateType
from kestream.parent_death import die_with
from kestream.secrets.environment import forget_secrets
from kestream.settings import get_settings
from kestream.tasks.base import LogLevel, RunInfo, RunnableTask, TaskOutcome
from kestream.tasks.registry import generation
from kestream.worker.blocking import run_blocking

__all__ = ["KILL_GRACE_S", "ProcessPool", "shared_pool"]

#: How long a child may take to end on SIGTERM before it gets SIGKILL.
KILL_GRACE_S = 2.0
_POLL_S = 0.02


@dataclass(slots=True)
class _Child:
    process: BaseProcess
    conn: Connection
    generation: int

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid


class _ChildDied(Exception):
    """The child's end of the pipe closed before it answered."""


class _Unreadable(Exception):
    """The child's answer could not be read or unpickled here."""


class ProcessPool:
    """Up to ``size`` child processes running blocking task attempts, one at a time each.

    :meth:`run` is called from an event loop (any loop: :mod:`kestream.testing` runs several one
    after the other); attempts beyond ``size`` wait for a child to come free.
    """

    def __init__(self, size: int) -> None:
        self.size = max(size, 1)
        self._context = multiprocessing.get_context("fork")
        self._lock = threading.Lock()
        self._idle: list[_Child] = []
        self._busy: dict[int, _Child] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    def pids(self) -> list[int]:
        """The children alive now, idle or busy."""
        with self._lock:
            return [child.pid for child in (*self._idle, *self._busy.values())]

    async def run(self, task: RunnableTask, props: dict[str, Any], info: RunInfo) -> TaskOutcome:
        """Run ``task.execute(props, info)`` in a child; lines it logs reach ``info.log`` as they
        come. Cancelling this call stops the child (within :data:`KILL_GRACE_S` and a bit)."""
        child = await self._acquire()
        loop = asyncio.get_running_loop()
        reading: asyncio.Future[TaskOutcome] | None = None
        reusable = False
        try:
            try:
                child.conn.send((task, props, _run_ids(info)))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                reusable = True  # nothing was written: pickling comes first
                error = f"Task '{task.id}' cannot be sent to a worker process: {exc}"
                return TaskOutcome(StateType.FAILED, error=error)
            reading = _read_answer(loop, child.conn, info)
            try:
                outcome = await asyncio.shield(reading)
            except _ChildDied:
                status = await _reap(child)
                error = f"Task '{task.id}': its worker process {_exit_text(status)}"
                return TaskOutcome(StateType.FAILED, error=error)
            except _Unreadable as exc:  # the child is replaced: it may be mid-message
                error = f"Task '{task.id}': its worker process's answer cannot be read: {exc}"
                return TaskOutcome(StateType.FAILED, error=error)
            reusable = True
            return outcome
        finally:
            if reusable:
                self._release(child)
            else:
                await _stop(child)
                if reading is not None:  # the child is gone: its reader sees the end, then stops
                    await asyncio.wait([reading])
                self._forget(child)

    def close(self) -> None:
        """End every child: idle ones are told to exit, busy ones get SIGTERM, all at once; those
        still there after one :data:`KILL_GRACE_S` get SIGKILL."""
        with self._lock:
            self._closed = True
            idle, busy = list(self._idle), list(self._busy.values())
            self._idle.clear()
            self._busy.clear()
            waiters, self._waiters = self._waiters, []
        for child in idle:
            with contextlib.suppress(OSError):
                child.conn.send(None)
        for child in busy:
            _signal_group(child.pid, signal.SIGTERM)
        # Polled, not ``join(timeout)``: a child points its own sentinel pipe at /dev/null
        # (_release_inherited_pipes), so the sentinel is ready at once and join would block.
        deadline = time.monotonic() + KILL_GRACE_S
        children = (*idle, *busy)
        while time.monotonic() < deadline and any(c.process.exitcode is None for c in children):
            time.sleep(_POLL_S)
        for child in children:
            if child.process.exitcode is None:
                _signal_group(child.pid, signal.SIGKILL)
                child.process.join()
            child.conn.close()
        for waiter in waiters:
            _wake(waiter)

    # -- children ----------------------------------------------------------------------------

    async def _acquire(self) -> _Child:
        while True:
            current = generation()
            stale: list[_Child] = []
            with self._lock:
                if self._closed:
                    raise RuntimeError("the worker process pool is closed")
                child = None
                while self._idle:
                    candidate = self._idle.pop()
                    if candidate.generation == current and candidate.process.is_alive():
                        child = candidate
                        break
                    stale.append(candidate)
                if child is None and len(self._busy) < self.size:
                    child = self._fork(current)
                if child is not None:
                    self._busy[child.pid] = child
                else:
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
            for old in stale:
                await _stop(old)
                old.conn.close()
            if child is not None:
                return child
            try:
                await waiter
            except asyncio.CancelledError:
                with self._lock:  # a wake meant for this attempt goes to the next one
                    self._wake_one()
                raise

    def _fork(self, current: int) -> _Child:
        """A new child (under the lock: its siblings' pipe ends, which it must close, are
        exactly the pool's children now)."""
        get_settings()  # read here, so the child keeps them once it forgets their variables
        parent_end, child_end = self._context.Pipe(duplex=True)
        inherited = [c.conn for c in (*self._idle, *self._busy.values())] + [parent_end]
        process = self._context.Process(
            target=_child_main,
            args=(child_end, inherited, os.getpid()),
            name="kestream-task",
            daemon=True,
        )
        process.start()
        child_end.close()  # the child holds it now: its death shows here as end of file
        return _Child(process, parent_end, current)

    def _release(self, child: _Child) -> None:
        with self._lock:
            self._busy.pop(child.pid, None)
            if self._closed:
                stopped = True
            else:
                stopped = False
                self._idle.append(child)
            self._wake_one()
        if stopped:
            child.conn.close()

    def _forget(self, child: _Child) -> None:
        with self._lock:
            self._busy.pop(child.pid, None)
            self._wake_one()
        child.conn.close()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                _wake(waiter)
                return


_shared: ProcessPool | None = None


def shared_pool(size: int) -> ProcessPool:
    """One pool for the whole process, closed when it exits: for runners that come and go
    (:mod:`kestream.testing` makes one per driver), so their children do not pile up."""
    global _shared
    if _shared is None:
        _shared = ProcessPool(size)
        atexit.register(_shared.close)
    return _shared


def _wake(waiter: asyncio.Future[None]) -> None:
    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
        waiter.get_loop().call_soon_threadsafe(wake)


def _read_answer(
    loop: asyncio.AbstractEventLoop, conn: Connection, info: RunInfo
) -> asyncio.Future[TaskOutcome]:
    """The child's answer to one attempt, read and unpickled by a thread of its own, so a large
    message never stalls the loop: log lines go to ``info.log`` on the loop as they come, then
    the outcome. End of file (the child died) fails the future with :class:`_ChildDied`, any other
    failure to read or unpickle a message with :class:`_Unreadable`. The thread ends with the
    answer or with the child: stop the child before closing ``conn``."""
    answer: asyncio.Future[TaskOutcome] = loop.create_future()

    def settle(outcome: TaskOutcome | None, error: Exception | None) -> None:
        if answer.done():
            return
        if error is None:
            answer.set_result(outcome)  # type: ignore[arg-type]
        else:
            answer.set_exception(error)

    def deliver(outcome: TaskOutcome | None, error: Exception | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome, error)

    def read() -> None:
        try:
            while True:
                kind, *body = conn.recv()
                if kind == "log":
                    loop.call_soon_threadsafe(info.log, LogLevel(body[0]), body[1])
                else:
                    deliver(body[0])
                    return
        except (EOFError, OSError):
            deliver(None, _ChildDied())
        except Exception as exc:  # unpicklable: a class the parent lacks, a failing __reduce__
            deliver(None, _Unreadable(f"{type(exc).__name__}: {exc}"))

    threading.Thread(target=read, name="kestream-task-answer", daemon=True).start()
    return answer


async def _stop(child: _Child) -> None:
    """SIGTERM to the child's process group, SIGKILL if it outlives the grace, then reap it."""
    if child.process.exitcode is None:
        _signal_group(child.pid, signal.SIGTERM)
        for _ in range(int(KILL_GRACE_S / _POLL_S)):
            if child.process.exitcode is not None:
                break
            await asyncio.sleep(_POLL_S)
        else:
            _signal_group(child.pid, signal.SIGKILL)
    # What the task started, if anything outlived the child: the group only (a pid in use as a
    # group id is never given to a new process, so this reaches no one else's).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    await _reap(child)


async def _reap(child: _Child) -> int:
    while child.process.exitcode is None:
        await asyncio.sleep(_POLL_S)
    child.process.join()
    return child.process.exitcode


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the (unreaped) child's process group; the child itself if it has not made one
    yet."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    except PermissionError:  # the group id was reused by another's process: the child only
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _exit_text(status: int) -> str:
    if status < 0:
        return f"was killed by signal {signal.Signals(-status).name}"
    return f"exited with code {status}"


# -- the child's side -------------------------------------------------------------------------


def _child_main(conn: Connection, inherited: list[Connection], worker_pid: int) -> None:
    """Take attempts from ``conn`` until told to stop (None) or the worker is gone."""
    for other in inherited:  # siblings' pipe ends: held here, they would hide a sibling's death
        other.close()
    _detach(worker_pid, conn)
    forget_secrets()  # nothing task code starts inherits the secrets or the worker's settings
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:  # task code may log from threads of its own
            conn.send(message)

    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        try:
            job = pickle.loads(data)
        except Exception as exc:  # a class the child cannot find, say
            error = f"the worker process could not read the task: {type(exc).__name__}: {exc}"
            send(("done", TaskOutcome(StateType.FAILED, error=error)))
            continue
        if job is None:
            return
        task, props, (execution_id, task_run_id, attempt, working_dir) = job

        def emit(level: LogLevel, message: str) -> None:
            send(("log", level.value, message))

        info = RunInfo(execution_id, task_run_id, attempt, emit=emit, working_dir=working_dir)
        outcome = run_blocking(task, props, info)
        try:
            send(("done", outcome))
        except Exception as exc:  # what cannot be pickled fails the run, clearly
            error = f"Task '{task.id}' outputs cannot be sent back from its worker process: {exc}"
            send(("done", TaskOutcome(StateType.FAILED, error=error)))


def _run_ids(info: RunInfo) -> tuple[str, str, int, Path | None]:
    """What the child rebuilds its :class:`RunInfo` from (the rest stays in this process)."""
    return info.execution_id, info.task_run_id, info.attempt, info.working_dir


def _detach(worker_pid: int, conn: Connection) -> None:
    """Make the forked child a process of its own: its own process group (a kill takes what
    the task starts too), default signals, no event loop of the parent's, and death with the
    parent (Linux), so no child outlives its worker."""
    os.setpgid(0, 0)
    _release_inherited_pipes(conn.fileno())
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    asyncio.events._set_running_loop(None)
    asyncio.set_event_loop(None)
    die_with(worker_pid)


def _release_inherited_pipes(keep: int) -> None:
    """Point the sockets and pipes the worker had open when it forked (its Kafka connections, its
    listening ports, a script's stdin) at /dev/null: held here, a connection the worker closes
    would stay open, and a pipe's reader would never see its end. Closing them instead would let
    a later ``open`` reuse a number that an inherited object may still close."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for name in os.listdir("/proc/self/fd" if sys.platform == "linux" else "/dev/fd"):
            fd = int(name)
            if fd in (0, 1, 2, keep, null):
                continue
            try:
                mode = os.fstat(fd).st_mode
            except OSError:  # the listing's own descriptor, closed by now
                continue
            if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
