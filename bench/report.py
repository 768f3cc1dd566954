"""Turn measured samples into rows, and rows into JSON lines, tables, ratios and RESULTS.md.

Percentiles are nearest-rank over *every* offered execution, with the ones that never ended
counted as infinitely late (so a run that drops work cannot show a good p99); a percentile that
lands on one of those is printed as ``never`` and is ``null`` in JSON.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import pstats
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import reference, system_rows, workloads

if TYPE_CHECKING:
    from bench.harness import Sample
    from bench.stack import Usage
    from bench.steady import SteadyCost

#: The fields of a JSON row, in BENCHMARKS.md's order (W3 rows add ``iterations``).
JSON_FIELDS = (
    "workload",
    "rate_per_min",
    "duration_s",
    "inline_tasks",
    "offered",
    "completed",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "backlog_at_end",
    "kept_up",
    "submit_lag_max_ms",
    "cpu_s",
    "rss_mb",
    "broker_cpu_s",
    "commit",
)
_PROFILE_TOP = 25


# -- statistics ------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (``inf`` entries never ended); nan if empty."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(q / 100.0 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, rank))]


def _ms(seconds: float | None) -> float | None:
    """Seconds -> milliseconds for output; infinite or unknown -> None (``null``, ``never``)."""
    if seconds is None or math.isinf(seconds) or math.isnan(seconds):
        return None
    return round(seconds * 1000, 1)


def _rate(rate: float | None) -> float | int | None:
    return int(rate) if rate is not None and float(rate).is_integer() else rate


@dataclass(slots=True)
class Row:
    """One line of results: BENCHMARKS.md's JSON fields, plus ``extra`` for the readable side."""

    workload: str
    rate_per_min: float | int | None
    duration_s: float
    inline_tasks: bool
    offered: int
    completed: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    backlog_at_end: int
    kept_up: bool | None
    submit_lag_max_ms: float | None
    cpu_s: dict[str, float]
    rss_mb: dict[str, float]
    broker_cpu_s: float | None
    commit: str
    iterations: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Exactly the fields BENCHMARKS.md lists, in its order."""
        body = {name: getattr(self, name) for name in JSON_FIELDS}
        if self.iterations is not None:
            body["iterations"] = self.iterations
        if self.extra.get("via", "client") != "client":
            body["via"] = self.extra["via"]
        if self.extra.get("isolation"):
            body["isolation"] = self.extra["isolation"]
        if self.extra.get("steady_cpu_ms"):  # all roles and the broker, while offered
            body["steady_cpu_ms_per_execution"] = round(
                sum(self.extra["steady_cpu_ms"].values()), 3
            )
        return body

    def key(self) -> tuple[Any, ...]:
        """What a later run of the same thing replaces in RESULTS.md."""
        broker = self.extra.get("broker", "embedded")
        via = self.extra.get("via", "client")
        isolation = self.extra.get("isolation")
        layout = self.extra.get("layout", "separate")
        return (
            self.workload,
            self.rate_per_min,
            self.inline_tasks,
            self.iterations,
            broker,
            via,
            isolation,
            layout,
        )

    def name(self) -> str:
        """The workload as tables show it: W3 with its size, W8 with its task's isolation."""
        detail = self.iterations or self.extra.get("isolation")
        return self.workload + (f" ({detail})" if detail else "")


def _latencies(samples: Iterable[Sample], end_of: str) -> list[float]:
    values = []
    for sample in samples:
        end = getattr(sample, end_of)
        values.append(math.inf if end is None else end - sample.due)
    return sorted(values)


def _common(samples: list[Sample]) -> dict[str, Any]:
    """Percentiles (executor's end stamp and client-seen) and failures of a list of samples."""
    lats = _latencies(samples, "end")
    seen = _latencies(samples, "seen")
    failed = [s for s in samples if s.state is not None and s.state != "SUCCESS"]
    errors = [s.error for s in samples if s.error]
    return {
        "p50_ms": _ms(percentile(lats, 50)),
        "p95_ms": _ms(percentile(lats, 95)),
        "p99_ms": _ms(percentile(lats, 99)),
        "max_ms": _ms(lats[-1]) if lats else None,
        "extra": {
            "seen_p50_ms": _ms(percentile(seen, 50)),
            "seen_p99_ms": _ms(percentile(seen, 99)),
            "not_success": len(failed),
            "submit_errors": errors[:3],
        },
    }


