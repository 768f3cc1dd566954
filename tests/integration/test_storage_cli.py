"""``kestream run --input data=@path``: the file is stored and the FILE input is its URI.

The command runs as a user runs it (its own process, its own embedded broker, a private data
directory); the flow's ``read()`` gets the file's content back from the internal storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FLOW = """id: cli_file
namespace: company.team
inputs:
  - id: data
    type: FILE
  - id: note
    type: STRING
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.note }}|{{ read(inputs.data) }}|{{ fileSize(inputs.data) }}"
"""


def test_run_uploads_a_file_input(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    (tmp_path / "orders.csv").write_bytes(b"a,b\n1,2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env["KESTREAM_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "kestream.cli", "run", "flow.yaml", "--json",
         "--input", "data=@orders.csv", "--input", "note=@@home"],
        cwd=tmp_path, env=env, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    execution = json.loads(done.stdout)
    uri = execution["inputs"]["data"]
    assert uri == (
        f"kestra:///company/team/cli-file/executions/{execution['id']}/inputs/data/orders.csv"
    )
    assert execution["taskRunList"][0]["outputs"] == {"value": "@home|a,b\n1,2\n|8"}
    stored = tmp_path / "data" / "storage" / uri.removeprefix("kestra:///")
    assert stored.read_bytes() == b"a,b\n1,2\n"


def test_run_refuses_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env["KESTREAM_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "kestream.cli", "run", "flow.yaml", "--input", "data=@none.csv",
         "--input", "note=x"],
        cwd=tmp_path, env=env, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no such file" in done.stderr.decode()
