"""Process health (parts, event loop heartbeat) and the member roster, with injected clocks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from kestream.runtime import records
from kestream.runtime.health import Check, Health, HealthPart, LoopMonitor
from kestream.runtime.members import STALE_AFTER_S, MemberStatus, Roster, member_key


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Part:
    """A processor-like part whose state the test sets."""

    health_name = "processor"

    def __init__(self) -> None:
        self.is_live = True
        self.is_ready = False

    def health_detail(self) -> dict[str, Any]:
        return {"partitions": [0, 1]}


# -- Health ------------------------------------------------------------------------------------


def test_a_process_with_no_parts_is_live_but_not_ready() -> None:
    health = Health("executor")
    assert health.live()[0] is True
    ok, details = health.ready()
    assert ok is False and details["status"] == "DOWN" and details["checks"] == {}


def test_ready_needs_every_part_live_and_ready() -> None:
    part = Part()
    flows = {"loaded": False}
    health = Health("executor")
    health.add(part, Check("flows", lambda: flows["loaded"]))
    assert isinstance(part, HealthPart)

    ok, details = health.ready()
    assert not ok and health.not_ready() == ["processor", "flows"]
    assert details["checks"]["processor"] == {"live": True, "ready": False, "partitions": [0, 1]}

    part.is_ready = True
    flows["loaded"] = True
    ok, details = health.ready()
    assert ok and details == {
        "role": "executor",
        "status": "UP",
        "checks": {
            "processor": {"live": True, "ready": True, "partitions": [0, 1]},
            "flows": {"live": True, "ready": True},
        },
    }

    part.is_live = False  # its loop crashed: neither live nor ready
    assert health.live()[0] is False
    assert health.ready()[0] is False


def test_a_part_that_raises_is_reported_down_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    health = Health("worker", [Check("broken", broken)])
    with caplog.at_level(logging.ERROR, logger="kestream.health"):
        ok, details = health.ready()
    assert not ok
    # The open health says it failed; why is in the log only.
    assert details["checks"]["broken"] == {"live": False, "ready": False, "checkFailed": True}
    assert "boom" not in str(details) and "boom" in caplog.text


def test_loop_monitor_reports_a_blocked_loop() -> None:
    clock = FakeClock(0.0)
    monitor = LoopMonitor(interval=0.5, max_block_s=10.0, clock=clock)
    clock.now = 0.52
    monitor.beat(asked=0.0)
    assert monitor.is_live and abs(monitor.lag - 0.02) < 1e-9

    clock.now = 30.0  # no beat since 0.52: the loop is stuck right now
    assert not monitor.is_live

    monitor.beat(asked=0.52)  # the loop came back after a 29 s block
    assert monitor.lag > 10 and not monitor.is_live
    clock.now = 30.6
    monitor.beat(asked=30.0)  # and is healthy again
    assert monitor.is_live and monitor.max_lag > 10


async def test_loop_monitor_beats_on_a_running_loop() -> None:
    monitor = LoopMonitor(interval=0.01)
    await monitor.start()
    try:
        first = monitor.last_beat
        for _ in range(100):
            await asyncio.sleep(0.01)
            if monitor.last_beat > first:
                break
        assert monitor.last_beat > first and monitor.is_live
    finally:
        await monitor.stop()


# -- the member roster ---------------------------------------------------------------------------


def _status(role: str, pid: int, ts: float, *, ready: bool = True) -> MemberStatus:
    not_ready = () if ready else ("executor",)
    return MemberStatus(role, "host-a", pid, 40_000 + pid, ready, True, 900.0, ts, not_ready)


def test_member_status_round_trips_and_bad_records_are_skipped() -> None:
    status = _status("executor", 7, 1_000.0, ready=False)
    assert status.key == member_key("executor", "host-a", 7) == "executor/host-a/7"
    assert MemberStatus.decode(status.encode()) == status

    roster = Roster(clock=FakeClock())
    roster.apply("bad", b"{not json")
    roster.apply("bad", records.dumps({"role": "executor"}))
    roster.apply("bad", records.dumps([1, 2]))
    assert roster.members() == []


def test_installation_is_ready_with_an_executor_and_a_worker_all_ready() -> None:
    clock = FakeClock(1_000.0)
    roster = Roster(clock=clock)
    ok, details = roster.status()
    assert not ok and details["missingRoles"] == ["executor", "worker"]

    executor = _status("executor", 1, 999.0)
    roster.apply(executor.key, executor.encode())
    ok, details = roster.status()
    assert not ok and details["missingRoles"] == ["worker"]

    worker = _status("worker", 2, 999.5)
    roster.apply(worker.key, worker.encode())
    ok, details = roster.status()
    assert ok and details["status"] == "UP" and details["notReady"] == []
    assert [m["key"] for m in details["members"]] == [executor.key, worker.key]
    assert details["members"][0]["ageS"] == 1.0 and details["members"][0]["port"] == 40_001


def test_a_member_saying_not_ready_makes_the_installation_not_ready() -> None:
    roster = Roster(clock=FakeClock(1_000.0))
    for status in (_status("executor", 1, 1_000.0), _status("worker", 2, 1_000.0)):
        roster.put(status)
    second = _status("executor", 3, 1_000.0, ready=False)  # a new stream thread, recovering
    roster.put(second)
    ok, details = roster.status()
    assert not ok and details["notReady"] == [second.key]
    assert details["members"][1]["not_ready"] == ["executor"]


def test_silent_members_are_ignored_and_tombstones_remove_members() -> None:
    clock = FakeClock(1_000.0)
    roster = Roster(clock=clock)
    executor, worker = _status("executor", 1, 1_000.0), _status("worker", 2, 1_000.0)
    stuck = _status("scheduler", 3, 1_000.0, ready=False)
    for status in (executor, worker, stuck):
        roster.put(status)
    assert not roster.status()[0]

    stale_after = STALE_AFTER_S
    clock.now = 1_000.0 + stale_after + 0.1  # nobody has beaten since: all gone
    assert roster.members() == []
    roster.put(_status("executor", 1, clock.now))
    roster.put(_status("worker", 2, clock.now))
    ok, details = roster.status()  # the silent, not-ready scheduler no longer counts
    assert ok and {m["role"] for m in details["members"]} == {"executor", "worker"}

    roster.apply(worker.key, None)  # the worker stopped cleanly
    ok, details = roster.status()
    assert not ok and details["missingRoles"] == ["worker"]


def test_required_roles_are_configurable() -> None:
    roster = Roster(required_roles=("executor",), clock=FakeClock(1_000.0))
    roster.put(_status("executor", 1, 1_000.0))
    assert roster.status()[0]
