"""What standalone's supervisor does to its children beside restarting the ones that exit: a
graceful stop that keeps its own loop running (the broker mirror and the API's durable
acknowledgements run on it)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from kestream.runtime import supervisor
from kestream.runtime.restarts import CrashLedger
from kestream.runtime.supervisor import RoleProcess, Supervisor
from kestream.settings import Settings

#: A child that, on SIGTERM, exits only once the file it is given exists.
_LINGERS = """
import os, pathlib, signal, sys, time
go = pathlib.Path(sys.argv[1])
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
pathlib.Path(sys.argv[2]).write_text("waiting")
while not (stopping and go.exists()):
    time.sleep(0.01)
"""


def _supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child: str) -> Supervisor:
    monkeypatch.setattr(
        supervisor,
        "role_command",
        lambda role: [sys.executable, "-c", child, str(tmp_path / "go"), str(tmp_path / "up")],
    )
    settings = Settings(data_dir=str(tmp_path), standalone_durable=False)
    sup = Supervisor(settings, None)
    sup.ledger = CrashLedger(tmp_path / "standalone" / "crashes.json")
    sup.slots = [RoleProcess("api", "api", {})]
    return sup


async def _up(path: Path) -> None:
    while not path.exists():
        await asyncio.sleep(0.01)


async def test_a_graceful_stop_leaves_the_supervisor_loop_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup = _supervisor(tmp_path, monkeypatch, _LINGERS)
    (slot,) = sup.slots
    sup._spawn(slot, "127.0.0.1:1")
    process = slot.process
    assert process is not None
    try:
        await asyncio.wait_for(_up(tmp_path / "up"), 60)
        stopping = asyncio.create_task(sup._stop_children(graceful=True))
        await asyncio.sleep(0)  # the child has its SIGTERM and waits for this loop to answer
        (tmp_path / "go").write_text("")  # what the loop does while the child stops
        await stopping
        assert process.returncode == 0  # it stopped on its own, not killed past the grace
        assert slot.process is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
