"""The steady window's CPU per execution (bench/steady.py): only what the processes spent while
the rate was offered, divided by what ended meanwhile; the whole-run figure is kept beside it."""

from __future__ import annotations

import asyncio
import time

from bench import report, steady, workloads
from bench.harness import Sample
from bench.stack import Usage


def _readings() -> tuple[steady.CpuReading, steady.CpuReading]:
    first = steady.CpuReading(100.0, {"executor": 10.0, "worker": 4.0, "broker": 20.0})
    last = steady.CpuReading(110.0, {"executor": 10.5, "worker": 4.2, "broker": 20.3})
    return first, last


def test_only_executions_ended_between_the_readings_count() -> None:
    first, last = _readings()
    ends = [99.9, 100.0, 105.0, 109.99, 110.0, None]  # three inside [100, 110)
    cost = steady.steady_cost(first, last, ends)
    assert cost is not None
    assert cost.ended == 3 and cost.window_s == 10.0
    assert cost.ms == {"executor": 166.667, "worker": 66.667, "broker": 100.0}
    assert cost.total_ms == 333.334


def test_no_execution_ended_in_the_window_gives_no_figure() -> None:
    first, last = _readings()
    assert steady.steady_cost(first, last, [50.0, None, 120.0]) is None


def test_the_readings_are_taken_during_the_offer() -> None:
    seen: list[float] = []

    def read() -> dict[str, float]:
        seen.append(time.time())
        return {"executor": float(len(seen))}

    start = time.time()
    first, last = asyncio.run(steady.read_during(read, start, 0.2))
    assert first.at >= start + steady.FIRST_AT * 0.2
    assert last.at >= start + steady.LAST_AT * 0.2 and last.cpu_s == {"executor": 2.0}


def test_a_row_shows_the_steady_figure_beside_the_whole_run_one() -> None:
    samples = [Sample(due=0.0, sent=0.0, end=0.01, seen=0.01, state="SUCCESS") for _ in range(10)]
    usage = Usage(cpu_s={"executor": 1.0, "loadgen": 3.0}, broker_cpu_s=1.0)
    row = report.rate_row(workloads.get("W1"), 6000, 1.0, True, samples, 5.0, usage)
    assert "steady_cpu_ms_per_execution" not in row.to_json()
    first, last = _readings()
    report.add_steady_cost(row, steady.steady_cost(first, last, [101.0, 102.0]))
    line = report.cpu_line(row)
    assert line is not None
    assert (
        "steady (10.0 s, 2 ended): executor 250.00 ms, worker 100.00 ms, broker 150.00 ms" in line
    )
    assert "all 500.00 ms; whole run" in line and "executor 100.00 ms, broker 100.00 ms" in line
    assert row.to_json()["steady_cpu_ms_per_execution"] == 500.0
