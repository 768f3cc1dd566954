"""Prometheus metrics of one kestream process, under Kestra's names with the ``kestream_`` prefix.

Every role process (executor stream processor, worker, scheduler, API) owns one :class:`Metrics`
(:func:`process_metrics`) and serves it on its own ``/metrics`` (:mod:`.ops_routes`). The
names follow Kestra's ``MetricRegistry`` (``executor.execution.started.count`` becomes
``kestream_executor_execution_started_count_total``) and so do the labels (``namespace_id``,
``flow_id``, ``state``, ``task_type``, ``trigger_id``), so dashboards written for Kestra need
only the prefix changed. Kestra's timers (Micrometer summaries) are histograms here: Prometheus
can aggregate histograms across processes, and every role runs as several processes.

kestream's own series (no Kestra equivalent): events read by the executor, the duration of one
executor batch, dead letters, executions held for their flow revision, consumer lag, event loop
lag, HTTP requests, and late triggers.

**Cost.** The executor handles about 10k events/s, so the accessors called per event keep their
label children in a plain dict (one tuple and one dict lookup, about 0.4 us, against 1.4 us for
``labels()``); they never build a dict per call. Counters bumped per batch take the batch's count
at once. Gauges that several processors of one process share (two executors in a test, or the
executor and worker of ``kestream run``) are moved by deltas (:class:`DeltaGauge`), so each
processor reports its own share and the gauge shows the sum.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# ``*_created`` timestamps double the series of every counter and histogram and Kestra has none;
# the switch is process-wide in prometheus_client, which suits a per-process registry.
disable_created_metrics()

PREFIX = "kestream_"

#: Execution and task run durations: milliseconds (inline tasks) up to an hour (Pause, Sleep).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
#: One executor batch, one scheduler pass, one HTTP request: sub-millisecond to seconds.
FAST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_EXEC = ("namespace_id", "flow_id")
_TASK = ("namespace_id", "flow_id", "task_type")
_TRIGGER = ("namespace_id", "flow_id", "trigger_id")


class DeltaGauge:
    """One processor's share of a gauge that several processors of a process may report.

    ``report(value)`` moves the gauge by the change since this share's last report, so shares
    add up; ``report(0)`` at stop takes the share back out.
    """

    __slots__ = ("_gauge", "_last")

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge
        self._last = 0.0

    def report(self, value: float) -> None:
        delta = value - self._last
        if delta:
            self._gauge.inc(delta)
            self._last = value


class PartitionLag:
    """One processor's records behind the high watermark, per partition number (its topics'
    lags summed: an executor reads three topics with the same partition numbers).

    ``report`` takes a batch's lags per ``(topic, partition)`` and the consumer's assignment. A
    partition the batch did not reach keeps its last known lag (a worker fetching one or two
    records reaches one partition per batch, while the others may be thousands behind); one
    never measured is not shown; one no longer assigned is dropped, its series removed.
    """

    __slots__ = ("_children", "_consumer", "_gauge", "_lags")

    def __init__(self, gauge: Any, consumer: str) -> None:
        self._gauge = gauge
        self._consumer = consumer
        self._lags: dict[tuple[str, int], int] = {}
        self._children: dict[int, Any] = {}

    def report(
        self, batch: Mapping[tuple[str, int], int], assigned: Iterable[tuple[str, int]]
    ) -> int:
        """Record ``batch``'s lags; the processor's total lag over its assigned partitions."""
        owned = set(assigned)
        for tp in self._lags.keys() - owned:
            del self._lags[tp]
        for tp, lag in batch.items():
            if tp in owned:
                self._lags[tp] = lag
        per_partition: dict[int, int] = {}
        for (_, partition), lag in self._lags.items():
            per_partition[partition] = per_partition.get(partition, 0) + lag
        for partition in self._children.keys() - per_partition.keys():
            del self._children[partition]
            self._gauge.remove(self._consumer, str(partition))
        for partition, lag in per_partition.items():
            child = self._children.get(partition)
            if child is None:
                child = self._children[partition] = self._gauge.labels(
                    self._consumer, str(partition)
                )
            child.set(lag)
        return sum(per_partition.values())

    def clear(self) -> None:
        """The processor stopped: its series go."""
        self.report({}, ())


class Metrics:
    """The process's metrics, with one accessor per thing a service records.

    Args:
        registry: where the series live; a fresh :class:`CollectorRegistry` by default (tests
            make one per test so counts start at zero).
        process_collectors: also expose ``process_*``, ``python_gc_*`` and ``python_info``
            (memory, CPU, open files, GC), as Kestra exposes the JVM's.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process_collectors: bool = True
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process_collectors:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()  # worker task code runs in threads; children are shared
        self._define_executor()
        self._define_worker()
        self._define_scheduler()
        self._define_process()

    # -- definitions -------------------------------------------------------------------------

    def _counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(PREFIX + name, doc, tuple(labels), registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(PREFIX + name, doc, tuple(labels), registry=self.registry)

    def _histogram(
        self, name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...]
    ) -> Histogram:
        return Histogram(PREFIX + name, doc, tuple(labels), registry=self.registry, buckets=buckets)

    def _define_executor(self) -> None:
        self.executor_started_total = self._counter(
            "executor_execution_started_count",
            "The total number of executions started by the Executor",
            _EXEC,
        )
        self.executor_ended_total = self._counter(
            "executor_execution_end_count",
            "The total number of executions ended by the Executor",
            (*_EXEC, "state"),
        )
        self.executor_duration = self._histogram(
            "executor_execution_duration_seconds",
            "Execution duration inside the Executor",
            (*_EXEC, "state"),
            DURATION_BUCKETS,
        )
        self.taskrun_created_total = self._counter(
            "executor_taskrun_created_count",
            "The total number of tasks created by the Executor",
            _TASK,
        )
        self.taskrun_ended_total = self._counter(
            "executor_taskrun_ended_count",
            "The total number of tasks ended by the Executor",
            (*_TASK, "state"),
        )
        self.taskrun_duration = self._histogram(
            "executor_taskrun_ended_duration_seconds",
            "Task duration inside the Executor",
            (*_TASK, "state"),
            DURATION_BUCKETS,
        )
        self.executor_threads = self._gauge(
            "executor_thread_count",
            "The number of executor stream processors running in this process",
        )
        self.executor_events_total = self._counter(
            "executor_events_count",
            "Records read from the executions and worker-results topics by the Executor",
        )
        self.executor_batch = self._histogram(
            "executor_batch_duration_seconds",
            "Duration of one executor batch: step, produce, changelog, commit",
            (),
            FAST_BUCKETS,
        )
        self.executor_held = self._gauge(
            "executor_execution_held",
            "Executions held by the Executor until their flow revision is known",
        )
        self.executor_in_flight = self._gauge(
            "executor_execution_in_flight",
            "Executions in the state tables of this process's executors",
        )
        self.changelog_restored_records = self._counter(
            "changelog_restored_records",
            "Changelog records the Executor's recoveries took, by source: read from the "
            "changelog topic, or taken from a local checkpoint (KESTREAM_EXECUTOR_CHECKPOINT_*)",
            ("source",),
        )

    def _define_worker(self) -> None:
        self.worker_job_running = self._gauge(
            "worker_job_running",
            "The number of jobs (tasks) currently running inside the Worker",
        )
        self.worker_job_pending = self._gauge(
            "worker_job_pending",
            "The number of jobs accepted by the Worker that wait for their flow revision",
        )
        self.worker_job_thread = self._gauge(
            "worker_job_thread", "The number of worker threads (slots for blocking task code)"
        )
        self.worker_running = self._gauge(
            "worker_running_count",
            "The number of tasks currently running inside the Worker",
            _TASK,
        )
        self.worker_started_total = self._counter(
            "worker_started_count", "The total number of tasks started by the Worker", _TASK
        )
        self.worker_ended_total = self._counter(
            "worker_ended_count", "The total number of tasks ended by the Worker", (*_TASK, "state")
        )
        self.worker_duration = self._histogram(
            "worker_ended_duration_seconds",
            "Task run duration inside the Worker",
            (*_TASK, "state"),
            DURATION_BUCKETS,
        )

    def _define_scheduler(self) -> None:
        self.scheduler_triggered_total = self._counter(
            "scheduler_trigger_count",
            "Total number of executions triggered by the Scheduler",
            _TRIGGER,
        )
        self.scheduler_loops_total = self._counter(
            "scheduler_loop_count", "Total number of evaluation loops executed by the Scheduler"
        )
        self.scheduler_loop_duration = self._histogram(
            "scheduler_evaluation_loop_duration_seconds",
            "Trigger evaluation loop duration inside the Scheduler",
            (),
            FAST_BUCKETS,
        )
        self.scheduler_delay = self._histogram(
            "scheduler_trigger_delay_duration_seconds",
            "Trigger delay duration inside the Scheduler (fire time minus due time)",
            _TRIGGER,
            DURATION_BUCKETS,
        )
        self.scheduler_late_total = self._counter(
            "scheduler_late_trigger_count",
            "Triggers the Scheduler found past their due time by more than its tolerance",
        )

    def _define_process(self) -> None:
        self.dead_letters_total = self._counter(
            "dead_letter_count", "Records sent to the dead-letter topic", ("source",)
        )
        self.commit_failed_total = self._counter(
            "commit_failed_count",
            "Offset commits the consumer group refused because it had moved on (an expulsion "
            "or a rebalance under way): taken as a rebalance, the records are read again",
            ("consumer",),
        )
        self.consumer_lag = self._gauge(
            "consumer_lag",
            "Records behind the high watermark on the partitions this process reads",
            ("consumer",),
        )
        self.consumer_partition_lag = self._gauge(
            "consumer_partition_lag",
            "Records behind the high watermark on one partition number this process reads",
            ("consumer", "partition"),
        )
        self.loop_lag = self._gauge(
            "event_loop_lag_seconds",
            "How late the event loop's heartbeat woke up last time (a blocked loop shows here)",
        )
        self.ready_gauge = self._gauge(
            "ready", "1 when this process is ready (partitions assigned, state recovered)"
        )
        self.http_requests = self._histogram(
            "http_server_requests_seconds",
            "HTTP requests served, by route pattern, method and status",
            ("route", "method", "status"),
            FAST_BUCKETS,
        )

    def _child(self, metric: Any, *values: Any) -> Any:
        """The label child of ``metric`` for ``values``, cached (see the module doc: cost)."""
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = metric.labels(*values)
        return child

    # -- executor ----------------------------------------------------------------------------

    def execution_started(self, namespace: str, flow_id: str) -> None:
        self._child(self.executor_started_total, namespace, flow_id).inc()

    def execution_ended(self, namespace: str, flow_id: str, state: str, seconds: float) -> None:
        self._child(self.executor_ended_total, namespace, flow_id, state).inc()
        self._child(self.executor_duration, namespace, flow_id, state).observe(seconds)

    def task_run_created(self, namespace: str, flow_id: str, task_type: str) -> None:
        self._child(self.taskrun_created_total, namespace, flow_id, task_type).inc()

    def task_run_ended(
        self, namespace: str, flow_id: str, task_type: str, state: str, seconds: float
    ) -> None:
        self._child(self.taskrun_ended_total, namespace, flow_id, task_type, state).inc()
        self._child(self.taskrun_duration, namespace, flow_id, task_type, state).observe(seconds)

    def executor_batch_done(self, events: int, seconds: float) -> None:
        """One executor loop pass: ``events`` records read, ``seconds`` spent on the batch."""
        if events:
            self.executor_events_total.inc(events)
        self.executor_batch.observe(seconds)

    # -- worker ------------------------------------------------------------------------------

    def job_started(self, namespace: str, flow_id: str, task_type: str) -> None:
        self._child(self.worker_started_total, namespace, flow_id, task_type).inc()
        self._child(self.worker_running, namespace, flow_id, task_type).inc()
        self.worker_job_running.inc()

    def job_ended(
        self, namespace: str, flow_id: str, task_type: str, state: str, seconds: float
    ) -> None:
        self._child(self.worker_running, namespace, flow_id, task_type).dec()
        self.worker_job_running.dec()
        self._child(self.worker_ended_total, namespace, flow_id, task_type, state).inc()
        self._child(self.worker_duration, namespace, flow_id, task_type, state).observe(seconds)

    def job_abandoned(self, namespace: str, flow_id: str, task_type: str) -> None:
        """A started job that ends without a result (given up at stop, or a worker bug)."""
        self._child(self.worker_running, namespace, flow_id, task_type).dec()
        self.worker_job_running.dec()

    # -- scheduler (called by the scheduler role) ---------------------------------------------

    def trigger_fired(self, namespace: str, flow_id: str, trigger_id: str) -> None:
        self._child(self.scheduler_triggered_total, namespace, flow_id, trigger_id).inc()

    def evaluate_duration(self, seconds: float) -> None:
        """One evaluation pass of the scheduler over the triggers that were due."""
        self.scheduler_loops_total.inc()
        self.scheduler_loop_duration.observe(seconds)

    def trigger_delay(self, namespace: str, flow_id: str, trigger_id: str, seconds: float) -> None:
        self._child(self.scheduler_delay, namespace, flow_id, trigger_id).observe(seconds)

    def late_triggers(self, count: int) -> None:
        if count:
            self.scheduler_late_total.inc(count)

    # -- every role --------------------------------------------------------------------------

    def changelog_restored(self, source: str, count: int) -> None:
        """``count`` changelog records a recovery took from ``source`` ("changelog", or
        "checkpoint": a local checkpoint file)."""
        if count:
            self._child(self.changelog_restored_records, source).inc(count)

    def dead_letter(self, source: str) -> None:
        """One record dead-lettered by ``source`` ("executor", "worker", ...)."""
        self._child(self.dead_letters_total, source).inc()

    def commit_failed(self, consumer: str) -> None:
        """One offset commit of ``consumer`` ("executor", "scheduler", ...) that the group
        refused because it had moved on."""
        self._child(self.commit_failed_total, consumer).inc()

    def partition_lag(self, consumer: str) -> PartitionLag:
        """A processor's lag per partition (:class:`PartitionLag`), labelled ``consumer``."""
        return PartitionLag(self.consumer_partition_lag, consumer)

    def share(self, gauge: Gauge, *labels: str) -> DeltaGauge:
        """A processor's own share of ``gauge`` (a child, given ``labels``): :class:`DeltaGauge`."""
        return DeltaGauge(gauge.labels(*labels) if labels else gauge)

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request; ``route`` is the route's pattern, never the raw path (cardinality)."""
        self._child(self.http_requests, route, method, str(status)).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's value (full sample name, e.g. ``..._total``), for tests and the CLI."""
        return self.registry.get_sample_value(name, dict(labels) if labels else None)


_process: Metrics | None = None
_process_lock = threading.Lock()


def process_metrics() -> Metrics:
    """This process's :class:`Metrics`, created on first use (with the process collectors)."""
    global _process  # one registry per process is the point
    if _process is None:
        with _process_lock:
            if _process is None:
                _process = Metrics()
    return _process
