"""W5 at a small size: the benchmark runs, fires every slot once, and prints its JSON row.

Timings are printed by the benchmark, never asserted here.
"""

from __future__ import annotations

import json

import pytest

from bench import w5

FIELDS = {
    "workload",
    "triggers",
    "tick_idle_ms_p50",
    "tick_idle_ms_p99",
    "boundary_emit_ms",
    "missed",
    "doubled",
    "simulated_minutes",
    "commit",
}


def test_the_workload_mix_follows_benchmarks_md() -> None:
    crons = w5.workload_crons(1000, seed=1)
    hourly = sum(1 for c in crons if c.split()[1] == "*" and "/" not in c)
    every_five = sum(1 for c in crons if "/5" in c)
    assert (hourly, 1000 - hourly - every_five, every_five) == (600, 300, 100)


def test_w5_smoke_fires_every_slot_once_and_prints_one_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = w5.main(["--triggers", "2000", "--minutes", "3", "--baseline", "200", "--json"])
    assert code == 0
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    row = json.loads(line)
    assert set(row) >= FIELDS
    assert (row["workload"], row["triggers"], row["simulated_minutes"]) == ("W5", 2000, 3)
    assert row["missed"] == row["doubled"] == row["unexpected"] == 0
    assert row["baseline_missed"] == row["baseline_doubled"] == 0
    assert row["boundary_due"] > 0
    assert "W5 scheduler loop" in captured.err
