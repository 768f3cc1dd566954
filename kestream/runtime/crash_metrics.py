"""The supervisor's crash counts on ``/metrics`` (see :mod:`kestream.runtime.restarts`).

Apart from :mod:`~kestream.runtime.restarts` so that the supervisor, which writes the counts and
serves no metrics, does not import the Prometheus client (about 2 MB of its resident memory);
the API role that reads them imports it anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from kestream.runtime.metrics import PREFIX, Metrics
from kestream.runtime.restarts import CRASHES_FILE_ENV


class CrashCollector(Collector):
    """Exposes a :class:`CrashLedger` file as ``kestream_standalone_role_crashes_total{role,
    cause}`` and ``kestream_standalone_role_restarts_total{role}``, read at each scrape."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            data = {}
        crashes = CounterMetricFamily(
            PREFIX + "standalone_role_crashes",
            "Role processes of kestream standalone that exited unasked, by role and cause",
            labels=("role", "cause"),
        )
        for role, by_cause in sorted(data.get("crashes", {}).items()):
            for cause, count in sorted(by_cause.items()):
                crashes.add_metric((role, cause), count)
        restarts = CounterMetricFamily(
            PREFIX + "standalone_role_restarts",
            "Role processes kestream standalone started again after a crash, by role",
            labels=("role",),
        )
        for role, count in sorted(data.get("restarts", {}).items()):
            restarts.add_metric((role,), count)
        yield crashes
        yield restarts

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


def expose_supervisor_crashes(metrics: Metrics) -> bool:
    """In a child of ``kestream standalone`` (:data:`CRASHES_FILE_ENV` set), add the ledger's
    counts to ``metrics``; True when it did. A process registers it once."""
    path = os.environ.get(CRASHES_FILE_ENV)
    if not path:
        return False
    with contextlib.suppress(ValueError):  # already registered in this registry
        metrics.registry.register(CrashCollector(Path(path)))
    return True