def rate_row(
    workload: workloads.Workload,
    rate: float,
    duration_s: float,
    inline: bool,
    samples: list[Sample],
    window_close: float,
    usage: Usage,
) -> Row:
    """The row of an open-loop run (see the module docs of :mod:`bench.harness`)."""
    stats = _common(samples)
    completed = sum(1 for s in samples if s.end is not None and s.end <= window_close)
    lags = sorted(s.lag for s in samples if s.lag is not None)
    p99 = stats["p99_ms"]
    limit = workload.p99_limit_s or math.inf
    kept_up = bool(samples) and completed == len(samples) and p99 is not None and p99 < limit * 1000
    stats["extra"]["submit_lag_p50_ms"] = _ms(percentile(lags, 50)) if lags else None
    stats["extra"]["cpu_window_s"] = usage.window_s
    if workload.isolation:
        stats["extra"]["isolation"] = workload.isolation
    return Row(
        workload=workload.name,
        rate_per_min=_rate(rate),
        duration_s=duration_s,
        inline_tasks=inline,
        offered=len(samples),
        completed=completed,
        backlog_at_end=len(samples) - completed,
        kept_up=kept_up,
        submit_lag_max_ms=_ms(lags[-1]) if lags else None,
        cpu_s=usage.cpu_s,
        rss_mb=usage.rss_mb,
        broker_cpu_s=usage.broker_cpu_s,
        commit=git_commit(),
        **stats,
    )


def series_row(
    workload: workloads.Workload,
    elapsed_s: float,
    inline: bool,
    samples: list[Sample],
    usage: Usage,
) -> Row:
    """The row of W3's executions run one after another: wall time of each, from its submit."""
    stats = _common(samples)
    completed = sum(1 for s in samples if s.end is not None)
    return Row(
        workload=workload.name,
        rate_per_min=None,
        duration_s=round(elapsed_s, 2),
        inline_tasks=inline,
        offered=len(samples),
        completed=completed,
        backlog_at_end=len(samples) - completed,
        kept_up=None,
        submit_lag_max_ms=None,
        cpu_s=usage.cpu_s,
        rss_mb=usage.rss_mb,
        broker_cpu_s=usage.broker_cpu_s,
        commit=git_commit(),
        iterations=workload.iterations,
        **stats,
    )


