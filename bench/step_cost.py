"""Cost of one executor event as an execution grows: ForEach of 160 vs 10 000 iterations.

Drives the pure step function directly (no broker, no worker): the created event, then one worker
result per Log task run, fed back in the order the tasks were dispatched. Prints the microseconds
of step time per event for each size and their ratio; the target is a ratio of at most 1.5
(DESIGN.md section 3: the work per event must not grow with the size of the execution).

Each figure is printed twice: with CPython's default garbage-collector thresholds, and with the
thresholds kestream's processes set at start (``kestream.runtime.process.tune_gc``), because the
interpreter's full collections scan the whole live state and are part of what an event costs.

    python -m bench.step_cost [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.step import Executor
from kestream.models.flow import parse_flow
from kestream.models.ids import new_id
from kestream.models.state import StateType
from kestream.runtime.process import GC_THRESHOLDS

FLOW = """
id: foreach_{n}
namespace: bench.step
tasks:
  - id: foreach
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{{{ range(1, {n}) }}}}"
    concurrencyLimit: {limit}
    tasks:
      - id: log
        type: io.kestra.plugin.core.log.Log
        message: "Some log {{{{ taskrun.value }}}}"
"""


def drive(iterations: int, limit: int) -> tuple[int, float, StateType]:
    """Run one ForEach execution through the step; return (events, step seconds, final state)."""
    registry = FlowRegistry()
    flow = registry.put(parse_flow(FLOW.format(n=iterations, limit=limit)))
    executor = Executor(registry, inline_tasks=False)
    pending: list[cmd.RunTask] = []
    event: ev.Event = ev.ExecutionCreated(new_id(), flow.namespace, flow.id, flow.revision)
    state = None
    events, spent = 0, 0.0
    while True:
        started = time.perf_counter()
        result = executor.step(state, event)
        spent += time.perf_counter() - started
        events += 1
        state = result.state
        pending.extend(c for c in result.commands if isinstance(c, cmd.RunTask))
        if not pending:
            break
        job = pending.pop(0) if limit != 0 else pending.pop()
        event = ev.WorkerResult(job.execution_id, job.task_run_id, job.attempt, StateType.SUCCESS)
    assert state is not None
    return events, spent, state.state.current


def measure(iterations: int, limit: int, repeat: int) -> tuple[int, float]:
    """Median microseconds per event over ``repeat`` runs."""
    per_event: list[float] = []
    events = 0
    for _ in range(repeat):
        gc.collect()
        events, spent, final = drive(iterations, limit)
        if final is not StateType.SUCCESS:
            raise SystemExit(f"ForEach {iterations} ended {final}")
        per_event.append(spent / events * 1e6)
    return events, statistics.median(per_event)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    default_thresholds = gc.get_threshold()
    for gc_label, thresholds in (
        ("default gc", default_thresholds),
        ("runtime gc", GC_THRESHOLDS),
    ):
        gc.set_threshold(*thresholds)
        for limit in (0, 1):
            small_events, small = measure(160, limit, args.repeat)
            big_events, big = measure(10_000, limit, args.repeat)
            print(
                f"{gc_label} {thresholds}, concurrencyLimit={limit}: "
                f"ForEach 160: {small:.1f} us/event ({small_events} events); "
                f"ForEach 10000: {big:.1f} us/event ({big_events} events); "
                f"ratio {big / small:.2f} (target <= 1.5)"
            )
    gc.set_threshold(*default_thresholds)


if __name__ == "__main__":
    main()
