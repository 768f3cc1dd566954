"""The executions page's list queries on a SQLite index of 1 M executions.

    python -m bench ui-index                        # 1 000 000 executions in a temp dir
    python -m bench ui-index --executions 200000 --json
    python -m bench ui-index --dir /tmp/ui-index                 # keeps the loaded file there
    python -m bench ui-index --dir /tmp/ui-index --reuse         # times it again, no reload

W6 (``bench/w6.py``) loads its executions through the feed's ``apply`` (about 3 500 a second,
five minutes for a million). Here the rows go straight into the index's tables, as ``apply``
would leave them (the same documents, label rows and namespaces, built by the store's own row
mapping), in large transactions: a million in a minute or two. Then the index's statistics are
refreshed (``maintain``) and every query the executions page (``kestream/ui/executions_page.js``)
sends to the search route is timed through the store's ``search``, the page of 25 and its
total: the default list (newest first, no filter), a namespace prefix, a flow, a state, a label,
a time range, the text box (a needle a trigram index answers, and one of two characters), and a
deep page. Each query runs ``--repeat`` times with varying values; p50 and p99 per query are
printed (target: 100 ms). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.report import git_commit, percentile
from bench.w6 import ENVS, NAMESPACES, TEAMS, Expected, _flow_ids, synthetic_update
from kestream.api.index.query import parse_search_params
from kestream.api.index.sqlite import SQLiteStore
from kestream.api.index.store import _Row

#: Rows per transaction of the bulk load.
CHUNK = 50_000
PAGE_SIZE = 25
TARGET_MS = 100.0


def bulk_load(path: Path, executions: int, seed: int) -> float:
    """Fill the index at ``path`` with ``executions`` synthetic ones; returns the seconds taken."""
    SQLiteStore(path).close()  # the schema, as the API creates it
    rng = random.Random(seed)
    expected = Expected()
    began = time.perf_counter()
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    namespaces: set[str] = set()
    try:
        for start in range(0, executions, CHUNK):
            rows = []
            for index in range(start, min(start + CHUNK, executions)):
                header = dict(synthetic_update(index, rng, expected)["execution"])
                header.pop("taskRunList", None)
                header.pop("taskRuns", None)
                rows.append(_Row.of(header["id"], header, json.dumps))
            namespaces.update(row.namespace for row in rows)
            with connection:
                connection.executemany(
                    "INSERT INTO executions (id, namespace, flow_id, state, start_date, "
                    "end_date, parent_id, labels, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [row.columns() for row in rows],
                )
                connection.executemany(
                    "INSERT INTO labels (key, value, start_date, execution_id) VALUES (?, ?, ?, ?)",
                    [(k, v, r.start_date, r.id) for r in rows for k, v in r.labels],
                )
            print(f"  loaded {min(start + CHUNK, executions):,}", file=sys.stderr, flush=True)
        with connection:
            connection.executemany(
                "INSERT OR IGNORE INTO namespaces (namespace) VALUES (?)",
                [(n,) for n in sorted(namespaces)],
            )
    finally:
        connection.close()
    return time.perf_counter() - began


def page_queries(rng: random.Random) -> dict[str, Callable[[], dict[str, str | list[str]]]]:
    """``name -> a draw of that query's parameters``, as the executions page builds them."""
    base: dict[str, str | list[str]] = {"size": str(PAGE_SIZE), "sort": "state.startDate:desc"}

    def flow() -> str:
        return rng.choice(_flow_ids(rng.choice(NAMESPACES)))

    return {
        "default (newest first)": lambda: {**base, "page": "1"},
        "page 2-5": lambda: {**base, "page": str(rng.randint(2, 5))},
        "page 400 (offset 10 000)": lambda: {**base, "page": "400"},
        "namespace prefix": lambda: {
            **base,
            "page": "1",
            "filters[namespace][PREFIX]": rng.choice(["company.data", "company.ml", "company.ops"]),
        },
        "flow": lambda: {**base, "page": "1", "filters[flowId][EQUALS]": flow()},
        "state": lambda: {
            **base,
            "page": "1",
            "filters[state][IN]": rng.choice(["FAILED", "RUNNING", "SUCCESS", "PAUSED"]),
        },
        "label": lambda: {
            **base,
            "page": "1",
            "filters[labels][EQUALS]": f"team:{rng.choice(TEAMS)}",
        },
        "two labels": lambda: {
            **base,
            "page": "1",
            "filters[labels][EQUALS]": [f"team:{rng.choice(TEAMS)}", f"env:{rng.choice(ENVS)}"],
        },
        "time range (last day)": lambda: {**base, "page": "1", "filters[timeRange][EQUALS]": "P1D"},
        "text (flow id part)": lambda: {
            **base,
            "page": "1",
            "filters[q][EQUALS]": rng.choice(["flow3", "ingest", "sandbox_flow7"]),
        },
        "text (absent)": lambda: {**base, "page": "1", "filters[q][EQUALS]": "nowhere"},
        # Shorter than a trigram: no index answers these (the newest rows are read first).
        "text (2 characters)": lambda: {
            **base,
            "page": "1",
            "filters[q][EQUALS]": rng.choice(["a1", "7f", "w3"]),
        },
        "text (2 characters, absent)": lambda: {**base, "page": "1", "filters[q][EQUALS]": "zq"},
    }


