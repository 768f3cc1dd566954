"""Broker requests and doorbell rings per execution (bench/requests.py): perf's counts read,
summed per role, divided by the executions of the steady window, and shown in the row."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bench import report, requests, workloads
from bench.harness import Sample
from bench.stack import Usage

PERF_OUT = """
1139,,syscalls:sys_enter_sendto,1208973945,100.00,,
3305,,syscalls:sys_enter_sendto,1208973945,100.00,,
"""


def test_perf_output_gives_requests_then_rings() -> None:
    assert requests.parse_perf(PERF_OUT) == requests.Sends(1139, 3305)
    refused = "<not supported>,,syscalls:sys_enter_sendto,0,100.00,,\n" * 2
    assert requests.parse_perf(refused) is None
    assert requests.parse_perf("Error: no permission\n") is None


def test_the_perf_command_filters_sends_with_and_without_an_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(requests.shutil, "which", lambda _: "/usr/bin/perf")
    command = requests.perf_command(42, 7.5)
    assert command is not None
    assert command[:4] == ["/usr/bin/perf", "stat", "-x", ","]
    assert command[6:8] == ["--filter", "addr == 0"] and command[10:12] == ["--filter", "addr != 0"]
    assert command[-5:] == ["-p", "42", "--", "sleep", "7.500"]
    monkeypatch.setattr(requests.shutil, "which", lambda _: None)
    assert requests.perf_command(42, 7.5) is None


def test_counts_are_summed_per_role_and_a_role_not_counted_whole_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake(pid: int, seconds: float) -> list[str]:
        text = PERF_OUT if pid != 3 else "Error: no such process"
        return [sys.executable, "-c", f"import sys; sys.stderr.write({text!r})"]

    monkeypatch.setattr(requests, "perf_command", fake)
    pids = {"executor": [1, 2], "worker": [3], "broker": [4]}
    totals = asyncio.run(requests.count_sends(pids, 0.1))
    assert totals == {
        "executor": requests.Sends(2278, 6610),
        "broker": requests.Sends(1139, 3305),
    }
    per = requests.per_execution(totals, 1139)
    assert per == {
        "requests": {"executor": 2.0, "broker": 1.0},
        "rings": {"executor": 5.8, "broker": 2.9},
    }
    assert requests.per_execution(totals, 0) == {}


def test_a_row_shows_what_each_process_sent_per_execution() -> None:
    samples = [Sample(due=0.0, sent=0.0, end=0.01, seen=0.01, state="SUCCESS")]
    usage = Usage(cpu_s={"executor": 1.0}, broker_cpu_s=1.0)
    row = report.rate_row(workloads.get("W1"), 6000, 1.0, True, samples, 5.0, usage)
    assert report.sends_line(row) is None
    report.add_sends(
        row,
        {"requests": {"executor": 2.0, "worker": 1.5, "broker": 3.5}, "rings": {"executor": 4.0}},
    )
    assert report.sends_line(row) == (
        "per execution (steady window), requests executor 2, worker 1.5, broker 3.5; "
        "sent in all 3.50 | rings executor 4; sent in all 4.00"
    )
