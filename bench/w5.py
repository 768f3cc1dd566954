"""W5: the scheduler's evaluation loop (../shared/BENCHMARKS.md), broker-free.

    python -m bench.w5 --triggers 100000 [--json] [--minutes 30] [--baseline 1000]

100 000 Schedule triggers (60 % hourly at a random minute, 30 % daily at a random time, 10 %
every five minutes at a random offset; all UTC, seeded) are deployed as Flow models into a
:class:`~kestream.scheduler.ScheduleBook` driven by a simulated clock, which then ticks every
second of simulated time for ``--minutes`` minutes. Measured:

- ``tick_idle_ms_p50`` / ``_p99``: ticks where nothing is due (every second that is not a minute
  boundary). The same run with ``--baseline`` triggers shows the cost does not grow with the
  count (``baseline_idle_ms_p50`` / ``_p99``);
- ``boundary_emit_ms``: at the busiest minute boundary (about 3 000 due), from the tick's start
  until every :class:`~kestream.scheduler.Fire` (execution event and trigger record) is built;
- ``missed`` and ``doubled``: every slot each trigger should have fired, computed independently
  with croniter, against what the ticks fired (``unexpected`` counts fires no cron asked for).

The flows share one validated task list and one validated trigger per distinct cron (a trigger's
id is only unique within its flow), so building 100 000 flows takes seconds and little memory;
each is still a Flow model with its own id, as the scheduler sees them from the flows topic.
Figures are printed, never asserted; the machine is shared, so they are indicative.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter

from kestream.models.clock import ManualClock
from kestream.models.flow import Flow, ScheduleTrigger, parse_flow
from kestream.scheduler import Fire, ScheduleBook, trigger_key

NAMESPACE = "bench.w5"
#: A Monday; the simulation starts one second before this minute boundary.
START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
TEMPLATE = f"""
id: template
namespace: {NAMESPACE}
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ trigger.date }}}}"
"""


@dataclass(frozen=True, slots=True)
class Deployed:
    """The flows of one run and, per trigger key, its cron (for the independent check)."""

    flows: list[Flow]
    crons: dict[str, str]


def workload_crons(count: int, seed: int) -> list[str]:
    """BENCHMARKS.md's mix: 60 % hourly, 30 % daily, 10 % every five minutes, random offsets."""
    rng = random.Random(seed)
    crons = []
    for n in range(count):
        share = n % 10
        if share < 6:
            crons.append(f"{rng.randrange(60)} * * * *")
        elif share < 9:
            crons.append(f"{rng.randrange(60)} {rng.randrange(24)} * * *")
        else:
            crons.append(f"{rng.randrange(5)}-59/5 * * * *")
    rng.shuffle(crons)
    return crons


def deploy(count: int, seed: int) -> Deployed:
    """One Flow per trigger, ids ``w5-000000``..., each with its Schedule trigger."""
    template = parse_flow(TEMPLATE)
    triggers: dict[str, ScheduleTrigger] = {}
    flows: list[Flow] = []
    crons: dict[str, str] = {}
    for n, cron in enumerate(workload_crons(count, seed)):
        trigger = triggers.get(cron)
        if trigger is None:
            trigger = triggers[cron] = ScheduleTrigger.model_validate(
                {"id": "schedule", "type": ScheduleTrigger.type_names[0], "cron": cron}
            )
        flow_id = f"w5-{n:06d}"
        flows.append(template.model_copy(update={"id": flow_id, "triggers": [trigger]}))
        crons[trigger_key(NAMESPACE, flow_id, "schedule")] = cron
    return Deployed(flows, crons)


def expected_slots(crons: dict[str, str], after: datetime, until: datetime) -> set[tuple[str, Any]]:
    """Every (trigger key, slot) in ``(after, until]``, straight from croniter."""
    by_cron: dict[str, list[datetime]] = {}
    for cron in set(crons.values()):
        it = croniter(cron, after)
        slots = []
        while (slot := it.get_next(datetime)) <= until:
            slots.append(slot)
        by_cron[cron] = slots
    return {(key, slot) for key, cron in crons.items() for slot in by_cron[cron]}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(slots=True)
class RunFigures:
    triggers: int
    setup_s: float
    idle_ms: list[float]
    boundary_ms: float
    boundary_due: int
    boundaries: int
    missed: int
    doubled: int
    unexpected: int


