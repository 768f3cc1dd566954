"""Throughput and latency of one role process over its last heartbeat, for the cluster page.

A member's record (:mod:`kestream.runtime.members`) carries what the process's own
``/metrics`` counts, read from its registry: the counters and histograms only ever grow, so the
figures of an interval are the difference between two readings, as Prometheus's ``rate()`` and
``histogram_quantile()`` compute them from two scrapes. :class:`RateWindow` keeps the previous
reading and, at each heartbeat, answers per role:

- ``throughput``: per second, the executor's executions ended (``executions``) and task runs
  ended (``taskRuns``); the worker's task runs done (``taskRuns``);
- ``latency``: the 50th and 99th percentiles (seconds) of the observations made in the
  interval: the executor's step (one batch: step, produce, changelog, commit: ``step``), the
  worker's task runs (``taskRun``); ``None`` where nothing was observed.

Percentiles are interpolated inside the histogram's buckets, as ``histogram_quantile`` does, so
they are as fine as the buckets (:data:`~kestream.runtime.metrics.FAST_BUCKETS` for the step).
Labelled series are summed over their labels (one process, every flow).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a reader of member records (the supervisor) serves no metrics
    from kestream.runtime.metrics import Metrics

#: Percentiles published for each latency.
QUANTILES = (0.5, 0.99)
#: A window shorter than this (a record published at once on a readiness change, or the first
#: record, right after start) keeps the previous figures (none at first): a rate over a few
#: milliseconds is noise.
MIN_WINDOW_S = 1.0

Buckets = dict[float, float]


def counter_total(metric: Any) -> float:
    """A counter's value summed over its labels."""
    return sum(
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def histogram_buckets(metric: Any) -> Buckets:
    """A histogram's cumulative bucket counts by upper bound, summed over its labels."""
    out: Buckets = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                out[bound] = out.get(bound, 0.0) + sample.value
    return out


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (``histogram_quantile``'s interpolation);
    ``None`` without observations. Past the last finite bound, that bound."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _minus(now: Buckets, before: Buckets) -> Buckets:
    return {bound: count - before.get(bound, 0.0) for bound, count in now.items()}


class RateWindow:
    """The throughput and latency of ``role`` since the previous :meth:`figures` (see the
    module doc). ``clock`` is monotonic seconds, injected by tests."""

    def __init__(
        self, role: str, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self._counters: dict[str, Any] = {}
        self._histograms: dict[str, Any] = {}
        if role == "executor":
            self._counters = {
                "executions": metrics.executor_ended_total,
                "taskRuns": metrics.taskrun_ended_total,
            }
            self._histograms = {"step": metrics.executor_batch}
        elif role == "worker":
            self._counters = {"taskRuns": metrics.worker_ended_total}
            self._histograms = {"taskRun": metrics.worker_duration}
        self._at = clock()
        self._totals, self._buckets = self._read()
        self._last: dict[str, Any] = {}

    def _read(self) -> tuple[dict[str, float], dict[str, Buckets]]:
        totals = {name: counter_total(metric) for name, metric in self._counters.items()}
        buckets = {name: histogram_buckets(metric) for name, metric in self._histograms.items()}
        return totals, buckets

    def figures(self) -> dict[str, Any]:
        """``{"throughput": {...}, "latency": {...}}`` over the interval since the last call
        (empty for a role with neither)."""
        if not self._counters and not self._histograms:
            return {}
        now = self.clock()
        window = now - self._at
        if window < MIN_WINDOW_S:
            return self._last
        totals, buckets = self._read()
        seconds = max(window, 1e-9)
        throughput = {
            name: round((total - self._totals.get(name, 0.0)) / seconds, 3)
            for name, total in totals.items()
        }
        latency: dict[str, dict[str, float | None]] = {}
        for name, cumulative in buckets.items():
            interval = _minus(cumulative, self._buckets.get(name, {}))
            latency[name] = {
                f"p{round(q * 100)}": _rounded(quantile(q, interval)) for q in QUANTILES
            }
        self._at, self._totals, self._buckets = now, totals, buckets
        self._last = {"throughput": throughput, "latency": latency, "windowS": round(window, 3)}
        return self._last


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
