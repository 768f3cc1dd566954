"""A child process that dies with the process that started it (Linux ``PR_SET_PDEATHSIG``).

A kill -9 runs no clean-up: whatever the killed process started lives on unless the kernel
ends it. ``standalone``'s supervisor gives this to its broker and role processes, and the worker
to the processes of script tasks: a worker killed with one running would otherwise leave it
running beside the restarted worker's new attempt of the same job. Here, outside the runtime
package, as the engine's task code starts processes too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

#: ``PR_SET_PDEATHSIG`` from ``<linux/prctl.h>``.
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """Build a ``preexec_fn`` that makes the child receive SIGKILL when its parent dies.

    Runs in the forked child before ``exec``. If the parent already died between ``fork`` and
    ``prctl`` (then the child has been re-parented), the child kills itself instead of leaking.
    Returns ``None`` where ``prctl`` does not exist (non-Linux); there only ``atexit`` and the
    context managers protect against orphans. The signal is sent when the thread that forked
    the child ends: build and use it on a thread that lives as long as its process (an event
    loop's). libc is loaded here, in the parent: a ``preexec_fn`` should do as little as it can.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    return lambda: _die_with(prctl, parent)


def die_with(parent: int) -> None:
    """Make this process, forked from ``parent`` and not exec'ing (the worker's task
    processes), receive SIGKILL when ``parent`` dies, as :func:`die_with_parent` does for a
    process that execs."""
    prctl = _prctl()
    if prctl is not None:
        _die_with(prctl, parent)


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, or None where there is none (not Linux). Looked up among the symbols
    the process already has (libc is loaded in every Python process), never with
    ``ctypes.util.find_library``: that runs ``ldconfig`` in a subprocess, which a process
    just forked from a threaded one (the worker's task processes) must not do."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


def _die_with(prctl: Callable[..., int], parent: int) -> None:
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect: re-parented
        os.kill(os.getpid(), signal.SIGKILL)
