"""conformance-next's ``scenario`` entries (several executions of one flow, in steps): the steps
run against a :class:`Backend`, the broker-free driver here (:class:`DriverBackend`) or a real
broker (``tests/integration/test_conformance_broker.py``), and each step's ``expect`` is checked
with the second corpus's checker. The top-level ``expect`` describes the scenario's first
execution (``e1``/``p1``), checked once it has ended.

Actions (the corpus README): ``start`` (``until`` a state, ``"terminated"``, or null: do not
wait), ``await``, ``check``, ``kill``, ``wait`` (seconds), ``awaitChildren`` (``count``
executions of ``flow`` that this scenario's executions started, all ended; ``expect`` has
``executionStates``). An action this runner does not know fails the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from conformance_checks import Failures
from conformance_corpus import Entry

from kestream.models.execution import Execution, LogEntry
from kestream.models.state import StateType
from kestream.testing import Driver

#: How long one step may wait for its state.
STEP_TIMEOUT_S = 60.0

CheckNext = Callable[[dict[str, Any], Execution, Sequence[LogEntry]], Failures]


class Backend(Protocol):
    """What a scenario needs of an installation."""

    async def start(self, entry: Entry, inputs: dict[str, Any]) -> str: ...

    async def until(self, execution_id: str, until: str) -> Execution: ...

    async def now(self, execution_id: str) -> Execution: ...

    async def kill(self, execution_id: str) -> None: ...

    async def pause(self, seconds: float) -> None: ...

    async def logs(self, execution_id: str) -> list[LogEntry]: ...

    async def executions(self) -> list[Execution]:
        """Every execution the installation knows now."""
        ...


def reached(execution: Execution, until: str) -> bool:
    """``"terminated"``: it has ended; a state: it has been in that state (one step of the
    executor can pass through several, as RUNNING then PAUSED)."""
    if until == "terminated":
        return execution.state.current.is_terminal
    return any(item.state.value == until for item in execution.state.histories)


async def run_scenario(entry: Entry, backend: Backend, check_next: CheckNext) -> Failures:
    """Run the entry's steps; the failures of every ``expect`` (and of waits that did not
    reach their state), then of the top-level ``expect`` on the first execution."""
    names: dict[str, str] = {}
    failures: Failures = []
    for position, step in enumerate(entry.scenario):
        action = step["action"]
        where = f"scenario[{position}] {action} {step.get('execution') or step.get('flow')}"
        execution: Execution | None = None
        if action == "start":
            inputs = dict(step.get("inputs") or entry.inputs)
            names[step["execution"]] = await backend.start(entry, inputs)
            if step.get("until") is not None:
                execution = await backend.until(names[step["execution"]], step["until"])
        elif action == "await":
            execution = await backend.until(names[step["execution"]], step["until"])
        elif action == "check":
            execution = await backend.now(names[step["execution"]])
        elif action == "kill":
            await backend.kill(names[step["execution"]])
            continue
        elif action == "wait":
            await backend.pause(float(step["seconds"]))
            continue
        elif action == "awaitChildren":
            failures += [
                f"{where}: {line}"
                for line in await _await_children(backend, step, set(names.values()))
            ]
            continue
        else:
            raise ValueError(f"{entry.case_id()}: scenario action {action!r}")
        if execution is None:
            continue
        if "until" in step and step["until"] is not None and not reached(execution, step["until"]):
            failures.append(f"{where}: did not reach {step['until']}: {execution.state.current}")
        if "expect" in step:
            logs = await backend.logs(execution.id)
            failures += [f"{where}: {line}" for line in check_next(step["expect"], execution, logs)]
    first = names[entry.scenario[0]["execution"]]
    execution = await backend.until(first, "terminated")
    failures += check_next(entry.expect, execution, await backend.logs(first))
    return failures


async def _await_children(backend: Backend, step: dict[str, Any], started: set[str]) -> Failures:
    """``count`` ended executions of ``flow`` started by one of ``started`` (Subflow), then
    their states against ``expect.executionStates`` (any order)."""
    namespace, flow_id = step["flow"].rsplit(".", 1)
    count = int(step["count"])
    children: list[Execution] = []
    for _ in range(int(STEP_TIMEOUT_S / 0.05)):
        children = [
            e
            for e in await backend.executions()
            if (e.namespace, e.flowId) == (namespace, flow_id) and _parent_of(e) in started
        ]
        if len(children) >= count:
            break
        await backend.pause(0.05)
    if len(children) < count:
        return [f"expected {count} children, found {len(children)}"]
    ended = [await backend.until(child.id, "terminated") for child in children]
    expected = sorted(step.get("expect", {}).get("executionStates", []))
    actual = sorted(child.state.current.value for child in ended)
    if expected and actual != expected:
        return [f"executionStates: expected {expected} (any order), got {actual}"]
    return []


def _parent_of(execution: Execution) -> str | None:
    trigger = execution.trigger
    if trigger is None or not trigger.type.endswith(".Subflow"):
        return None
    parent = (trigger.variables or {}).get("executionId")
    return parent if isinstance(parent, str) else None


class DriverBackend:
    """The broker-free driver as a scenario's installation (time is real: Sleeps sleep)."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    async def start(self, entry: Entry, inputs: dict[str, Any]) -> str:
        return await self.driver.acreate(
            entry.namespace,
            entry.flow_id,
            inputs,
            validate_inputs=entry.inputs_validated,
            labels=entry.labels,
        )

    async def until(self, execution_id: str, until: str) -> Execution:
        states = None if until == "terminated" else {StateType(until)}
        return await self.driver.await_state(execution_id, states, timeout=STEP_TIMEOUT_S)

    async def now(self, execution_id: str) -> Execution:
        return self.driver.get(execution_id)

    async def kill(self, execution_id: str) -> None:
        await self.driver.akill(execution_id)

    async def pause(self, seconds: float) -> None:
        await self.driver.apass(seconds)

    async def logs(self, execution_id: str) -> list[LogEntry]:
        return self.driver.logs(execution_id)

    async def executions(self) -> list[Execution]:
        return self.driver.executions()
