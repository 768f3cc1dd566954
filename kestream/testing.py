"""Run flows in one process, without a broker: the real executor step and the real task runner.

Like Kafka Streams' ``TopologyTestDriver``: events go in, the commands the step produces are carried
out in memory (tasks run on the worker's runner, timers wait in a heap, child executions are fed
back as events). Time is real by default: Pause delays, retry intervals and Sleep really wait.

``run`` returns at the execution's first stop: an end state, or PAUSED when a Pause waits for a
resume or for its delay. :class:`Driver` gives the rest: resume, restart, kill, wait, logs and the
executions a run created (subflows, retries as new executions).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.admission import SlotTable
from kestream.executor.context import input_variables
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.references import adopted
from kestream.executor.replay import replay_event
from kestream.executor.sla import TIMER_KIND as SLA_TIMER
from kestream.executor.snapshot import execution_model
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor
from kestream.executor.timers import TimerQueue
from kestream.kv.memory import MemoryKVStore
from kestream.kv.store import KV_STORE, use_store
from kestream.models.clock import Clock, ManualClock, utc_now
from kestream.models.execution import Execution, LogEntry
from kestream.models.flow import Flow, parse_flow
from kestream.models.ids import new_id
from kestream.models.inputs import parse_inputs
from kestream.models.state import StateType
from kestream.plugins.loading import load_plugins
from kestream.secrets.encryption import scope_of
from kestream.settings import get_settings
from kestream.tasks.purge import PURGER
from kestream.testing_purge import DriverPurger
from kestream.worker.pool import shared_pool
from kestream.worker.runner import STOP_WAIT_S, TaskRunner

__all__ = ["Driver", "arun", "run"]

T = TypeVar("T")

#: Timers that are no work of their own: what they end waits for them (a pause, an SLA).
_WAITING_TIMERS = ("pause-delay", "pause-timeout", SLA_TIMER)
#: How the trigger of a child execution ends: a Subflow's, a ForEachItem batch's.
_CHILD_TRIGGERS = (".Subflow", "$ForEachItemExecutable")


class Driver:
    """An in-process kestream: deploy flows, start executions, act on them, read the results.

    The synchronous methods run a private event loop; inside a running loop use the ``a``-prefixed
    coroutines (``astart``, ``aresume``, ...) instead.
    """

    def __init__(self, *, inline_tasks: bool = True, clock: Clock = utc_now) -> None:
        load_plugins()  # KESTREAM_PLUGINS and the entry points, as every kestream process does
        self.flows = FlowRegistry()
        self.clock = clock
        self.executor = Executor(self.flows, clock=clock, inline_tasks=inline_tasks)
        # Blocking Python tasks run in worker processes as on a worker (a kill stops them); all
        # drivers of a process share them, ended when it exits.
        self.runner = TaskRunner(clock=clock, processes=shared_pool(get_settings().task_threads))
        self._purger = DriverPurger(self)
        #: The driver's KV store: ``kv()`` and the KV tasks of its executions read and write it.
        self.kv = MemoryKVStore(clock)
        self.states: dict[str, ExecutionState] = {}
        #: Flow concurrency: the admission stream's slot table, stepped in process.
        self.slots = SlotTable()
        self._logs: dict[str, list[cmd.LogLine]] = {}
        self._events: deque[ev.Event] = deque()
        self._timers = TimerQueue()  # the executor's own (one piece of code for both)
        self._inflight: set[asyncio.Task[tuple[ev.WorkerResult, list[cmd.LogLine]]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._manual_time = isinstance(clock, ManualClock)

    # -- flows ---------------------------------------------------------------------------

    def deploy(self, flow_yaml: str) -> Flow:
        """Validate a flow (every problem listed, with lines) and make it runnable."""
        return self.flows.put(parse_flow(flow_yaml))

    # -- async API -----------------------------------------------------------------------

    async def astart(
        self,
        namespace: str,
        flow_id: str,
        inputs: dict[str, Any] | None = None,
        *,
        validate_inputs: bool = True,
        labels: dict[str, Any] | None = None,
    ) -> Execution:
        execution_id = await self.acreate(
            namespace, flow_id, inputs, validate_inputs=validate_inputs, labels=labels
        )
        await self._run_until(lambda: self._stopped(execution_id))
        return self.get(execution_id)

    async def acreate(
        self,
        namespace: str,
        flow_id: str,
        inputs: dict[str, Any] | None = None,
        *,
        validate_inputs: bool = True,
        labels: dict[str, Any] | None = None,
    ) -> str:
        """Create an execution and step what follows at once, without waiting for anything
        (Kestra's ``emit``); returns its id. :meth:`await_state` waits for it."""
        flow = self.flows.get(namespace, flow_id)
        if flow is None:
            raise LookupError(f"Unknown flow '{namespace}.{flow_id}': deploy it first")
        given = dict(inputs or {})
        if validate_inputs:
            scope = scope_of(namespace, flow_id)
            with use_store(self.kv):  # raises, naming each bad input
                given = parse_inputs(
                    flow.inputs, given, scope=scope, variables=input_variables(flow)
                )
        execution_id = new_id()
        self._events.append(
            ev.ExecutionCreated(
                execution_id=execution_id,
                namespace=namespace,
                flow_id=flow_id,
                revision=flow.revision,
                inputs=given,
                validate_inputs=False,
                labels={str(k): str(v) for k, v in (labels or {}).items()},
            )
        )
        self._process_events()
        return execution_id

    async def await_state(
        self,
        execution_id: str,
        states: Collection[StateType] | None = None,
        timeout: float = 30.0,
    ) -> Execution:
        """Let time pass until the execution has reached one of ``states`` (its history shows
        it: one step can pass through several states), or, with None, until it has ended; or
        until nothing is left that could change it. Returns it as it is then."""

        def reached() -> bool:
            st = self.states.get(execution_id)
            if st is None:
                return False
            if states is None:
                return st.terminal
            return any(state in states for state, _ in st.state.history)

        await self._run_until(reached, timeout=timeout)
        return self.get(execution_id)

    async def asubmit(self, event: ev.ExecutionCreated) -> Execution:
        """Run a prepared creation event (a trigger's, say) until the execution stops."""
        self._events.append(event)
        await self._run_until(lambda: self._stopped(event.execution_id))
        return self.get(event.execution_id)

    async def aresume(self, execution_id: str, inputs: dict[str, Any] | None = None) -> Execution:
        self._events.append(ev.Resume(execution_id, inputs))
        await self._run_until(lambda: self._stopped(execution_id))
        return self.get(execution_id)

    async def arestart(
        self, execution_id: str, *, snapshot: Execution | dict[str, Any] | None = None
    ) -> Execution:
        """Restart an ended execution; see :meth:`restart`."""
        body = snapshot
        if isinstance(body, Execution):
            body = body.model_dump(mode="json", by_alias=True)
        self._events.append(ev.Restart(execution_id, body))
        await self._run_until(lambda: self._stopped(execution_id))
        if execution_id not in self.states and body is not None:
            return Execution.model_validate(body)  # not restartable: nothing changed
        return self.get(execution_id)

    async def areplay(
        self,
        execution_id: str,
        *,
        task_run_id: str | None = None,
        revision: int | None = None,
        inputs: dict[str, Any] | None = None,
        snapshot: Execution | dict[str, Any] | None = None,
    ) -> Execution:
        """Replay an ended execution; see :meth:`replay`."""
        if snapshot is None:
            snapshot = self.get(execution_id)
        body = (
            snapshot.model_dump(mode="json", by_alias=True)
            if isinstance(snapshot, Execution)
            else snapshot
        )
        namespace, flow_id = body["namespace"], body["flowId"]
        flow = self.flows.get(namespace, flow_id, revision or body["flowRevision"])
        if flow is None:
            raise LookupError(f"Unknown flow '{namespace}.{flow_id}' revision {revision}")
        event = replay_event(
            body, flow, execution_id=new_id(), task_run_id=task_run_id, inputs=inputs
        )
        return await self.asubmit(event)

    async def akill(self, execution_id: str) -> Execution:
        self._events.append(ev.Kill(execution_id))
        await self._run_until(lambda: self._stopped(execution_id))
        return self.get(execution_id)

    async def await_(self, execution_id: str, timeout: float = 30.0) -> Execution:
        """Let time pass until the execution ends, or pauses with nothing left to wait for."""
        await self._run_until(lambda: self._settled(execution_id), timeout=timeout)
        return self.get(execution_id)

    async def apass(self, seconds: float) -> None:
        """Let ``seconds`` of real time pass, carrying out what happens meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        with contextlib.suppress(TimeoutError):
            await self._run_until(lambda: False, timeout=seconds)
        await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def aadvance(self, delta: timedelta) -> None:
        """Move a :class:`ManualClock` forward, fire what fell due, and run until idle."""
        if not isinstance(self.clock, ManualClock):
            raise TypeError("advance() needs a Driver built with clock=ManualClock()")
        self.clock.advance(delta)
        self._fire_due_timers()
        await self._run_until(lambda: False)

    async def asettle(self, timeout: float = 60.0) -> None:
        """Run until nothing is left to do for any execution."""
        await self._run_until(lambda: False, timeout=timeout)

    # -- sync API ------------------------------------------------------------------------

    def submit(self, event: ev.ExecutionCreated) -> Execution:
        return self._sync(self.asubmit(event))

    def start(
        self,
        namespace: str,
        flow_id: str,
        inputs: dict[str, Any] | None = None,
        *,
        validate_inputs: bool = True,
        labels: dict[str, Any] | None = None,
    ) -> Execution:
        coro = self.astart(
            namespace, flow_id, inputs, validate_inputs=validate_inputs, labels=labels
        )
        return self._sync(coro)

    def resume(self, execution_id: str, inputs: dict[str, Any] | None = None) -> Execution:
        return self._sync(self.aresume(execution_id, inputs))

    def restart(
        self, execution_id: str, *, snapshot: Execution | dict[str, Any] | None = None
    ) -> Execution:
        """Restart an ended execution in place (same id, failed task runs get a new attempt).

        With ``snapshot`` (the execution's JSON, or its model) and no state for the execution
        (see :meth:`forget`), the state is rebuilt from the snapshot first, as the executor does
        over Kafka once an ended execution has left its state table. A snapshot that cannot be
        rebuilt raises :class:`~kestream.executor.restore.RestoreError`.
        """
        return self._sync(self.arestart(execution_id, snapshot=snapshot))

    def replay(
        self,
        execution_id: str,
        *,
        task_run_id: str | None = None,
        revision: int | None = None,
        inputs: dict[str, Any] | None = None,
        snapshot: Execution | dict[str, Any] | None = None,
    ) -> Execution:
        """Replay an ended execution as a new one (:mod:`kestream.executor.replay`): from the
        task run ``task_run_id`` (the task runs before it are kept), or from the start; on
        ``revision`` of the flow (default: the same); with ``inputs`` instead of its own.
        ``snapshot`` replays an execution this driver forgot. Returns the new execution at its
        first stop."""
        return self._sync(
            self.areplay(
                execution_id,
                task_run_id=task_run_id,
                revision=revision,
                inputs=inputs,
                snapshot=snapshot,
            )
        )

    def forget(self, execution_id: str) -> Execution:
        """Drop an ended execution's state, as the runtime's state table does; return its JSON.

        A later :meth:`restart` of it needs the returned snapshot.
        """
        st = self.states[execution_id]
        if not st.terminal:
            raise ValueError(f"execution {execution_id} is {st.state.current}: not ended")
        snapshot = execution_model(st)
        del self.states[execution_id]
        self.executor.forget(execution_id)
        return snapshot

    def kill(self, execution_id: str) -> Execution:
        return self._sync(self.akill(execution_id))

    def wait(self, execution_id: str, timeout: float = 30.0) -> Execution:
        return self._sync(self.await_(execution_id, timeout))

    def advance(self, delta: timedelta) -> None:
        self._sync(self.aadvance(delta))

    def settle(self, timeout: float = 60.0) -> None:
        self._sync(self.asettle(timeout))

    # -- reading -------------------------------------------------------------------------

    def get(self, execution_id: str) -> Execution:
        return execution_model(self.states[execution_id])

    def executions(self) -> list[Execution]:
        """Every execution this driver ran, in creation order."""
        return [execution_model(st) for st in self.states.values()]

    def children(self, execution_id: str) -> list[Execution]:
        """Executions started by Subflow (and ForEachItem) tasks of this execution, and
        theirs (descendants)."""
        found: list[Execution] = []
        parents = {execution_id}
        for st in self.states.values():
            trigger = st.trigger or {}
            parent = trigger.get("variables", {}).get("executionId")
            if trigger.get("type", "").endswith(_CHILD_TRIGGERS) and parent in parents:
                parents.add(st.id)
                found.append(execution_model(st))
        return found

    def logs(self, execution_id: str) -> list[LogEntry]:
        st = self.states[execution_id]
        return [
            LogEntry(
                executionId=line.execution_id,
                namespace=st.namespace,
                flowId=st.flow_id,
                taskId=line.task_id,
                taskRunId=line.task_run_id,
                attemptNumber=line.attempt,
                level=line.level,
                message=line.message,
                timestamp=line.timestamp,
            )
            for line in self._logs.get(execution_id, [])
        ]

    def close(self) -> None:
        for task in self._inflight:
            task.cancel()
        if self._inflight and self._loop is not None and not self._loop.is_running():
            self._loop.run_until_complete(self._stopped_tasks())
        self.runner.close()
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    async def _stopped_tasks(self) -> None:
        """Let cancelled attempts clean up (a script's process group) before the loop goes."""
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=STOP_WAIT_S)

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ------------------------------------------------------------------------

    def drive(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (a sequence of this driver's ``a``-methods, say) on the driver's own
        loop, where its task runs live, and return its result."""
        result: T = self._sync(coro)
        return result

    def _sync(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    async def _run_until(self, done: Callable[[], bool], timeout: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._process_events()
            if done():
                return
            if not self._inflight and (not self._timers or self._manual_time):
                return  # idle: nothing can change until time passes (or ever)
            wait = self._next_timer_wait()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"Executions still running after {timeout}s; where the loop's tasks "
                    f"wait:\n{_stacks(asyncio.all_tasks() - {asyncio.current_task()})}"
                )
            wait = remaining if wait is None else min(wait, remaining)
            if self._inflight:
                finished, _ = await asyncio.wait(
                    self._inflight, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                for task in finished:
                    self._inflight.discard(task)
                    result, lines = task.result()
                    self._keep_logs(result.execution_id, lines)
                    self._events.append(result)
            elif wait > 0:
                await asyncio.sleep(wait)
            self._fire_due_timers()

    def _process_events(self) -> None:
        while self._events:
            event = self._events.popleft()
            state = self.states.get(event.execution_id)
            if state is None and isinstance(event, ev.ExecutionCreated):
                event = adopted(event)  # a replay's or retry's stored values (in line: a test)
            with use_store(self.kv):  # kv() renders in the step
                result = self.executor.step(state, event)
            if result.state is not None and state is None:
                self.states[result.state.id] = result.state
            for command in result.commands:
                self._carry_out(command)

    def _carry_out(self, command: cmd.Command) -> None:
        if isinstance(command, cmd.RunTask):
            # The purge tasks it runs delete from this driver (kestream.testing_purge).
            context = contextvars.copy_context()
            context.run(PURGER.set, self._purger)
            context.run(KV_STORE.set, self.kv)
            task = asyncio.get_running_loop().create_task(self.runner.run(command), context=context)
            self._inflight.add(task)
        elif isinstance(command, cmd.KillTask):
            self.runner.kill(command.execution_id, command.task_run_id)
        elif isinstance(command, cmd.ReleaseWorkdir):
            self.runner.release_workdir(command.execution_id, command.owner_id)
        elif isinstance(command, cmd.CreateExecution):
            self._events.append(command.created)
        elif isinstance(command, cmd.SendEvent):
            self._events.append(command.event)
        elif isinstance(command, cmd.RequestSlot):  # the admission stream, in process
            self._events.extend(self.slots.apply(command.request, self.clock()).answers)
        elif isinstance(command, cmd.SetTimer):
            self._timers.set(command.execution_id, command.timer_id, command.due)
        elif isinstance(command, cmd.CancelTimer):
            self._timers.cancel(command.execution_id, command.timer_id)
        elif isinstance(command, cmd.EmitLogs):
            self._keep_logs(command.lines[0].execution_id, command.lines)

    def _keep_logs(self, execution_id: str, lines: list[cmd.LogLine]) -> None:
        if lines:
            self._logs.setdefault(execution_id, []).extend(lines)

    def _next_timer_wait(self) -> float | None:
        due = self._timers.next_due()
        return None if due is None else max((due - self.clock()).total_seconds(), 0.0)

    def _fire_due_timers(self) -> None:
        for execution_id, timer_id, _ in self._timers.pop_due(self.clock()):
            self._events.append(ev.TimerFired(execution_id, timer_id))

    def _busy(self) -> bool:
        """Work other than waiting for a pause is pending somewhere."""
        if self._events or self._inflight:
            return True
        for execution_id, timer_id in self._timers.pending():
            timer = self.states[execution_id].timers.get(timer_id)
            if timer is not None and timer.kind not in _WAITING_TIMERS:
                return True
        return False

    def _stopped(self, execution_id: str) -> bool:
        st = self.states.get(execution_id)
        if st is None:
            return False
        if st.terminal:
            return True
        return st.state.current is StateType.PAUSED and not self._busy()

    def _settled(self, execution_id: str) -> bool:
        st = self.states.get(execution_id)
        if st is None:
            return False
        if st.terminal:
            return True
        return st.state.current is StateType.PAUSED and not st.timers and not self._busy()


async def arun(
    flow_yaml: str,
    inputs: dict[str, Any] | None = None,
    *,
    flows: Sequence[str] = (),
    validate_inputs: bool = True,
    labels: dict[str, Any] | None = None,
) -> Execution:
    """Deploy ``flows`` and ``flow_yaml``, run one execution to its first stop, return it."""
    driver = Driver()
    try:
        for other in flows:
            driver.deploy(other)
        flow = driver.deploy(flow_yaml)
        return await driver.astart(
            flow.namespace, flow.id, inputs, validate_inputs=validate_inputs, labels=labels
        )
    finally:
        for task in driver._inflight:
            task.cancel()
        await driver._stopped_tasks()
        driver.runner.close()


def run(
    flow_yaml: str,
    inputs: dict[str, Any] | None = None,
    *,
    flows: Sequence[str] = (),
    validate_inputs: bool = True,
    labels: dict[str, Any] | None = None,
) -> Execution:
    """Synchronous :func:`arun`."""
    return asyncio.run(
        arun(flow_yaml, inputs, flows=flows, validate_inputs=validate_inputs, labels=labels)
    )


def _stacks(tasks: Iterable[asyncio.Task[Any]]) -> str:
    """Where each of ``tasks`` waits, its chain of awaits outermost first: what a test that
    timed out prints, so that a hang seen once in CI says where it was."""
    lines = []
    for task in tasks:
        lines.append(f"{task.get_name()}:")
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                lines.append(f"  awaits {awaited!r}")
                break
            code = frame.f_code
            lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return "\n".join(lines)
