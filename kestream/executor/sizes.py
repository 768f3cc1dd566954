"""How many bytes a value takes in a record, and the rule for task outputs that take too many.

Every record kestream produces must fit the broker's record limit (``max.message.bytes``). A
task run's outputs travel whole in one record three times: the worker's result, the task run's
changelog record and the execution update that carries the task run. None of them can be
split, so outputs larger than one record can hold would stop whoever has to write them. They
are refused where they appear instead, with the same rule on a worker (:mod:`kestream.worker`)
and in the executor step (inline tasks, and results from anywhere): the task run fails with a
message naming the task and the size, and the execution goes on (its errors branch runs).

The same room is kept by an execution's header (its inputs, trigger and labels), which every
update record carries: :func:`header_budget`. A flowable's plan (every lane's task ids and
values) is one changelog record of its own, and each value travels again in its task runs: a
plan over :func:`outputs_budget` fails the flowable's task run (:func:`plan_too_large`).

The runtime learns the limit from the broker (``kestream.runtime.record_limit``) and hands the
pure layers a plain number of bytes: :func:`outputs_budget` of that limit. Every record is
written by :func:`record_json`, so a size measured here is the size on the topic.
"""

from __future__ import annotations

from typing import Any

import orjson

from kestream.executor.value_tags import encode_value

#: What a task run's record holds besides its outputs (ids, value, state histories, attempts),
#: at most: the outputs get the rest of the record.
TASK_RUN_ROOM = 16 * 1024


def record_json(value: Any) -> bytes:
    """The JSON bytes of a record's value: the one encoder of every record kestream writes
    (``kestream.runtime.records.dumps`` is this function), so sizes measured here hold there."""
    return orjson.dumps(value)


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` in a record: the changelog codec's form, as :func:`record_json`
    writes it."""
    return len(record_json(encode_value(value)))


def outputs_budget(record_bytes: int) -> int:
    """The largest outputs a task run may have when a record's value holds ``record_bytes``."""
    return record_bytes - min(TASK_RUN_ROOM, record_bytes // 4)


def header_budget(record_bytes: int) -> int:
    """The largest creation record (inputs, trigger, labels, ids) an execution may start with:
    every update record repeats them with at least one task run, so they get what outputs get."""
    return outputs_budget(record_bytes)


def over_limit(what: str, size: int, limit: int, *, plural: bool = False, of: str = "") -> str:
    """The one wording of a refusal for size: ``{what} is|are 1.6 MB, over the 1.0 MB record
    limit[ for {of}]``. ``what`` names the thing (and the task) so people know what to shrink.
    Sizes that round alike ("1.0 MB, over the 1.0 MB") are given in bytes instead."""
    verb = "are" if plural else "is"
    scope = f" for {of}" if of else ""
    said, bound = human_size(size), human_size(limit)
    if said == bound:
        said, bound = f"{size:,} bytes", f"{limit:,} bytes"
    return f"{what} {verb} {said}, over the {bound} record limit{scope}"


def human_size(size: int) -> str:
    """``3.2 MB``, ``512 kB``, ``120 bytes``: sizes in messages people read (decimal units)."""
    if size < 1000:
        return f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            amount = size / scale
            return f"{amount:.1f} {unit}" if amount < 100 else f"{amount:.0f} {unit}"
    raise AssertionError("unreachable")


def size_with(value: dict[str, Any], key: str, entry_size: int) -> int:
    """:func:`encoded_size` of the map ``value`` whose entry ``key`` is ``entry_size`` bytes
    (known already): only the other entries are encoded (a compact JSON map adds the quoted
    key, a colon and, after another entry, a comma)."""
    rest = {name: entry for name, entry in value.items() if name != key}
    return encoded_size(rest) + len(record_json(key)) + 1 + entry_size + (1 if rest else 0)


def too_large(
    what: str, value: Any, max_bytes: int | None, *, size: int | None = None
) -> str | None:
    """Why ``value`` (``what``, plural: "outputs of task 'x'") cannot be stored; None when it
    fits, or when there is no limit. ``max_bytes``: :func:`outputs_budget` of the limit;
    ``size``: ``value``'s encoded size when the caller knows it (nothing is encoded then)."""
    if max_bytes is None or value is None:
        return None
    if size is None:
        try:
            size = encoded_size(value)
        except (TypeError, ValueError):  # not encodable at all: the portability check says why
            return None
    if size <= max_bytes:
        return None
    return over_limit(what, size, max_bytes, plural=True, of="outputs")


def outputs_too_large(
    task_id: str, outputs: Any, max_bytes: int | None, *, size: int | None = None
) -> str | None:
    """:func:`too_large` for a task run's outputs."""
    return too_large(f"outputs of task '{task_id}'", outputs, max_bytes, size=size)


def plan_too_large(
    task_id: str, plan: Any, lanes: int, max_bytes: int | None, *, size: int | None = None
) -> str | None:
    """Why a flowable's plan record (``plan``, the changelog's form, of ``lanes`` lanes) cannot
    be stored; None when it fits or there is no limit. ``max_bytes``: :func:`outputs_budget`
    of the limit (each lane's value also travels in its task runs); ``size``: the record's
    encoded size when the caller knows it."""
    if max_bytes is None:
        return None
    if size is None:
        size = len(record_json(plan))
    if size <= max_bytes:
        return None
    what = f"the {lanes} lanes planned by task '{task_id}'"
    return over_limit(what, size, max_bytes, plural=True)
