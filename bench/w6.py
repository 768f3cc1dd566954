"""W6 (../shared/BENCHMARKS.md): list executions with a filter and the total count.

    python -m bench.w6 --executions 1000000                      # SQLite in a temp dir
    python -m bench.w6 --executions 1000000 --backend postgres   # a throwaway PostgreSQL
    python -m bench.w6 --backend sqlite,postgres --json

Loads N synthetic executions into a fresh index through the store's own ``apply`` (batches of
5 000 update records, as the feed writes them: several namespaces and flows, mixed states,
labels, two task runs each, start dates over six months), prints the load rate, then times a
filtered page of 25 with its total (one ``search``: the page query and its separate COUNT) for
typical filters, 50 queries each with varying values: namespace + state, flowId, a one-week
start-date range, a label. Every total is checked against what was generated (``totals_ok``).

The readable table goes to stderr; ``--json`` prints one JSON line per backend on stdout with
``workload`` ("W6"), ``executions``, ``backend``, ``page_ms_p50``, ``page_ms_p99`` (over every
timed query), ``load_s`` (apply + statistics refresh), ``commit``, plus per-filter figures.
Figures are printed, never asserted. PostgreSQL: ``--pg-url`` (or ``KESTREAM_INDEX_URL``), else a
throwaway server started like the tests' (``tests/integration/postgres_fixture.py``).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.report import git_commit, percentile
from kestream.api.index.query import parse_search_params
from kestream.api.index.store import Batch, FeedRecord, RecordKind, Store
from kestream.models.execution import format_instant

BATCH = 5_000
QUERIES_PER_FILTER = 50
PAGE_SIZE = 25
SPAN = timedelta(days=180)
ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
NAMESPACES = [
    f"company.{team}{suffix}"
    for team in ("data", "ops", "sales", "finance", "ml")
    for suffix in ("", ".ingest", ".reports", ".sandbox")
]
FLOWS_PER_NAMESPACE = 10
TEAMS = [f"team{i}" for i in range(8)]
ENVS = ("prod", "staging", "dev")
#: (state, weight): mostly successes, as a production installation looks.
STATES = (
    ("SUCCESS", 80),
    ("FAILED", 8),
    ("WARNING", 4),
    ("KILLED", 2),
    ("RUNNING", 3),
    ("PAUSED", 2),
    ("CREATED", 1),
)
_UPDATES_TOPIC = "bench.execution-updates"
_PARTITIONS = 16


def _flow_ids(namespace: str) -> list[str]:
    short = namespace.replace("company.", "").replace(".", "_")
    return [f"{short}_flow{j}" for j in range(FLOWS_PER_NAMESPACE)]


@dataclass
class Expected:
    """What was generated, summed so every query's total can be checked."""

    by_namespace_state: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_flow: Counter[str] = field(default_factory=Counter)
    by_team: Counter[str] = field(default_factory=Counter)
    starts: list[str] = field(default_factory=list)

    def finish(self) -> None:
        self.starts.sort()

    def in_range(self, low: str, high: str) -> int:
        return bisect.bisect_right(self.starts, high) - bisect.bisect_left(self.starts, low)


def _history(state: str, start: datetime, rng: random.Random) -> tuple[list[dict[str, str]], str]:
    when = start
    steps = ["CREATED"] if state == "CREATED" else ["CREATED", "RUNNING"]
    if state not in ("CREATED", "RUNNING"):
        steps.append(state)
    histories = []
    for step in steps:
        histories.append({"state": step, "date": format_instant(when)})
        when += timedelta(milliseconds=rng.randint(5, 90_000))
    return histories, histories[-1]["date"]


def _task_run(execution: dict[str, Any], task_id: str, state: str, run_id: str) -> dict[str, Any]:
    start = execution["state"]["startDate"]
    run_state = {
        "current": state,
        "histories": [{"state": "CREATED", "date": start}, {"state": state, "date": start}],
        "startDate": start,
        "endDate": start if state not in ("RUNNING", "CREATED", "PAUSED") else None,
        "duration": "PT0.12S",
    }
    return {
        "id": run_id,
        "executionId": execution["id"],
        "namespace": execution["namespace"],
        "flowId": execution["flowId"],
        "taskId": task_id,
        "parentTaskRunId": None,
        "value": None,
        "attempts": [{"state": run_state}],
        "outputs": {"value": f"{task_id} done"} if state == "SUCCESS" else None,
        "state": run_state,
    }


