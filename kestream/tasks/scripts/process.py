"""One command as a process group on the event loop: output streamed by line, stopped as a whole.

The process starts in a session of its own (``start_new_session``), so it and everything it
starts share one process group whose id is its pid. Stopping means the group: SIGTERM to all of
it, then SIGKILL to whatever is still there after :data:`TERM_GRACE_S`. That happens when the
attempt is cancelled (a kill, a timeout) and also when the command exits by itself, so a
background child (``sleep 1000 &``) never outlives its attempt nor holds its output pipes open.
A process that leaves the group on purpose (``setsid``, a daemon that double-forks) escapes
this; nothing short of a container or a cgroup can follow it, and it keeps running. It does not
keep the attempt: once the command has exited (or been stopped), output is read for at most
:data:`DETACHED_GRACE_S` more, then the pipes are closed and the attempt ends; whatever the
detached process writes afterwards is lost.

Nothing here takes a thread: the process is awaited with asyncio's subprocess support.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kestream.parent_death import die_with_parent

#: Time between SIGTERM and SIGKILL when a process group is stopped.
TERM_GRACE_S = 2.0
#: How long to wait for a SIGKILLed group to be gone before giving up on it.
KILL_WAIT_S = 2.0
#: How long the output pipes may stay open after the process exits before its group is stopped.
LINGER_S = 0.05
#: How long output is still read, once the group is stopped, from a pipe that a process outside
#: the group keeps open; then the pipes are closed and the attempt ends without it.
DETACHED_GRACE_S = 1.0
#: A longer line is passed on in pieces of this size.
MAX_LINE_BYTES = 1 << 20
_CHUNK = 1 << 16
_POLL_S = 0.02
_PROC = Path("/proc")

#: Receives each output line (without its line break) and whether it came from stderr.
LineSink = Callable[[str, bool], None]

T = TypeVar("T")

log = logging.getLogger("kestream.worker")


async def run_process(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], on_line: LineSink
) -> int:
    """Run ``argv`` to its end and return its exit code (128 + N when signal N ended it).

    Cancelling the caller stops the whole process group before the cancellation goes on.
    """
    start = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            # a worker killed outright takes it along: its restarted successor runs the job again
            preexec_fn=die_with_parent(),
        )
    )
    # A cancellation while asyncio connects the pipes would make it SIGKILL the leader alone and
    # then wait for pipes that the rest of the group holds: the attempt would never end and its
    # group would run on. The start is therefore awaited to its end, and the group stopped below.
    cancelled = False
    try:
        proc = await run_to_end(start)
    except asyncio.CancelledError:
        if start.cancelled() or start.exception() is not None:
            raise  # no process to stop: the kill goes on as a kill
        proc, cancelled = start.result(), True
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        asyncio.ensure_future(_pump(proc.stdout, False, on_line)),
        asyncio.ensure_future(_pump(proc.stderr, True, on_line)),
    ]

    # ``proc.wait()`` also waits for the output pipes to close, which a background child
    # holding them would delay for ever: the exit itself is watched, then the group stopped.
    waiter = asyncio.ensure_future(proc.wait())

    async def finish() -> int:
        await asyncio.wait(pumps, timeout=LINGER_S)  # the usual case: the pipes close with it
        await stop_group(proc.pid)  # what it left running goes with it
        _, held = await asyncio.wait(pumps, timeout=DETACHED_GRACE_S)
        if held:  # a process outside the group (``setsid``, a daemon) holds the pipes open
            await _reaped(proc)
            log.warning(
                "pid %d exited but a detached process keeps its output open; "
                "no longer reading its output",
                proc.pid,
            )
            _close_pipes(proc)
        code = await waiter
        await asyncio.gather(*pumps, return_exceptions=True)
        return code

    try:
        if cancelled:
            raise asyncio.CancelledError
        await _exited(proc.pid, waiter)
    except asyncio.CancelledError:
        await run_to_end(stop_group(proc.pid))
        await run_to_end(finish())
        raise
    code = await run_to_end(finish())
    for pump in pumps:  # an error passing a line on (not a closed pipe) is the task's error
        pump.result()
    return 128 - code if code < 0 else code


async def run_to_end(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile (clean-up code)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
        except Exception as exc:
            if cancelled:  # the caller's cancellation goes on, whatever the work's end
                raise asyncio.CancelledError from exc
            raise
    if cancelled:
        raise asyncio.CancelledError
    return result


async def stop_group(pgid: int, grace: float = TERM_GRACE_S) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return once it is gone."""
    if not _signal(pgid, signal.SIGTERM):
        return
    if await _gone(pgid, grace):
        return
    _signal(pgid, signal.SIGKILL)
    await _gone(pgid, KILL_WAIT_S)


async def _exited(pid: int, waiter: asyncio.Future[int]) -> None:
    """Return once process ``pid`` has exited (its output pipes may still be open)."""
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux, or already reaped): poll
        while not waiter.done() and _running(pid):
            await asyncio.sleep(_POLL_S)
        return
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(handle, exited)
    try:
        either: list[asyncio.Future[Any]] = [readable, waiter]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(handle)
        os.close(handle)
        readable.cancel()


async def _reaped(proc: asyncio.subprocess.Process) -> None:
    """Wait (briefly) until asyncio has reaped the exited ``proc`` and knows its return code.

    Closing the pipes before that would make asyncio kill the pid, which may be reused by then.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + KILL_WAIT_S
    while proc.returncode is None and loop.time() < deadline:
        await asyncio.sleep(_POLL_S)


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    """Close the output pipes of ``proc`` so that its pumps see EOF and ``wait()`` returns."""
    transport = proc._transport  # type: ignore[attr-defined]  # the pipes are only reachable here
    transport.close()


def _running(pid: int) -> bool:
    """``pid`` has not exited (a zombie has); only for systems without pidfd."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs.

    Zombies do not count: a killed background child is re-parented to init, which may take its
    time to reap it, but it runs no code any more.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: the id is someone else's
        return False
    if not _PROC.is_dir():
        return True
    return bool(live_members(pgid))


def live_members(pgid: int) -> list[int]:
    """The pids of the group's processes that are not zombies (read from ``/proc``)."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(entry.name))
    return found


def _signal(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def _gone(pgid: int, within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while group_alive(pgid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


async def _pump(stream: asyncio.StreamReader, is_stderr: bool, on_line: LineSink) -> None:
    """Pass each line of ``stream`` on as soon as it is complete; the rest at EOF."""
    pending = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await stream.read(_CHUNK):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                on_line(_text(raw), is_stderr)
            while len(pending) > MAX_LINE_BYTES:
                on_line(_text(pending[:MAX_LINE_BYTES]), is_stderr)
                pending = pending[MAX_LINE_BYTES:]
    if pending:
        on_line(_text(pending), is_stderr)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").removesuffix("\r")
