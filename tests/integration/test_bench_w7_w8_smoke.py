"""W7 (a shell Commands task) and W8 (a function-form Python task) run end to end in the harness.

Each run starts its own embedded broker and role processes and offers a few executions: the
report's shape is checked, never kestream's speed (figures are printed by ``python -m bench``,
not asserted).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report
from kestream.runtime.embedded_broker import BrokerUnavailable, find_tansu_binary

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _bench(tmp_path: Path, *args: str) -> tuple[list[dict[str, Any]], str]:
    """``python -m bench ... --json`` as a user runs it, without the caller's KESTREAM_*."""
    try:
        find_tansu_binary()
    except BrokerUnavailable as exc:
        pytest.skip(exc.reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    command = [sys.executable, "-m", "bench", *args, "--json", "--run-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


#: Present when readings were taken inside the offer (a run of a few seconds may have none).
STEADY = {"steady_cpu_ms_per_execution"}


def test_w7_sweep_gives_a_row_per_rate_and_where_it_stopped_keeping_up(tmp_path: Path) -> None:
    rows, stderr = _bench(tmp_path, "W7", "--rates", "60,120", "--duration", "2")
    assert [(r["workload"], r["rate_per_min"]) for r in rows] == [("W7", 60), ("W7", 120)]
    for row in rows:
        assert set(row) - STEADY == set(report.JSON_FIELDS)
        assert row["offered"] > 0 and set(row["cpu_s"]) >= {"executor", "worker"}
    assert "not SUCCESS: 0" in stderr  # the shell ran and its output line was read
    assert re.search(
        r"CPU per completed execution(, steady \([^)]*\))?: executor [\d.]+ ms, worker [\d.]+ ms",
        stderr,
    )
    assert re.search(r"^W7 \(embedded, inline on\): kept up at ", stderr, re.M), stderr[-2000:]


def test_w8_runs_its_python_task_in_a_process_and_in_a_thread(tmp_path: Path) -> None:
    args = ("W8", "--rate", "120", "--duration", "2", "--isolation", "process,thread")
    rows, stderr = _bench(tmp_path, *args)
    assert [(r["workload"], r["isolation"]) for r in rows] == [("W8", "process"), ("W8", "thread")]
    for row in rows:
        assert set(row) - STEADY == {*report.JSON_FIELDS, "isolation"}
        # A role without the task module would skip the flow: nothing would end.
        assert row["completed"] == row["offered"] > 0
    assert "not SUCCESS: 0" in stderr
    overhead = r"^W8 120/min \(embedded\): a worker process per task instead of a thread costs p50 "
    assert re.search(overhead, stderr, re.M), stderr[-2000:]