def synthetic_update(index: int, rng: random.Random, expected: Expected) -> dict[str, Any]:
    """One realistic execution update (``update_values``): a stop (full) or a partial one."""
    namespace = rng.choice(NAMESPACES)
    flow_id = rng.choice(_flow_ids(namespace))
    state = rng.choices([s for s, _ in STATES], weights=[w for _, w in STATES])[0]
    start = ANCHOR - timedelta(milliseconds=rng.randrange(int(SPAN.total_seconds() * 1000)))
    execution_id = f"{rng.getrandbits(96):024x}"
    team = rng.choice(TEAMS)
    histories, last = _history(state, start, rng)
    ended = state not in ("CREATED", "RUNNING", "PAUSED")
    header: dict[str, Any] = {
        "id": execution_id,
        "namespace": namespace,
        "flowId": flow_id,
        "flowRevision": 1 + index % 3,
        "originalId": execution_id,
        "deleted": False,
        "parentId": None,
        "labels": [
            {"key": "team", "value": team},
            {"key": "env", "value": ENVS[index % len(ENVS)]},
            {"key": "system.correlationId", "value": execution_id},
        ],
        "inputs": {"name": f"user{index % 97}"},
        "outputs": None,
        "trigger": None,
        "scheduleDate": None,
        "metadata": {"attemptNumber": 1, "originalCreatedDate": histories[0]["date"]},
        "state": {
            "current": state,
            "histories": histories,
            "startDate": histories[0]["date"],
            "endDate": last if ended else None,
            "duration": "PT1.5S",
        },
    }
    run_state = state if ended else "RUNNING"
    runs = [
        _task_run(header, "extract", "SUCCESS", f"{execution_id}a"),
        _task_run(header, "load", run_state, f"{execution_id}b"),
    ]
    expected.by_namespace_state[(namespace, state)] += 1
    expected.by_flow[flow_id] += 1
    expected.by_team[team] += 1
    expected.starts.append(histories[0]["date"])
    if ended or state == "PAUSED":  # a stop: the whole list (execution_updates.update_values' full)
        body = {**header, "taskRunList": runs}
        return {"more": False, "terminal": ended, "execution": body, "full": True}
    return {"more": False, "terminal": False, "execution": header, "taskRuns": runs, "full": False}


def load(store: Store, executions: int, seed: int) -> tuple[Expected, float, float, float]:
    """Generate and apply; returns (expected, generate s, apply s, maintain s)."""
    rng = random.Random(seed)
    expected = Expected()
    generate_s = apply_s = 0.0
    offsets = [0] * _PARTITIONS
    done = 0
    while done < executions:
        began = time.perf_counter()
        batch = Batch()
        for index in range(done, min(done + BATCH, executions)):
            update = synthetic_update(index, rng, expected)
            partition = index % _PARTITIONS
            execution_id = update["execution"]["id"]
            batch.add(
                FeedRecord(
                    _UPDATES_TOPIC,
                    partition,
                    offsets[partition],
                    RecordKind.UPDATE,
                    execution_id,
                    update,
                )
            )
            offsets[partition] += 1
        applied = time.perf_counter()
        store.apply(batch)
        generate_s += applied - began
        apply_s += time.perf_counter() - applied
        done += len(batch)
    began = time.perf_counter()
    store.maintain()
    expected.finish()
    return expected, generate_s, apply_s, time.perf_counter() - began


def _queries(expected: Expected, rng: random.Random) -> dict[str, list[tuple[dict[str, Any], int]]]:
    """``filter name -> [(query params, expected total)]``, the values drawn at random."""
    out: dict[str, list[tuple[dict[str, Any], int]]] = {}
    picks = range(QUERIES_PER_FILTER)

    def page() -> str:
        return str(rng.choice((1, 1, 1, 2, 3)))

    out["namespace+state"] = []
    for _ in picks:
        namespace = rng.choice(NAMESPACES)
        state = rng.choice(("SUCCESS", "FAILED", "RUNNING"))
        params = {
            "filters[namespace][EQUALS]": [namespace],
            "filters[state][EQUALS]": [state],
            "page": [page()],
        }
        out["namespace+state"].append((params, expected.by_namespace_state[(namespace, state)]))
    out["flowId"] = []
    for _ in picks:
        flow = rng.choice(_flow_ids(rng.choice(NAMESPACES)))
        params = {"filters[flowId][EQUALS]": [flow], "page": [page()]}
        out["flowId"].append((params, expected.by_flow[flow]))
    out["startDate 7 days"] = []
    for _ in picks:
        low_dt = ANCHOR - SPAN + timedelta(days=rng.randrange(SPAN.days - 7))
        low, high = format_instant(low_dt), format_instant(low_dt + timedelta(days=7))
        params = {
            "filters[startDate][GREATER_THAN_OR_EQUAL_TO]": [low],
            "filters[startDate][LESS_THAN_OR_EQUAL_TO]": [high],
            "page": [page()],
        }
        out["startDate 7 days"].append((params, expected.in_range(low, high)))
    out["label"] = []
    for _ in picks:
        team = rng.choice(TEAMS)
        params = {"filters[labels][EQUALS][team]": [team], "page": [page()]}
        out["label"].append((params, expected.by_team[team]))
    return out


