"""The metrics registry: Kestra's names under ``kestream_``, labels, and the text exposition."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kestream.runtime.metrics import Metrics, process_metrics

EXEC = {"namespace_id": "company.team", "flow_id": "hello"}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), process_collectors=False)


def _families(metrics: Metrics) -> dict[str, object]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_kestra_names_are_exposed_with_the_prefix(metrics: Metrics) -> None:
    names = set(_families(metrics))
    for name in (
        "kestream_executor_execution_started_count",
        "kestream_executor_execution_end_count",
        "kestream_executor_execution_duration_seconds",
        "kestream_executor_taskrun_created_count",
        "kestream_executor_taskrun_ended_count",
        "kestream_executor_taskrun_ended_duration_seconds",
        "kestream_executor_thread_count",
        "kestream_worker_job_running",
        "kestream_worker_job_pending",
        "kestream_worker_job_thread",
        "kestream_worker_running_count",
        "kestream_worker_started_count",
        "kestream_worker_ended_count",
        "kestream_worker_ended_duration_seconds",
        "kestream_scheduler_trigger_count",
        "kestream_scheduler_loop_count",
        "kestream_scheduler_evaluation_loop_duration_seconds",
        "kestream_scheduler_trigger_delay_duration_seconds",
        "kestream_scheduler_late_trigger_count",
        "kestream_http_server_requests_seconds",
        "kestream_dead_letter_count",
        "kestream_consumer_lag",
        "kestream_event_loop_lag_seconds",
        "kestream_ready",
    ):
        assert name in names, name


def test_executor_accessors_count_with_kestra_labels(metrics: Metrics) -> None:
    metrics.execution_started("company.team", "hello")
    metrics.execution_started("company.team", "hello")
    metrics.execution_ended("company.team", "hello", "SUCCESS", 1.5)
    metrics.task_run_created("company.team", "hello", "io.kestra.plugin.core.log.Log")
    metrics.task_run_ended("company.team", "hello", "io.kestra.plugin.core.log.Log", "FAILED", 0.2)
    metrics.executor_batch_done(120, 0.004)

    value = metrics.value
    assert value("kestream_executor_execution_started_count_total", EXEC) == 2
    ended = {**EXEC, "state": "SUCCESS"}
    assert value("kestream_executor_execution_end_count_total", ended) == 1
    assert value("kestream_executor_execution_duration_seconds_sum", ended) == 1.5
    task = {**EXEC, "task_type": "io.kestra.plugin.core.log.Log"}
    assert value("kestream_executor_taskrun_created_count_total", task) == 1
    failed = {**task, "state": "FAILED"}
    assert value("kestream_executor_taskrun_ended_count_total", failed) == 1
    assert value("kestream_executor_taskrun_ended_duration_seconds_count", failed) == 1
    assert value("kestream_executor_events_count_total") == 120
    assert value("kestream_executor_batch_duration_seconds_count") == 1


def test_worker_gauges_go_up_and_back_down(metrics: Metrics) -> None:
    task = {**EXEC, "task_type": "io.kestra.plugin.core.flow.Sleep"}
    metrics.job_started("company.team", "hello", "io.kestra.plugin.core.flow.Sleep")
    metrics.job_started("company.team", "hello", "io.kestra.plugin.core.flow.Sleep")
    assert metrics.value("kestream_worker_job_running") == 2
    assert metrics.value("kestream_worker_running_count", task) == 2
    metrics.job_ended("company.team", "hello", "io.kestra.plugin.core.flow.Sleep", "SUCCESS", 1.0)
    metrics.job_abandoned("company.team", "hello", "io.kestra.plugin.core.flow.Sleep")
    assert metrics.value("kestream_worker_job_running") == 0
    assert metrics.value("kestream_worker_running_count", task) == 0
    assert metrics.value("kestream_worker_started_count_total", task) == 2
    assert metrics.value("kestream_worker_ended_count_total", {**task, "state": "SUCCESS"}) == 1


def test_scheduler_and_http_accessors(metrics: Metrics) -> None:
    trigger = {**EXEC, "trigger_id": "every-minute"}
    metrics.trigger_fired("company.team", "hello", "every-minute")
    metrics.trigger_delay("company.team", "hello", "every-minute", 0.3)
    metrics.evaluate_duration(0.01)
    metrics.evaluate_duration(0.02)
    metrics.late_triggers(0)
    metrics.late_triggers(3)
    metrics.http_request("/api/v1/{tenant}/executions", "POST", 201, 0.005)
    metrics.dead_letter("executor")

    value = metrics.value
    assert value("kestream_scheduler_trigger_count_total", trigger) == 1
    assert value("kestream_scheduler_trigger_delay_duration_seconds_sum", trigger) == 0.3
    assert value("kestream_scheduler_loop_count_total") == 2
    assert value("kestream_scheduler_late_trigger_count_total") == 3
    http = {"route": "/api/v1/{tenant}/executions", "method": "POST", "status": "201"}
    assert value("kestream_http_server_requests_seconds_count", http) == 1
    assert value("kestream_dead_letter_count_total", {"source": "executor"}) == 1


def test_shares_of_a_gauge_add_up_and_leave(metrics: Metrics) -> None:
    first = metrics.share(metrics.consumer_lag, "executor")
    second = metrics.share(metrics.consumer_lag, "executor")
    first.report(10)
    second.report(5)
    first.report(4)
    assert metrics.value("kestream_consumer_lag", {"consumer": "executor"}) == 9
    first.report(0)
    second.report(0)
    assert metrics.value("kestream_consumer_lag", {"consumer": "executor"}) == 0


def test_render_lists_the_series_after_calls(metrics: Metrics) -> None:
    metrics.execution_ended("company.team", "hello", "WARNING", 0.1)
    body, _ = metrics.render()
    text = body.decode()
    assert (
        'kestream_executor_execution_end_count_total{flow_id="hello",'
        'namespace_id="company.team",state="WARNING"} 1.0'
    ) in text
    assert not re.search(r"_created[{ ]", text)  # no creation-time series (Kestra has none)


def test_the_process_registry_is_one_and_has_process_collectors() -> None:
    assert process_metrics() is process_metrics()
    names = {f.name for f in text_string_to_metric_families(process_metrics().render()[0].decode())}
    assert "python_info" in names


def test_partition_lag_keeps_the_last_known_lag_and_drops_revoked_partitions() -> None:
    """A worker fetching a record or two reaches one partition per batch: the others keep
    their lag (not 0, "caught up"); topics of one partition number add up; a revoked
    partition's series goes, and the total is over the assigned partitions only."""
    metrics = Metrics(process_collectors=False)
    lag = metrics.partition_lag("worker")

    def shown() -> dict[str, float]:
        return {
            sample.labels["partition"]: sample.value
            for family in metrics.consumer_partition_lag.collect()
            for sample in family.samples
            if sample.labels["consumer"] == "worker"
        }

    owned = [("jobs", 0), ("jobs", 1), ("jobs", 2), ("other", 1)]
    assert lag.report({("jobs", 0): 500, ("jobs", 1): 900, ("other", 1): 5}, owned) == 1405
    assert lag.report({("jobs", 0): 499}, owned) == 1404  # 1 and other-1 as they were
    assert shown() == {"0": 499.0, "1": 905.0}  # 2 never measured: not shown
    # Partition 1 revoked (both topics); a batch of another partition may hold it still.
    assert lag.report({("jobs", 1): 3}, [("jobs", 0), ("jobs", 2)]) == 499
    assert shown() == {"0": 499.0}
    lag.clear()
    assert shown() == {}
