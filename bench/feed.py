"""FEED: how many execution updates per second the API's index feed applies, broker-free.

    python -m bench FEED --executions 20000 [--batch 500,5000] [--backend sqlite,postgres] [--json]

The records W1's executions produce are handed to :class:`~kestream.api.index.feed.IndexFeed`'s
own handler, as fetched from Kafka (encoded bytes, keyed, per partition with growing offsets):
the feed decodes them and applies each fetch in its own thread with
:func:`~kestream.api.index.feed.apply_isolating`, exactly its path after ``getmany``. Per
execution of W1's flow (two tasks, run by the worker): five ``execution-updates`` records
(created; running with its first task run; that task run's end; the second task run started;
the terminal full update) and one ``logs`` record with the Log task's line. ``--in-flight``
executions overlap, so one fetch holds parts of many executions, as the topics do.

``--batch`` is the records per fetch: the feed fetches what is there, up to 5 000 (its
``MAX_RECORDS``), so a small batch is a feed that keeps up with a live stream and 5 000 is a
catch-up. Measured per batch size: ``executions_per_s`` (W1 executions whose records the feed
applies per second), ``updates_per_s``, ``log_lines_per_s``, ``apply_ms_p50`` / ``_p99`` per
fetch, and ``keeps_up``: whether it applies at least W1's ceiling, 60 000 executions a minute.
The store is checked afterwards (``indexed``: every execution there, ended). Figures are
printed, never asserted. PostgreSQL: ``--pg-url``, else a throwaway server as W6 starts one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from bench.report import git_commit, percentile
from bench.w6 import _open_store
from kestream.api.index.feed import IndexFeed
from kestream.api.index.store import Store
from kestream.models.execution import format_instant
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.topics import Topics
from kestream.settings import Settings

#: W1's ceiling: 60 000 executions a minute.
W1_CEILING_PER_S = 1000.0
PARTITIONS = 3
UPDATES_PER_EXECUTION = 5
ANCHOR = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


@dataclass(slots=True)
class FetchedRecord:
    """What the feed reads of a fetched Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


def _state(current: str, at: datetime, ended: bool = False) -> dict[str, Any]:
    start = format_instant(at)
    return {
        "current": current,
        "histories": [{"state": current, "date": format_instant(at)}],
        "startDate": start,
        "endDate": format_instant(at + timedelta(milliseconds=40)) if ended else None,
        "duration": "PT0.04S" if ended else None,
    }


def _task_run(execution_id: str, task_id: str, state: str, at: datetime) -> dict[str, Any]:
    return {
        "id": f"{execution_id}-{task_id}",
        "executionId": execution_id,
        "namespace": "company.team",
        "flowId": "benchmark01",
        "taskId": task_id,
        "parentTaskRunId": None,
        "value": None,
        "attempts": [{"state": _state(state, at, state == "SUCCESS")}],
        "outputs": {"values": {"message": "Hello World"}} if state == "SUCCESS" else None,
        "state": _state(state, at, state == "SUCCESS"),
    }


def execution_records(index: int) -> list[tuple[bool, dict[str, Any] | list[Any]]]:
    """The records of W1's execution ``index`` in order: (is an update, value)."""
    execution_id = f"w1-{index:08d}"
    at = ANCHOR + timedelta(milliseconds=index)
    header: dict[str, Any] = {
        "id": execution_id,
        "namespace": "company.team",
        "flowId": "benchmark01",
        "flowRevision": 1,
        "originalId": execution_id,
        "deleted": False,
        "parentId": None,
        "labels": [{"key": "system.correlationId", "value": execution_id}],
        "inputs": {"name": "World"},
        "outputs": None,
        "trigger": None,
        "scheduleDate": None,
        "metadata": {"attemptNumber": 1, "originalCreatedDate": format_instant(at)},
    }

    def partial(state: str, *runs: dict[str, Any]) -> dict[str, Any]:
        execution = {**header, "state": _state(state, at)}
        return {"more": False, "terminal": False, "execution": execution, "taskRuns": list(runs)}

    concatenate, log = "concatenate", "log"
    done = [_task_run(execution_id, t, "SUCCESS", at) for t in (concatenate, log)]
    final = {**header, "state": _state("SUCCESS", at, True), "taskRunList": done}
    line = {
        "executionId": execution_id,
        "namespace": "company.team",
        "flowId": "benchmark01",
        "taskId": log,
        "taskRunId": f"{execution_id}-{log}",
        "attemptNumber": 1,
        "level": "INFO",
        "message": "Hello World",
        "timestamp": format_instant(at + timedelta(milliseconds=30)),
    }
    return [
        (True, partial("CREATED")),
        (True, partial("RUNNING", _task_run(execution_id, concatenate, "RUNNING", at))),
        (True, partial("RUNNING", done[0])),
        (True, partial("RUNNING", _task_run(execution_id, log, "RUNNING", at))),
        (False, [line]),
        (True, {"more": False, "terminal": True, "execution": final, "full": True}),
    ]


