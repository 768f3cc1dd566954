"""W9: the scheduler's cost per ended execution with many Flow triggers, broker-free.

    python -m bench W9 --triggers 10000 [--executions 500] [--json]

``--triggers`` flows (one Flow trigger each, seeded) are deployed into two
:class:`~kestream.scheduler.FlowTriggerBook`\\ s: one that checks every trigger for each ended
execution (``indexed=False``, how the scheduler worked before its trigger index) and one that
looks up the triggers an execution may concern (the default). The same ``--executions`` ended
executions, of upstream flows drawn from a pool of 1 000 flows in 20 namespaces, are then fed
to both, and each call to :meth:`~kestream.scheduler.FlowTriggerBook.on_execution_end` is
timed. The trigger mix, as deployments write them:

- 60 % ``ExecutionFlow`` on one upstream flow, 10 % ``preconditions`` on two upstream flows,
  5 % a ``MultipleCondition`` on two upstream flows (each with the default states);
- alerts on failures (``states: [FAILED]``): 10 % ``ExecutionNamespace`` (EQUALS), 5 % a
  namespace prefix, 10 % a label;
- ``--unindexed`` (default 1 %) of ``states``/``ExecutionStatus`` only, which every execution
  must be checked against (a trigger "on any failure anywhere").

Measured: ``scan_us_p50`` / ``_p99`` and ``indexed_us_p50`` / ``_p99`` per ended execution,
``speedup`` (mean over mean), ``fired`` (executions the triggers started), and ``same``: whether
both books decided exactly the same for every execution (events, windows written and deleted).
Figures are printed, never asserted; the machine may be shared, so they are indicative.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.report import git_commit, percentile
from kestream.models.flow import Flow, FlowTrigger, parse_flow
from kestream.models.state import StateType
from kestream.scheduler import EndedExecution, FlowTriggerBook, FlowTriggerResult

FLOW_TRIGGER = FlowTrigger.type_names[0]
COND = "io.kestra.plugin.core.condition."
NAMESPACES = [f"company.team{n:02d}" for n in range(20)]
UPSTREAM_PER_NAMESPACE = 50
LABELS = [("team", f"t{n}") for n in range(20)]
#: Mostly successes, as a production installation looks.
STATES = (StateType.SUCCESS,) * 8 + (StateType.FAILED, StateType.WARNING)
START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
TEMPLATE = """
id: template
namespace: bench.w9
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ trigger.executionId }}"
"""


def _upstream(rng: random.Random) -> tuple[str, str]:
    return rng.choice(NAMESPACES), f"up-{rng.randrange(UPSTREAM_PER_NAMESPACE):03d}"


def _condition(kind: str, **props: Any) -> dict[str, Any]:
    return {"type": COND + kind, **props}


def _on_flow(rng: random.Random) -> dict[str, Any]:
    namespace, flow_id = _upstream(rng)
    return {"conditions": [_condition("ExecutionFlow", namespace=namespace, flowId=flow_id)]}


def _preconditions(rng: random.Random) -> dict[str, Any]:
    flows = [dict(zip(("namespace", "flowId"), _upstream(rng), strict=True)) for _ in range(2)]
    return {"preconditions": {"id": "both", "flows": flows}}


def _multiple(rng: random.Random) -> dict[str, Any]:
    inner = {
        f"c{n}": _condition("ExecutionFlow", namespace=ns, flowId=flow_id)
        for n, (ns, flow_id) in enumerate(_upstream(rng) for _ in range(2))
    }
    return {"conditions": [_condition("MultipleCondition", id="multi", conditions=inner)]}


def _namespace(rng: random.Random) -> dict[str, Any]:
    """An alert on the failures of one namespace."""
    namespace = rng.choice(NAMESPACES)
    return {
        "states": ["FAILED"],
        "conditions": [_condition("ExecutionNamespace", namespace=namespace)],
    }


def _prefix(rng: random.Random) -> dict[str, Any]:
    """An alert on the failures of a namespace and those below it."""
    prefix = rng.choice(NAMESPACES)
    return {
        "states": ["FAILED"],
        "conditions": [_condition("ExecutionNamespace", namespace=prefix, comparison="PREFIX")],
    }


def _label(rng: random.Random) -> dict[str, Any]:
    """An alert on the failures of one team's executions, wherever they run."""
    key, value = rng.choice(LABELS)
    return {
        "states": ["FAILED"],
        "conditions": [_condition("ExecutionLabels", labels={key: value})],
    }


