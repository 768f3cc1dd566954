"""A script's process dies with a worker killed outright (kill -9, no clean-up): the restarted
worker runs the job again, and the old attempt must not run beside it
(kestream.parent_death, given by kestream.tasks.scripts.process.run_process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from kestream.tasks.scripts.process import group_alive

#: A stand-in for the worker: runs one script through run_process, printing its lines.
_WORKER = """
import asyncio, sys
from pathlib import Path
from kestream.tasks.scripts.process import run_process

def line(text, is_stderr):
    print(text, flush=True)

asyncio.run(run_process(
    ["sh", "-c", "echo $$; exec sleep 600"], cwd=Path("."), env={"PATH": "/usr/bin:/bin"},
    on_line=line,
))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_killed_outright_takes_its_script_along() -> None:
    worker = subprocess.Popen([sys.executable, "-c", _WORKER], stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    script = int(worker.stdout.readline())  # its own session: its pid is its group's id
    try:
        assert group_alive(script)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        deadline = time.monotonic() + 30  # the kernel signals it at once; a bound, not a measure
        while group_alive(script) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not group_alive(script)
    finally:
        if group_alive(script):
            os.killpg(script, signal.SIGKILL)
        worker.stdout.close()
