"""The rows of ``kestream standalone`` itself: idle CPU and RSS per process, and start-up time.

They are not latency rows (bench/report.py's :class:`~bench.report.Row`): an idle row holds one
entry per process of the installation, a start-up row the seconds of several launches. Both are
kept in RESULTS.md's JSON data (``idle`` and ``startup``), where a later run of the same kind
(same broker; for start-up, same data dir state) replaces the earlier one, and rendered as tables
of their own.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: Processes that are not kestream's roles: the broker (Tansu, or Apache Kafka's JVM).
BROKER = "broker"


@dataclass(frozen=True, slots=True)
class ProcessFigures:
    """One process of an idle installation: CPU in % of one core, resident memory in MB."""

    name: str
    cpu_pct: float
    rss_mb: float


@dataclass(slots=True)
class IdleRow:
    """An idle ``kestream standalone``: every process of it over ``seconds``, after ``settle_s``."""

    broker: str
    seconds: float
    settle_s: float
    processes: list[ProcessFigures]
    commit: str
    command: str = ""
    date: str = ""

    def kestream(self) -> list[ProcessFigures]:
        """The supervisor and the roles: everything but the broker."""
        return [p for p in self.processes if not p.name.startswith(BROKER)]

    def broker_processes(self) -> list[ProcessFigures]:
        return [p for p in self.processes if p.name.startswith(BROKER)]

    def totals(self) -> dict[str, float]:
        """CPU % and RSS MB of kestream's processes, of the broker, and of all of them."""
        ours, theirs = self.kestream(), self.broker_processes()
        return {
            "kestream_cpu_pct": round(sum(p.cpu_pct for p in ours), 2),
            "kestream_rss_mb": round(sum(p.rss_mb for p in ours), 1),
            "broker_cpu_pct": round(sum(p.cpu_pct for p in theirs), 2),
            "broker_rss_mb": round(sum(p.rss_mb for p in theirs), 1),
            "total_cpu_pct": round(sum(p.cpu_pct for p in self.processes), 2),
            "total_rss_mb": round(sum(p.rss_mb for p in self.processes), 1),
        }

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["totals"] = self.totals()
        return body

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IdleRow:
        processes = [ProcessFigures(**p) for p in data.get("processes", [])]
        fields = {k: data[k] for k in ("broker", "seconds", "settle_s", "commit") if k in data}
        return cls(
            processes=processes,
            command=data.get("command", ""),
            date=data.get("date", ""),
            **fields,
        )

    def key(self) -> tuple[Any, ...]:
        return ("idle", self.broker)


@dataclass(slots=True)
class StartupRow:
    """Launches of ``kestream standalone`` until ``/health/ready`` answers 200.

    ``data`` is ``fresh`` (an empty ``KESTREAM_DATA_DIR`` each time) or ``existing`` (a restart
    on the data dir of an earlier run, its broker state written back first); ``phases`` are the
    median seconds after launch at which each start-up phase's log line appeared.
    """

    broker: str
    data: str
    seconds: list[float]
    commit: str
    phases: dict[str, float] = field(default_factory=dict)
    #: Each role process's own breakdown, as it logs it once ready (medians; by its roles).
    processes: dict[str, dict[str, float]] = field(default_factory=dict)
    command: str = ""
    date: str = ""

    @property
    def median_s(self) -> float | None:
        return round(statistics.median(self.seconds), 2) if self.seconds else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "median_s": self.median_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StartupRow:
        names = ("broker", "data", "seconds", "commit", "phases", "processes", "command", "date")
        return cls(**{k: data[k] for k in names if k in data})

    def key(self) -> tuple[Any, ...]:
        return ("startup", self.broker, self.data)


