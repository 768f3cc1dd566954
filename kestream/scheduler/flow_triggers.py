"""Flow triggers: the executions to start when another execution ends.

For every flow with an ``io.kestra.plugin.core.trigger.Flow`` trigger, an ended execution is
checked as Kestra checks it (its ``FlowTriggerService``):

1. a flow is never started by its own executions (Kestra refuses recursive flow triggers), and
   disabled flows and triggers are skipped;
2. the execution's state must be in the trigger's ``states`` (default: every terminal state and
   PAUSED);
3. every one of ``conditions`` must hold (ExecutionFlow, ExecutionNamespace, ExecutionStatus,
   ExecutionLabels; others are refused when the flow is validated);
4. with ``preconditions``, the execution's met preconditions are added to the trigger's window
   (:mod:`kestream.scheduler.preconditions`) and the trigger fires once all are met; with
   ``resetOnSuccess`` (default) the window then starts over. A ``MultipleCondition`` among the
   conditions (Kestra's older form of preconditions) is a window of its own, kept the same way
   under its ``id``, each key of its ``conditions`` one precondition; with several windows, the
   trigger fires once all of them are complete.

The triggers an ended execution is checked against come from an index of what each trigger
listens to (:mod:`kestream.scheduler.flow_trigger_index`): with thousands of Flow triggers, an
execution meets only those that name its flow, namespace, namespace prefix or labels, and the
few that name nothing indexable. They are checked in deployment order, as a full scan would.

The created execution's id is derived from the trigger, the source execution *attempt* and its
state, so a redelivered "ended" event creates the same execution, which the executor
recognises, while a PAUSED and the later end of one attempt each start their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from kestream.executor.context import nested_labels
from kestream.executor.events import ExecutionCreated
from kestream.models.clock import Clock, utc_now
from kestream.models.flow import (
    Condition,
    ExecutionFlowCondition,
    ExecutionLabelsCondition,
    ExecutionNamespaceCondition,
    ExecutionStatusCondition,
    Flow,
    FlowTrigger,
    MultipleCondition,
)
from kestream.models.ids import derived_id
from kestream.models.state import TERMINAL, StateType
from kestream.scheduler.executions import trigger_execution
from kestream.scheduler.flow_trigger_index import RouteIndex, trigger_routes
from kestream.scheduler.preconditions import (
    EndedExecution,
    PreconditionWindow,
    WindowSpec,
    deep_merge,
    met_preconditions,
    sliding_length,
    window_bounds,
)
from kestream.scheduler.trigger_state import trigger_key

__all__ = [
    "DEFAULT_STATES",
    "EndedExecution",
    "FlowTriggerBook",
    "FlowTriggerResult",
    "condition_holds",
    "flow_trigger_event",
    "trigger_accepts",
    "window_specs",
]

#: Kestra's default ``states``: every terminal state, and PAUSED.
DEFAULT_STATES = frozenset(TERMINAL | {StateType.PAUSED})
_CORRELATION_ID = "system.correlationId"


def condition_holds(condition: Condition, ended: EndedExecution) -> bool:
    """Whether one typed condition holds for the ended execution (Kestra's semantics)."""
    if isinstance(condition, ExecutionFlowCondition):
        return (ended.namespace, ended.flow_id) == (condition.namespace, condition.flowId)
    if isinstance(condition, ExecutionNamespaceCondition):
        comparison = condition.effective_comparison
        if comparison == "PREFIX":
            return ended.namespace.startswith(condition.namespace)
        if comparison == "SUFFIX":
            return ended.namespace.endswith(condition.namespace)
        return ended.namespace == condition.namespace
    if isinstance(condition, ExecutionStatusCondition):
        if condition.in_ and ended.state not in condition.in_:
            return False
        return ended.state not in condition.notIn
    if isinstance(condition, ExecutionLabelsCondition):
        return all(ended.labels.get(k) == v for k, v in condition.labels.items())
    raise TypeError(f"no evaluation for condition {type(condition).__name__}")


@dataclass(frozen=True, slots=True)
class _Acceptance:
    """Steps 1-3 of the module's list for one trigger, read from its models once: a scheduler
    checks the same trigger against every ended execution its index returns."""

    enabled: bool
    flow: tuple[str, str]
    states: frozenset[StateType]
    conditions: tuple[Condition, ...]

    @classmethod
    def of(cls, flow: Flow, trigger: FlowTrigger) -> _Acceptance:
        return cls(
            enabled=not (flow.disabled or trigger.disabled),
            flow=(flow.namespace, flow.id),
            states=DEFAULT_STATES if trigger.states is None else frozenset(trigger.states),
            conditions=tuple(
                c
                for c in trigger.condition_models
                if not isinstance(c, MultipleCondition)  # windowed: step 4
            ),
        )

    def __call__(self, ended: EndedExecution) -> bool:
        if not self.enabled or ended.state not in self.states:
            return False
        if self.flow == (ended.namespace, ended.flow_id):
            return False  # Kestra never lets a flow trigger itself (FlowService.removeUnwanted)
        return all(condition_holds(c, ended) for c in self.conditions)


def trigger_accepts(flow: Flow, trigger: FlowTrigger, ended: EndedExecution) -> bool:
    """Steps 1-3 of the module's list: everything but the preconditions' window."""
    return _Acceptance.of(flow, trigger)(ended)


def _multiple_met(condition: MultipleCondition, ended: EndedExecution) -> list[str]:
    return [key for key, c in condition.typed_conditions.items() if condition_holds(c, ended)]


def window_specs(trigger: FlowTrigger) -> list[WindowSpec]:
    """The trigger's windows: its ``preconditions`` and each ``MultipleCondition``."""
    specs = []
    preconditions = trigger.precondition_model
    if preconditions is not None:
        specs.append(
            WindowSpec(
                preconditions.id,
                preconditions.timeWindow,
                preconditions.resetOnSuccess,
                tuple(preconditions.condition_ids()),
                partial(met_preconditions, preconditions),
            )
        )
    for multiple in trigger.multiple_conditions:
        specs.append(
            WindowSpec(
                multiple.id,
                multiple.time_window,
                multiple.resetOnSuccess,
                tuple(multiple.typed_conditions),
                partial(_multiple_met, multiple),
            )
        )
    return specs


def _window_definitions(trigger: FlowTrigger) -> tuple[Any, ...]:
    """What the trigger's windows are made of, as written: a change starts them over."""
    return (trigger.preconditions, *(c.model_dump() for c in trigger.multiple_conditions))


def flow_trigger_event(
    flow: Flow,
    trigger: FlowTrigger,
    ended: EndedExecution,
    outputs: dict[str, Any] | None = None,
) -> ExecutionCreated:
    """The execution a Flow trigger starts for ``ended`` (``outputs``: the merged outputs)."""
    labels = {k: v for k, v in ended.labels.items() if k != _CORRELATION_ID}
    variables: dict[str, Any] = {
        "executionId": ended.execution_id,
        "namespace": ended.namespace,
        "flowId": ended.flow_id,
        "flowRevision": ended.flow_revision,
        "state": str(ended.state),
        "executionLabels": nested_labels(labels),
    }
    merged = dict(ended.outputs or {}) if outputs is None else outputs
    if merged:
        variables["outputs"] = merged
    # The state is part of the id: an execution that pauses, then ends, fires once for each
    # (when both states are listened to); a redelivered update of either fires nothing new.
    execution_id = derived_id(
        "flow-trigger",
        flow.namespace,
        flow.id,
        trigger.id,
        ended.execution_id,
        ended.attempt,
        str(ended.state),
    )
    correlation = ended.labels.get(_CORRELATION_ID)
    labels = {_CORRELATION_ID: correlation} if correlation else {}
    return trigger_execution(flow, trigger, execution_id, variables, labels=labels)


@dataclass(slots=True)
class FlowTriggerResult:
    """What one ended execution causes: executions to create, window records to write/delete."""

    events: list[ExecutionCreated] = field(default_factory=list)
    windows: list[PreconditionWindow] = field(default_factory=list)
    removed_windows: list[str] = field(default_factory=list)


@dataclass(slots=True, eq=False)  # hashed by identity: the route index's items
class _Listener:
    flow: Flow
    trigger: FlowTrigger
    #: (the flow's deployment rank, the trigger's place in it): the order of a full scan.
    order: tuple[int, int]
    windows: list[WindowSpec] = field(init=False)
    accepts: _Acceptance = field(init=False)

    def __post_init__(self) -> None:
        self.windows = window_specs(self.trigger)
        self.accepts = _Acceptance.of(self.flow, self.trigger)

    @property
    def key(self) -> str:
        return trigger_key(self.flow.namespace, self.flow.id, self.trigger.id)


def _record(
    spec: WindowSpec, window: PreconditionWindow, ended: EndedExecution, now: datetime
) -> bool:
    """Note in ``window`` what ``ended`` meets of ``spec``; False when it meets nothing or was
    already counted (a replay: the window stays as it is)."""
    if window.has_counted(ended):
        return False
    met = spec.met(ended)
    if not met:
        return False
    window.count(ended)
    for condition_id in met:
        window.met[condition_id] = now
    window.outputs = deep_merge(window.outputs, dict(ended.outputs or {}))
    if spec.time_window.type == "SLIDING_WINDOW":
        oldest = now - sliding_length(spec.time_window)
        window.met = {k: at for k, at in window.met.items() if at >= oldest}
    return True


def _deployment_order(listener: _Listener) -> tuple[int, int]:
    return listener.order


class FlowTriggerBook:
    """The deployed Flow triggers and their precondition windows.

    Args:
        clock: the time for windows when an ended execution carries no ``end_date``.
        indexed: look up the triggers an ended execution may concern (the default); False
            checks every trigger, the reference the index is tested and benchmarked against.
    """

    def __init__(self, clock: Clock = utc_now, *, indexed: bool = True) -> None:
        self._clock = clock
        self._indexed = indexed
        self._by_flow: dict[str, list[_Listener]] = {}
        #: Per flow uid, its rank in ``_by_flow``'s order (a new rank when it comes back).
        self._ranks: dict[str, int] = {}
        self._next_rank = 0
        self._index: RouteIndex[_Listener] = RouteIndex()
        self._windows: dict[str, PreconditionWindow] = {}

    def __len__(self) -> int:
        return sum(len(listeners) for listeners in self._by_flow.values())

    @property
    def unindexed(self) -> int:
        """Triggers checked for every ended execution (they name nothing the index keys on)."""
        return self._index.unrouted

    def windows(self) -> Iterator[PreconditionWindow]:
        yield from self._windows.values()

    def _listeners(self, flow: Flow) -> list[_Listener]:
        if flow.deleted:
            return []
        triggers = [t for t in flow.triggers if isinstance(t, FlowTrigger)]
        if not triggers:
            return []
        rank = self._ranks.get(flow.uid)
        if rank is None:
            rank = self._ranks[flow.uid] = self._next_rank
            self._next_rank += 1
        return [_Listener(flow, t, (rank, n)) for n, t in enumerate(triggers)]

    def _forget(self, uid: str) -> list[_Listener]:
        gone = self._by_flow.pop(uid, [])
        self._ranks.pop(uid, None)
        for listener in gone:
            self._index.remove(listener)
        return gone

    def sync_flow(self, flow: Flow) -> list[str]:
        """Take a deployed flow's Flow triggers; returns window records made obsolete."""
        previous = self._by_flow.get(flow.uid, [])
        old = {listener.key: listener for listener in previous}
        listeners = self._listeners(flow)
        if listeners:
            for listener in previous:
                self._index.remove(listener)
            self._by_flow[flow.uid] = listeners  # an updated flow keeps its place
            for listener in listeners:
                self._index.add(listener, trigger_routes(listener.trigger))
        else:
            self._forget(flow.uid)
        kept = {
            listener.key: _window_definitions(listener.trigger)
            for listener in listeners
            if listener.windows
        }
        removed = []
        for key, listener in old.items():
            if key not in kept or kept[key] != _window_definitions(listener.trigger):
                removed.extend(self._drop_windows(key))
        return removed

    def remove_flow(self, namespace: str, flow_id: str) -> list[str]:
        """Forget a deleted flow's Flow triggers; returns the window records to delete."""
        removed: list[str] = []
        for listener in self._forget(f"{namespace}/{flow_id}"):
            removed.extend(self._drop_windows(listener.key))
        return removed

    def _drop_windows(self, key: str) -> list[str]:
        gone = [k for k, w in self._windows.items() if w.key == key]
        for record_key in gone:
            del self._windows[record_key]
        return gone

    def load_window(self, window: PreconditionWindow) -> None:
        """Take up a window record read from the runtime's store at start."""
        self._windows[window.record_key] = window

    def on_execution_end(self, ended: EndedExecution) -> FlowTriggerResult:
        """The executions to start because ``ended`` changed state, and the window changes."""
        result = FlowTriggerResult()
        now = ended.end_date or self._clock()
        for listener in self._candidates(ended):
            if listener.accepts(ended):
                self._evaluate(listener, ended, now, result)
        return result

    def _candidates(self, ended: EndedExecution) -> Iterable[_Listener]:
        if not self._indexed:
            return (listener for listeners in self._by_flow.values() for listener in listeners)
        found = self._index.candidates(ended)
        return sorted(found, key=_deployment_order) if len(found) > 1 else found

    def _evaluate(
        self, listener: _Listener, ended: EndedExecution, now: datetime, result: FlowTriggerResult
    ) -> None:
        if not listener.windows:
            result.events.append(flow_trigger_event(listener.flow, listener.trigger, ended))
            return
        windows: dict[str, PreconditionWindow] = {}
        touched: set[str] = set()
        for spec in listener.windows:
            window = self._window(listener.key, spec, now)
            if window is None:  # outside a daily window or past its deadline: not evaluated
                continue
            windows[spec.id] = window
            if _record(spec, window, ended, now):
                touched.add(spec.id)
        if not touched:
            return  # this execution meets none of them: nothing changes, nothing fires
        complete = all(
            spec.id in windows and set(windows[spec.id].met) >= set(spec.condition_ids)
            for spec in listener.windows
        )
        if complete:
            outputs: dict[str, Any] = {}
            for window in windows.values():
                outputs = deep_merge(outputs, window.outputs)
            event = flow_trigger_event(listener.flow, listener.trigger, ended, outputs)
            result.events.append(event)
            for spec in listener.windows:
                if spec.reset_on_success:
                    # Kept, emptied, with what it counted: a replay of those executions must
                    # not start the next window.
                    windows[spec.id].reset()
                    touched.add(spec.id)
        for spec_id in sorted(touched):
            window = windows[spec_id]
            self._windows[window.record_key] = window
            result.windows.append(window)

    def _window(self, key: str, spec: WindowSpec, now: datetime) -> PreconditionWindow | None:
        bounds = window_bounds(spec.time_window, now)
        if bounds is None:
            return None
        start, end = bounds
        record_key = f"{key}/{spec.id}"
        current = self._windows.get(record_key)
        sliding = start is None
        if current is not None and (sliding or (current.start, current.end) == (start, end)):
            return current
        return PreconditionWindow(key, spec.id, start, None if sliding else end)
