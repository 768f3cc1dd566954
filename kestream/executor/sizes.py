"""How many bytes a value takes in a record, and the rule for task outputs that take too many.

Every record kestream produces must fit the broker's record limit (``max.message.bytes``). A
task run's outputs travel whole in one record three times: the worker's result, the task run's
changelog record and the execution update that carries the task run. None of them can be
split, so outputs larger than one record can hold would stop whoever has to write them. They
are refused where they appear instead, with the same rule on a worker (:mod:`kestream.worker`)
and in the executor step (inline tasks, and results from anywhere): the task run fails with a
message naming the task and the size, and the execution goes on (its errors branch runs).

The runtime learns the limit from the broker (``kestream.runtime.record_limit``) and hands the
pure layers a plain number of bytes: :func:`outputs_budget` of that limit.
"""

from __future__ import annotations

from typing import Any

import orjson

from kestream.executor.codec import encode_value

#: What a task run's record holds besides its outputs (ids, value, state histories, attempts),
#: at most: the outputs get the rest of the record.
TASK_RUN_ROOM = 16 * 1024


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` in a record: the changelog codec's form, written by orjson as the
    runtime's records are (``kestream.runtime.records.dumps``)."""
    return len(orjson.dumps(encode_value(value)))


def outputs_budget(record_bytes: int) -> int:
    """The largest outputs a task run may have when a record's value holds ``record_bytes``."""
    return record_bytes - min(TASK_RUN_ROOM, record_bytes // 4)


def human_size(size: int) -> str:
    """``3.2 MB``, ``512 kB``, ``120 bytes``: sizes in messages people read (decimal units)."""
    if size < 1000:
        return f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            amount = size / scale
            return f"{amount:.1f} {unit}" if amount < 100 else f"{amount:.0f} {unit}"
    raise AssertionError("unreachable")


def too_large(what: str, value: Any, max_bytes: int | None) -> str | None:
    """Why ``value`` (``what``, plural: "outputs of task 'x'") cannot be stored; None when it
    fits, or when there is no limit. ``max_bytes``: :func:`outputs_budget` of the limit."""
    if max_bytes is None or value is None:
        return None
    try:
        size = encoded_size(value)
    except (TypeError, ValueError):  # not encodable at all: the portability check says why
        return None
    if size <= max_bytes:
        return None
    return (
        f"{what} are {human_size(size)}, over the {human_size(max_bytes)} record limit for outputs"
    )


def outputs_too_large(task_id: str, outputs: Any, max_bytes: int | None) -> str | None:
    """:func:`too_large` for a task run's outputs."""
    return too_large(f"outputs of task '{task_id}'", outputs, max_bytes)
