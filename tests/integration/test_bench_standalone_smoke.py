"""``python -m bench idle`` and ``startup`` run end to end against the real ``kestream
standalone`` on its embedded broker, and leave no process behind.

Only the harness is checked, never kestream's speed (BENCHMARKS.md): the rows must name every
process of the installation and a time to ready; their values are printed, not asserted. The
command always runs on the embedded broker, so these tests run once, whatever
``--kafka-backend`` says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from kestream.runtime.embedded_broker import BrokerUnavailable, find_tansu_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    try:
        find_tansu_binary()
    except BrokerUnavailable as exc:
        pytest.skip(exc.reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    command = [sys.executable, "-m", "bench", *argv, "--json", "--write-results"]
    command += ["--results", str(tmp_path / "RESULTS.md"), "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_idle_names_every_process_of_the_installation(tmp_path: Path) -> None:
    done = _bench(tmp_path, "idle", "--seconds", "2", "--settle", "1")
    row = json.loads(done.stdout)
    names = [p["name"] for p in row["processes"]]
    assert names[0] == "supervisor"
    assert "broker" in names  # Tansu, started by the supervisor
    hosted = {role for name in names for role in name.split("+")}
    assert {"worker", "scheduler", "api"} <= hosted
    assert any(role.startswith("executor") for role in hosted)
    assert all(p["rss_mb"] > 0 and p["cpu_pct"] >= 0 for p in row["processes"])
    stored = report.read_results(tmp_path / "RESULTS.md").idle
    assert [r["processes"] for r in stored] == [row["processes"]]


def test_startup_times_a_fresh_start_and_a_restart(tmp_path: Path) -> None:
    done = _bench(tmp_path, "startup", "--runs", "1", "--restarts", "1")
    fresh, existing = (json.loads(line) for line in done.stdout.splitlines())
    assert (fresh["data"], existing["data"]) == ("fresh", "existing")
    for row in (fresh, existing):
        assert len(row["seconds"]) == 1 and row["median_s"] == row["seconds"][0] > 0
        assert "roles spawned" in row["phases"]
        assert max(row["phases"].values()) <= row["median_s"]
    assert "broker state restored" in existing["phases"]
    assert "broker state restored" not in fresh["phases"]
    assert len(report.read_results(tmp_path / "RESULTS.md").startup) == 2