def stream(executions: int, in_flight: int) -> Iterator[tuple[bool, str, bytes]]:
    """Every record, ``in_flight`` executions overlapping: (is an update, key, encoded value)."""
    stages = UPDATES_PER_EXECUTION + 1
    spread = max(1, in_flight // stages)
    pending: dict[int, list[tuple[bool, dict[str, Any] | list[Any]]]] = {}
    for tick in range(executions + spread * stages):
        if tick < executions:
            pending[tick] = execution_records(tick)
        for stage in range(stages):
            index = tick - stage * spread
            if index in pending:
                update, value = pending[index][stage]
                if stage == stages - 1:
                    del pending[index]
                yield update, f"w1-{index:08d}", records.dumps(value)


def fetches(
    executions: int, in_flight: int, batch: int, topics: Topics
) -> Iterator[dict[TopicPartition, list[FetchedRecord]]]:
    """The stream cut into fetches of ``batch`` records, per partition, offsets growing."""
    offsets: dict[TopicPartition, int] = {}
    fetched: dict[TopicPartition, list[FetchedRecord]] = {}
    count = 0
    for update, key, value in stream(executions, in_flight):
        topic = topics.updates if update else topics.logs
        tp = TopicPartition(topic, zlib.crc32(key.encode()) % PARTITIONS)
        offset = offsets.get(tp, 0)
        offsets[tp] = offset + 1
        fetched.setdefault(tp, []).append(
            FetchedRecord(topic, tp.partition, offset, key.encode(), value)
        )
        count += 1
        if count == batch:
            yield fetched
            fetched, count = {}, 0
    if fetched:
        yield fetched


async def _feed_all(
    feed: IndexFeed, executions: int, in_flight: int, batch: int, topics: Topics
) -> tuple[float, list[float]]:
    """Hand every fetch to the feed; returns (seconds in the feed, ms per fetch)."""
    per_fetch: list[float] = []
    for fetched in fetches(executions, in_flight, batch, topics):
        began = time.perf_counter()
        await feed._handle(fetched)
        per_fetch.append((time.perf_counter() - began) * 1e3)
    await feed.stop()
    return sum(per_fetch) / 1e3, per_fetch


def measure(store: Store, executions: int, in_flight: int, batch: int) -> dict[str, Any]:
    settings = Settings(broker="unused:9092")
    topics = Topics.of(settings)
    feed = IndexFeed(BrokerContext(settings, "unused:9092", "tansu", topics), store)
    seconds, per_fetch = asyncio.run(_feed_all(feed, executions, in_flight, batch, topics))
    stats = feed.stats
    ended = sum(
        1
        for n in range(0, executions, max(1, executions // 100))
        if store.state(f"w1-{n:08d}") == "SUCCESS"
    )
    per_fetch.sort()
    return {
        "batch": batch,
        "executions_per_s": round(executions / seconds, 1),
        "updates_per_s": round(stats.updates / seconds, 1),
        "log_lines_per_s": round(stats.log_lines / seconds, 1),
        "apply_ms_p50": round(percentile(per_fetch, 50), 2),
        "apply_ms_p99": round(percentile(per_fetch, 99), 2),
        "keeps_up": executions / seconds >= W1_CEILING_PER_S,
        "updates": stats.updates,
        "log_lines": stats.log_lines,
        "indexed": ended == len(range(0, executions, max(1, executions // 100))),
    }


def run_feed(
    executions: int,
    batches: Sequence[int],
    backend: str,
    *,
    in_flight: int = 60,
    pg_url: str | None = None,
    directory: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per batch size, each on a fresh store."""
    rows = []
    for batch in batches:
        with _open_store(backend, pg_url, directory) as store:
            row = measure(store, executions, in_flight, batch)
        rows.append(
            {"workload": "FEED", "backend": backend, "executions": executions}
            | row
            | {"commit": git_commit()}
        )
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    out = sys.stderr
    print(
        "FEED index feed apply rate (W1 records: 5 updates + 1 log line per execution; "
        f"target >= {W1_CEILING_PER_S:.0f} executions/s)",
        file=out,
    )
    print(
        "  backend   batch   exec/s   updates/s   lines/s   fetch ms p50/p99   keeps up", file=out
    )
    for row in rows:
        print(
            f"  {row['backend']:<8} {row['batch']:>6} {row['executions_per_s']:>8.0f}"
            f" {row['updates_per_s']:>11.0f} {row['log_lines_per_s']:>9.0f}"
            f"   {row['apply_ms_p50']:>7.1f} / {row['apply_ms_p99']:<7.1f}   {row['keeps_up']}"
            f"{'' if row['indexed'] else '   (INCOMPLETE INDEX)'}",
            file=out,
        )


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench FEED", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--executions", type=int, default=20_000, help="W1 executions fed")
    parser.add_argument("--batch", type=_ints, default=[500, 5000], help="records per fetch")
    parser.add_argument("--in-flight", type=int, default=60, help="executions overlapping")
    parser.add_argument("--backend", default="sqlite", help="sqlite, postgres, or both")
    parser.add_argument("--pg-url", help="a PostgreSQL server to create a database on")
    parser.add_argument("--dir", type=Path, help="where the SQLite file goes (default: tmp)")
    parser.add_argument("--json", action="store_true", help="one JSON line per row on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for backend in (b.strip() for b in args.backend.split(",") if b.strip()):
        rows += run_feed(
            args.executions,
            args.batch,
            backend,
            in_flight=args.in_flight,
            pg_url=args.pg_url,
            directory=args.dir,
        )
    print_table(rows)
    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
    return 0 if all(row["indexed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
