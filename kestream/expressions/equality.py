"""Pebble's equality as hash keys, so ``distinct``, list ``-`` and ``contains`` run in linear time.

Comparing every item with every other one made ``range(1, 100000) | distinct`` a ten-billion-step
render. :func:`equality_key` gives each value a hashable key such that values equal under
:func:`~kestream.expressions.operators.equals` get equal keys: numbers by value (``1`` and ``1.0``
share a key, as Python's numeric hashes already agree), booleans apart from numbers, lists by
their items' keys, maps by their entries. Values with no such key (a map holding something
unhashable, a signalling NaN) fall back to a per-type bucket compared item by item, which stays
correct and is only slow for inputs made of such values.

Building a key walks the whole value, so every list or map walked spends its length on the render
budget: a list holding the same million-item list forty times is forty million steps of work, not
one (references make such values cheap to build and costly to key).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from .budget import RenderBudget, current_budget
from .values import NUMBERS, SEQUENCES

Equal = Callable[[Any, Any], bool]
#: A key function: the value, and the budget its walk spends on.
Key = Callable[[Any, RenderBudget], Hashable]


class _Unkeyable(Exception):
    """The value has no exact key; the caller buckets it by type instead."""


def equality_key(value: Any, budget: RenderBudget) -> Hashable:
    """A key equal for values Pebble's ``==`` calls equal (raises _Unkeyable when there is none)."""
    kind = type(value)
    if kind is str or value is None:
        return value
    if kind is bool:
        return (bool, value)
    if isinstance(value, NUMBERS) and not isinstance(value, bool):
        if value != value:  # NaN equals nothing, not even itself
            return object()
        return _hashed(value)
    if isinstance(value, SEQUENCES):
        budget.spend(len(value))
        return (list, tuple([equality_key(item, budget) for item in value]))
    if isinstance(value, Mapping):
        budget.spend(len(value))
        return (dict, frozenset([(key, _python_key(item, budget)) for key, item in value.items()]))
    return _hashed(value)


def json_key(value: Any, budget: RenderBudget) -> Hashable:
    """A key for jq's equality on JSON values: booleans apart from numbers at every depth."""
    kind = type(value)
    if kind is bool:
        return (bool, value)
    if kind is list:
        budget.spend(len(value))
        return (list, tuple([json_key(item, budget) for item in value]))
    if kind is dict:
        budget.spend(len(value))
        return (dict, frozenset([(key, json_key(item, budget)) for key, item in value.items()]))
    if kind is float and value != value:
        return object()
    return _hashed(value)


def _python_key(value: Any, budget: RenderBudget) -> Hashable:
    """A key for Python's own ``==`` (what map values are compared with, as in Java's equals)."""
    if isinstance(value, list):
        budget.spend(len(value))
        return (list, tuple([_python_key(item, budget) for item in value]))
    if isinstance(value, tuple):
        budget.spend(len(value))
        return (tuple, tuple([_python_key(item, budget) for item in value]))
    if isinstance(value, Mapping):
        budget.spend(len(value))
        return (dict, frozenset([(key, _python_key(item, budget)) for key, item in value.items()]))
    if isinstance(value, float) and value != value:
        return object()
    return _hashed(value)


def _hashed(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        raise _Unkeyable from None
    return value


class EqualitySet:
    """Values seen so far, looked up by key; values without a key are compared one by one.

    ``equal`` is the exact comparison the key stands for (Pebble's ``equals``, jq's order...);
    it decides only between values that have no key.
    """

    __slots__ = ("_budget", "_equal", "_key", "_keys", "_rest")

    def __init__(
        self,
        equal: Equal,
        items: Iterable[Any] = (),
        key: Key = equality_key,
    ) -> None:
        self._budget = current_budget()
        self._key = key
        self._equal = equal
        self._keys: set[Hashable] = set()
        self._rest: dict[str, list[Any]] = {}
        for item in items:
            self.add(item)

    def add(self, item: Any) -> bool:
        """Add ``item``; False when an equal value was already there."""
        self._budget.spend()
        try:
            key = self._key(item, self._budget)
        except _Unkeyable:
            bucket = self._rest.setdefault(_category(item), [])
            if any(self._equal(item, seen) for seen in bucket):
                return False
            bucket.append(item)
            return True
        if key in self._keys:
            return False
        self._keys.add(key)
        return True

    def __contains__(self, item: Any) -> bool:
        self._budget.spend()
        try:
            return self._key(item, self._budget) in self._keys
        except _Unkeyable:
            return any(self._equal(item, seen) for seen in self._rest.get(_category(item), ()))


def _category(value: Any) -> str:
    """The bucket of a value without a key: values of one category may be equal."""
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, SEQUENCES):
        return "list"
    return type(value).__name__