def _anywhere(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        return {"states": ["FAILED"]}
    return {"conditions": [_condition("ExecutionStatus", **{"in": ["FAILED", "WARNING"]})]}


#: (share in percent, trigger properties) of the indexable part of the mix.
MIX: tuple[tuple[int, Callable[[random.Random], dict[str, Any]]], ...] = (
    (60, _on_flow),
    (10, _preconditions),
    (10, _namespace),
    (5, _prefix),
    (10, _label),
    (5, _multiple),
)


def deploy(count: int, unindexed: float, seed: int) -> list[Flow]:
    """``count`` flows ``w9-000000``..., each with one Flow trigger of the mix."""
    rng = random.Random(seed)
    template = parse_flow(TEMPLATE)
    makers = [maker for share, maker in MIX for _ in range(share)]
    flows = []
    for n in range(count):
        maker = _anywhere if rng.random() < unindexed else rng.choice(makers)
        trigger = FlowTrigger.model_validate({"id": "on-end", "type": FLOW_TRIGGER, **maker(rng)})
        namespace = rng.choice(NAMESPACES)
        flows.append(
            template.model_copy(
                update={"id": f"w9-{n:06d}", "namespace": namespace, "triggers": [trigger]}
            )
        )
    return flows


def ended_executions(count: int, seed: int) -> list[EndedExecution]:
    rng = random.Random(seed + 1)
    executions = []
    for n in range(count):
        namespace, flow_id = _upstream(rng)
        key, value = rng.choice(LABELS)
        executions.append(
            EndedExecution(
                execution_id=f"exec-{n:06d}",
                namespace=namespace,
                flow_id=flow_id,
                state=rng.choice(STATES),
                labels={key: value},
                end_date=START + timedelta(seconds=n),
            )
        )
    return executions


def _decided(result: FlowTriggerResult) -> tuple[Any, ...]:
    return (
        [event.execution_id for event in result.events],
        [window.to_dict() for window in result.windows],
        result.removed_windows,
    )


def _time(
    book: FlowTriggerBook, executions: Sequence[EndedExecution]
) -> tuple[list[float], list[tuple[Any, ...]]]:
    gc.collect()
    micros, decided = [], []
    for ended in executions:
        t0 = time.perf_counter_ns()
        result = book.on_execution_end(ended)
        micros.append((time.perf_counter_ns() - t0) / 1e3)
        decided.append(_decided(result))
    return micros, decided


def run_w9(
    triggers: int = 10_000, executions: int = 500, unindexed: float = 0.01, seed: int = 9
) -> dict[str, Any]:
    """Run W9 and return its JSON row."""
    began = time.perf_counter()
    flows = deploy(triggers, unindexed, seed)
    scanning, indexed = FlowTriggerBook(indexed=False), FlowTriggerBook()
    for flow in flows:
        scanning.sync_flow(flow)
        indexed.sync_flow(flow)
    setup_s = time.perf_counter() - began
    ended = ended_executions(executions, seed)
    scan_us, scan_decided = _time(scanning, ended)
    indexed_us, indexed_decided = _time(indexed, ended)
    return {
        "workload": "W9",
        "triggers": len(indexed),
        "executions": executions,
        "unindexed": indexed.unindexed,
        "scan_us_p50": round(percentile(sorted(scan_us), 50), 1),
        "scan_us_p99": round(percentile(sorted(scan_us), 99), 1),
        "indexed_us_p50": round(percentile(sorted(indexed_us), 50), 1),
        "indexed_us_p99": round(percentile(sorted(indexed_us), 99), 1),
        "speedup": round(sum(scan_us) / max(sum(indexed_us), 1e-9), 1),
        "fired": sum(len(events) for events, _, _ in indexed_decided),
        "same": scan_decided == indexed_decided,
        "setup_s": round(setup_s, 2),
        "commit": git_commit(),
    }


def print_table(row: dict[str, Any]) -> None:
    """The readable report, on stderr."""
    out = sys.stderr
    print(
        f"W9 Flow triggers: cost per ended execution, {row['triggers']} triggers "
        f"({row['unindexed']} checked every time), {row['executions']} executions",
        file=out,
    )
    print(
        f"  full scan p50/p99   {row['scan_us_p50']:>10.1f} / {row['scan_us_p99']:.1f} us",
        file=out,
    )
    print(
        f"  indexed p50/p99     {row['indexed_us_p50']:>10.1f} / {row['indexed_us_p99']:.1f} us"
        f"   ({row['speedup']}x)",
        file=out,
    )
    print(f"  fired / same        {row['fired']:>10} / {row['same']}", file=out)
    print(f"  setup               {row['setup_s']:>10} s   commit {row['commit']}", file=out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench W9", description=__doc__.split("\n")[0])
    parser.add_argument("--triggers", type=int, default=10_000, help="Flow triggers deployed")
    parser.add_argument("--executions", type=int, default=500, help="ended executions fed")
    parser.add_argument(
        "--unindexed", type=float, default=0.01, help="share of triggers naming no flow"
    )
    parser.add_argument("--seed", type=int, default=9, help="random seed of the mix")
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    row = run_w9(args.triggers, args.executions, args.unindexed, args.seed)
    print_table(row)
    if args.json:
        print(json.dumps(row), flush=True)
    return 0 if row["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
