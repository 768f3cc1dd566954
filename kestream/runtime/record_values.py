"""A record's value as JSON, both ways, and the error for one that cannot be understood.

Every reader of kestream's topics shares these; :mod:`kestream.runtime.records` (the events,
jobs, results and updates, which need the engine's models) re-exports them. Apart from it, a
process that reads only member records (standalone's supervisor, following the members topic)
does not import the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from kestream.executor.sizes import record_json


class RecordError(ValueError):
    """A record that cannot be understood; ``reason`` goes to the dead-letter topic."""


#: Every record's value is written by :func:`kestream.executor.sizes.record_json`, the encoder
#: the engine measures sizes with.
dumps: Callable[[Any], bytes] = record_json


def loads(data: bytes | None) -> Any:
    if data is None:
        raise RecordError("empty record value")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from None
