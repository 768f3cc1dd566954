"""A user's task module, loaded by the integration tests through KESTREAM_PLUGINS or plugins=."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import kestream


class Total(BaseModel):
    total: int
    parts: int


@kestream.task("acme.tasks.Add")
def add(a: int, b: int = 1, *, run: kestream.RunContext) -> dict[str, Any]:
    """Add two integers (rendered text is coerced)."""
    run.logger.info("adding %d and %d on attempt %d", a, b, run.attempt)
    return {"sum": a + b}


class Sum(kestream.PythonTask):
    """Sum a list of integers, asynchronously."""

    type_name = "acme.tasks.Sum"

    values: list[int]

    async def execute(self, run: kestream.RunContext) -> Total:
        return Total(total=sum(self.values), parts=len(self.values))
