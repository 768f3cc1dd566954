"""The benchmark workloads W1-W4 of ../shared/BENCHMARKS.md and W7-W8, as the harness runs them.

The flows themselves live in ``config/bench/`` (one YAML per workload) so that users can run
exactly what was measured with ``kestream run``; this module only says how each one is offered
(open loop at a rate, or a few executions one after another) and what "kept up" allows.

W7 (a shell ``Commands`` task printing one output line) and W8 (a function-form Python task,
bench/w8_tasks.py) measure kestream's script and Python task paths; they are not Kestra benchmarks,
so they have kestream targets (bench/reference.py) and no Kestra figures to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLOWS_DIR = REPO / "config" / "bench"

#: Window after the last offer in which everything offered must have ended (BENCHMARKS.md).
COLLECT_WINDOW_S = 10.0

#: A flow that crosses the worker (Sleep is never inline) and the executor's inline path, run
#: before the clock starts: with inline tasks on, W1 and W4 never reach the worker, so warming
#: up with them alone would not prove the worker's group join is done.
WARMUP_FLOW = """
id: bench_warmup
namespace: bench.warmup
tasks:
  - id: nap
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.01S
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: warm
"""


@dataclass(frozen=True, slots=True)
class Workload:
    """One benchmark workload.

    ``p99_limit_s`` is the "kept up" bound on p99 (None for W3, which has no rate);
    ``warmup_own`` is how many executions of the workload's own flow run before the clock starts
    (its templates compiled, its code paths hot), 0 where one would cost seconds (W2's sleep).
    """

    name: str
    flow_file: str
    p99_limit_s: float | None
    default_rates: tuple[int, ...]
    warmup_own: int
    #: ForEach size for W3 rows (the ``iterations`` field), None for rate workloads.
    iterations: int | None = None
    #: Plugin modules the flow's task types come from: imported by the load generator before it
    #: deploys the flow, and given to every role through ``KESTREAM_PLUGINS`` (W8).
    plugins: tuple[str, ...] = ()
    #: Where the flow's blocking Python task runs, as it declares (``isolation``): "process" or
    #: "thread" for W8, None for workloads without one.
    isolation: str | None = None

    @property
    def sequential(self) -> bool:
        """W3 is offered as a few executions one after another, not at a rate."""
        return self.iterations is not None

    def flow_source(self) -> str:
        return (FLOWS_DIR / self.flow_file).read_text()


_W8_PLUGINS = ("bench.w8_tasks",)

WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", "w1.yaml", 1.0, (1000, 2000, 4000, 6000, 12000), warmup_own=32),
    "W2": Workload("W2", "w2.yaml", 6.0, (500, 1000, 2000, 6000), warmup_own=0),
    "W3": Workload("W3", "w3.yaml", None, (), warmup_own=1, iterations=160),
    "W4": Workload("W4", "w4.yaml", 1.0, (600,), warmup_own=32),
    "W7": Workload("W7", "w7.yaml", 1.0, (600,), warmup_own=8),
    "W8": Workload(
        "W8", "w8.yaml", 1.0, (6000,), warmup_own=32, plugins=_W8_PLUGINS, isolation="process"
    ),
}

#: W8 by the isolation its task declares (``--isolation``): the same body in a worker process
#: (the default of a blocking Python task) or in a worker thread.
W8_BY_ISOLATION: dict[str, Workload] = {
    "process": WORKLOADS["W8"],
    "thread": Workload(
        "W8", "w8_thread.yaml", 1.0, (6000,), warmup_own=32, plugins=_W8_PLUGINS, isolation="thread"
    ),
}

#: W3's large variant, run after W3 on a fresh stack: its cost per iteration is compared with
#: ForEach 160's (the cost of a state change must not grow with the execution).
W3_BIG = Workload("W3", "w3_10000.yaml", None, (), warmup_own=0, iterations=10_000)


def get(name: str) -> Workload:
    """The workload called ``name`` (case-insensitive), or a ValueError listing the choices."""
    try:
        return WORKLOADS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}") from None


def with_isolation(workload: Workload, isolation: str) -> Workload:
    """``workload`` with its Python task run as ``isolation`` says; a ValueError for a workload
    that has no Python task, or an isolation it has no variant for."""
    if workload.isolation is None:
        raise ValueError(f"--isolation applies to W8 only, not {workload.name}")
    try:
        return W8_BY_ISOLATION[isolation]
    except KeyError:
        choices = ", ".join(W8_BY_ISOLATION)
        raise ValueError(f"unknown isolation {isolation!r}; choose from {choices}") from None


def every() -> list[Workload]:
    """Every workload the harness can run, variants included (each flow file once)."""
    found = [*WORKLOADS.values(), W3_BIG, *W8_BY_ISOLATION.values()]
    return list({w.flow_file: w for w in found}.values())
