"""Two live processes given one ``KESTREAM_GROUP_INSTANCE_ID`` on Apache Kafka.

Static membership hands the process that joins last the place of the one holding the id. The
replaced one must not take it back (before, each took it back from the other at its next
heartbeat: both schedulers led in turn, two executors recovered the same partitions over and
over; workers, static now too, would run each other's jobs): it stops, with an error naming
the id (kestream.runtime.instance_id_guard), and the other goes on alone.

For the scheduler, a Schedule fires every second throughout: every slot has exactly one
execution, and every slot after the replaced scheduler stopped was fired (an execution created)
exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

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
from test_scheduler_ha import _role

from kestream.executor.events import ExecutionCreated
from kestream.runtime.records import decode_event

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = [pytest.mark.integration, pytest.mark.brokers("apache")]

#: What the replaced process logs (DuplicateInstanceId's message).
_REPLACED = "with this process's group instance id 'scheduler-0' and replaced it"


async def _stopped(replaced: Role, survivor: Role) -> int:
    """Until ``replaced`` exits (its exit code), the survivor still running."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (code := replaced.proc.poll()) is None:
        assert survivor.proc.poll() is None, survivor.log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, (
            f"{replaced.label} never stopped:\n{replaced.log_path.read_text()[-3000:]}"
        )
        await asyncio.sleep(0.1)
    return code


async def _active(scheduler: Role) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while _role(scheduler) != "active":
        assert scheduler.proc.poll() is None, scheduler.log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{scheduler.log_path.name} never active"
        await asyncio.sleep(0.1)


async def test_a_scheduler_replaced_through_its_instance_id_stops_and_the_other_leads(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.jsonl"
    async with Cluster(broker.bootstrap, topic_prefix, tmp_path, effects) as cluster:
        client = cluster.require_client()
        await client.deploy(SCHEDULE_FLOW.format(path=effects))
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            await cluster.start(executor=1, worker=1, scheduler=1)
            (first,) = cluster.live("scheduler")
            await _active(first)
            await asyncio.sleep(3.0)  # slots fired by the first
            # A second process with the same instance id (scheduler-0), its own log file.
            second = cluster.spawn("scheduler", first.index, generation=1)
            cluster.roles.append(second)
            code = await _stopped(first, second)
            stopped_at = time.time()
            await _active(second)
            await asyncio.sleep(4.0)  # slots fired by the second alone
            assert second.proc.poll() is None and first.proc.poll() == code
            second.proc.terminate()  # a graceful stop: no slot after this one is expected
            await asyncio.to_thread(second.proc.wait, 30)
            await drain(watch, lambda: list(watch.created), DRAIN_S)
            found = read_effects(effects)
            tally = tally_executions(
                "duplicate-scheduler", broker.backend, dict(watch.created), watch, found, [],
                partitions=cluster.settings.partitions, bound_s=STUCK_BOUND_S[broker.kind],
            )  # fmt: skip
            created = Counter(
                (event.execution_id, event.schedule_date)
                for rec in await cluster._read_whole("executions")
                if isinstance(event := decode_event(rec.value), ExecutionCreated)
                and event.flow_id == "chaos_schedule"
            )
    first_log = first.log_path.read_text(errors="replace")
    assert code != 0, first_log[-3000:]
    assert _REPLACED in first_log, first_log[-3000:]
    assert "steps down for good" in first_log
    assert _REPLACED not in second.log_path.read_text(errors="replace")
    tally.assert_clean()
    slots = _slots(found)
    first_slot, last_slot = min(slots), max(slots)
    expected = [
        first_slot + timedelta(seconds=s)
        for s in range(int((last_slot - first_slot).total_seconds()) + 1)
    ]
    missed = [slot for slot in expected if slot not in slots]
    twice = {slot: count for slot, count in slots.items() if count > 1}
    assert (missed, twice) == ([], {}), (missed, twice)
    # The first stopped between the first and the last slot, and every slot after it stopped
    # was fired by the second alone: one creation each.
    after = datetime.fromtimestamp(stopped_at + 1, UTC)
    assert first_slot.timestamp() < stopped_at < last_slot.timestamp() - 1
    late = {key: n for key, n in created.items() if key[1] is not None and key[1] > after}
    assert late and all(n == 1 for n in late.values()), late


@pytest.mark.parametrize("role", ["executor", "worker"])
async def test_a_processor_replaced_through_its_instance_id_stops(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path, role: str
) -> None:
    """The executor and the worker the same way: the replaced one stops naming the id; the
    one that joined last keeps every partition."""
    effects = tmp_path / "effects.jsonl"
    async with Cluster(broker.bootstrap, topic_prefix, tmp_path, effects) as cluster:
        await cluster.start(executor=1, worker=1)
        (first,) = cluster.live(role)
        second = cluster.spawn(role, first.index, generation=1)
        cluster.roles.append(second)
        code = await _stopped(first, second)
        await cluster.ready([second])  # the survivor owns every partition
        assert second.proc.poll() is None
    text = first.log_path.read_text(errors="replace")
    assert code != 0, text[-3000:]
    assert f"with this process's group instance id '{role}-0' and replaced it" in text