def git_commit() -> str:
    """HEAD of the repository, with ``-dirty`` when tracked files differ from it."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=workloads.REPO, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


# -- the readable table ----------------------------------------------------------------------------


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "never"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.0f} ms"


def _fmt_map(values: dict[str, float], keys: Sequence[str]) -> str:
    return " / ".join(f"{values[k]:g}" if k in values else "-" for k in keys)


_TABLE_HEAD = (
    "| workload | broker / entry | rate/min | inline | offered | completed | p50 | p95 | p99 "
    "| max | backlog | kept up | submit lag max | CPU s exec / worker / loadgen | broker CPU s "
    "| peak RSS MB exec / worker / broker |"
)


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (stderr and RESULTS.md show the same thing)."""
    lines = [_TABLE_HEAD, "|" + "---|" * _TABLE_HEAD.count(" | ") + "---|"]
    for row in rows:
        name = row.name()
        kept = {True: "yes", False: "**no**", None: "-"}[row.kept_up]
        cells = (
            name,
            where(row),
            "-" if row.rate_per_min is None else str(row.rate_per_min),
            "on" if row.inline_tasks else "off",
            str(row.offered),
            str(row.completed),
            _fmt_ms(row.p50_ms),
            _fmt_ms(row.p95_ms),
            _fmt_ms(row.p99_ms),
            _fmt_ms(row.max_ms),
            str(row.backlog_at_end),
            kept,
            "-" if row.submit_lag_max_ms is None else _fmt_ms(row.submit_lag_max_ms),
            _fmt_map(row.cpu_s, ("executor", "worker", "loadgen")),
            "-" if row.broker_cpu_s is None else f"{row.broker_cpu_s:g}",
            _fmt_map(row.rss_mb, ("executor", "worker", "broker")),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ours(row: Row, stat: str) -> float | None:
    value = row.p99_ms if stat == "p99" else row.p50_ms
    return None if value is None else value / 1000


def comparison_lines(row: Row, floor: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Beside Kestra's and the peers' figures (ratio ours/theirs), the target, the live floor."""
    lines = []
    for fig in reference.figures_for(row.workload, row.rate_per_min, row.iterations):
        ours = _ours(row, fig.stat)
        ratio = "-" if ours is None else f"{ours / fig.seconds:.3g}x"
        note = f" ({fig.note})" if fig.note else ""
        lines.append(f"{fig.source}{note}: {fig.seconds:g} s {fig.stat}; ours/theirs {ratio}")
    for peer in floor_matches(row, floor):
        lines.append(peer)
    target = reference.target_for(row.workload, row.rate_per_min, row.iterations)
    if target is not None:
        max_s = None if row.max_ms is None else row.max_ms / 1000
        misses = reference.target_misses(
            target, _ours(row, "p50"), _ours(row, "p99"), max_s, bool(row.kept_up)
        )
        lines.append("target: met" if not misses else "target missed: " + "; ".join(misses))
    return lines


def where(row: Row) -> str:
    """The broker the row ran on (``embedded`` Tansu, ``kafka``), unless it was kestream's
    Python API the way executions entered (``webhook``), and ``shared`` when the first
    executor and the worker ran in one process (``--layout shared``, as standalone runs them)."""
    broker = str(row.extra.get("broker", "embedded"))
    via = row.extra.get("via", "client")
    parts = [broker] if via == "client" else [broker, via]
    if row.extra.get("layout", "separate") != "separate":
        parts.append(str(row.extra["layout"]))
    return ", ".join(parts)


def row_heading(row: Row) -> str:
    # name() already carries a W3 row's size: "W3 (160), inline on", not "W3 (160) 160 iter".
    rate = f" {row.rate_per_min}/min" if row.rate_per_min is not None else ""
    return f"{row.name()}{rate}, inline {'on' if row.inline_tasks else 'off'}, {where(row)}"


def print_row(row: Row, floor: Sequence[dict[str, Any]] = ()) -> None:
    """One finished run, readable, on stderr."""
    out = sys.stderr
    print("\n" + markdown_table([row]), file=out)
    extra = row.extra
    print(
        f"  client saw the end: p50 {_fmt_ms(extra.get('seen_p50_ms'))}, "
        f"p99 {_fmt_ms(extra.get('seen_p99_ms'))}; not SUCCESS: {extra.get('not_success', 0)}; "
        f"broker {extra.get('broker_kind', '?')}, {extra.get('executors', '?')} executor "
        f"process(es); logs in {extra.get('run_dir', '?')}",
        file=out,
    )
    cost = cpu_line(row)
    if cost:
        print(f"  {cost}", file=out)
    sends = sends_line(row)
    if sends:
        print(f"  {sends}", file=out)
    for line in comparison_lines(row, floor):
        print(f"  {line}", file=out)
    for line in extra.get("role_errors") or []:
        print(f"  role error: {line}", file=out)
    profiles = extra.get("profiles") or {}
    if profiles:
        print("  (profiled run: its latency and CPU figures include cProfile's overhead)", file=out)
    for role, text in profiles.items():
        print(f"\n  profile of the {role} role (CPU time, measured window only):\n{text}", file=out)
    out.flush()


def cpu_line(row: Row) -> str | None:
    """CPU per completed execution of each role and the broker, and of all of them (the issue's
    "CPU per W1 execution, all roles + broker"), in the steady window while the rate was offered
    (:mod:`bench.steady`), then over the whole measured window; None where there is none."""
    cost = cpu_per_execution(row)
    if not cost:
        return None
    whole = ", ".join(f"{role} {ms:.2f} ms" for role, ms in cost.items())
    whole = f"{whole}; all {sum(cost.values()):.2f} ms"
    steady = row.extra.get("steady_cpu_ms")
    if not steady:  # (rows taken before the steady window was)
        return f"CPU per completed execution: {whole}"
    whole = f"whole run (with start and idle tail): {whole}"
    shown = ", ".join(f"{role} {ms:.2f} ms" for role, ms in steady.items())
    window = (
        f"{row.extra.get('steady_window_s', '?')} s, {row.extra.get('steady_ended', '?')} ended"
    )
    return (
        f"CPU per completed execution, steady ({window}): {shown}; "
        f"all {sum(steady.values()):.2f} ms; {whole}"
    )


def add_sends(row: Row, counts: dict[str, dict[str, float]]) -> None:
    """Keep the broker requests and doorbell rings per execution (:mod:`bench.requests`)."""
    if counts:
        row.extra["sends_per_execution"] = counts


def sends_line(row: Row) -> str | None:
    """Broker requests (the broker's answers under ``broker``) and doorbell rings per execution
    of each process in the steady window; None when they were not counted."""
    counts = row.extra.get("sends_per_execution")
    if not counts:
        return None
    parts = []
    for what in ("requests", "rings"):
        per = counts.get(what) or {}
        sent = sum(n for name, n in per.items() if name != "broker")
        shown = ", ".join(f"{name} {n:g}" for name, n in per.items())
        parts.append(f"{what} {shown}; sent in all {sent:.2f}")
    return "per execution (steady window), " + " | ".join(parts)


def add_steady_cost(row: Row, cost: SteadyCost | None) -> None:
    """Keep the steady window's CPU per execution (:mod:`bench.steady`) with the row."""
    if cost is None:
        return
    row.extra["steady_cpu_ms"] = cost.ms
    row.extra["steady_window_s"] = cost.window_s
    row.extra["steady_ended"] = cost.ended


def cpu_per_execution(row: Row) -> dict[str, float]:
    """CPU milliseconds per completed execution of a rate row, per role and the broker (empty for
    W3 or a run where nothing completed): what one task run costs each process (W7's shell
    process, W8's Python call). It includes what the processes spend idle (fetch polling), which
    dominates at low rates: compare settings at the same rate."""
    if row.rate_per_min is None or not row.completed:
        return {}
    spent = {role: cpu for role, cpu in row.cpu_s.items() if role != "loadgen"}
    if row.broker_cpu_s is not None:
        spent["broker"] = row.broker_cpu_s
    return {role: round(cpu * 1000 / row.completed, 3) for role, cpu in spent.items()}


# -- a sweep: where a workload stops keeping up ----------------------------------------------------


def _sweeps(rows: Sequence[Row]) -> dict[tuple[str, str, bool], list[Row]]:
    """Rate rows by workload, broker and entry, and inline switch: each group one sweep."""
    sweeps: dict[tuple[str, str, bool], list[Row]] = {}
    for row in rows:
        if row.rate_per_min is not None:
            sweeps.setdefault((row.workload, where(row), row.inline_tasks), []).append(row)
    return sweeps


def ceiling_lines(rows: Sequence[Row]) -> list[str]:
    """For each workload swept over several rates (``--rates``), the highest rate it kept up
    with and the lowest it did not; rows of different brokers, entries or inline switches are
    separate sweeps."""
    lines = []
    for (name, place, inline), swept in _sweeps(rows).items():
        if len({r.rate_per_min for r in swept}) < 2:
            continue
        kept = [float(r.rate_per_min or 0) for r in swept if r.kept_up]
        lost = [float(r.rate_per_min or 0) for r in swept if not r.kept_up]
        tried = f"{name} ({place}, inline {'on' if inline else 'off'})"
        best = f"kept up at {max(kept):g}/min" if kept else "kept up at no rate tried"
        worst = f"stopped keeping up at {min(lost):g}/min" if lost else "no rate tried was too high"
        lines.append(f"{tried}: {best}; {worst}")
    return lines


def ceiling_summary(rows: Sequence[Row]) -> list[str]:
    """``--ceiling``'s verdict per sweep, even of one rate: the highest rate kept up and the
    first that was not, with their p99; then, per rate, the load generator's CPU, which shares
    the machine's cores with kestream and the broker (a ceiling it reaches is its own)."""
    lines = []
    for (name, place, inline), swept in _sweeps(rows).items():
        ordered = sorted(swept, key=lambda r: float(r.rate_per_min or 0))
        kept = [r for r in ordered if r.kept_up]
        lost = [r for r in ordered if not r.kept_up]
        head = f"{name} ceiling ({place}, inline {'on' if inline else 'off'}): "
        best = (
            f"highest rate kept up {kept[-1].rate_per_min}/min (p99 {_fmt_ms(kept[-1].p99_ms)})"
            if kept
            else "no rate tried was kept up"
        )
        worst = (
            f"not kept up at {lost[0].rate_per_min}/min (p99 {_fmt_ms(lost[0].p99_ms)}, "
            f"backlog {lost[0].backlog_at_end})"
            if lost
            else "every rate tried was kept up: try higher --rates"
        )
        lines.append(head + best + "; " + worst)
        for row in ordered:
            share = loadgen_share(row)
            if share is not None:
                lines.append(
                    f"  {row.rate_per_min}/min: load generator {share:.0f} % of one core "
                    f"({row.cpu_s['loadgen']:g} s CPU in {row.extra['cpu_window_s']:g} s)"
                )
    return lines


def loadgen_share(row: Row) -> float | None:
    """The load generator's CPU over the measured window, in % of one core (None: unknown)."""
    cpu, window = row.cpu_s.get("loadgen"), row.extra.get("cpu_window_s")
    if cpu is None or not window:
        return None
    return float(cpu) * 100 / float(window)


# -- W8: what isolating a Python task in a process costs -------------------------------------------


def isolation_lines(rows: Sequence[Row]) -> list[str]:
    """For each rate W8 ran at with its task both in a worker process and in a worker thread
    (``--isolation process,thread``, same broker, entry and inline switch): what the process
    adds per task, in latency and in the worker's CPU per completed execution."""
    pairs: dict[tuple[Any, ...], dict[str, Row]] = {}
    for row in rows:
        isolation = row.extra.get("isolation")
        if isolation and row.rate_per_min is not None:
            key = (row.workload, row.rate_per_min, where(row), row.inline_tasks)
            pairs.setdefault(key, {})[isolation] = row
    lines = []
    for (name, rate, place, _), pair in pairs.items():
        process, thread = pair.get("process"), pair.get("thread")
        if process is None or thread is None:
            continue
        parts = [
            f"{stat} {_delta_ms(getattr(process, f'{stat}_ms'), getattr(thread, f'{stat}_ms'))}"
            for stat in ("p50", "p99")
        ]
        cpu = cpu_per_execution(process).get("worker"), cpu_per_execution(thread).get("worker")
        parts.append(f"worker CPU per execution {_delta_ms(*cpu)}")
        head = f"{name} {rate}/min ({place}): a worker process per task instead of a thread costs"
        lines.append(f"{head} {', '.join(parts)}")
    return lines


def _delta_ms(process_ms: float | None, thread_ms: float | None) -> str:
    if process_ms is None or thread_ms is None:
        return "unknown (a run did not end)"
    return f"{process_ms - thread_ms:+.2f} ms ({thread_ms:g} -> {process_ms:g})"


# -- W3: cost per iteration ------------------------------------------------------------------------


def per_iteration_lines(rows: Sequence[Row]) -> list[str]:
    """ForEach 10 000's wall and executor CPU per iteration against ForEach 160's."""
    by_size = {r.iterations: r for r in rows if r.workload == "W3" and r.iterations}
    small, big = by_size.get(160), by_size.get(10_000)
    if small is None or big is None:
        return []
    lines = []
    for what, per in (("wall", _wall_per_iteration), ("executor CPU", _cpu_per_iteration)):
        a, b = per(small), per(big)
        if a is None or b is None:
            lines.append(f"{what} per iteration: not measured (a run did not end)")
            continue
        verdict = "ok" if b / a <= reference.W3_PER_ITERATION_RATIO else "over the 1.5x target"
        lines.append(
            f"{what} per iteration: ForEach 160 {a * 1e6:.0f} us, ForEach 10 000 "
            f"{b * 1e6:.0f} us, ratio {b / a:.2f} ({verdict})"
        )
    return lines


def _wall_per_iteration(row: Row) -> float | None:
    if row.p50_ms is None or not row.iterations:
        return None
    return row.p50_ms / 1000 / row.iterations


def _cpu_per_iteration(row: Row) -> float | None:
    cpu = row.cpu_s.get("executor")
    if cpu is None or not row.completed or not row.iterations:
        return None
    return cpu / (row.completed * row.iterations)


# -- the floor, measured in the same sitting -------------------------------------------------------


def load_floor(path: Path | None) -> list[dict[str, Any]]:
    """The rows ``floor_bench.py`` appended to its ``results.jsonl`` (seconds, "inf" strings)."""
    if path is None or not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def _seconds(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isinf(number) or math.isnan(number) else number


def floor_matches(row: Row, floor: Sequence[dict[str, Any]]) -> list[str]:
    """Lines comparing a row with the floor runs of the same workload and rate (newest last)."""
    lines = []
    for peer in floor:
        if str(peer.get("workload", "")).upper() != row.workload:
            continue
        rate = float(peer.get("rate_per_min") or -1)
        if row.rate_per_min is not None and rate != row.rate_per_min:
            continue
        name = f"floor ({peer.get('config', '?')}, same sitting {peer.get('time', '')})"
        lines.append(name + ": " + _floor_ratio(row, peer))
    return lines


def _floor_ratio(row: Row, peer: dict[str, Any]) -> str:
    parts = []
    stats = ("p50", "p99") if row.rate_per_min is not None else ("median",)
    for stat in stats:
        theirs = _seconds(peer.get(stat))
        ours = _ours(row, "p50" if stat == "median" else stat)
        ratio = "-" if theirs is None or ours is None or theirs == 0 else f"{ours / theirs:.3g}x"
        shown = "never" if theirs is None else f"{theirs * 1000:.0f} ms"
        parts.append(f"{stat} {shown}, ours/floor {ratio}")
    parts.append(f"kept up {peer.get('kept_up', '?')}")
    return "; ".join(parts)


# -- profiles --------------------------------------------------------------------------------------


def profile_summary(profiles: dict[str, list[Path]], run_dir: Path) -> dict[str, str]:
    """Top functions by own and by cumulative time per role (every process of the role merged).

    The full listing is written next to the logs (``profile-<role>.txt``); the summary keeps
    paths short (from the package on) so that it reads in a terminal.
    """
    summaries = {}
    for role, paths in profiles.items():
        stats = pstats.Stats(*(str(p) for p in paths), stream=io.StringIO())
        text = _profile_text(stats, len(paths))
        (run_dir / f"profile-{role}.txt").write_text(text)
        summaries[role] = text
    return summaries


def _profile_text(stats: pstats.Stats, processes: int) -> str:
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in entries.values())
    lines = [f"  {processes} process(es), {total:.2f} s profiled (own time summed)"]
    for title, index in (("own time", 2), ("cumulative time", 3)):
        lines.append(f"  top {_PROFILE_TOP} by {title}:   own s    cum s     calls  function")
        ranked = sorted(entries.items(), key=lambda item: item[1][index], reverse=True)
        for (path, line, func), (_cc, calls, tt, ct, _callers) in ranked[:_PROFILE_TOP]:
            where = f"{_short_path(path)}:{line}({func})"
            lines.append(f"    {tt:9.2f} {ct:8.2f} {calls:9d}  {where}")
    return "\n".join(lines)


def _short_path(path: str) -> str:
    for marker in ("site-packages/", str(workloads.REPO) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return re.sub(r".*/lib/python3\.\d+/", "", path)


# -- RESULTS.md ------------------------------------------------------------------------------------

_DATA_START, _DATA_END = "<!-- data:start -->", "<!-- data:end -->"
_NOTES_START, _NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"
_STORED_EXTRA = (
    "role_errors",
    "seen_p50_ms",
    "seen_p99_ms",
    "not_success",
    "submit_lag_p50_ms",
    "cpu_window_s",
    "steady_cpu_ms",
    "steady_window_s",
    "steady_ended",
    "sends_per_execution",
    "broker",
    "broker_kind",
    "executors",
    "workers",
    "via",
    "isolation",
    "layout",
)


@dataclass(slots=True)
class Results:
    """RESULTS.md's data: every row kept (the newest per key), the commands, the floor runs."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, str]] = field(default_factory=list)
    floor: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""
    #: ``kestream standalone`` idle and start-up rows (bench/system_rows.py), as stored.
    idle: list[dict[str, Any]] = field(default_factory=list)
    startup: list[dict[str, Any]] = field(default_factory=list)


def _read_results(path: Path) -> Results:
    if not path.exists():
        return Results()
    text = path.read_text()
    data_match = re.search(
        re.escape(_DATA_START) + r"\s*```json\n(.*?)\n```\s*" + re.escape(_DATA_END), text, re.S
    )
    notes_re = re.escape(_NOTES_START) + r"\n?(.*?)" + re.escape(_NOTES_END)
    notes_match = re.search(notes_re, text, re.S)
    data = json.loads(data_match.group(1)) if data_match else {}
    return Results(
        rows=data.get("rows", []),
        commands=data.get("commands", []),
        floor=data.get("floor", []),
        notes=notes_match.group(1).strip() if notes_match else "",
        idle=data.get("idle", []),
        startup=data.get("startup", []),
    )


def read_results(path: Path) -> Results:
    """RESULTS.md's data (empty when the file does not exist yet)."""
    return _read_results(path)


def _stored(row: Row, command: str, date: str) -> dict[str, Any]:
    extra = {k: row.extra[k] for k in _STORED_EXTRA if k in row.extra}
    body = {**row.to_json(), "iterations": row.iterations, "extra": extra}
    return {**body, "command": command, "date": date}


def _row_from_stored(stored: dict[str, Any]) -> Row:
    names = (*JSON_FIELDS, "iterations", "extra")
    fields: dict[str, Any] = {k: stored.get(k) for k in names}
    if stored.get("via"):  # rows stored before "via" was kept among the extras
        fields["extra"] = {**(fields["extra"] or {}), "via": stored["via"]}
    return Row(**fields)


#: A stored row back as a :class:`Row` (for bench/plot.py).
row_from_stored = _row_from_stored


def write_results(
    path: Path,
    rows: Sequence[Row],
    floor: Sequence[dict[str, Any]],
    command: str,
    date: str,
    *,
    idle: Sequence[system_rows.IdleRow] = (),
    startup: Sequence[system_rows.StartupRow] = (),
) -> None:
    """Merge this invocation's rows (and floor runs) into RESULTS.md and render it again.

    A row replaces an earlier one with the same workload, rate, inline switch, size and broker,
    so re-running one command refreshes its rows; the notes between the notes markers are kept.
    Idle and start-up rows replace those of the same broker (and data dir state).
    """
    results = _read_results(path)
    keys = {row.key() for row in rows}
    kept = [r for r in results.rows if _row_from_stored(r).key() not in keys]
    results.rows = kept + [_stored(row, command, date) for row in rows]
    stamped: list[system_rows.IdleRow | system_rows.StartupRow] = [*idle, *startup]
    for row in stamped:
        row.command, row.date = command, date
    results.idle = system_rows.merge(results.idle, idle)
    results.startup = system_rows.merge(results.startup, startup)
    commit = rows[0].commit if rows else stamped[0].commit if stamped else git_commit()
    results.commands = [c for c in results.commands if c["command"] != command]
    results.commands.append({"command": command, "date": date, "commit": commit})
    known = {_floor_key(f) for f in results.floor}
    results.floor += [peer for peer in floor if _floor_key(peer) not in known]
    path.write_text(render_results(results, plot_files(path)))


def rewrite_results(path: Path) -> None:
    """Render RESULTS.md again from its own data (after the plots were drawn: their links)."""
    path.write_text(render_results(_read_results(path), plot_files(path)))


#: Where ``--plot`` writes its PNGs, beside RESULTS.md.
PLOTS_DIR = "plots"


def plot_files(path: Path) -> list[str]:
    """The PNGs beside RESULTS.md (``plots/*.png``), as links relative to it."""
    found = sorted((path.parent / PLOTS_DIR).glob("*.png"))
    return [f"{PLOTS_DIR}/{png.name}" for png in found]


def _floor_key(peer: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(peer.get(k) for k in ("workload", "rate_per_min", "config", "time"))


def _sort_key(row: Row) -> tuple[Any, ...]:
    return (
        row.workload,
        row.iterations or 0,
        where(row) != "embedded",
        where(row),
        not row.inline_tasks,
        row.rate_per_min or 0,
    )


def render_results(results: Results, plots: Sequence[str] = ()) -> str:
    rows = sorted((_row_from_stored(r) for r in results.rows), key=_sort_key)
    out = [
        "# kestream benchmark results",
        "",
        "Written by `python -m bench ... --write-results` (bench/report.py); everything below "
        "the notes is generated from the JSON data at the end, where each run replaces its own "
        'rows. Workloads, latency and "kept up" are defined in ../shared/BENCHMARKS.md. '
        "Latency: from the moment an execution was due (open loop) to its terminal state as the "
        "executor stamped it; percentiles over everything offered.",
        "",
        f"Machine: {_machine()}.",
    ]
    short = sorted({r.duration_s for r in rows if r.rate_per_min is not None and r.duration_s < 60})
    if short:
        out += [
            "",
            f"**Short first run: {', '.join(f'{d:g}' for d in short)} s per rate, not the "
            "60 s of the full protocol.**",
        ]
    out += ["", "## Notes", "", _NOTES_START, results.notes, _NOTES_END]
    out += ["", "## Commands", "", "| date | commit | command |", "|---|---|---|"]
    out += [f"| {c['date']} | `{c['commit'][:12]}` | `{c['command']}` |" for c in results.commands]
    out += ["", "## Results", "", markdown_table(rows)]
    ceilings = ceiling_lines(rows)
    if ceilings:
        out += ["", "## Highest rate kept up", ""] + [f"- {line}" for line in ceilings]
    out += _standalone_sections(results)
    if plots:
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    out += ["", "## Beside Kestra, the peers and the targets", ""]
    for row in rows:
        out.append(f"- **{row_heading(row)}**")
        out += [f"  - {line}" for line in comparison_lines(row, results.floor)]
        cost = cpu_line(row)
        if cost:
            out.append(f"  - {cost}")
        out += [f"  - role error: `{line}`" for line in row.extra.get("role_errors") or []]
    per_iteration = per_iteration_lines(rows)
    if per_iteration:
        out += ["", "## W3: cost per iteration", ""] + [f"- {line}" for line in per_iteration]
    isolation = isolation_lines(rows)
    if isolation:
        out += ["", "## W8: a worker process per task", ""] + [f"- {line}" for line in isolation]
    data: dict[str, Any] = {
        "rows": results.rows,
        "commands": results.commands,
        "floor": results.floor,
    }
    if results.idle:
        data["idle"] = results.idle
    if results.startup:
        data["startup"] = results.startup
    block = ["```json", json.dumps(data, indent=1), "```"]
    out += ["", "## Data", "", _DATA_START, *block, _DATA_END, ""]
    return "\n".join(out)


def _standalone_sections(results: Results) -> list[str]:
    """The idle and start-up tables of ``kestream standalone`` (bench/system_rows.py)."""
    out: list[str] = []
    idle = [system_rows.IdleRow.from_json(r) for r in results.idle]
    if idle:
        out += ["", "## Idle `kestream standalone`: CPU and RSS per process", ""]
        out += [system_rows.idle_table(idle)]
    startup = [system_rows.StartupRow.from_json(r) for r in results.startup]
    if startup:
        out += ["", "## `kestream standalone` start to `/health/ready` 200", ""]
        out += [system_rows.startup_table(startup)]
        processes = system_rows.process_table(startup)
        if processes:
            out += ["", "Each role process, as it logs its start-up once ready (median s):", ""]
            out += [processes]
    return out


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    python = platform.python_version()
    return f"{os.cpu_count()} cores ({model}), Python {python}, {platform.system()}"
