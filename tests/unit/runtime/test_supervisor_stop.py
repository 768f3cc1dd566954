"""What standalone's supervisor does to its children beside restarting the ones that exit: a
graceful stop that keeps its own loop running (the broker mirror and the API's durable
acknowledgements run on it), and a kill of a child that stopped being live, whose partitions
no group would move (kestream.runtime.supervision.HangWatch)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from kestream.runtime import supervisor
from kestream.runtime.members import MemberStatus, Roster
from kestream.runtime.mirror_ack import MIRROR_ACK_FD_ENV
from kestream.runtime.restarts import CrashLedger
from kestream.runtime.supervision import HUNG, HangWatch
from kestream.runtime.supervisor import RoleProcess, Supervisor, _lock_data_dir
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


def _member(role: str, pid: int, ts: float, *, live: bool = True, host: str = "h") -> MemberStatus:
    return MemberStatus(role, host, pid, None, True, live, 0.0, ts)


def test_a_role_not_heard_live_past_the_bound_is_hung_and_silence_counts() -> None:
    watch = HangWatch(bound=60.0, host="h")
    children = {10: (("executor",), 900.0), 11: (("executor", "worker", "scheduler", "api"), 900.0)}
    members = [_member("executor", 10, 1000.0), _member("worker", 11, 1000.0)]
    assert watch.hung(children, members, 1050.0) == {}
    # pid 10 goes silent (a blocked loop publishes nothing); 11's worker keeps beating
    members = [_member("executor", 10, 1000.0), _member("worker", 11, 1070.0)]
    assert watch.hung(children, members, 1070.0) == {10: ("executor", 70.0)}
    # a record that says not live does not count as heard live
    members = [_member("worker", 11, 1140.0, live=False)]
    assert watch.hung(children, members, 1140.0) == {10: ("executor", 140.0), 11: ("worker", 70.0)}


def test_a_child_is_judged_from_its_first_record_only_and_only_its_own() -> None:
    watch = HangWatch(bound=60.0, host="h")
    children = {10: (("executor",), 900.0), 12: (("worker",), 900.0)}
    members = [
        _member("executor", 99, 950.0),  # a predecessor's record: not this child's
        _member("executor", 10, 950.0, host="elsewhere"),
        _member("executor", 10, 800.0),  # an earlier run's process that had the same pid
        _member("worker", 12, 1000.0, live=False),  # never live yet: judged from here
    ]
    assert watch.hung(children, members, 1000.0 + 3600) == {12: ("worker", 3600.0)}
    assert 10 not in watch.hung(children, members, 1e9)  # starting: no record of its own yet


class _Board:
    def __init__(self, roster: Roster) -> None:
        self.roster = roster


def test_the_supervisor_kills_a_hung_executor_and_names_it_hung(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        supervisor,
        "role_command",
        lambda role: [sys.executable, "-c", "import time; time.sleep(600)"],
    )
    sup = Supervisor(Settings(data_dir=str(tmp_path), standalone_durable=False), None)
    sup.ledger = CrashLedger(tmp_path / "standalone" / "crashes.json")
    sup.slots = [RoleProcess("executor-1", "executor", {}), RoleProcess("api", "api", {})]
    assert sup._hangs is not None
    sup._hangs.host = "h"
    try:
        for slot in sup.slots:
            sup._spawn(slot, "127.0.0.1:1")
        executor, api = (slot.process for slot in sup.slots)
        assert executor is not None and api is not None
        roster = Roster(clock=lambda: 1000.0)
        for slot in sup.slots:
            slot.started_at = 800.0
        roster.put(_member("executor", executor.pid, 900.0))
        roster.put(_member("api", api.pid, 900.0))  # an API alone holds no partitions
        sup._members = _Board(roster)  # type: ignore[assignment]
        sup._kill_hung(930.0)
        assert executor.poll() is None  # 30 s: within the bound
        sup._kill_hung(1000.0)
        assert executor.wait(60) == -9
        assert api.poll() is None
        assert sup.slots[0].failure() == (("executor",), HUNG)
    finally:
        asyncio.run(sup._stop_children(graceful=False))


def test_with_groups_no_child_is_judged(tmp_path: Path) -> None:
    grouped = Settings(data_dir=str(tmp_path), standalone_groups=True)
    elsewhere = Settings(data_dir=str(tmp_path), broker="127.0.0.1:9092")
    assert Supervisor(grouped, None)._hangs is None
    assert Supervisor(elsewhere, None)._hangs is None


def test_the_data_dir_stays_locked_until_the_last_child_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor killed outright drops its lock at once, its children a moment later: a new
    standalone on the same data dir must not start beside them."""
    monkeypatch.setattr(
        supervisor,
        "role_command",
        lambda role: [sys.executable, "-c", "import time; time.sleep(600)"],
    )
    sup = Supervisor(Settings(data_dir=str(tmp_path), standalone_durable=False), None)
    sup.ledger = CrashLedger(tmp_path / "standalone" / "crashes.json")
    sup.slots = [RoleProcess("executor-1", "executor", {})]
    lock = _lock_data_dir(tmp_path)
    assert not isinstance(lock, str)
    sup._data_lock = lock
    try:
        sup._spawn(sup.slots[0], "127.0.0.1:1")
        lock.close()  # the supervisor is gone; its child is not yet
        assert isinstance(_lock_data_dir(tmp_path), str)
        asyncio.run(sup._stop_children(graceful=False))
        again = _lock_data_dir(tmp_path)
        assert not isinstance(again, str)
        again.close()
    finally:
        asyncio.run(sup._stop_children(graceful=False))


