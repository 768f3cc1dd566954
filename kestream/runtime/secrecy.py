"""Keep a role's memory and initial environment from processes that run under the same user.

A role's initial environment (``/proc/<pid>/environ``) holds whatever secrets the operator put in
it (``KESTREAM_BROKER_SASL_PASSWORD``, ``KESTREAM_API_PASSWORD``, ...), and a script task runs
under the worker's own user, as its child. Removing names from ``os.environ`` does not help:
``/proc/<pid>/environ`` shows the block the process started with. Marking the process
non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``) makes the kernel refuse ``environ``, ``mem`` and
``ptrace`` to every other process of the same non-root user; ``fork`` keeps the mark (the
worker's pool children have it too), ``exec`` of a script clears it for the script only.

It does not stop root (or a process with ``CAP_SYS_PTRACE``), and it makes no core dumps.
Keeping secrets out of the environment altogether (``KESTREAM_*_FILE``, see
:mod:`kestream.settings`) is the stronger protection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Callable

log = logging.getLogger("kestream.secrecy")

#: From ``<linux/prctl.h>``.
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


def make_non_dumpable() -> bool:
    """Mark this process non-dumpable; ``False`` (and a warning) where that is not possible.

    Best effort: outside Linux, or if the call fails, the role still runs.
    """
    prctl = _prctl()
    if prctl is None:
        log.info("not on Linux: other processes of this user may read this process's environment")
        return False
    if prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        log.warning(
            "prctl(PR_SET_DUMPABLE, 0) failed (errno %d): the environment stays readable "
            "to other processes of this user",
            errno,
        )
        return False
    return True


def is_dumpable() -> bool | None:
    """Whether this process is dumpable; ``None`` where that cannot be asked (not Linux)."""
    prctl = _prctl()
    if prctl is None:
        return None
    return bool(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
