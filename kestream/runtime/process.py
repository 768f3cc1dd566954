"""Process-wide settings for kestream's long-running roles."""

from __future__ import annotations

import gc
import os
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