#: A child that writes what it was given of the mirror's socket pair, and exits.
_TELLS = """
import json, os, sys
fd = os.environ.get("KESTREAM_STANDALONE_MIRROR_ACK_FD")
seen = os.readlink(f"/proc/self/fd/{fd}") if fd is not None else None
open(sys.argv[1], "w").write(json.dumps({"fd": fd, "seen": seen}))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd")
async def test_only_a_process_hosting_the_api_gets_an_end_of_a_socket_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        supervisor,
        "role_command",
        lambda role: [sys.executable, "-c", _TELLS, str(tmp_path / f"{role}.json")],
    )
    monkeypatch.setenv(MIRROR_ACK_FD_ENV, "99")  # from the caller's environment: never passed on
    sup = Supervisor(Settings(data_dir=str(tmp_path), standalone_durable=True), None)
    assert sup._mirror_acks is not None
    sup.ledger = CrashLedger(tmp_path / "standalone" / "crashes.json")
    sup.slots = [RoleProcess("main", "worker,api", {}), RoleProcess("executor-1", "executor", {})]
    try:
        for slot in sup.slots:
            sup._spawn(slot, "127.0.0.1:1")
            assert slot.process is not None
            assert await asyncio.to_thread(slot.process.wait, 60) == 0
        api = json.loads((tmp_path / "worker,api.json").read_text())
        executor = json.loads((tmp_path / "executor.json").read_text())
        assert api["fd"] is not None and api["fd"] != "99"
        assert api["seen"].startswith("socket:")
        assert executor == {"fd": None, "seen": None}
        try:  # the parent closed its copy of the child's end once the child had it
            here = os.readlink(f"/proc/self/fd/{api['fd']}")
        except OSError:
            here = None
        assert here != api["seen"]
    finally:
        await sup._stop_children(graceful=False)
        await sup._mirror_acks.close()


class _DeadBrokerBoard:
    """A board whose consumer's stop re-raises its fetch task's cancellation (aiokafka, once
    the broker is gone)."""

    async def stop(self) -> None:
        raise asyncio.CancelledError


async def test_a_members_board_stopped_on_a_dead_broker_does_not_end_the_watch(
    tmp_path: Path,
) -> None:
    sup = Supervisor(Settings(data_dir=str(tmp_path)), None)
    sup._members = _DeadBrokerBoard()  # type: ignore[assignment]
    await sup._stop_members()  # returns: the broker is started again after it
    assert sup._members is None
