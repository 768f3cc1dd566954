"""The FEED benchmark on a small stream: every execution's records reach the index through the
feed, in the shape W1 produces them (the figures themselves are never asserted)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import feed
from kestream.runtime.topics import Topics
from kestream.settings import Settings


def test_the_stream_overlaps_executions_and_keeps_each_ones_order() -> None:
    seen = list(feed.stream(200, in_flight=60))
    per_execution = Counter(key for _, key, _ in seen)
    assert len(per_execution) == 200
    assert set(per_execution.values()) == {feed.UPDATES_PER_EXECUTION + 1}
    first_end = next(
        n for n, (update, key, value) in enumerate(seen) if b'"terminal":true' in value
    )
    assert len({key for _, key, _ in seen[:first_end]}) > 1  # others started before one ended
    topics = Topics.of(Settings(broker="unused:9092"))
    offsets = [
        [r.offset for r in records]
        for fetched in feed.fetches(200, 60, 100, topics)
        for records in fetched.values()
    ]
    assert all(o == sorted(o) for o in offsets)


def test_feed_rows_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = feed.main(["--executions", "300", "--batch", "50,400", "--dir", str(tmp_path), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["workload"], r["backend"], r["batch"]) for r in rows] == [
        ("FEED", "sqlite", 50),
        ("FEED", "sqlite", 400),
    ]
    for row in rows:
        assert row["indexed"] is True
        assert (row["updates"], row["log_lines"]) == (300 * feed.UPDATES_PER_EXECUTION, 300)
        assert row["apply_ms_p50"] <= row["apply_ms_p99"]
    assert "FEED index feed apply rate" in captured.err