def time_queries(store: Store, expected: Expected, seed: int) -> dict[str, dict[str, Any]]:
    """Per filter: p50/p99 in ms, the median total, and whether every total was right."""
    results: dict[str, dict[str, Any]] = {}
    for name, queries in _queries(expected, random.Random(seed + 1)).items():
        timings: list[float] = []
        ok = True
        for params, total in queries:
            began = time.perf_counter()
            query = parse_search_params(params)
            found = store.search(query)
            page, counted = found.results, found.total
            timings.append((time.perf_counter() - began) * 1000)
            wanted_rows = max(0, min(PAGE_SIZE, total - query.offset))
            ok = ok and counted == total and len(page) == wanted_rows
        timings.sort()
        results[name] = {
            "p50_ms": round(percentile(timings, 50), 2),
            "p99_ms": round(percentile(timings, 99), 2),
            "total_median": sorted(t for _, t in queries)[len(queries) // 2],
            "totals_ok": ok,
            "timings": timings,
        }
    return results


@contextlib.contextmanager
def _open_store(backend: str, pg_url: str | None, directory: Path | None) -> Iterator[Store]:
    if backend == "sqlite":
        from kestream.api.index.sqlite import SQLiteStore

        with tempfile.TemporaryDirectory(prefix="kestream-w6-", dir=directory) as tmp:
            store = SQLiteStore(Path(tmp) / "index.sqlite")
            try:
                yield store
            finally:
                store.close()
        return
    from kestream.api.index.postgres import PostgresStore

    with _postgres_url(pg_url) as url:
        postgres = PostgresStore(url)
        try:
            yield postgres
        finally:
            postgres.close()


@contextlib.contextmanager
def _postgres_url(pg_url: str | None) -> Iterator[str]:
    """A fresh database: on ``pg_url``'s server, or on a throwaway server started here."""
    if pg_url:
        import psycopg

        name = f"kestream_w6_{int(time.time())}"
        with psycopg.connect(pg_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        base, _, _ = pg_url.rpartition("/")
        try:
            yield f"{base}/{name}"
        finally:
            with psycopg.connect(pg_url, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    from tests.integration.postgres_fixture import find_postgres_bin, postgres_server

    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise SystemExit("W6 on PostgreSQL: no server binaries found; pass --pg-url")
    with postgres_server(bin_dir) as server:
        yield server.create_database()


def run_w6(
    executions: int,
    backend: str = "sqlite",
    *,
    pg_url: str | None = None,
    directory: Path | None = None,
    seed: int = 6,
) -> dict[str, Any]:
    """Load ``executions`` into a fresh ``backend`` index, time the queries; the JSON row."""
    with _open_store(backend, pg_url, directory) as store:
        expected, generate_s, apply_s, maintain_s = load(store, executions, seed)
        indexed = store.count()
        filters = time_queries(store, expected, seed)
    timings = sorted(t for f in filters.values() for t in f.pop("timings"))
    load_s = apply_s + maintain_s
    return {
        "workload": "W6",
        "executions": executions,
        "backend": backend,
        "page_ms_p50": round(percentile(timings, 50), 2),
        "page_ms_p99": round(percentile(timings, 99), 2),
        "load_s": round(load_s, 2),
        "commit": git_commit(),
        "load_per_s": round(executions / load_s) if load_s else None,
        "generate_s": round(generate_s, 2),
        "maintain_s": round(maintain_s, 2),
        "indexed": indexed,
        "totals_ok": indexed == executions and all(f["totals_ok"] for f in filters.values()),
        "filters": filters,
    }


def format_table(row: dict[str, Any]) -> str:
    lines = [
        f"W6 {row['backend']}: {row['executions']:,} executions loaded in {row['load_s']:.1f} s "
        f"({row['load_per_s']:,}/s; statistics {row['maintain_s']:.1f} s; generating "
        f"{row['generate_s']:.1f} s, not counted); totals {'ok' if row['totals_ok'] else 'WRONG'}",
        "| filter | page + total p50 | p99 | median total |",
        "|---|---|---|---|",
    ]
    for name, figures in row["filters"].items():
        lines.append(
            f"| {name} | {figures['p50_ms']:.1f} ms | {figures['p99_ms']:.1f} ms "
            f"| {figures['total_median']:,} |"
        )
    lines.append(
        f"| all | {row['page_ms_p50']:.1f} ms | {row['page_ms_p99']:.1f} ms | target <= 100 ms |"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.w6", description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument(
        "--backend", default="sqlite", help="sqlite, postgres, or both comma-separated"
    )
    parser.add_argument("--pg-url", default=os.environ.get("KESTREAM_INDEX_URL") or None)
    parser.add_argument("--dir", type=Path, help="where the SQLite file goes (default: /tmp)")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", action="store_true", help="only JSON lines on stdout")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in ("sqlite", "postgres")]
    if unknown or not args.backends:
        parser.error(f"--backend: unknown {unknown}; use sqlite, postgres or both")
    if args.pg_url and not args.pg_url.startswith(("postgresql://", "postgres://")):
        args.pg_url = None  # KESTREAM_INDEX_URL may name SQLite
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ok = True
    for backend in args.backends:
        row = run_w6(
            args.executions, backend, pg_url=args.pg_url, directory=args.dir, seed=args.seed
        )
        ok = ok and bool(row["totals_ok"])
        print(format_table(row), file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps(row), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
