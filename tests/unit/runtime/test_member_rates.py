"""Throughput and latency a member publishes: differences between two readings of its own
metrics registry, percentiles interpolated in the histograms' buckets."""

from __future__ import annotations

import pytest

from kestream.runtime.member_rates import RateWindow, histogram_buckets, quantile
from kestream.runtime.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    # 10 observations: 4 under 0.1, 6 between 0.1 and 0.5 (cumulative counts).
    buckets = {0.1: 4.0, 0.5: 10.0, float("inf"): 10.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (5 - 4) / 6)
    assert quantile(0.2, buckets) == pytest.approx(0.05)  # first bucket: from 0
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.4 * (9.9 - 4) / 6)
    assert quantile(0.99, {0.1: 1.0, float("inf"): 5.0}) == 0.1  # past the last finite bound
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.5, {}) is None


def test_buckets_are_summed_over_labels() -> None:
    metrics = Metrics(process_collectors=False)
    metrics.job_started("a", "f", "T")
    metrics.job_ended("a", "f", "T", "SUCCESS", 0.004)
    metrics.job_started("b", "g", "U")
    metrics.job_ended("b", "g", "U", "FAILED", 0.2)
    buckets = histogram_buckets(metrics.worker_duration)
    assert buckets[0.005] == 1 and buckets[0.25] == 2 and buckets[float("inf")] == 2


def test_the_executor_publishes_what_ended_in_the_interval_per_second_and_its_step() -> None:
    metrics = Metrics(process_collectors=False)
    clock = Clock()
    for _ in range(3):  # before the window opens: not counted
        metrics.execution_ended("n", "f", "SUCCESS", 1.0)
        metrics.executor_batch_done(10, 0.5)
    window = RateWindow("executor", metrics, clock=clock)
    for i in range(10):
        metrics.execution_ended("n", f"f{i % 3}", "SUCCESS", 1.0)
        metrics.task_run_ended("n", "f", "T", "SUCCESS", 0.1)
        metrics.task_run_ended("n", "f", "T", "FAILED", 0.1)
        metrics.executor_batch_done(5, 0.002 if i < 9 else 0.2)
    clock.now += 2.0
    figures = window.figures()
    assert figures["windowS"] == 2.0
    assert figures["throughput"] == {"executions": 5.0, "taskRuns": 10.0}
    step = figures["latency"]["step"]
    assert 0.001 < step["p50"] <= 0.0025  # nine of ten in the (1 ms, 2.5 ms] bucket
    assert 0.1 < step["p99"] <= 0.25  # the slow one, not the 0.5 s ones from before
    assert "taskRun" not in figures["latency"]

    clock.now += 2.0  # nothing since: no rate, no percentile
    quiet = window.figures()
    assert quiet["throughput"] == {"executions": 0.0, "taskRuns": 0.0}
    assert quiet["latency"]["step"] == {"p50": None, "p99": None}


def test_a_record_right_after_the_last_keeps_its_figures() -> None:
    metrics = Metrics(process_collectors=False)
    clock = Clock()
    window = RateWindow("worker", metrics, clock=clock)
    metrics.job_started("n", "f", "T")
    metrics.job_ended("n", "f", "T", "SUCCESS", 0.3)
    clock.now += 2.0
    first = window.figures()
    assert first["throughput"] == {"taskRuns": 0.5}
    assert 0.25 < first["latency"]["taskRun"]["p50"] <= 0.5
    metrics.job_started("n", "f", "T")
    metrics.job_ended("n", "f", "T", "SUCCESS", 0.3)
    clock.now += 0.05  # a readiness change published at once: too short to be a rate
    assert window.figures() == first
    clock.now += 1.95
    assert window.figures()["throughput"] == {"taskRuns": 0.5}  # the job counted once, here


def test_a_first_record_right_after_start_and_other_roles_publish_none() -> None:
    metrics = Metrics(process_collectors=False)
    clock = Clock()
    window = RateWindow("executor", metrics, clock=clock)
    metrics.execution_ended("n", "f", "SUCCESS", 1.0)
    clock.now += 0.01
    assert window.figures() == {}  # one execution in 10 ms is not 100 per second
    clock.now += 2.0
    assert window.figures()["throughput"]["executions"] == pytest.approx(1 / 2.01, abs=1e-3)
    assert RateWindow("scheduler", metrics, clock=clock).figures() == {}
