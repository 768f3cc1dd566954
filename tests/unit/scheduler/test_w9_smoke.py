"""W9 at a small size: both books decide the same, the mix is what the docs say, one JSON row.

Timings are printed by the benchmark, never asserted here.
"""

from __future__ import annotations

import json

import pytest

from bench import w9_flow_triggers as w9
from kestream.scheduler import FlowTriggerBook


def test_the_mix_leaves_the_asked_share_unindexed() -> None:
    flows = w9.deploy(2000, unindexed=0.05, seed=1)
    book = FlowTriggerBook()
    for flow in flows:
        book.sync_flow(flow)
    assert len(book) == 2000
    assert 50 <= book.unindexed <= 150  # 5 % of 2000, seeded


def test_w9_smoke_the_index_decides_as_the_full_scan(capsys: pytest.CaptureFixture[str]) -> None:
    code = w9.main(["--triggers", "600", "--executions", "80", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    row = json.loads(captured.out)
    assert (row["workload"], row["triggers"], row["executions"]) == ("W9", 600, 80)
    assert row["same"] is True
    assert row["fired"] > 0
    assert {"scan_us_p50", "scan_us_p99", "indexed_us_p50", "indexed_us_p99", "speedup"} <= set(row)
    assert "W9 Flow triggers" in captured.err
