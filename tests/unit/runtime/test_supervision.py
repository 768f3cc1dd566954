"""What standalone's supervisor reports of its children, and the API's /health from it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kestream.runtime.health import Check, Health
from kestream.runtime.instance_id_guard import DUPLICATE_INSTANCE_ID
from kestream.runtime.members import MemberBoard, MemberStatus, Roster
from kestream.runtime.metrics import Metrics
from kestream.runtime.ops_routes import ops_routes
from kestream.runtime.restarts import CrashLedger, CrashPolicy
from kestream.runtime.supervision import (
    SUPERVISION_FILE_ENV,
    SupervisedChildren,
    SupervisionReport,
    supervised_children,
)
from kestream.runtime.supervisor import RoleProcess, Supervisor
from kestream.settings import Settings

HOST = "box"
SHARED = ("executor", "worker", "scheduler", "api")


def _member(role: str, pid: int, *, ready: bool = True, host: str = HOST) -> MemberStatus:
    return MemberStatus(role, host, pid, None, ready, True, 0.0, 0.0)


def _running(report: SupervisionReport) -> list[MemberStatus]:
    """Both children started and every role of theirs ready."""
    report.started("executor-1+worker+scheduler+api", SHARED, 100)
    report.started("executor-2", ("executor",), 200)
    return [*(_member(role, 100) for role in SHARED), _member("executor", 200)]


def test_a_dead_child_is_not_ready_until_its_replacement_is(tmp_path: Path) -> None:
    report = SupervisionReport(tmp_path / "children.json")
    children = SupervisedChildren(report.path, host=HOST)
    members = _running(report)
    assert children.ready(members)[0]

    report.exited("executor-2", ("executor",), "signal SIGKILL", 0.5)
    ok, details = children.ready(members)  # its last record still says ready: not counted
    assert not ok and details["notReady"] == ["executor-2"]
    assert details["children"]["executor-2"] == {
        "state": "restarting",
        "ready": False,
        "reason": "exited with signal SIGKILL; the supervisor starts it again",
    }
    assert details["children"]["executor-1+worker+scheduler+api"]["ready"]
    assert children.live() == (True, {"status": "UP"})  # restarting is the supervisor's job

    report.started("executor-2", ("executor",), 201)
    ok, details = children.ready(members)  # the dead pid's record is not the new process's
    assert not ok
    assert details["children"]["executor-2"]["reason"] == "started, not ready yet (executor)"
    assert not children.ready([*members, _member("executor", 201, ready=False)])[0]
    assert not children.ready([*members, _member("executor", 201, host="elsewhere")])[0]
    assert children.ready([*members, _member("executor", 201)]) == (
        True,
        {
            "status": "UP",
            "children": {
                "executor-1+worker+scheduler+api": {"state": "running", "ready": True},
                "executor-2": {"state": "running", "ready": True},
            },
            "notReady": [],
        },
    )


def test_a_shared_process_is_ready_once_every_role_it_hosts_is(tmp_path: Path) -> None:
    report = SupervisionReport(tmp_path / "children.json")
    report.started("executor+worker+scheduler+api", SHARED, 100)
    children = SupervisedChildren(report.path, host=HOST)
    three = [_member(role, 100) for role in SHARED[:3]]
    ok, details = children.ready(three)
    assert not ok
    reason = details["children"]["executor+worker+scheduler+api"]["reason"]
    assert reason == "started, not ready yet (api)"
    assert children.ready([*three, _member("api", 100)])[0]


def test_a_supervisor_that_gave_up_is_neither_live_nor_ready(tmp_path: Path) -> None:
    report = SupervisionReport(tmp_path / "children.json")
    children = SupervisedChildren(report.path, host=HOST)
    members = _running(report)
    report.give_up("executor-2", "it keeps crashing (signal SIGKILL)")
    why = "the supervisor gave up on executor-2: it keeps crashing (signal SIGKILL)"
    assert children.live() == (False, {"status": "DOWN", "gaveUp": why})
    ok, details = children.ready(members)
    assert not ok and details["gaveUp"] == why


def test_an_unreadable_report_is_not_ready_but_live(tmp_path: Path) -> None:
    path = tmp_path / "children.json"
    path.write_text("{torn")
    children = SupervisedChildren(path, host=HOST)
    assert not children.ready([])[0]
    assert children.live()[0]


def test_only_a_child_of_standalone_reads_a_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SUPERVISION_FILE_ENV, raising=False)
    assert supervised_children() is None
    monkeypatch.setenv(SUPERVISION_FILE_ENV, str(tmp_path / "children.json"))
    found = supervised_children()
    assert found is not None and found.path == tmp_path / "children.json"


async def _get(client: TestClient, path: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(path)
    return response.status, await response.json()


async def test_the_api_health_routes_answer_for_the_supervisor(tmp_path: Path) -> None:
    """/health/ready is 503 naming the dead child while the process and the members are
    ready; /health/live stays 200 until the supervisor gives up."""
    report = SupervisionReport(tmp_path / "children.json")
    members = _running(report)
    board = MemberBoard(roster=Roster(required_roles=(), clock=lambda: 0.0))
    for member in members:
        board.roster.put(member)
    board.loaded.set()
    health = Health("api", [Check("index", lambda: True)])
    supervised = SupervisedChildren(report.path, host=HOST)
    app = web.Application()
    app.router.add_routes(ops_routes(Metrics(process_collectors=False), health, board, supervised))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        status, body = await _get(client, "/health/ready")
        assert status == 200 and body["supervisor"]["status"] == "UP"
        report.exited("executor-2", ("executor",), "signal SIGKILL", 0.5)
        status, body = await _get(client, "/health/ready")
        assert (status, body["status"]) == (503, "DOWN")
        assert body["installation"]["status"] == "UP"  # what the members alone said
        assert body["supervisor"]["notReady"] == ["executor-2"]
        assert "signal SIGKILL" in body["supervisor"]["children"]["executor-2"]["reason"]
        status, body = await _get(client, "/health/live")
        assert (status, body["supervisor"]) == (200, {"status": "UP"})
        report.give_up("executor-2", "it keeps crashing (signal SIGKILL)")
        status, body = await _get(client, "/health/live")
        assert (status, body["status"]) == (503, "DOWN")
        assert body["supervisor"]["gaveUp"].startswith("the supervisor gave up on executor-2")
    finally:
        await client.close()


class _Exited:
    """A child that exited with ``code``; polling it asks the supervisor to stop."""

    def __init__(self, code: int, stop: asyncio.Event) -> None:
        self.code, self.pid, self.stop = code, 4242, stop

    def poll(self) -> int:
        self.stop.set()
        return self.code


async def _exit(tmp_path: Path, slot: RoleProcess, said: str | None) -> tuple[int, Supervisor]:
    settings = Settings(broker="127.0.0.1:1", data_dir=str(tmp_path), group_instance_id="site")
    supervisor = Supervisor(settings, None)
    supervisor.ledger = CrashLedger(tmp_path / "crashes.json")
    supervisor.report = SupervisionReport(tmp_path / "children.json")
    supervisor.slots = [slot]
    slot.failed_file = tmp_path / "slot.failed"
    if said is not None:
        slot.failed_file.write_text(said)
    stop = asyncio.Event()
    slot.process = cast(Any, _Exited(1, stop))
    return await supervisor._watch(stop, "127.0.0.1:1"), supervisor


def _slot(name: str, roles: str) -> RoleProcess:
    return RoleProcess(name, roles, {r: CrashPolicy(5, 300.0, 30.0) for r in roles.split(",")})


async def test_a_child_that_exited_is_reported_restarting(tmp_path: Path) -> None:
    code, supervisor = await _exit(tmp_path, _slot("executor-2", "executor"), None)
    assert code == 0
    assert supervisor.report is not None
    child = supervisor.report.children["executor-2"]
    assert (child["state"], child["cause"], child["roles"]) == (
        "restarting",
        "exit code 1",
        ["executor"],
    )


async def test_a_child_is_reported_with_the_cause_its_role_gave(tmp_path: Path) -> None:
    """A role that said why it stopped (a scheduler that stepped down for good) is reported
    with that cause, not its process's exit code."""
    slot = _slot("scheduler-1", "scheduler")
    code, supervisor = await _exit(tmp_path, slot, "scheduler\nstepped down")
    assert code == 0 and supervisor.report is not None
    child = supervisor.report.children["scheduler-1"]
    assert (child["state"], child["cause"]) == ("restarting", "stepped down")


async def test_a_child_replaced_through_its_instance_id_stops_standalone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another live process joined with the child's instance id: starting the child again
    would take the id back from it, so standalone stops, naming the id."""
    slot = _slot("executor-1+worker+scheduler+api", "executor,worker,scheduler,api")
    with caplog.at_level(logging.ERROR, logger="kestream.standalone"):
        code, supervisor = await _exit(tmp_path, slot, f"scheduler\n{DUPLICATE_INSTANCE_ID}")
    assert code == 1 and slot.process is None
    assert supervisor.gave_up == slot.name
    assert supervisor.ledger is not None and supervisor.report is not None
    assert supervisor.ledger.crashes == {"scheduler": {DUPLICATE_INSTANCE_ID: 1}}
    assert supervisor.report.gave_up == {"who": slot.name, "why": DUPLICATE_INSTANCE_ID}
    assert "'site.executor-1+worker+scheduler+api'" in caplog.text
    assert "starting it again" not in caplog.text
