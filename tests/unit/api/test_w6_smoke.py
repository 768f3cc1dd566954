"""W6's benchmark machinery on a small index (the figures themselves are never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import w6

FIELDS = ("workload", "executions", "backend", "page_ms_p50", "page_ms_p99", "load_s", "commit")


def test_w6_row_on_sqlite(tmp_path: Path) -> None:
    row = w6.run_w6(2_000, "sqlite", directory=tmp_path)
    for name in FIELDS:
        assert name in row, name
    assert (row["workload"], row["executions"], row["backend"]) == ("W6", 2_000, "sqlite")
    assert row["indexed"] == 2_000
    assert row["totals_ok"], row["filters"]
    assert set(row["filters"]) == {"namespace+state", "flowId", "startDate 7 days", "label"}
    assert row["page_ms_p50"] <= row["page_ms_p99"]
    json.dumps(row)  # one JSON line


def test_w6_main_prints_only_json_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = w6.main(["--executions", "500", "--json", "--dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["executions"] == 500
    assert "| filter |" in err
