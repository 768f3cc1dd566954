"""What ``kestream standalone``'s start waits for, kept short: its role processes start before
its broker is ready (they import what their roles run meanwhile, and take the broker's address
from their stdin once it is), and a member says it is ready as soon as it is."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from bench.standalone import process_phases
from kestream.runtime import members, supervisor
from kestream.runtime.context import BrokerContext
from kestream.runtime.faust_app import StartPhases
from kestream.runtime.health import Check, Health
from kestream.runtime.members import MemberPublisher, MemberStatus
from kestream.runtime.process import BROKER_ON_STDIN_ENV
from kestream.runtime.restarts import CrashLedger
from kestream.runtime.supervisor import Supervisor, _release
from kestream.runtime.topics import Topics
from kestream.settings import Settings

#: What a role process does with the address, here: write it, and whether it waited, to a file.
_CHILD = """
import os, sys
from kestream.runtime.process import broker_on_stdin, read_broker_from_stdin
waited = broker_on_stdin()
address = read_broker_from_stdin()
from kestream.settings import get_settings
left = os.environ.get({env!r})
with open(sys.argv[1], "w") as out:
    out.write(f"{{waited}} {{address}} {{get_settings().broker}} {{left}}")
"""


def _run_child(stdin: str, tmp_path: Path) -> tuple[int, str]:
    out = tmp_path / "out.txt"
    env = {"PATH": "/usr/bin:/bin", BROKER_ON_STDIN_ENV: "1", "KESTREAM_BROKER": "stale:1"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD.format(env=BROKER_ON_STDIN_ENV), str(out)],
        input=stdin.encode(),
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode, out.read_text() if out.exists() else ""


def test_a_role_process_takes_its_broker_from_stdin(tmp_path: Path) -> None:
    code, out = _run_child("127.0.0.1:9092\n", tmp_path)
    # Its settings name the broker given, and the processes it starts will not wait for one.
    assert (code, out) == (0, "True 127.0.0.1:9092 127.0.0.1:9092 None")


def test_a_role_process_whose_stdin_closes_without_a_broker_exits_quietly(
    tmp_path: Path,
) -> None:
    """standalone stopped before its broker was up: nothing to run, nothing to report."""
    assert _run_child("", tmp_path) == (0, "")


def test_a_waiting_process_imports_what_its_roles_run_and_no_more() -> None:
    script = (
        "import sys\n"
        "from kestream.runtime.faust_app import preload\n"
        "preload(('executor', 'worker', 'scheduler'))\n"
        "print(sorted(m for m in ('kestream.runtime.executor_service',"
        " 'kestream.runtime.worker_service', 'kestream.runtime.scheduler_service',"
        " 'kestream.api.service') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[0] == str(
        [
            "kestream.runtime.executor_service",
            "kestream.runtime.scheduler_service",
            "kestream.runtime.worker_service",
        ]
    )


async def test_the_role_processes_start_before_the_broker_and_get_its_address_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every role process is running, waiting, before the broker's address exists; they are
    given it only once all of them have imported what they run (the executor started slowly
    here, held by a file), so that the executors join their group together; each gets it
    once; a process started again later gets it at once."""
    written = tmp_path / "addresses"
    written.mkdir()
    gate = tmp_path / "gate"
    child = (
        "import os, sys, time\n"
        "from kestream.runtime.process import read_broker_from_stdin\n"
        "if sys.argv[1] == 'executor':\n"
        f"    while not os.path.exists({str(gate)!r}): time.sleep(0.01)  # a slow import\n"
        f"open(os.path.join({str(tmp_path)!r}, sys.argv[1]), 'w').close()\n"
        "address = read_broker_from_stdin()\n"
        f"open(os.path.join({str(written)!r}, str(os.getpid())), 'w').write(address)\n"
    )
    monkeypatch.setattr(
        supervisor, "role_command", lambda role: [sys.executable, "-c", child, role]
    )
    settings = Settings(data_dir=str(tmp_path), executor_stream_threads=2)
    sup = Supervisor(settings, None)
    sup.ledger = CrashLedger(tmp_path / "standalone" / "crashes.json")
    sup._spawn_all()
    try:
        assert [slot.role for slot in sup.slots] == ["executor,worker,scheduler,api", "executor"]
        processes = [slot.process for slot in sup.slots]
        all_imported = asyncio.ensure_future(sup._all_imported())
        while not (tmp_path / "executor,worker,scheduler,api").exists():
            await asyncio.sleep(0.01)
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not all_imported.done()  # the executor process is still importing
        gate.touch()
        await all_imported
        assert all(p is not None and p.poll() is None for p in processes)  # waiting on stdin
        assert list(written.iterdir()) == []
        for slot in sup.slots:
            _release(slot, "127.0.0.1:4242")
            _release(slot, "127.0.0.1:9")  # once only: the pipe is closed
        for process in processes:
            assert process is not None and process.wait(60) == 0
        assert {p.read_text() for p in written.iterdir()} == {"127.0.0.1:4242"}
        assert len(list(written.iterdir())) == 2

        again = sup._spawn(sup.slots[1], "127.0.0.1:4343")  # a restart: the broker is up
        assert sup.slots[1].imported is None
        process = sup.slots[1].process
        assert process is not None and process.wait(60) == 0
        assert (written / str(again)).read_text() == "127.0.0.1:4343"
    finally:
        await sup._stop_children(graceful=False)


