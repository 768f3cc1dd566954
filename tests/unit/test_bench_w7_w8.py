"""W7 and W8 in the benchmark: their plugin module reaches every role, and their report says what
the issue asks for (the target, the cost per execution, where a sweep stopped keeping up).

Only the harness is checked, never kestream's speed (BENCHMARKS.md: figures are printed, not
asserted); tests/integration/test_bench_smoke.py runs both workloads end to end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import report, workloads
from bench.__main__ import _plan, parse_args
from bench.harness import Sample
from bench.stack import Stack, StackConfig, Usage, plugin_env

W7, W8 = workloads.get("W7"), workloads.get("W8")


def test_roles_of_a_w8_run_load_its_task_module_after_the_users_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KESTREAM_PLUGINS", "acme.tasks")
    monkeypatch.setenv("PYTHONPATH", "/opt/acme")
    env = Stack(StackConfig(run_dir=tmp_path), [W8])._role_env()
    assert env["KESTREAM_PLUGINS"] == "acme.tasks,bench.w8_tasks"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(workloads.REPO), "/opt/acme"]


def test_other_workloads_leave_the_users_plugins_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KESTREAM_PLUGINS", raising=False)
    env = Stack(StackConfig(run_dir=tmp_path), [workloads.get("W1"), W7])._role_env()
    assert "KESTREAM_PLUGINS" not in env
    assert (
        plugin_env({"KESTREAM_PLUGINS": "bench.w8_tasks"}, ["bench.w8_tasks"])["KESTREAM_PLUGINS"]
        == "bench.w8_tasks"
    )  # named once, even when the user named it too


def _row(workload: workloads.Workload, rate: int, p50_s: float, kept: bool = True) -> report.Row:
    # Ten executions ended p50_s after they were due, or (not kept up) one never ended.
    samples = [Sample(due=0.0, sent=0.0, end=p50_s, seen=p50_s, state="SUCCESS") for _ in range(9)]
    last = p50_s if kept else None
    samples.append(Sample(due=0.0, sent=0.0, end=last, seen=last, state="SUCCESS"))
    usage = Usage(cpu_s={"executor": 0.5, "worker": 2.0, "loadgen": 1.0}, broker_cpu_s=1.0)
    return report.rate_row(workload, rate, 1.0, True, samples, 5.0, usage)


def test_w7_and_w8_rows_are_set_against_their_p50_targets() -> None:
    assert report.comparison_lines(_row(W7, 600, 0.050)) == ["target: met"]
    assert report.comparison_lines(_row(W8, 6000, 0.045)) == ["target missed: p50 45 ms > 30 ms"]
    assert report.comparison_lines(_row(W7, 1200, 0.500)) == []  # a sweep's other rates


def test_cpu_per_execution_divides_each_roles_cpu_by_what_completed() -> None:
    cost = report.cpu_per_execution(_row(W8, 6000, 0.020))
    assert cost == {"executor": 50.0, "worker": 200.0, "broker": 100.0}  # no loadgen
    assert (
        report.cpu_per_execution(_row(W8, 6000, 0.020, kept=False))["worker"] == 222.222
    )  # 2 s / 9


def test_a_sweep_names_the_highest_rate_kept_up_and_the_lowest_not() -> None:
    rows = [
        _row(W7, 600, 0.05),
        _row(W7, 2400, 0.9, kept=False),
        _row(W7, 1200, 0.08),
        _row(W7, 4800, 3.0, kept=False),
        _row(W8, 6000, 0.02),  # one rate: no sweep
    ]
    assert report.ceiling_lines(rows) == [
        "W7 (embedded, inline on): kept up at 1200/min; stopped keeping up at 2400/min"
    ]
    never = [_row(W7, 600, 0.05, kept=False), _row(W7, 1200, 0.05, kept=False)]
    assert report.ceiling_lines(never) == [
        "W7 (embedded, inline on): kept up at no rate tried; stopped keeping up at 600/min"
    ]


def test_isolation_runs_w8_once_per_choice_and_applies_to_w8_only() -> None:
    plan = _plan(parse_args(["W8", "--rate", "600", "--isolation", "process,thread"]))
    assert [(w.flow_file, w.isolation, rate) for w, rate in plan] == [
        ("w8.yaml", "process", 600),
        ("w8_thread.yaml", "thread", 600),
    ]
    with pytest.raises(ValueError, match="W8 only, not W7"):
        _plan(parse_args(["W7", "--isolation", "thread"]))
    with pytest.raises(ValueError, match="unknown isolation 'fork'"):
        _plan(parse_args(["W8", "--isolation", "fork"]))


def test_isolation_rows_are_kept_apart_and_compared_per_task() -> None:
    process = _row(workloads.W8_BY_ISOLATION["process"], 6000, 0.030)
    thread = _row(workloads.W8_BY_ISOLATION["thread"], 6000, 0.020)
    assert process.key() != thread.key()  # RESULTS.md keeps both
    assert (process.name(), thread.to_json()["isolation"]) == ("W8 (process)", "thread")
    thread.cpu_s["worker"] = 1.5
    assert report.isolation_lines([process, thread, _row(W7, 600, 0.05)]) == [
        "W8 6000/min (embedded): a worker process per task instead of a thread costs "
        "p50 +10.00 ms (20 -> 30), p99 +10.00 ms (20 -> 30), "
        "worker CPU per execution +50.00 ms (150 -> 200)"
    ]
    assert report.isolation_lines([process]) == []  # nothing to compare with


def test_rows_of_the_shared_layout_are_kept_beside_the_separate_ones() -> None:
    separate = _row(workloads.get("W1"), 6000, 0.040)
    shared = _row(workloads.get("W1"), 6000, 0.020)
    shared.extra["layout"] = "shared"
    assert separate.key() != shared.key()  # RESULTS.md keeps both
    stored = report._stored(shared, "python -m bench W1 --layout shared", "2026-12-05")
    assert report._row_from_stored(stored).key() == shared.key()  # read back as written
    assert (report.where(separate), report.where(shared)) == ("embedded", "embedded, shared")
