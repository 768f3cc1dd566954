"""The figures kestream is measured against, copied from ../shared/BENCHMARKS.md.

Kestra's figures come from its blog posts and documentation (4 vCPUs for Kestra alone, Kafka and
Elasticsearch on other VMs); the peers (Celery, the bare-aiokafka floor) were measured on a box
like ours (2 cores, everything on it). They are kept here as data so that every printed row can
show its ratio to them; a figure only has a meaning next to the statistic it describes, so each
one says which of ours it is compared with (Kestra publishes one "latency" per rate, compared
with our p50).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Figure:
    """A published latency: ``seconds`` of ``stat`` for ``workload`` at ``rate_per_min``.

    ``rate_per_min`` None means the source gives no rate (W3, or "W2 5.02 s"): the figure is
    shown beside every row of the workload. ``stat`` is the statistic of ours it is compared
    with: ``p50``, ``p99`` or ``median`` (W3's wall time).
    """

    source: str
    workload: str
    rate_per_min: int | None
    seconds: float
    stat: str = "p50"
    note: str = ""
    iterations: int | None = None


def _series(
    source: str, workload: str, points: dict[int, float], falls_over: tuple[int, ...] = ()
) -> list[Figure]:
    return [
        Figure(source, workload, rate, seconds, note="falls over" if rate in falls_over else "")
        for rate, seconds in points.items()
    ]


KESTRA_EE = "Kestra EE 0.23 (Kafka)"
KESTRA_OSS = "Kestra OSS 0.23 (Postgres)"
KESTRA_10 = "Kestra 1.0 (JDBC)"
CELERY = "Celery 5.7 + Redis (prefork)"
CELERY_GEVENT = "Celery 5.7 + Redis (gevent)"
FLOOR_DOC = "floor (aiokafka, BENCHMARKS.md)"

FIGURES: tuple[Figure, ...] = (
    *_series(
        KESTRA_EE,
        "W1",
        {250: 0.24, 1000: 0.27, 2000: 0.30, 3000: 0.39, 3500: 0.90, 4000: 0.64, 4500: 4.0},
        falls_over=(4500,),
    ),
    *_series(KESTRA_OSS, "W1", {250: 0.21, 1000: 0.23, 2000: 14.0}, falls_over=(2000,)),
    *_series(KESTRA_10, "W1", {1000: 0.246, 2500: 0.635, 3000: 13.0}, falls_over=(3000,)),
    *(Figure(CELERY, "W1", r, 0.008, note="p50 5-8 ms") for r in (1000, 2000, 4000, 6000)),
    *(Figure(CELERY, "W1", r, 0.010, "p99", note="p99 <= 10 ms") for r in (1000, 2000, 4000, 6000)),
    Figure(CELERY, "W1", 12000, 30.0, note="falls over"),
    Figure(FLOOR_DOC, "W1", 1000, 0.033),
    Figure(FLOOR_DOC, "W1", 6000, 0.124),
    Figure(FLOOR_DOC, "W1", 12000, 0.166),
    Figure(FLOOR_DOC, "W1", 12000, 0.83, "p99"),
    *_series("Kestra 0.24", "W2", {500: 5.1, 1000: 13.0}, falls_over=(1000,)),
    *_series(KESTRA_10, "W2", {500: 5.1, 1000: 5.1, 1500: 5.1, 2000: 13.0}, falls_over=(2000,)),
    Figure(CELERY_GEVENT, "W2", 2000, 5.00),
    Figure(FLOOR_DOC, "W2", None, 5.02, note="rate not stated"),
    Figure("Kestra 0.22", "W3", None, 44.0, "median", iterations=160),
    Figure("Kestra 0.23", "W3", None, 13.0, "median", iterations=160),
    Figure(CELERY, "W3", None, 0.38, "median", note="160-way chord", iterations=160),
    Figure(FLOOR_DOC, "W3", None, 0.037, "median", iterations=160),
    Figure("Kestra 0.22", "W4", 600, 12.0),
    Figure("Kestra 0.23", "W4", 600, 4.0),
    Figure(CELERY, "W4", 600, 0.015),
)


def figures_for(workload: str, rate_per_min: float | None, iterations: int | None) -> list[Figure]:
    """The published figures that share this row's workload and rate (or size, for W3)."""
    return [
        f
        for f in FIGURES
        if f.workload == workload
        and (f.rate_per_min is None or rate_per_min is None or f.rate_per_min == rate_per_min)
        and (f.iterations is None or f.iterations == iterations)
    ]


@dataclass(frozen=True, slots=True)
class Target:
    """kestream's own target for one row (BENCHMARKS.md, "Our targets"); None = no bound."""

    workload: str
    rate_per_min: int | None
    p50_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None
    kept_up: bool = False
    iterations: int | None = None


TARGETS: tuple[Target, ...] = (
    Target("W1", 6000, p50_s=0.060, p99_s=0.250, kept_up=True),
    Target("W1", 12000, p99_s=1.0, kept_up=True),
    Target("W2", 6000, p99_s=5.3, kept_up=True),
    Target("W3", None, p50_s=0.150, iterations=160),
    Target("W3", None, max_s=10.0, iterations=10_000),
    Target("W4", 600, p50_s=0.050, p99_s=0.150),
    # Issue 12's targets for the script and Python task paths (no Kestra figure to compare with).
    Target("W7", 600, p50_s=0.100),
    Target("W8", 6000, p50_s=0.030),
)

#: ForEach 10 000's cost per iteration may be at most this multiple of ForEach 160's.
W3_PER_ITERATION_RATIO = 1.5


def target_for(workload: str, rate_per_min: float | None, iterations: int | None) -> Target | None:
    for target in TARGETS:
        if (
            target.workload == workload
            and target.rate_per_min == rate_per_min
            and target.iterations == iterations
        ):
            return target
    return None


def target_misses(
    target: Target, p50_s: float | None, p99_s: float | None, max_s: float | None, kept_up: bool
) -> list[str]:
    """What a row misses of its target, in words (empty: met). None figures count as missed."""
    misses: list[str] = []
    bounds = (
        ("p50", p50_s, target.p50_s),
        ("p99", p99_s, target.p99_s),
        ("max", max_s, target.max_s),
    )
    for name, ours, bound in bounds:
        if bound is not None and (ours is None or ours > bound):
            shown = "never ended" if ours is None else f"{ours * 1000:.0f} ms"
            misses.append(f"{name} {shown} > {bound * 1000:.0f} ms")
    if target.kept_up and not kept_up:
        misses.append("did not keep up")
    return misses
