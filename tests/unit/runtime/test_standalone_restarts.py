"""The supervisor's restart rule, its crash ledger and how ``/metrics`` shows it."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from kestream.runtime.crash_metrics import CrashCollector, expose_supervisor_crashes
from kestream.runtime.metrics import Metrics
from kestream.runtime.restarts import CRASHES_FILE_ENV, CrashLedger, CrashPolicy, describe_exit
from kestream.runtime.supervisor import RoleProcess, Supervisor
from kestream.settings import DEFAULT_DATA_DIR, Settings


def test_delays_double_per_recent_crash_and_are_capped() -> None:
    policy = CrashPolicy(limit=10, window_s=1000.0, max_delay_s=3.0)
    assert [policy.crashed(float(t)) for t in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_limit_crashes_within_the_window_give_up() -> None:
    policy = CrashPolicy(limit=3, window_s=10.0, max_delay_s=30.0)
    assert policy.crashed(0.0) == 0.5
    assert policy.crashed(1.0) == 1.0
    assert policy.crashed(2.0) is None
    assert policy.recent == 3


def test_crashes_older_than_the_window_are_forgotten() -> None:
    policy = CrashPolicy(limit=3, window_s=10.0, max_delay_s=30.0)
    policy.crashed(0.0)
    policy.crashed(5.0)
    assert policy.crashed(12.0) == 1.0  # the crash at 0 s left the window; 5 s and 12 s stay
    assert policy.recent == 2


def test_exit_causes_read_as_people_name_them() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(-15) == "signal SIGTERM"
    assert describe_exit(-200) == "signal 200"


def test_ledger_file_and_collector_show_the_counts(tmp_path: Path) -> None:
    ledger = CrashLedger(tmp_path / "standalone" / "crashes.json")
    metrics = Metrics(process_collectors=False)
    metrics.registry.register(CrashCollector(ledger.path))
    crashes = "kestream_standalone_role_crashes_total"
    assert metrics.value(crashes, {"role": "worker", "cause": "signal SIGKILL"}) is None
    ledger.crashed("worker", "signal SIGKILL")
    ledger.crashed("worker", "signal SIGKILL")
    ledger.crashed("executor", "exit code 1")
    ledger.restarted("worker")
    assert metrics.value(crashes, {"role": "worker", "cause": "signal SIGKILL"}) == 2
    assert metrics.value(crashes, {"role": "executor", "cause": "exit code 1"}) == 1
    restarts = "kestream_standalone_role_restarts_total"
    assert metrics.value(restarts, {"role": "worker"}) == 1
    assert json.loads(ledger.path.read_text())["restarts"] == {"worker": 1}
    assert [p.name for p in ledger.path.parent.iterdir()] == ["crashes.json"]  # no temp left


def test_a_missing_or_torn_ledger_shows_no_counts(tmp_path: Path) -> None:
    metrics = Metrics(process_collectors=False)
    path = tmp_path / "crashes.json"
    metrics.registry.register(CrashCollector(path))
    assert b"kestream_standalone_role_crashes_total{" not in metrics.render()[0]
    path.write_text('{"crashes": {"api"')
    assert b"kestream_standalone_role_crashes_total{" not in metrics.render()[0]


def test_only_a_child_of_standalone_exposes_the_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics(process_collectors=False)
    monkeypatch.delenv(CRASHES_FILE_ENV, raising=False)
    assert not expose_supervisor_crashes(metrics)
    ledger = CrashLedger(tmp_path / "crashes.json")
    ledger.crashed("api", "exit code 1")
    monkeypatch.setenv(CRASHES_FILE_ENV, str(ledger.path))
    assert expose_supervisor_crashes(metrics)
    assert expose_supervisor_crashes(metrics)  # twice is harmless
    value = metrics.value(
        "kestream_standalone_role_crashes_total", {"role": "api", "cause": "exit code 1"}
    )
    assert value == 1


def test_the_data_dir_is_per_user_and_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("KESTREAM_DATA_DIR", raising=False)
    assert Settings().data_path == Path.home() / ".local/share/kestream"
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/xdg")
    assert Settings().data_path == Path("/srv/xdg/kestream")
    assert Settings(data_dir="~/elsewhere").data_path == Path.home() / "elsewhere"
    assert Settings(data_dir="/abs").data_path == Path("/abs")
    assert Settings().data_dir == DEFAULT_DATA_DIR


class _Exited:
    """A child process that has exited with ``code`` (what ``Popen.poll`` says); polling it
    asks the supervisor to stop, so that ``_watch`` makes one pass."""

    def __init__(self, code: int, stop: asyncio.Event) -> None:
        self.code = code
        self.pid = 4242
        self.stop = stop

    def poll(self) -> int:
        self.stop.set()
        return self.code


def _shared_slot(tmp_path: Path, limit: int) -> RoleProcess:
    roles = "executor,worker,scheduler,api"
    policies = {role: CrashPolicy(limit, 300.0, 30.0) for role in roles.split(",")}
    return RoleProcess("executor+worker+scheduler+api", roles, policies)


async def _one_exit(
    tmp_path: Path, slot: RoleProcess, named: str | None, code: int = 1, cause: str | None = None
) -> tuple[int, Supervisor]:
    supervisor = Supervisor(Settings(broker="127.0.0.1:1", data_dir=str(tmp_path)), None)
    supervisor.ledger = CrashLedger(tmp_path / "crashes.json")
    supervisor.slots = [slot]
    slot.failed_file = tmp_path / "shared.failed"
    if named is not None:
        slot.failed_file.write_text(named if cause is None else f"{named}\n{cause}")
    stop = asyncio.Event()
    slot.process = cast(Any, _Exited(code, stop))
    return await supervisor._watch(stop, "127.0.0.1:1"), supervisor


async def test_a_crash_of_a_shared_process_counts_for_the_role_that_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slot = _shared_slot(tmp_path, limit=5)
    with caplog.at_level(logging.ERROR, logger="kestream.standalone"):
        code, supervisor = await _one_exit(tmp_path, slot, "worker")
    assert code == 0 and slot.process is None  # restarted after its delay
    assert supervisor.ledger is not None
    assert supervisor.ledger.crashes == {"worker": {"exit code 1": 1}}
    assert [p.recent for p in slot.policies.values()] == [0, 1, 0, 0]
    assert "(its worker role failed)" in caplog.text


async def test_a_scheduler_that_stepped_down_is_counted_and_logged_as_such(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A scheduler whose lease can never be its own again stops its process, saying why
    (record_failed_role's cause): the supervisor restarts it, logs the reason and counts the
    exit under it rather than under the exit status."""
    slot = _shared_slot(tmp_path, limit=5)
    with caplog.at_level(logging.ERROR, logger="kestream.standalone"):
        code, supervisor = await _one_exit(tmp_path, slot, "scheduler", cause="stepped down")
    assert code == 0 and slot.process is None  # started again after its delay
    assert supervisor.ledger is not None
    assert supervisor.ledger.crashes == {"scheduler": {"stepped down": 1}}
    assert "exited with exit code 1 (stepped down); starting it again" in caplog.text
    assert "(its scheduler role failed)" in caplog.text


