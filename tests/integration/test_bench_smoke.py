"""The benchmark harness runs end to end, and its report keeps BENCHMARKS.md's JSON contract.

Only the harness is checked here, never kestream's speed: figures are printed by
``python -m bench``, not asserted (BENCHMARKS.md). The smoke run starts its own embedded broker
and role processes, so it is an integration test; the report checks need no broker.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report, workloads
from bench.harness import Sample
from bench.stack import Usage
from kestream.runtime.embedded_broker import BrokerUnavailable, find_tansu_binary

ROOT = Path(__file__).resolve().parents[2]
FIELDS = set(report.JSON_FIELDS)


@pytest.mark.integration
def test_a_short_w1_run_prints_one_json_row(tmp_path: Path) -> None:
    try:
        find_tansu_binary()
    except BrokerUnavailable as exc:
        pytest.skip(exc.reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    results = tmp_path / "RESULTS.md"
    command = [sys.executable, "-m", "bench", "W1", "--rate", "120", "--duration", "3", "--json"]
    command += ["--run-dir", str(tmp_path / "runs"), "--write-results", "--results", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    row = json.loads(lines[0])
    assert set(row) == FIELDS | {"steady_cpu_ms_per_execution"}
    assert row["steady_cpu_ms_per_execution"] > 0  # every role and the broker, while offered
    assert row["workload"] == "W1" and row["rate_per_min"] == 120
    assert row["completed"] == row["offered"] > 0
    assert row["backlog_at_end"] == 0
    assert set(row["cpu_s"]) >= {"executor", "worker"}
    assert "| W1 | embedded | 120 |" in done.stderr  # the readable table goes to stderr
    assert "| W1 | embedded | 120 |" in results.read_text()


def _sample(due: float, end: float | None) -> Sample:
    return Sample(due=due, lag=0.001, sent=due, end=end, seen=end, state="SUCCESS")


def test_unfinished_executions_count_as_infinitely_late() -> None:
    samples = [_sample(0.0, 0.010 * (i + 1)) for i in range(99)] + [_sample(0.0, None)]
    usage = Usage(cpu_s={"executor": 1.0}, rss_mb={}, broker_cpu_s=None)
    row = report.rate_row(workloads.get("W1"), 6000, 1.0, True, samples, 5.0, usage)
    assert row.offered == 100 and row.completed == 99 and row.backlog_at_end == 1
    assert row.p50_ms == 500.0
    assert row.p99_ms == 990.0 and row.max_ms is None  # the 100th never ended
    assert row.kept_up is False
    assert set(row.to_json()) == FIELDS
    assert math.isclose(report.percentile([1.0, 2.0, 3.0, 4.0], 50), 2.0)


def test_results_md_keeps_notes_and_replaces_a_rerun_row(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    usage = Usage(cpu_s={"executor": 1.0}, rss_mb={}, broker_cpu_s=None)
    first = report.rate_row(workloads.get("W4"), 600, 30.0, True, [_sample(0.0, 0.02)], 11.0, usage)
    report.write_results(path, [first], [], "python -m bench W4 --rate 600", "2026-01-01 10:00")
    text = path.read_text().replace("<!-- notes:start -->\n", "<!-- notes:start -->\nkept note\n")
    path.write_text(text)
    again = report.rate_row(workloads.get("W4"), 600, 30.0, True, [_sample(0.0, 0.04)], 11.0, usage)
    report.write_results(path, [again], [], "python -m bench W4 --rate 600", "2026-01-01 11:00")
    text = path.read_text()
    assert "kept note" in text
    assert "Short first run: 30 s per rate" in text
    assert text.count("| W4 | embedded | 600 |") == 1 and "| 40 ms |" in text
