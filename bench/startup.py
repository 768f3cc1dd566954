"""``python -m bench startup``: from launching ``kestream standalone`` to ``/health/ready`` 200.

    python -m bench startup                 # 5 launches on a fresh data dir, 5 restarts
    python -m bench startup --runs 3 --restarts 3 --write-results
    python -m bench startup --kafka         # the roles on Apache Kafka (started once, here)

Two figures, each the median of its launches: a first start (an empty ``KESTREAM_DATA_DIR``
every time: topics created, groups joined from nothing) and a restart (the data dir of a
stopped installation: on the embedded broker, its state written back before the roles start).
With ``--kafka`` one fresh Apache Kafka serves every launch; each first start gets a topic
prefix of its own (a fresh installation on that cluster), and the restarts reuse the last one's.
The phases the log shows on the way (broker up, roles spawned, each role started) are timed
when their lines appear, and reported as medians; a phase the roles do not log is left out.
Each launch is stopped (Ctrl-C to its whole tree) before the next one starts.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import report, standalone, system_rows
from bench.idle import fresh_kafka

_READY_TIMEOUT_S = 120.0
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench startup", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5, help="launches on a fresh data dir")
    parser.add_argument("--restarts", type=int, default=5, help="launches on an existing one")
    parser.add_argument("--kafka", action="store_true", help="the roles on a fresh Apache Kafka")
    parser.add_argument("--json", action="store_true", help="only JSON lines on stdout")
    parser.add_argument("--write-results", action="store_true", help="merge into bench/RESULTS.md")
    parser.add_argument("--plot", action="store_true", help="then draw RESULTS.md's data as PNGs")
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help="logs and data dirs (default: a /tmp dir)")
    return parser.parse_args(argv)


@dataclass(frozen=True, slots=True)
class Launch:
    """One launch: seconds to ready, the phases' moments, each role process's breakdown."""

    seconds: float
    phases: dict[str, float]
    processes: dict[str, dict[str, float]]


def launch_once(
    data_dir: Path, log_path: Path, kafka: str | None = None, prefix: str | None = None
) -> Launch:
    """One launch, stopped afterwards."""
    with standalone.running(data_dir, log_path, kafka, prefix) as launched:
        seconds = standalone.wait_ready(launched, _READY_TIMEOUT_S)
        standalone.await_process_lines(launched, seconds)
        return Launch(seconds, dict(launched.phases), dict(launched.processes))


def series(
    run_dir: Path, runs: int, restarts: int, kafka: str | None = None
) -> tuple[system_rows.StartupRow | None, system_rows.StartupRow | None]:
    """``runs`` first starts, each on an empty data dir, then ``restarts`` on the last one's
    (on Kafka, ``kafka``'s address: with a topic prefix per first start)."""
    commit = report.git_commit()
    fresh: list[Launch] = []
    data_dir, prefix = run_dir / "data-0", None
    for index in range(max(runs, 1 if restarts else 0)):
        data_dir = run_dir / f"data-{index}"
        prefix = f"start{index}." if kafka is not None else None
        shutil.rmtree(data_dir, ignore_errors=True)
        fresh.append(launch_once(data_dir, run_dir / f"fresh-{index}.log", kafka, prefix))
        print(f"fresh start {index + 1}: {fresh[-1].seconds:.2f} s", file=sys.stderr, flush=True)
    again = []
    for index in range(restarts):
        again.append(launch_once(data_dir, run_dir / f"restart-{index}.log", kafka, prefix))
        print(f"restart {index + 1}: {again[-1].seconds:.2f} s", file=sys.stderr, flush=True)
    broker = "embedded" if kafka is None else "kafka"
    return _row(broker, "fresh", fresh[:runs], commit), _row(broker, "existing", again, commit)


def _row(
    broker: str, data: str, launches: list[Launch], commit: str
) -> system_rows.StartupRow | None:
    if not launches:
        return None
    return system_rows.StartupRow(
        broker=broker,
        data=data,
        seconds=[launch.seconds for launch in launches],
        commit=commit,
        phases=system_rows.median_phases([launch.phases for launch in launches]),
        processes=system_rows.median_processes([launch.processes for launch in launches]),
    )


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="kestream-bench-startup-"))
    print(f"logs: {run_dir}", file=sys.stderr, flush=True)
    if args.kafka:
        with fresh_kafka(run_dir / "kafka") as kafka:
            found = series(run_dir, args.runs, args.restarts, kafka.bootstrap)
    else:
        found = series(run_dir, args.runs, args.restarts)
    rows = [row for row in found if row is not None]
    for row in rows:
        if args.json:
            print(json.dumps(row.to_json()), flush=True)
        print("\n".join(system_rows.print_startup(row)), file=sys.stderr, flush=True)
    if args.write_results and rows:
        command = "python -m bench startup " + shlex.join(argv)
        date = time.strftime("%Y-%m-%d %H:%M")
        report.write_results(args.results, [], [], command, date, startup=rows)
        print(f"wrote {args.results}", file=sys.stderr)
    if args.plot:
        from bench import plot

        plot.draw_and_link(args.results)
    return 0
