"""``python -m bench idle``: what an idle ``kestream standalone`` costs, per process.

    python -m bench idle                    # embedded broker, 30 s sampled after 10 s settling
    python -m bench idle --kafka            # the roles on a fresh Apache Kafka (its JVM apart)
    python -m bench idle --seconds 60 --write-results --plot

The command starts on a fresh ``KESTREAM_DATA_DIR``, waits for ``/health/ready`` 200, lets the
installation settle (group joins end, first polls pass), then samples the CPU (user + system,
from ``/proc``) of every process of its tree over the window: the supervisor, each role and,
on the embedded broker, Tansu. With ``--kafka`` the broker is a fresh Apache Kafka started here
(bench/stack.py's, as the latency rows use), outside the command's tree: its JVM is reported as
the broker, apart from kestream's processes. CPU is in % of one core; RSS is the resident set at
the end of the window (``VmRSS``), the memory the installation holds while idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench import report, standalone, system_rows
from bench.stack import until_kafka_answers_as_kafka
from kestream.runtime.apache_kafka import ApacheKafka
from kestream.settings import Settings

_READY_TIMEOUT_S = 120.0
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench idle", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="sampling window")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after ready, unsampled")
    parser.add_argument("--kafka", action="store_true", help="the roles on a fresh Apache Kafka")
    parser.add_argument("--json", action="store_true", help="only a JSON line on stdout")
    parser.add_argument("--write-results", action="store_true", help="merge into bench/RESULTS.md")
    parser.add_argument("--plot", action="store_true", help="then draw RESULTS.md's data as PNGs")
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help="logs (default: a /tmp dir)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def fresh_kafka(work_dir: Path) -> Iterator[ApacheKafka]:
    """A fresh Apache Kafka for the run, answering as Kafka (not just listening) when yielded."""
    kafka = ApacheKafka(work_dir=work_dir)
    asyncio.run(kafka.astart())
    try:
        asyncio.run(until_kafka_answers_as_kafka(Settings(broker=kafka.bootstrap)))
        yield kafka
    finally:
        asyncio.run(kafka.astop())


def measure(
    run_dir: Path, seconds: float, settle_s: float, kafka: ApacheKafka | None
) -> system_rows.IdleRow:
    """One idle window of a standalone started on a fresh data dir under ``run_dir``."""
    bootstrap = kafka.bootstrap if kafka is not None else None
    with standalone.running(run_dir / "data", run_dir / "standalone.log", bootstrap) as launched:
        standalone.wait_ready(launched, _READY_TIMEOUT_S)
        time.sleep(settle_s)
        processes = standalone.name_processes(standalone.descendants(launched.process.pid))
        if kafka is not None and kafka.pid is not None:
            processes[kafka.pid] = system_rows.BROKER
        samples = standalone.sample(processes, seconds)
    figures = [system_rows.ProcessFigures(s.name, s.cpu_pct, s.rss_mb) for s in samples]
    return system_rows.IdleRow(
        broker="kafka" if kafka is not None else "embedded",
        seconds=seconds,
        settle_s=settle_s,
        processes=figures,
        commit=report.git_commit(),
    )


def run(args: argparse.Namespace) -> system_rows.IdleRow:
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="kestream-bench-idle-"))
    print(f"logs: {run_dir}", file=sys.stderr, flush=True)
    if not args.kafka:
        return measure(run_dir, args.seconds, args.settle, None)
    with fresh_kafka(run_dir / "kafka") as kafka:
        return measure(run_dir, args.seconds, args.settle, kafka)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    row = run(args)
    if args.json:
        print(json.dumps(row.to_json()), flush=True)
    print("\n".join(system_rows.print_idle(row)), file=sys.stderr, flush=True)
    if args.write_results:
        command = "python -m bench idle " + shlex.join(argv)
        date = time.strftime("%Y-%m-%d %H:%M")
        report.write_results(args.results, [], [], command, date, idle=[row])
        print(f"wrote {args.results}", file=sys.stderr)
    if args.plot:
        from bench import plot

        plot.draw_and_link(args.results)
    return 0
