"""``--plot``: RESULTS.md's data drawn as PNGs in ``bench/plots/``, which RESULTS.md then embeds.

    python -m bench plot                    # draw from bench/RESULTS.md as it is
    python -m bench W1 --rates ... --write-results --plot

Two figures, each drawn only when the data holds something for it:

- ``w1_latency.png``: W1's p50 and p99 against the offered rate, one series per broker and inline
  switch, beside the floor runs stored with the results (``--floor``) and the figures Kestra
  published (bench/reference.py; one "latency" per rate, shown with our p50). A run whose
  percentile never ended is drawn at the top edge, marked ``x``: dropping it would flatter the
  series.
- ``idle.png``: CPU (% of one core) and RSS (MB) of each process of an idle ``kestream
  standalone``, one bar group per broker (bench/idle.py).

Drawn from the stored data only, never from a run in progress, so the figures and the tables
beside them always say the same thing. matplotlib is the ``bench`` extra
(``pip install -e '.[bench]'``); the rest of the bench runs without it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import reference, report, system_rows

LATENCY_PNG = "w1_latency.png"
IDLE_PNG = "idle.png"
_STATS = ("p50", "p99")
_KESTRA = "Kestra"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib, the bench extra: pip install -e '.[bench]'"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


# -- the series, as data (tested without matplotlib) ----------------------------------------------

#: One line of the latency figure: its label and (rate, ms or None for "never ended") points.
Series = tuple[str, list[tuple[float, float | None]]]


def kestream_series(rows: Sequence[dict[str, Any]], workload: str = "W1") -> list[Series]:
    """p50 and p99 of every stored rate row of ``workload``, one series per broker, entry and
    inline switch, in rate order (the newest row per rate: later ones replace earlier ones)."""
    grouped: dict[tuple[str, bool], dict[float, report.Row]] = {}
    for stored in rows:
        row = report.row_from_stored(stored)
        if row.workload != workload or row.rate_per_min is None or row.extra.get("isolation"):
            continue
        inline = bool(row.inline_tasks)
        grouped.setdefault((report.where(row), inline), {})[float(row.rate_per_min)] = row
    series: list[Series] = []
    # Per broker and entry, inline on before off.
    for (place, inline), by_rate in sorted(grouped.items(), key=lambda i: (i[0][0], not i[0][1])):
        for stat in _STATS:
            points = [(rate, getattr(by_rate[rate], f"{stat}_ms")) for rate in sorted(by_rate)]
            series.append((f"kestream {place}, inline {'on' if inline else 'off'} {stat}", points))
    return series


def floor_series(floor: Sequence[dict[str, Any]], workload: str = "W1") -> list[Series]:
    """The floor runs (seconds, ``inf`` when never ended) as p50 and p99 per configuration."""
    grouped: dict[str, dict[float, dict[str, Any]]] = {}
    for peer in floor:
        if str(peer.get("workload", "")).upper() != workload or peer.get("rate_per_min") is None:
            continue
        grouped.setdefault(str(peer.get("config", "floor")), {})[float(peer["rate_per_min"])] = peer
    series: list[Series] = []
    for config, by_rate in sorted(grouped.items()):
        for stat in _STATS:
            points = [(rate, _floor_ms(by_rate[rate].get(stat))) for rate in sorted(by_rate)]
            series.append((f"floor ({config}) {stat}", points))
    return series


def _floor_ms(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isinf(seconds) or math.isnan(seconds) else seconds * 1000


def kestra_series(workload: str = "W1") -> list[Series]:
    """Kestra's published points per source (bench/reference.py), in ms."""
    grouped: dict[str, list[tuple[float, float | None]]] = {}
    for fig in reference.FIGURES:
        if fig.workload == workload and fig.source.startswith(_KESTRA) and fig.rate_per_min:
            grouped.setdefault(fig.source, []).append((fig.rate_per_min, fig.seconds * 1000))
    return [(source, sorted(points)) for source, points in grouped.items()]


def newest_idle(stored: Sequence[dict[str, Any]]) -> list[system_rows.IdleRow]:
    """The idle rows to draw: one per broker (stored rows are already one per broker)."""
    return [system_rows.IdleRow.from_json(row) for row in stored]


