"""The task the chaos tests count effects with (loaded by the role processes through
KESTREAM_PLUGINS): it waits, then appends one JSON line naming its task and attempt to a file.

No chaos flow retries, so two lines for one (execution, task) are two effects, under one attempt
or not: the doubled work the chaos suite looks for (tests/integration/chaos_harness.py). A flow
with more than one Effect task names each with ``step`` (the lines of one task then share it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import kestream


@kestream.task("chaos.tasks.Effect")
async def effect(
    path: str, seconds: float = 0.0, tag: str = "", step: str = "", *, run: kestream.RunContext
) -> dict[str, Any]:
    """Sleep ``seconds`` on the worker's loop (no thread held, so hundreds can be in flight),
    then append the attempt's line to ``path`` in one ``write`` (``O_APPEND``: lines of
    concurrent writers never interleave)."""
    await asyncio.sleep(seconds)
    line = {
        "execution": run.execution_id,
        "task": step,
        "taskRun": run.task_run_id,
        "attempt": run.attempt,
        "tag": tag,
        "pid": os.getpid(),
        "at": time.time(),
    }
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
    return {"tag": tag}