def median_phases(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each phase's median over the runs that logged it, in the order the phases came."""
    order: dict[str, list[float]] = {}
    for run in runs:
        for name, at in run.items():
            order.setdefault(name, []).append(at)
    medians = {name: round(statistics.median(ats), 2) for name, ats in order.items()}
    return dict(sorted(medians.items(), key=lambda item: item[1]))


def median_processes(runs: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each process's parts, each the median over the runs that logged it."""
    seen: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for process, parts in run.items():
            for part, seconds in parts.items():
                seen.setdefault(process, {}).setdefault(part, []).append(seconds)
    return {
        process: {part: round(statistics.median(values), 2) for part, values in parts.items()}
        for process, parts in seen.items()
    }


def merge(
    stored: list[dict[str, Any]], new: Sequence[IdleRow | StartupRow]
) -> list[dict[str, Any]]:
    """``stored`` rows of one kind without those the new rows replace, then the new ones."""
    if not new:
        return stored
    kind = type(new[0])
    keys = {row.key() for row in new}
    kept = [s for s in stored if kind.from_json(s).key() not in keys]
    return kept + [row.to_json() for row in new]


# -- tables ----------------------------------------------------------------------------------------


def idle_table(rows: Sequence[IdleRow]) -> str:
    """One line per process of each idle row, then the totals: kestream's, the broker's, all."""
    lines = [
        "| broker | process | CPU % of one core | RSS MB |",
        "|---|---|---|---|",
    ]
    for row in rows:
        for p in row.processes:
            lines.append(f"| {row.broker} | {p.name} | {p.cpu_pct:.1f} | {p.rss_mb:.0f} |")
        totals = row.totals()
        for what in ("kestream", "broker", "total"):
            cpu, rss = totals[f"{what}_cpu_pct"], totals[f"{what}_rss_mb"]
            label = {"kestream": "kestream (supervisor + roles)", "broker": "broker"}.get(
                what, "everything"
            )
            lines.append(f"| {row.broker} | **{label}** | **{cpu:.1f}** | **{rss:.0f}** |")
    return "\n".join(lines)


def startup_table(rows: Sequence[StartupRow]) -> str:
    """Median, the runs, and the median moment of each phase that the log showed."""
    lines = [
        "| broker | data dir | runs | median to ready | each run "
        "| phases (median s after launch) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        median = "-" if row.median_s is None else f"{row.median_s:.2f} s"
        runs = ", ".join(f"{s:.2f}" for s in row.seconds)
        phases = "; ".join(f"{name} {at:.2f}" for name, at in row.phases.items()) or "-"
        cells = (row.broker, row.data, str(len(row.seconds)), median, runs, phases)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def process_table(rows: Sequence[StartupRow]) -> str:
    """Each role process's start-up as it logs it (median s), one line per process; empty when
    no row has any (roles that do not log it)."""
    parts = list(dict.fromkeys(p for row in rows for f in row.processes.values() for p in f))
    if not parts:
        return ""
    lines = [
        "| broker | data dir | process | " + " | ".join(parts) + " |",
        "|---|---|---|" + "---|" * len(parts),
    ]
    for row in rows:
        for process, figures in row.processes.items():
            cells = [f"{figures[p]:.2f}" if p in figures else "-" for p in parts]
            lines.append(f"| {row.broker} | {row.data} | {process} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_idle(row: IdleRow) -> list[str]:
    """The readable lines of an idle row (stderr)."""
    out = [f"idle {row.broker}, {row.seconds:g} s after {row.settle_s:g} s settling:"]
    width = max([14, *(len(p.name) for p in row.processes)])
    out += [
        f"  {p.name:<{width}} CPU {p.cpu_pct:6.2f} % of a core   RSS {p.rss_mb:7.1f} MB"
        for p in row.processes
    ]
    totals = row.totals()
    for what in ("kestream", "broker", "total"):
        label = f"= {what}"
        out.append(
            f"  {label:<{width}} CPU {totals[f'{what}_cpu_pct']:6.2f} % of a core   "
            f"RSS {totals[f'{what}_rss_mb']:7.1f} MB"
        )
    return out


def print_startup(row: StartupRow) -> list[str]:
    median = "-" if row.median_s is None else f"{row.median_s:.2f} s"
    runs = ", ".join(f"{s:.2f}" for s in row.seconds)
    out = [f"start-up {row.broker}, {row.data} data dir: median {median} to ready ({runs})"]
    out += [f"  {name:<30} {at:6.2f} s" for name, at in row.phases.items()]
    for process, parts in row.processes.items():
        out.append(f"  {process}: " + ", ".join(f"{p} {s:.2f} s" for p, s in parts.items()))
    return out