class _Producer:
    def __init__(self) -> None:
        self.sent: list[bytes | None] = []

    async def send_and_wait(self, topic: str, value: bytes | None, key: bytes) -> None:
        self.sent.append(value)


async def test_a_member_looks_at_its_readiness_often_until_it_is_first_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An installation's start waits for its members' first "ready" record: until then a member
    looks every STARTING_CHECK_S, then at the usual CHECK_S."""
    ready = [False]
    health = Health("executor", [Check("part", lambda: ready[0])])
    settings = Settings(broker="127.0.0.1:1")
    ctx = BrokerContext(settings, "127.0.0.1:1", "kafka", Topics.of(settings))
    # On a multiple of both periods: each look waits a whole period for the next multiple.
    monkeypatch.setattr(members.time, "monotonic", lambda: 1_000.0)
    publisher = MemberPublisher(ctx, "executor", health, check_every=members.CHECK_S)
    producer = _Producer()
    publisher._producer = cast(Any, producer)
    await publisher.publish()
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            ready[0] = True  # ready by the second look
        if len(waits) == 4:
            raise asyncio.CancelledError
        await real_sleep(0)

    monkeypatch.setattr(members.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await publisher._run()
    expected = [members.STARTING_CHECK_S] * 2 + [members.CHECK_S] * 2
    assert waits == pytest.approx(expected)
    assert members.STARTING_CHECK_S < members.CHECK_S
    assert [MemberStatus.decode(v).ready for v in producer.sent] == [False, True]


def test_the_ready_line_tells_the_wait_for_the_broker_from_the_imports() -> None:
    """A child of standalone is older than its start: it waited for the broker. Its ready line
    (what ``python -m bench startup`` reads) counts the wait apart."""
    line = StartPhases(booted=1.5, connect=0.1, roles=1.0, broker_wait=0.4).describe()
    [(roles, parts)] = process_phases(f"[1] [INFO] executor ready: {line}")
    assert roles == "executor"
    assert parts["interpreter, imports and faust"] == 1.1
    assert parts["waiting for the broker"] == 0.4
    assert parts["broker and topics"] == 0.1
    without = StartPhases(booted=1.5, connect=0.1, roles=1.0).describe()
    assert "waiting" not in without and "imports and faust 1.50 s" in without


def test_the_supervisor_starts_the_role_processes_before_importing_the_broker_store() -> None:
    """What ``standalone`` imports before its children start delays them all: the broker
    store (and the engine's codec under it) waits until the broker is started."""
    script = (
        "import sys, kestream.cli, kestream.runtime.supervisor\n"
        "print(sorted(m for m in ('kestream.runtime.broker_store', 'kestream.executor.codec')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
