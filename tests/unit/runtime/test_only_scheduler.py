"""``standalone`` tells its scheduler it is the only one only when it runs its own embedded
broker, whose address no other process gets: that scheduler may join its groups before it
has won the lease (kestream.runtime.scheduler_service), any other would take partitions from
the active scheduler."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from kestream.runtime import supervisor
from kestream.runtime.process import ONLY_SCHEDULER_ENV
from kestream.runtime.restarts import CrashLedger
from kestream.runtime.supervisor import Supervisor
from kestream.settings import Settings


def _child_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings) -> str:
    """What a role process started by the supervisor finds in ``ONLY_SCHEDULER_ENV``."""
    seen = tmp_path / "seen"
    found = f"os.environ.get({ONLY_SCHEDULER_ENV!r}, '-')"
    child = f"import os; open({str(seen)!r}, 'w').write({found})"
    monkeypatch.setattr(supervisor, "role_command", lambda role: [sys.executable, "-c", child])
    monkeypatch.setenv(ONLY_SCHEDULER_ENV, "1")  # inherited from the caller: never passed on
    sup = Supervisor(settings, None)
    sup.ledger = CrashLedger(tmp_path / "standalone" / "crashes.json")
    slot = supervisor.RoleProcess("scheduler", "scheduler", {})
    sup.slots = [slot]  # a scheduler of its own (the default layout shares one process)
    try:
        sup._spawn(slot, "127.0.0.1:4242")
        assert slot.process is not None and slot.process.wait(60) == 0
    finally:
        asyncio.run(sup._stop_children(graceful=False))
    return seen.read_text()


def test_on_its_own_embedded_broker_the_scheduler_is_the_only_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _child_env(tmp_path, monkeypatch, Settings(data_dir=str(tmp_path))) == "1"


def test_on_a_broker_others_may_use_it_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=str(tmp_path), broker="kafka.example:9092")
    assert _child_env(tmp_path, monkeypatch, settings) == "-"
