"""Two schedulers, one active: kill -9 the active one while a Schedule fires every second.

The standby must take the lease over (the group hands it on once the killed member's session
times out) and fire on from the last slot the killed one recorded: between the first and the
last slot seen, every slot has exactly one execution. The takeover time (kill to the survivor's
"scheduler active" line) is printed and recorded, not asserted against a bound.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chaos_harness import (
    DRAIN_S,
    READY_TIMEOUT_S,
    STUCK_BOUND_S,
    Cluster,
    Role,
    UpdatesWatch,
    drain,
    read_effects,
    tally_executions,
)
from test_chaos import SCHEDULE_FLOW, _slots

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

Record = Callable[[str, object], None]

_ROLE = re.compile(
    r"scheduler (active) \(term|scheduler (standby) \(term|scheduler started \((\w+)\)"
)
_ACTIVE = re.compile(r"scheduler active \(term")


def _role(scheduler: Role) -> str | None:
    """What the scheduler's log last said it is."""
    found = _ROLE.findall(scheduler.log_path.read_text(errors="replace"))
    if not found:
        return None
    return next(part for part in found[-1] if part)


_OPS = re.compile(r"/health on (http://[\w.:\[\]-]+)")


def _health(scheduler: Role) -> tuple[int, dict[str, Any]]:
    """``/health/ready``'s status and the scheduler's check, from its ops port (in its log)."""
    (url,) = _OPS.findall(scheduler.log_path.read_text(errors="replace"))[-1:]
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, json.loads(body)["checks"]["scheduler"]


def _activations(scheduler: Role) -> int:
    return len(_ACTIVE.findall(scheduler.log_path.read_text(errors="replace")))


async def _until(cluster: Cluster, what: str, done: Callable[[], bool]) -> None:
    """Until ``done()``; a scheduler that exits, or no answer in READY_TIMEOUT_S, fails."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not done():
        for role in cluster.live("scheduler"):
            assert role.proc.poll() is None
        assert time.monotonic() < deadline, f"no {what} in {READY_TIMEOUT_S:.0f} s"
        await asyncio.sleep(0.1)


async def test_the_standby_scheduler_takes_over_after_a_kill_9(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path, record_property: Record
) -> None:
    effects = tmp_path / "effects.jsonl"
    async with Cluster(broker.bootstrap, topic_prefix, tmp_path, effects) as cluster:
        client = cluster.require_client()
        await client.deploy(SCHEDULE_FLOW.format(path=effects))
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            await cluster.start(executor=1, worker=1, scheduler=2)
            schedulers = cluster.live("scheduler")

            def settled() -> bool:
                return sorted(str(_role(s)) for s in schedulers) == ["active", "standby"]

            await _until(cluster, "one active and one standby scheduler", settled)
            (active,) = [s for s in schedulers if _role(s) == "active"]
            (standby,) = [s for s in schedulers if s is not active]
            # /health says which is which, and both are ready (the active one once its
            # ended-executions consumer holds its partitions).
            await _until(cluster, "a ready active scheduler", lambda: _health(active)[0] == 200)
            _, check = _health(active)
            assert (check["active"], check["standby"]) == (True, False), check
            status, check = _health(standby)
            assert (status, check["active"], check["standby"]) == (200, False, True), check
            await asyncio.sleep(3.0)  # slots fired by the first active one
            before = _activations(standby)
            kill = cluster.kill(active)
            await _until(cluster, "takeover", lambda: _activations(standby) > before)
            takeover_s = time.time() - kill.at
            await asyncio.sleep(3.0)  # slots fired by the new active one
            standby.proc.terminate()  # a graceful stop: no slot after this one is expected
            await asyncio.to_thread(standby.proc.wait, 30)
            await drain(watch, lambda: list(watch.created), DRAIN_S)
            found = read_effects(effects)
            tally = tally_executions(
                "scheduler-ha", broker.backend, dict(watch.created), watch, found, [],
                partitions=cluster.settings.partitions, bound_s=STUCK_BOUND_S[broker.kind],
            )  # fmt: skip
    print(f"\nscheduler takeover on {broker.backend}: {takeover_s:.2f} s after the kill -9")
    record_property("scheduler_takeover_s", round(takeover_s, 2))
    tally.assert_clean()
    slots = _slots(found)
    first, last = min(slots), max(slots)
    expected = [
        first + timedelta(seconds=s) for s in range(int((last - first).total_seconds()) + 1)
    ]
    missed = [slot for slot in expected if slot not in slots]
    twice = {slot: count for slot, count in slots.items() if count > 1}
    assert (missed, twice) == ([], {}), (missed, twice)
    # The kill fell between the first and the last slot, so the slots around it were checked.
    assert first.timestamp() < kill.at < last.timestamp() - 1
    assert len(found) == len(watch.created) == len(expected)
