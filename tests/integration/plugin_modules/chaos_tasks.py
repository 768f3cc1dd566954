"""The task the chaos tests count effects with (loaded by the role processes through
KESTREAM_PLUGINS): it waits, then appends one JSON line naming its attempt to a file.

Two lines for one (execution, task run, attempt) mean the attempt had two effects: the
doubled work the chaos suite looks for (tests/integration/chaos_harness.py).
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
    path: str, seconds: float = 0.0, tag: str = "", *, run: kestream.RunContext
) -> dict[str, Any]:
    """Sleep ``seconds`` on the worker's loop (no thread held, so hundreds can be in flight),
    then append the attempt's line to ``path`` in one ``write`` (``O_APPEND``: lines of
    concurrent writers never interleave)."""
    await asyncio.sleep(seconds)
    line = {
        "execution": run.execution_id,
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
