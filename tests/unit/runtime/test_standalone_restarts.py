"""The supervisor's restart rule, its crash ledger and how ``/metrics`` shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kestream.runtime.metrics import Metrics
from kestream.runtime.restarts import (
    CRASHES_FILE_ENV,
    CrashCollector,
    CrashLedger,
    CrashPolicy,
    describe_exit,
    expose_supervisor_crashes,
)
from kestream.settings import DEFAULT_DATA_DIR, Settings


def test_delays_double_per_recent_crash_and_are_capped() -> None:
    policy = CrashPolicy(limit=10, window_s=1000.0, max_delay_s=3.0)
    assert [policy.crashed(float(t)) for t in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_limit_crashes_within_the_window_give_up() -> None:
    policy = CrashPolicy(limit=3, window_s=10.0, max_delay_s=30.0)
    assert policy.crashed(0.0) == 0.5
    assert policy.crashed(1.0) == 1.0
    assert policy.crashed(2.0) is None
    assert policy.recent == 3


def test_crashes_older_than_the_window_are_forgotten() -> None:
    policy = CrashPolicy(limit=3, window_s=10.0, max_delay_s=30.0)
    policy.crashed(0.0)
    policy.crashed(5.0)
    assert policy.crashed(12.0) == 1.0  # the crash at 0 s left the window; 5 s and 12 s stay
    assert policy.recent == 2


def test_exit_causes_read_as_people_name_them() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(-15) == "signal SIGTERM"
    assert describe_exit(-200) == "signal 200"


def test_ledger_file_and_collector_show_the_counts(tmp_path: Path) -> None:
    ledger = CrashLedger(tmp_path / "standalone" / "crashes.json")
    metrics = Metrics(process_collectors=False)
    metrics.registry.register(CrashCollector(ledger.path))
    crashes = "kestream_standalone_role_crashes_total"
    assert metrics.value(crashes, {"role": "worker", "cause": "signal SIGKILL"}) is None
    ledger.crashed("worker", "signal SIGKILL")
    ledger.crashed("worker", "signal SIGKILL")
    ledger.crashed("executor", "exit code 1")
    ledger.restarted("worker")
    assert metrics.value(crashes, {"role": "worker", "cause": "signal SIGKILL"}) == 2
    assert metrics.value(crashes, {"role": "executor", "cause": "exit code 1"}) == 1
    restarts = "kestream_standalone_role_restarts_total"
    assert metrics.value(restarts, {"role": "worker"}) == 1
    assert json.loads(ledger.path.read_text())["restarts"] == {"worker": 1}
    assert [p.name for p in ledger.path.parent.iterdir()] == ["crashes.json"]  # no temp left


def test_a_missing_or_torn_ledger_shows_no_counts(tmp_path: Path) -> None:
    metrics = Metrics(process_collectors=False)
    path = tmp_path / "crashes.json"
    metrics.registry.register(CrashCollector(path))
    assert b"kestream_standalone_role_crashes_total{" not in metrics.render()[0]
    path.write_text('{"crashes": {"api"')
    assert b"kestream_standalone_role_crashes_total{" not in metrics.render()[0]


def test_only_a_child_of_standalone_exposes_the_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics(process_collectors=False)
    monkeypatch.delenv(CRASHES_FILE_ENV, raising=False)
    assert not expose_supervisor_crashes(metrics)
    ledger = CrashLedger(tmp_path / "crashes.json")
    ledger.crashed("api", "exit code 1")
    monkeypatch.setenv(CRASHES_FILE_ENV, str(ledger.path))
    assert expose_supervisor_crashes(metrics)
    assert expose_supervisor_crashes(metrics)  # twice is harmless
    value = metrics.value(
        "kestream_standalone_role_crashes_total", {"role": "api", "cause": "exit code 1"}
    )
    assert value == 1


def test_the_data_dir_is_per_user_and_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("KESTREAM_DATA_DIR", raising=False)
    assert Settings().data_path == Path.home() / ".local/share/kestream"
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/xdg")
    assert Settings().data_path == Path("/srv/xdg/kestream")
    assert Settings(data_dir="~/elsewhere").data_path == Path.home() / "elsewhere"
    assert Settings(data_dir="/abs").data_path == Path("/abs")
    assert Settings().data_dir == DEFAULT_DATA_DIR
