"""W8's task types: a function-form Python task, as a user writes one (docs/tasks.md).

The benchmark loads this module into every role through ``KESTREAM_PLUGINS`` (bench/stack.py),
exactly as a user's plugin module is loaded, and into the load generator before it deploys
``config/bench/w8.yaml``. The body is deliberately trivial and blocking (a plain ``def``): what W8
measures is the cost of carrying a Python task run through kestream (render, validate and coerce
its properties, call it, carry its outputs back), not the function's own work.

The same body is registered twice, once per isolation a blocking task can declare: in a worker
process (the default, where a kill stops it; ``w8.yaml``) and in a worker thread
(``isolation="thread"``; ``w8_thread.yaml``). ``python -m bench W8 --isolation process,thread``
runs both and prints what the process costs per task over the thread.
"""

from __future__ import annotations

import kestream

#: The module name the roles import (``KESTREAM_PLUGINS``).
MODULE = __name__
TYPE_NAME = "bench.tasks.Increment"
THREAD_TYPE_NAME = "bench.tasks.IncrementInThread"


@kestream.task(TYPE_NAME)
def increment(n: int, *, run: kestream.RunContext) -> dict[str, int]:
    """Return ``n + 1`` as the output ``n``: a rendered property in, an output out."""
    return {"n": n + 1}


@kestream.task(THREAD_TYPE_NAME, isolation="thread")
def increment_in_thread(n: int, *, run: kestream.RunContext) -> dict[str, int]:
    """:func:`increment`, run in a worker thread instead of a worker process."""
    return increment(n, run=run)
