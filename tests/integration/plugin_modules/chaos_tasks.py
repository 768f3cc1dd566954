"""The task the chaos tests count effects with (loaded by the role processes through
KESTREAM_PLUGINS): it appends a start line to ``<path>.starts`` (:func:`starts_path`), waits,
then appends one JSON line naming its task and attempt to ``path``.

No chaos flow retries, so two lines for one (execution, task) in ``path`` are two effects, under
one attempt or not: the doubled work the chaos suite looks for (tests/integration/chaos_harness.py).
A flow with more than one Effect task names each with ``step`` (the lines of one task then share
it). The start lines are when each run began on a worker, and which process ran it: a job a new
owner runs again after a worker's kill starts again there, so its start line is the moment the
killed worker's work was taken over (the harness's "takeover").
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import kestream


def starts_path(path: str) -> str:
    """The file of the start lines of the Effect tasks whose effects go to ``path``."""
    return path + ".starts"


def _append(path: str, line: dict[str, Any]) -> None:
    """``line`` appended in one ``write`` (``O_APPEND``: lines of concurrent writers never
    interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


@kestream.task("chaos.tasks.Effect")
async def effect(
    path: str, seconds: float = 0.0, tag: str = "", step: str = "", *, run: kestream.RunContext
) -> dict[str, Any]:
    """Note the start, sleep ``seconds`` on the worker's loop (no thread held, so hundreds can
    be in flight), then append the attempt's line to ``path``."""
    line = {
        "execution": run.execution_id,
        "task": step,
        "taskRun": run.task_run_id,
        "attempt": run.attempt,
        "tag": tag,
        "pid": os.getpid(),
        "at": time.time(),
    }
    _append(starts_path(path), line)
    await asyncio.sleep(seconds)
    _append(path, {**line, "at": time.time()})
    return {"tag": tag}
