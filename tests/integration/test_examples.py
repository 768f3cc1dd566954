"""The README's library example runs as written (it starts its own embedded broker)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_library_example_runs_on_the_embedded_broker() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "library.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "in-process: SUCCESS {'values': {'message': 'Hello library'}}" in result.stdout
    assert "on a broker: SUCCESS {'values': {'message': 'Hello broker'}}" in result.stdout
