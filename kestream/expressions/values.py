"""Small value types the engine hands to templates.

Only types listed here (plus plain str/int/float/bool/None/list/dict/dates) ever reach template
code, and the evaluator reads them through explicit rules, never through Python attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: isinstance() tuples, built once: ``int | float`` unions would be rebuilt on every call.
SEQUENCES = (list, tuple)
NUMBERS = (int, float, Decimal)
CONTAINERS = (Mapping, list, tuple)


@dataclass(frozen=True, slots=True)
class Entry:
    """One map entry while looping over a map (``{% for e in map %}{{ e.key }}``), as in Pebble."""

    key: Any
    value: Any