async def test_a_role_that_keeps_crashing_in_a_shared_process_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slot = _shared_slot(tmp_path, limit=1)
    with caplog.at_level(logging.ERROR, logger="kestream.standalone"):
        code, supervisor = await _one_exit(tmp_path, slot, "scheduler")
    assert code == 1
    assert supervisor.gave_up == "scheduler"
    assert "the scheduler role of executor+worker+scheduler+api keeps crashing" in caplog.text


async def test_a_kill_of_a_shared_process_counts_for_every_role_it_hosts(tmp_path: Path) -> None:
    slot = _shared_slot(tmp_path, limit=5)
    _, supervisor = await _one_exit(tmp_path, slot, None, code=-9)
    assert supervisor.ledger is not None
    assert sorted(supervisor.ledger.crashes) == ["api", "executor", "scheduler", "worker"]


async def test_the_embedded_broker_standalone_starts_is_marked_so_its_mirror_is_paced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker mirror reads the embedded broker from the supervisor's own process, not
    through connect(): without the mark its consumer polls a fetch every 50 ms forever (an
    idle standalone's broker then burns a sixth of a core)."""
    from kestream.runtime import fetch_pacing
    from kestream.runtime import supervisor as supervisor_module

    class FakeBroker:
        bootstrap = "127.0.0.1:39999"

        async def astart(self) -> None:
            return None

    monkeypatch.setattr(supervisor_module, "EmbeddedBroker", FakeBroker)
    monkeypatch.setattr(fetch_pacing, "_EMBEDDED", set())
    settings = Settings(data_dir=str(tmp_path), standalone_durable=False)
    supervisor = Supervisor(settings, None)
    assert await supervisor._broker(tmp_path, first=True) == FakeBroker.bootstrap
    assert fetch_pacing.paced_consumer_options(settings, FakeBroker.bootstrap, "tansu")


class _Watched:
    """A real child process whose ``poll`` tells the test when the supervisor has looked."""

    def __init__(self, looked: asyncio.Event) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        self.pid = self.process.pid
        self.looked = looked

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is None:
            self.looked.set()
        return code


async def test_a_child_that_exits_wakes_the_watch_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch rests between looks; a child's exit (SIGCHLD) ends the rest, so the rest can
    be long: here an hour, which the exit must cut short for the test to end."""
    from kestream.runtime import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "_WATCH_IDLE_S", 3600.0)
    slot = RoleProcess("worker", "worker", {"worker": CrashPolicy(1, 300.0, 30.0)})
    slot.failed_file = tmp_path / "worker.failed"
    supervisor = Supervisor(Settings(broker="127.0.0.1:1", data_dir=str(tmp_path)), None)
    supervisor.ledger = CrashLedger(tmp_path / "crashes.json")
    supervisor.slots = [slot]
    looked = asyncio.Event()
    child = _Watched(looked)
    slot.process = cast(Any, child)
    watch = asyncio.create_task(supervisor._watch(asyncio.Event(), "127.0.0.1:1"))
    try:
        await looked.wait()  # it looked, found the child running, and rests
        assert child.process.stdin is not None
        child.process.stdin.close()  # the child exits
        code = await asyncio.wait_for(watch, 60.0)  # a guard against a hang, not a timing
    finally:
        watch.cancel()
        child.process.kill()
        child.process.wait()
    assert code == 1 and supervisor.gave_up == "worker"  # its one allowed crash
    assert supervisor.ledger.crashes == {"worker": {"exit code 0": 1}}


def test_the_supervisor_does_not_import_the_prometheus_client() -> None:
    """The supervisor serves no metrics: the client would be 2 MB of its resident memory."""
    code = (
        "import sys, kestream.runtime.supervisor, kestream.runtime.broker_store; "
        "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
