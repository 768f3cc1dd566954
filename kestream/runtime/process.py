"""Process-wide settings for kestream's long-running roles."""

from __future__ import annotations

import gc

#: Young-generation threshold for processes that hold a large, long-lived state table.
#: CPython's default (700) runs a young collection every 700 allocations and promotes often, so
#: full collections (which scan every live task run) come round more often as the table grows:
#: measured by ``python -m bench.step_cost``, per-event cost of a 10 000-iteration ForEach rose to
#: 1.4-1.6x that of a 160-iteration one with the default, and stayed at ~1.0x with this setting.
GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc() -> None:
    """Apply :data:`GC_THRESHOLDS` (idempotent); called by every role at start."""
    gc.set_threshold(*GC_THRESHOLDS)
