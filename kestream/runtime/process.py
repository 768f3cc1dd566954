"""Process-wide settings for kestream's long-running roles."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from pathlib import Path

#: Young-generation threshold for processes that hold a large, long-lived state table.
#: CPython's default (700) runs a young collection every 700 allocations and promotes often, so
#: full collections (which scan every live task run) come round more often as the table grows:
#: measured by ``python -m bench.step_cost``, per-event cost of a 10 000-iteration ForEach rose to
#: 1.4-1.6x that of a 160-iteration one with the default, and stayed at ~1.0x with this setting.
GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc() -> None:
    """Apply :data:`GC_THRESHOLDS` (idempotent); called by every role at start."""
    gc.set_threshold(*GC_THRESHOLDS)


def process_age_s() -> float | None:
    """Seconds since this process was started (its interpreter's start, imports included), from
    ``/proc``: what a role's start-up log line counts from. ``None`` without ``/proc``."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return None
    # Field 22 (starttime, in clock ticks since boot); the command name may hold spaces.
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)


#: Set by ``kestream standalone`` in the environment of the role processes it starts: they are
#: started while the embedded broker starts (and writes its state back, and the flows of
#: ``--flows`` are deployed), and read the broker's address from their stdin once that is done.
#: A role process spends the wait importing what its roles run, rather than starting to import
#: only once the broker is ready.
BROKER_ON_STDIN_ENV = "KESTREAM_STANDALONE_BROKER_ON_STDIN"


#: Set to "1" by ``kestream standalone`` in the environment of its role processes when it runs
#: its own embedded broker, whose address only its children get: the scheduler among them is
#: the only one that broker will see, so it may join its other groups before it has won the
#: lease (:class:`~kestream.runtime.scheduler_service.SchedulerService`) without taking
#: partitions from an active one.
ONLY_SCHEDULER_ENV = "KESTREAM_STANDALONE_ONLY_SCHEDULER"


#: Set by ``kestream standalone`` on its own embedded broker in the environment of each process
#: hosting an executor: ``k/N``, executor ``k`` (from 0) of the ``N`` it runs. That executor
#: takes its share of the input partitions without the executor group
#: (:mod:`~kestream.runtime.static_assignment`); a restarted process gets its predecessor's.
EXECUTOR_SHARE_ENV = "KESTREAM_STANDALONE_EXECUTOR_SHARE"


#: Set to "1" by ``kestream standalone`` on its own embedded broker in the environment of the
#: process hosting its one worker, which takes every jobs partition without the worker group
#: (:mod:`~kestream.runtime.static_assignment`).
ONLY_WORKER_ENV = "KESTREAM_STANDALONE_ONLY_WORKER"


#: With :data:`BROKER_ON_STDIN_ENV`: the descriptor of a pipe to ``standalone``, which the
#: process closes once it has imported what its roles run, just before it waits for the
#: broker. ``standalone`` gives every waiting process the broker's address only when all of them
#: are there, so that the executors join their group together: one that joined a moment later
#: would make the group assign its partitions a second time.
IMPORTED_FD_ENV = "KESTREAM_STANDALONE_IMPORTED_FD"

_broker_wait_s: float | None = None


def broker_wait_s() -> float | None:
    """How long this process waited for its broker's address (:func:`read_broker_from_stdin`):
    part of its age at start, not spent starting. ``None`` when it did not wait."""
    return _broker_wait_s


def broker_on_stdin() -> bool:
    """Was this process started to read its broker's address from stdin?"""
    return bool(os.environ.get(BROKER_ON_STDIN_ENV))


def read_broker_from_stdin() -> str:
    """Wait for the broker's address on stdin (:data:`BROKER_ON_STDIN_ENV`) and make it this
    process's ``KESTREAM_BROKER``, so that every reader of the settings sees it; the variable is
    dropped, so that the processes this one starts (a task's script) do not wait too.

    Exits (code 0) when stdin closes without an address: ``standalone`` stopped before its
    broker was up, and there is nothing to run.
    """
    from kestream.settings import get_settings

    global _broker_wait_s
    os.environ.pop(BROKER_ON_STDIN_ENV, None)
    imported = os.environ.pop(IMPORTED_FD_ENV, None)
    if imported is not None:
        with contextlib.suppress(OSError, ValueError):  # standalone is gone: stdin says so
            os.close(int(imported))
    began = time.monotonic()
    address = sys.stdin.readline().strip()
    if not address:
        raise SystemExit(0)
    _broker_wait_s = time.monotonic() - began
    os.environ["KESTREAM_BROKER"] = address
    get_settings.cache_clear()
    return address
