"""Which Flow triggers an ended execution can concern, without looking at every one.

A deployment may hold thousands of Flow triggers, and every ended execution used to be checked
against each. Most triggers name what they listen to: an upstream flow, a namespace, a
namespace prefix, a label. A trigger's *routes* are keys such that an ended execution matching
none of them can neither fire the trigger nor change its precondition windows; the index files
each trigger under its routes and, for an ended execution, looks up only the keys that
execution has. A trigger whose conditions name nothing indexable (only states, a namespace
suffix, a STATE or CONTAINS filter...) has no routes and is checked every time.

Routes are a *necessary* condition only: the scheduler still evaluates every candidate in full
(:func:`kestream.scheduler.flow_triggers.trigger_accepts` and the windows), so the index changes
which triggers are looked at, never what a trigger decides.

How routes are found, following what a trigger needs before it does anything:

- every plain condition must hold, so one indexable condition is enough (the most selective
  one: flow, then namespace, then flow id, then label, then namespace prefix);
- otherwise a trigger with windows acts only when the execution meets some precondition (of
  ``preconditions`` or of a ``MultipleCondition``), so its routes are the union of every
  precondition's routes, and one precondition without routes leaves the trigger unindexed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from kestream.models.flow import (
    Condition,
    ExecutionFilter,
    ExecutionFlowCondition,
    ExecutionLabelsCondition,
    ExecutionNamespaceCondition,
    FlowTrigger,
    MultipleCondition,
    PreconditionFilter,
    UpstreamFlow,
)
from kestream.scheduler.preconditions import EndedExecution

__all__ = ["Route", "RouteIndex", "trigger_routes"]

#: ``("flow", namespace, flow_id)``, ``("namespace", namespace)``, ``("flow_id", flow_id)``,
#: ``("label", key, value)`` or ``("prefix", namespace_prefix)``.
Route = tuple[str, ...]
#: Preference among a trigger's plain conditions: the first kind is the most selective.
_SELECTIVITY = ("flow", "namespace", "flow_id", "label", "prefix")


def _condition_routes(condition: Condition) -> frozenset[Route] | None:
    """The routes of one execution condition (None: it can hold for any execution)."""
    if isinstance(condition, ExecutionFlowCondition):
        return frozenset({("flow", condition.namespace, condition.flowId)})
    if isinstance(condition, ExecutionNamespaceCondition):
        comparison = condition.effective_comparison
        if comparison == "EQUALS":
            return frozenset({("namespace", condition.namespace)})
        if comparison == "PREFIX":
            return frozenset({("prefix", condition.namespace)})
        return None  # SUFFIX
    if isinstance(condition, ExecutionLabelsCondition) and condition.labels:
        key, value = min(condition.labels.items())
        return frozenset({("label", key, value)})
    return None  # ExecutionStatus, or no labels at all


def _upstream_routes(upstream: UpstreamFlow) -> frozenset[Route]:
    if upstream.flowId is not None:
        return frozenset({("flow", upstream.namespace, upstream.flowId)})
    return frozenset({("namespace", upstream.namespace)})


def _filter_routes(check: PreconditionFilter) -> frozenset[Route] | None:
    kind = {"FLOW_ID": "flow_id", "NAMESPACE": "namespace"}.get(check.field)
    if kind is None:
        return None  # STATE (EXPRESSION is refused when the flow is validated)
    if check.type == "EQUAL_TO" and check.value is not None:
        return frozenset({(kind, check.value)})
    if check.type == "IN":
        return frozenset((kind, value) for value in check.values or [])
    if check.type == "STARTS_WITH" and kind == "namespace" and check.value is not None:
        return frozenset({("prefix", check.value)})
    return None


def _where_routes(where: ExecutionFilter) -> frozenset[Route] | None:
    routes = [_filter_routes(check) for check in where.filters]
    if where.operand == "AND":
        return _most_selective(routes)
    return _union(routes)


def _most_selective(candidates: Iterable[frozenset[Route] | None]) -> frozenset[Route] | None:
    """Of several routes that must all hold, the one to file under (None when none holds)."""
    known = [routes for routes in candidates if routes is not None]
    if not known:
        return None
    return min(known, key=lambda routes: (len(routes), _rank(routes)))


def _rank(routes: frozenset[Route]) -> int:
    return max((_SELECTIVITY.index(route[0]) for route in routes), default=0)


def _union(parts: Iterable[frozenset[Route] | None]) -> frozenset[Route] | None:
    """Routes of which any may hold: None as soon as one part has no routes."""
    union: set[Route] = set()
    for part in parts:
        if part is None:
            return None
        union |= part
    return frozenset(union)


def _precondition_routes(trigger: FlowTrigger) -> Iterator[frozenset[Route] | None]:
    preconditions = trigger.precondition_model
    if preconditions is not None:
        yield from (_upstream_routes(upstream) for upstream in preconditions.flows)
        yield from (_where_routes(where) for where in preconditions.where)
    for multiple in trigger.multiple_conditions:
        yield from (_condition_routes(c) for c in multiple.typed_conditions.values())


def trigger_routes(trigger: FlowTrigger) -> frozenset[Route] | None:
    """The keys an ended execution must have for ``trigger`` to act on it (module docs);
    None when any execution may concern it."""
    plain = _most_selective(
        _condition_routes(c)
        for c in trigger.condition_models
        if not isinstance(c, MultipleCondition)
    )
    if plain is not None:
        return plain
    if trigger.precondition_model is None and not trigger.multiple_conditions:
        return None
    return _union(_precondition_routes(trigger))


T = TypeVar("T", bound=Hashable)


class RouteIndex(Generic[T]):
    """Items filed under their routes, plus the unrouted ones every lookup returns.

    Items are hashed by identity in the scheduler (its listeners), and each is added once
    with the routes it keeps until it is removed.
    """

    def __init__(self) -> None:
        self._buckets: dict[Route, dict[T, None]] = {}
        self._unrouted: dict[T, None] = {}
        self._routes: dict[T, frozenset[Route] | None] = {}
        self._prefix_lengths: Counter[int] = Counter()
        self._labels = 0

    def __len__(self) -> int:
        return len(self._routes)

    @property
    def unrouted(self) -> int:
        """How many items every lookup returns (their triggers name nothing indexable)."""
        return len(self._unrouted)

    def add(self, item: T, routes: frozenset[Route] | None) -> None:
        self._routes[item] = routes
        if routes is None:
            self._unrouted[item] = None
            return
        for route in routes:
            self._buckets.setdefault(route, {})[item] = None
            self._count(route, 1)

    def remove(self, item: T) -> None:
        routes = self._routes.pop(item, None)
        if routes is None:
            self._unrouted.pop(item, None)
            return
        for route in routes:
            bucket = self._buckets[route]
            del bucket[item]
            if not bucket:
                del self._buckets[route]
            self._count(route, -1)

    def _count(self, route: Route, delta: int) -> None:
        if route[0] == "prefix":
            self._prefix_lengths[len(route[1])] += delta
            if not self._prefix_lengths[len(route[1])]:
                del self._prefix_lengths[len(route[1])]
        elif route[0] == "label":
            self._labels += delta

    def _keys(self, ended: EndedExecution) -> Iterator[Route]:
        namespace = ended.namespace
        yield ("flow", namespace, ended.flow_id)
        yield ("namespace", namespace)
        yield ("flow_id", ended.flow_id)
        if self._labels:
            yield from (("label", key, value) for key, value in ended.labels.items())
        for length in self._prefix_lengths:
            if length <= len(namespace):
                yield ("prefix", namespace[:length])

    def candidates(self, ended: EndedExecution) -> dict[T, None]:
        """The items that may concern ``ended`` (each once, in no particular order)."""
        found = dict(self._unrouted)
        for key in self._keys(ended):
            bucket = self._buckets.get(key)
            if bucket:
                found.update(bucket)
        return found
