"""``python -m bench``: kestream's benchmarks W1-W4 (../shared/BENCHMARKS.md) and W7-W8, open loop.

    python -m bench W1 --rate 6000 --duration 60
    python -m bench W1 --rates 1000,2000,4000,6000,12000 --json
    python -m bench W2 --rate 6000 --no-inline
    python -m bench W3                      # 5 x ForEach 160, then ForEach 10 000
    python -m bench W4 --rate 600 --profile
    python -m bench W1 --rate 6000 --kafka  # a fresh Apache Kafka instead of Tansu
    python -m bench W1 --rate 6000 --via webhook  # enter through the API's webhook route
    python -m bench W5 --triggers 100000    # the scheduler's loop (bench/w5.py)
    python -m bench W6 --executions 1000000 # the execution index (bench/w6.py)
    python -m bench W9 --triggers 10000     # Flow triggers, per ended execution (bench/w9_*.py)
    python -m bench FEED --executions 20000 # the index feed's apply rate (bench/feed.py)
    python -m bench W7 --rate 600           # a shell Commands task (config/bench/w7.yaml)
    python -m bench W7 --rates 600,1200,2400,4800  # where it stops keeping up
    python -m bench W8 --rate 6000          # a function-form Python task (bench/w8_tasks.py)
    python -m bench W8 --rate 6000 --isolation process,thread  # a worker process's cost per task
    python -m bench W1 --rate 6000 --no-inline --count-requests  # requests, rings per execution
    python -m bench W1 --ceiling --duration 30  # raise the rate until it stops keeping up
    python -m bench W1 --ceiling --bisect 2       # ... then narrow it down with two more runs
    python -m bench idle [--kafka]          # an idle `kestream standalone`, per process (idle.py)
    python -m bench startup                 # `kestream standalone` to /health/ready (startup.py)
    python -m bench ui                      # an execution page of 10 000 task runs (ui_page.py)
    python -m bench ui-index                # the executions page's queries at 1 M (ui_index.py)
    python -m bench plot                    # RESULTS.md's data as PNGs in bench/plots (plot.py)

Every rate runs on a fresh broker with kestream's roles as separate processes
(``KESTREAM_EXECUTOR_STREAM_THREADS`` executors, 0 = one per core, and a worker). The readable
table goes to stderr; ``--json`` prints one JSON line per rate on stdout and nothing else.
Figures are printed, never asserted: the exit code says only whether every run completed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import harness, report, workloads

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"

#: ``--ceiling``'s rates (per minute), tried in turn until one is not kept up.
CEILING_RATES = (12_000.0, 24_000.0, 36_000.0, 48_000.0, 60_000.0, 72_000.0)


def _rates(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "workloads",
        nargs="+",
        help="W1-W4, W7 or W8 (several in turn); or, first and alone, one of W5, W6, idle, "
        "startup and plot, each with options of its own (python -m bench idle --help)",
    )
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="executions per minute")
    rate.add_argument("--rates", type=_rates, help="a sweep, e.g. 1000,2000,4000,6000,12000")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="raise the rate (--rates, default "
        + ",".join(f"{r:g}" for r in CEILING_RATES)
        + ") until a run no longer keeps up, then stop; inline tasks on unless --no-inline",
    )
    parser.add_argument(
        "--bisect",
        type=int,
        default=0,
        metavar="N",
        help="--ceiling: then N more runs, each halfway between the highest rate kept up and "
        "the lowest not (to the nearest 1000/min)",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of offering per rate")
    parser.add_argument("--json", action="store_true", help="only JSON lines on stdout")
    parser.add_argument(
        "--inline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="KESTREAM_EXECUTOR_INLINE_TASKS for the roles (default: the environment's, true)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--kafka", action="store_true", help="fresh Apache Kafka from Maven jars")
    where.add_argument("--broker", metavar="HOST:PORT", help="use this running Kafka")
    parser.add_argument("--stream-threads", type=int, default=0, help="executors; 0 = cores")
    parser.add_argument("--profile", action="store_true", help="run the roles under cProfile")
    parser.add_argument(
        "--via",
        choices=("client", "webhook"),
        default="client",
        help="submit through kestream's Python API (default) or the API role's webhook route",
    )
    parser.add_argument(
        "--isolation",
        type=_names,
        help="W8: where its Python task runs, process (the default) and/or thread, e.g. "
        "process,thread (each in turn, then the process's cost per task over the thread)",
    )
    parser.add_argument(
        "--layout",
        choices=("separate", "shared"),
        default="separate",
        help="one process per role (default), or the first executor, the worker and the API "
        "in one process as standalone runs them (jobs and results handed over in process)",
    )
    parser.add_argument(
        "--count-requests",
        action="store_true",
        help="count each process's broker requests and doorbell rings per execution in the "
        "steady window (perf stat on the sendto tracepoint; bench/requests.py)",
    )
    parser.add_argument("--drain", type=float, default=20.0, help="extra seconds for a backlog")
    parser.add_argument("--w3-runs", type=int, default=5, help="ForEach 160 executions")
    parser.add_argument("--w3-big-runs", type=int, default=1, help="ForEach 10 000 executions")
    parser.add_argument("--w3-timeout", type=float, help="seconds per W3 execution")
    parser.add_argument("--floor", type=Path, help="floor_bench.py's results.jsonl, for ratios")
    parser.add_argument("--write-results", action="store_true", help="merge into bench/RESULTS.md")
    parser.add_argument(
        "--plot", action="store_true", help="then draw RESULTS.md's data into bench/plots/*.png"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help="logs and profiles (default: a /tmp dir)")
    return parser.parse_args(argv)


def _options(args: argparse.Namespace) -> harness.RunOptions:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    broker = "external" if args.broker else "kafka" if args.kafka else "embedded"
    # The ceiling is the "highest rate kept up (inline on)": on unless said otherwise.
    inline = True if args.ceiling and args.inline is None else args.inline
    return harness.RunOptions(
        duration_s=args.duration,
        drain_s=args.drain,
        w3_runs=args.w3_runs,
        w3_big_runs=args.w3_big_runs,
        w3_timeout_s=args.w3_timeout,
        broker=broker,
        bootstrap=args.broker,
        stream_threads=args.stream_threads,
        inline=inline,
        profile=args.profile,
        via=args.via,
        layout=args.layout,
        count_requests=args.count_requests,
        run_root=args.run_dir or Path("/tmp/kestream-bench") / stamp,
    )


def _plan(args: argparse.Namespace) -> list[tuple[workloads.Workload, float | None]]:
    """(workload, rate) pairs in order; W3 has no rate and adds its 10 000 variant."""
    plan: list[tuple[workloads.Workload, float | None]] = []
    for name in args.workloads:
        workload = workloads.get(name)
        if workload.sequential:
            if args.w3_runs > 0:
                plan.append((workload, None))
            if args.w3_big_runs > 0:
                plan.append((workloads.W3_BIG, None))
            continue
        default = CEILING_RATES if args.ceiling else workload.default_rates
        rates = [args.rate] if args.rate else args.rates or list(default)
        variants = [workloads.with_isolation(workload, i) for i in args.isolation or ()]
        plan += [(variant, rate) for variant in variants or [workload] for rate in rates]
    return plan


async def _run_one(
    workload: workloads.Workload, rate: float | None, options: harness.RunOptions
) -> report.Row:
    if rate is None:
        runs = options.w3_big_runs if workload is workloads.W3_BIG else options.w3_runs
        return await harness.run_series(workload, options, runs)
    return await harness.run_rate(workload, rate, options)


def _emit(row: report.Row, as_json: bool, floor: list[dict[str, Any]]) -> None:
    if as_json:
        print(json.dumps(row.to_json()), flush=True)
    report.print_row(row, floor)


def run(args: argparse.Namespace) -> tuple[list[report.Row], int]:
    """Every planned run, one after another; a failed run is reported and the next one goes on."""
    options = _options(args)
    floor = report.load_floor(args.floor)
    rows: list[report.Row] = []
    failures = 0
    print(f"logs and profiles: {options.run_root}", file=sys.stderr)
    #: --ceiling: per workload (flow file), whether each rate tried was kept up; a failed run
    #: was not. A workload's higher rates go once one was not.
    outcomes: dict[str, dict[float, bool]] = {}
    ceilings: dict[str, workloads.Workload] = {}

    def attempt(workload: workloads.Workload, rate: float | None) -> None:
        nonlocal failures
        label = f"{workload.name} {'' if rate is None else f'{rate:g}/min'}".strip()
        print(f"\n== {label} ({workload.flow_file})", file=sys.stderr, flush=True)
        try:
            row = asyncio.run(_run_one(workload, rate, options))
        except Exception as exc:
            failures += 1
            print(f"!! {label} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            row = None
        if row is not None:
            rows.append(row)
            _emit(row, args.json, floor)
        if args.ceiling and rate is not None:
            ceilings[workload.flow_file] = workload
            kept = row is not None and bool(row.kept_up)
            outcomes.setdefault(workload.flow_file, {})[rate] = kept

    for workload, rate in _plan(args):
        if not all(outcomes.get(workload.flow_file, {}).values()):
            continue  # --ceiling: a lower rate was not kept up
        attempt(workload, rate)
    for flow_file, workload in ceilings.items():
        for _ in range(args.bisect):
            middle = bisect_rate(outcomes[flow_file])
            if middle is None:
                break
            attempt(workload, middle)
    _summary(rows, floor, ceiling=args.ceiling)
    return rows, failures


#: ``--bisect`` tries rates on this grid (per minute): finer would be below the noise.
BISECT_GRID = 1000.0


def bisect_rate(outcomes: dict[float, bool]) -> float | None:
    """The next rate to try between the highest kept up and the lowest not (on the grid), or
    None when there is no such gap left (or no bound on either side)."""
    kept = [rate for rate, ok in outcomes.items() if ok]
    lost = [rate for rate, ok in outcomes.items() if not ok]
    if not kept or not lost:
        return None
    low, high = max(kept), min(lost)
    middle = round((low + high) / 2 / BISECT_GRID) * BISECT_GRID
    return middle if low < middle < high else None


def _summary(rows: list[report.Row], floor: list[dict[str, Any]], ceiling: bool = False) -> None:
    if len(rows) > 1:
        print("\n== all runs\n" + report.markdown_table(rows), file=sys.stderr)
    for line in report.per_iteration_lines(rows):
        print(f"W3 {line}", file=sys.stderr)
    for line in report.ceiling_lines(rows) + report.isolation_lines(rows):
        print(line, file=sys.stderr)
    if ceiling:
        for line in report.ceiling_summary(rows):
            print(line, file=sys.stderr)
    sys.stderr.flush()


#: Workloads with a harness of their own (no stack of role processes): W5 the scheduler's
#: evaluation loop, W6 the execution index; ``kestream standalone`` idle and start-up; the plots.
DEDICATED = {
    "W5": "bench.w5",
    "W6": "bench.w6",
    "W9": "bench.w9_flow_triggers",
    "FEED": "bench.feed",
    "IDLE": "bench.idle",
    "STARTUP": "bench.startup",
    "UI": "bench.ui_page",
    "UI-INDEX": "bench.ui_index",
    "PLOT": "bench.plot",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].upper() in DEDICATED:
        module = importlib.import_module(DEDICATED[argv[0].upper()])
        return int(module.main(argv[1:]))
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        plan_ok = bool(_plan(args))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    rows, failures = run(args) if plan_ok else ([], 0)
    if args.write_results and rows:
        command = "python -m bench " + shlex.join(argv)
        date = time.strftime("%Y-%m-%d %H:%M")
        report.write_results(args.results, rows, report.load_floor(args.floor), command, date)
        print(f"wrote {args.results}", file=sys.stderr)
    if args.plot:
        from bench import plot

        plot.draw_and_link(args.results)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