def time_queries(store: SQLiteStore, repeat: int, seed: int) -> dict[str, dict[str, Any]]:
    """p50/p99 (ms) of ``repeat`` searches per query, with the median total seen."""
    rng = random.Random(seed + 1)
    out: dict[str, dict[str, Any]] = {}
    for name, draw in page_queries(rng).items():
        timings: list[float] = []
        totals: list[int] = []
        for _ in range(repeat):
            params = draw()
            query = parse_search_params(
                {k: v if isinstance(v, list) else [v] for k, v in params.items()}
            )
            began = time.perf_counter()
            total = store.search(query).total
            timings.append((time.perf_counter() - began) * 1000)
            totals.append(total)
        timings.sort()
        out[name] = {
            "p50_ms": round(percentile(timings, 50), 2),
            "p99_ms": round(percentile(timings, 99), 2),
            "total_median": sorted(totals)[len(totals) // 2],
        }
    return out


def loaded(path: Path) -> bool:
    """Whether ``path`` is an index that already holds executions (``--reuse``)."""
    if not path.exists():
        return False
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return connection.execute("SELECT 1 FROM executions LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False
    finally:
        connection.close()


def run(
    executions: int, repeat: int, seed: int, directory: Path, *, reuse: bool = False
) -> dict[str, Any]:
    path = directory / "index.sqlite"
    # A reused file keeps its rows (loaded with the same --executions and --seed: the queries'
    # values are drawn from the same seed) and is opened as the API opens it.
    load_s = 0.0 if reuse and loaded(path) else bulk_load(path, executions, seed)
    store = SQLiteStore(path)
    try:
        began = time.perf_counter()
        store.maintain()
        maintain_s = time.perf_counter() - began
        queries = time_queries(store, repeat, seed)
        indexed = store.count()
    finally:
        store.close()
    return {
        "workload": "UI-INDEX",
        "executions": indexed,
        "load_s": round(load_s, 1),
        "maintain_s": round(maintain_s, 1),
        "queries": queries,
        "commit": git_commit(),
    }


def format_table(row: dict[str, Any]) -> str:
    lines = [
        f"UI-INDEX: {row['executions']:,} executions, bulk load {row['load_s']} s, "
        f"maintain {row['maintain_s']} s",
        "| query | p50 | p99 | median total |",
        "|---|---|---|---|",
    ]
    for name, figures in row["queries"].items():
        flag = "" if figures["p99_ms"] <= TARGET_MS else f"  (over {TARGET_MS:.0f} ms)"
        lines.append(
            f"| {name} | {figures['p50_ms']:.1f} ms | {figures['p99_ms']:.1f} ms | "
            f"{figures['total_median']:,}{flag} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench ui-index", description=__doc__)
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30, help="searches per query")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, help="keep the index here (default: a temp dir)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --dir: time the index already loaded there (same --executions and --seed)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="bench-ui-index-") as temp:
        directory = args.dir or Path(temp)
        directory.mkdir(parents=True, exist_ok=True)
        row = run(args.executions, args.repeat, args.seed, directory, reuse=args.reuse)
    print(format_table(row), file=sys.stderr)
    if args.json:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
