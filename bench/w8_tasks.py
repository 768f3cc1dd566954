"""W8's task type: a function-form Python task, as a user writes one (docs/tasks.md).

The benchmark loads this module into every role through ``KESTREAM_PLUGINS`` (bench/stack.py),
exactly as a user's plugin module is loaded, and into the load generator before it deploys
``config/bench/w8.yaml``. The body is deliberately trivial and blocking (a plain ``def``, so it
takes the worker's path for blocking code): what W8 measures is the cost of carrying a Python
task run through kestream (render, validate and coerce its properties, call it, carry its outputs
back), not the function's own work.
"""

from __future__ import annotations

import kestream

#: The module name the roles import (``KESTREAM_PLUGINS``).
MODULE = __name__
TYPE_NAME = "bench.tasks.Increment"


@kestream.task(TYPE_NAME)
def increment(n: int, *, run: kestream.RunContext) -> dict[str, int]:
    """Return ``n + 1`` as the output ``n``: a rendered property in, an output out."""
    return {"n": n + 1}