# -- drawing -------------------------------------------------------------------------------------


def draw(results: report.Results, out_dir: Path) -> list[Path]:
    """Every figure the data allows, written into ``out_dir``; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    ours = kestream_series(results.rows)
    if ours:
        path = out_dir / LATENCY_PNG
        _draw_latency(ours, floor_series(results.floor), kestra_series(), path)
        written.append(path)
    idle = newest_idle(results.idle)
    if idle:
        path = out_dir / IDLE_PNG
        _draw_idle(idle, path)
        written.append(path)
    return written


def draw_and_link(results_path: Path) -> list[Path]:
    """Draw from RESULTS.md's data into ``plots/`` beside it, then render RESULTS.md again so
    that it embeds them."""
    written = draw(report.read_results(results_path), results_path.parent / report.PLOTS_DIR)
    if results_path.exists():
        report.rewrite_results(results_path)
    for path in written:
        print(f"drew {path}")
    return written


def _draw_latency(
    ours: list[Series], floor: list[Series], kestra: list[Series], path: Path
) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(13, 6))
    every = [ms for _, points in ours + floor + kestra for _, ms in points if ms is not None]
    top = max(every, default=1000.0) * 2  # where "never ended" is drawn
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for group, style in ((ours, "-"), (floor, "--")):
        color = None
        for label, points in group:
            if label.endswith(" p50"):
                color = next(colors)
            line_style = style if label.endswith(" p50") else ":"
            xs = [rate for rate, _ in points]
            ys = [top if ms is None else ms for _, ms in points]
            axes.plot(xs, ys, line_style, marker="o", color=color, label=label)
            never = [(rate, top) for rate, ms in points if ms is None]
            if never:
                axes.scatter(*zip(*never, strict=True), marker="x", s=80, color=color)
    # Published points in greys, each source its own marker: apart from the measured lines.
    styles = (("s", "0.0"), ("^", "0.35"), ("D", "0.55"), ("v", "0.7"))
    for index, (label, points) in enumerate(kestra):
        marker, grey = styles[index % len(styles)]
        rates, ms = zip(*points, strict=True)
        axes.plot(
            rates, ms, linestyle="none", marker=marker, color=grey, label=f"{label}, published"
        )
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.set_yscale("log")
    axes.set_xlabel("offered rate (executions per minute, log scale)")
    axes.set_ylabel("latency, due to terminal state (ms, log scale)")
    axes.set_title("W1: latency against offered rate (x: never ended)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _draw_idle(rows: list[system_rows.IdleRow], path: Path) -> None:
    plt = _pyplot()
    names = list(dict.fromkeys(p.name for row in rows for p in row.processes))
    figure, (cpu_axes, rss_axes) = plt.subplots(1, 2, figsize=(12, 5))
    width = 0.8 / len(rows)
    for index, row in enumerate(rows):
        by_name = {p.name: p for p in row.processes}
        xs = [i + index * width for i in range(len(names))]
        cpus = [by_name[n].cpu_pct if n in by_name else 0.0 for n in names]
        rsss = [by_name[n].rss_mb if n in by_name else 0.0 for n in names]
        totals = row.totals()
        label = (
            f"{row.broker} (all: {totals['total_cpu_pct']:.1f} %, {totals['total_rss_mb']:.0f} MB)"
        )
        cpu_axes.bar(xs, cpus, width, label=label)
        rss_axes.bar(xs, rsss, width, label=label)
    ticks = [i + 0.4 - width / 2 for i in range(len(names))]
    for axes, unit in ((cpu_axes, "CPU, % of one core"), (rss_axes, "RSS, MB")):
        axes.set_xticks(ticks, names, rotation=30, ha="right")
        axes.set_ylabel(unit)
        axes.grid(True, axis="y", alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle("idle kestream standalone, per process")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench plot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--results", type=Path, default=report_path(), help="RESULTS.md to draw")
    args = parser.parse_args(argv)
    return 0 if draw_and_link(args.results) else 1


def report_path() -> Path:
    return Path(__file__).resolve().parent / "RESULTS.md"