def simulate(count: int, minutes: int, seed: int) -> RunFigures:
    """Deploy ``count`` triggers, tick every simulated second, and check every slot."""
    began = time.perf_counter()
    deployed = deploy(count, seed)
    clock = ManualClock(START - timedelta(seconds=1))
    book = ScheduleBook(clock)
    for flow in deployed.flows:
        book.sync_flow(flow)
    setup_s = time.perf_counter() - began
    gc.collect()

    start = clock.now
    idle_ms: list[float] = []
    boundary_ms, boundary_due, boundaries = 0.0, 0, 0
    fired: Counter[tuple[str, datetime]] = Counter()
    fires: list[Fire] = []
    for _ in range(minutes * 60):
        clock.advance(timedelta(seconds=1))
        now = clock.now
        # Drop the previous tick's fires before the clock starts: freeing 3 000 of them is the
        # runtime's cost after it emits them, not the next tick's (it showed as a 1.5 ms tick).
        del fires
        t0 = time.perf_counter_ns()
        fires = book.tick(now)
        elapsed_ms = (time.perf_counter_ns() - t0) / 1e6
        if not fires:
            idle_ms.append(elapsed_ms)
            continue
        boundaries += 1
        if len(fires) > boundary_due or (len(fires) == boundary_due and elapsed_ms > boundary_ms):
            boundary_ms, boundary_due = elapsed_ms, len(fires)
        fired.update((fire.key, fire.slot) for fire in fires)

    expected = expected_slots(deployed.crons, start, clock.now)
    missed = sum(1 for slot in expected if slot not in fired)
    doubled = sum(n - 1 for n in fired.values() if n > 1)
    unexpected = sum(1 for slot in fired if slot not in expected)
    return RunFigures(
        count, setup_s, idle_ms, boundary_ms, boundary_due, boundaries, missed, doubled, unexpected
    )


def commit() -> str:
    from bench.report import git_commit

    return git_commit()


def run_w5(
    triggers: int = 100_000, minutes: int = 30, baseline: int = 1000, seed: int = 5
) -> dict[str, Any]:
    """Run W5 and return its JSON row (BENCHMARKS.md's fields, plus the baseline and details)."""
    main = simulate(triggers, minutes, seed)
    small = simulate(baseline, minutes, seed) if baseline else None
    row: dict[str, Any] = {
        "workload": "W5",
        "triggers": main.triggers,
        "tick_idle_ms_p50": round(percentile(main.idle_ms, 50), 4),
        "tick_idle_ms_p99": round(percentile(main.idle_ms, 99), 4),
        "boundary_emit_ms": round(main.boundary_ms, 2),
        "missed": main.missed,
        "doubled": main.doubled,
        "simulated_minutes": minutes,
        "commit": commit(),
        "boundary_due": main.boundary_due,
        "unexpected": main.unexpected,
        "setup_s": round(main.setup_s, 2),
    }
    if small is not None:
        row |= {
            "baseline_triggers": small.triggers,
            "baseline_idle_ms_p50": round(percentile(small.idle_ms, 50), 4),
            "baseline_idle_ms_p99": round(percentile(small.idle_ms, 99), 4),
            "baseline_missed": small.missed,
            "baseline_doubled": small.doubled,
        }
    return row


def print_table(row: dict[str, Any]) -> None:
    """The readable report, on stderr."""
    out = sys.stderr
    target = "target: idle tick <= 5 ms, boundary <= 1000 ms, 0 missed, 0 doubled"
    print(f"W5 scheduler loop, {row['simulated_minutes']} simulated minutes ({target})", file=out)
    print(f"  triggers            {row['triggers']:>10}   (setup {row['setup_s']} s)", file=out)
    print(
        f"  idle tick p50/p99   {row['tick_idle_ms_p50']:>10.4f}"
        f" / {row['tick_idle_ms_p99']:.4f} ms",
        file=out,
    )
    if "baseline_triggers" in row:
        print(
            f"  idle tick, {row['baseline_triggers']} triggers"
            f"  {row['baseline_idle_ms_p50']:.4f} / {row['baseline_idle_ms_p99']:.4f} ms",
            file=out,
        )
    print(
        f"  busiest boundary    {row['boundary_emit_ms']:>10.2f} ms"
        f" for {row['boundary_due']} fires",
        file=out,
    )
    print(
        f"  missed / doubled    {row['missed']:>10} / {row['doubled']}"
        f"   (unexpected {row['unexpected']})",
        file=out,
    )
    print(f"  commit              {row['commit']}", file=out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.w5", description=__doc__.split("\n")[0])
    parser.add_argument("--triggers", type=int, default=100_000, help="Schedule triggers")
    parser.add_argument("--minutes", type=int, default=30, help="simulated minutes")
    parser.add_argument(
        "--baseline", type=int, default=1000, help="triggers of the comparison run (0: none)"
    )
    parser.add_argument("--seed", type=int, default=5, help="random seed of the cron mix")
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    row = run_w5(args.triggers, args.minutes, args.baseline, args.seed)
    print_table(row)
    if args.json:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
