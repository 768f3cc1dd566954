"""Chaos: the scheduler SIGKILLed while it fires a backfill, on each broker.

The backfill is set the way the triggers API sets it (a command on the trigger-commands topic,
sent through :class:`~kestream.runtime.triggers_table.TriggersTable`), paced at a few slots per
tick so the kills land while it runs. Each backfilled slot's execution writes one effect line
tagged with its ``trigger.date``; afterwards every slot of the range must have exactly one
execution, ended SUCCESS, with one effect: nothing lost, nothing doubled (definitions in
tests/integration/chaos_harness.py). The short version is in the default run, the long one is
marked ``chaos``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from chaos_harness import Cluster, Tally, UpdatesWatch, read_effects, tally_executions

from kestream.runtime.triggers_table import TriggersTable
from kestream.scheduler.backfill import Backfill, backfill_execution_id
from kestream.scheduler.commands import TriggerCommand
from kestream.scheduler.trigger_state import TriggerState, trigger_key

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

STUCK_BOUND_S = 90.0
DRAIN_S = 120.0

FLOW = """
id: chaos_backfill
namespace: chaos
tasks:
  - id: effect
    type: chaos.tasks.Effect
    path: {path}
    tag: "{{{{ trigger.date }}}}"
triggers:
  - id: every_minute
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "* * * * *"
"""


@dataclass(frozen=True)
class BackfillRun:
    slots: int
    slots_per_tick: int
    kills: int


class PacedCluster(Cluster):
    """The harness's cluster, with backfills paced at ``slots_per_tick`` (a tick is 200 ms)."""

    def __init__(self, *args: object, slots_per_tick: int) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.slots_per_tick = slots_per_tick

    def env(self) -> dict[str, str]:
        return {**super().env(), "KESTREAM_SCHEDULER_BACKFILL_SLOTS": str(self.slots_per_tick)}


async def _backfill_chaos(
    name: str, broker: BrokerHandle, prefix: str, tmp_path: Path, run: BackfillRun
) -> tuple[Tally, Counter[datetime], list[int]]:
    effects = tmp_path / "effects.jsonl"
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)
    start = end - timedelta(minutes=run.slots - 1)
    slots = [start + timedelta(minutes=n) for n in range(run.slots)]
    backfill = Backfill.requested(
        {"start": start.isoformat(), "end": end.isoformat()},
        backfill_id="chaos-backfill", now=datetime.now(UTC), next_execution_date=None,
    )  # fmt: skip
    expected = {
        backfill_execution_id(
            "chaos", "chaos_backfill", "every_minute", backfill.id, slot.isoformat()
        ): slot
        for slot in slots
    }
    created_at_kills: list[int] = []
    async with PacedCluster(
        broker.bootstrap, prefix, tmp_path, effects, slots_per_tick=run.slots_per_tick
    ) as cluster:
        client = cluster.require_client()
        await client.deploy(FLOW.format(path=effects))
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            await cluster.start(executor=1, worker=1, scheduler=1)
            table = TriggersTable(client.ctx)
            await table.start()
            key = trigger_key("chaos", "chaos_backfill", "every_minute")
            try:
                await table.send(
                    TriggerCommand(key, "set-backfill", backfill),
                    TriggerState("chaos", "chaos_backfill", "every_minute", backfill=backfill),
                )
            finally:
                await table.stop()
            sent = time.time()

            def created() -> int:
                return sum(1 for execution_id in expected if execution_id in watch.created)

            for kill in range(run.kills):
                # Kill once the backfill is under way again, well before it is over.
                threshold = (kill + 1) * run.slots // (run.kills + 2)
                deadline = time.monotonic() + DRAIN_S
                while created() < threshold:
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"{created()} of {threshold} backfill executions created before "
                            f"kill {kill + 1}: {cluster.errors()}"
                        )
                    await asyncio.sleep(0.05)
                created_at_kills.append(created())
                (scheduler,) = cluster.live("scheduler")
                cluster.kill(scheduler)
                cluster.restart(scheduler)
                await cluster.ready(cluster.live("scheduler"))
            await _drain(watch, lambda: list(expected), DRAIN_S)
            found = [e for e in read_effects(effects) if e["execution"] in expected]
            tally = tally_executions(
                name, broker.backend, dict.fromkeys(expected, sent), watch, found, cluster.kills,
                partitions=cluster.settings.partitions, bound_s=STUCK_BOUND_S,
            )  # fmt: skip
            tags = Counter(datetime.fromisoformat(str(e["tag"])) for e in found)
            missed = [slot for slot in slots if slot not in tags]
            twice = [slot for slot, count in tags.items() if count > 1]
            tally.lost += len(missed)
            tally.doubled += len(twice)
            tally.details += [f"missed slot {slot}" for slot in missed]
            tally.details += [f"slot fired {tags[slot]} times: {slot}" for slot in twice]
            tally.details.extend(cluster.errors())
            await cluster.dump_records(tally.lost_ids, tmp_path / "lost-records.txt")
    return tally, tags, created_at_kills


async def _drain(watch: UpdatesWatch, ids: Callable[[], list[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(watch.ended(execution_id) for execution_id in ids()):
            return
        await asyncio.sleep(0.25)


@pytest.mark.parametrize(
    ("name", "run"),
    [
        pytest.param("backfill-scheduler-kill", BackfillRun(60, 1, 1), id="short"),
        pytest.param(
            "backfill-scheduler-kill-long",
            BackfillRun(600, 4, 3),
            id="long",
            marks=pytest.mark.chaos,
        ),
    ],
)
async def test_kill_the_scheduler_during_a_backfill(
    broker: BrokerHandle,
    topic_prefix: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    name: str,
    run: BackfillRun,
) -> None:
    tally, tags, created_at_kills = await _backfill_chaos(name, broker, topic_prefix, tmp_path, run)
    print(f"\n{tally.table()}\nexecutions created when each kill fell: {created_at_kills}")
    record_property("chaos", tally.row())
    tally.assert_clean()
    assert len(tags) == run.slots and set(tags.values()) == {1}
    # Each kill fell while the backfill ran: some of its executions existed, not all.
    assert tally.kills == run.kills
    assert all(0 < n < run.slots for n in created_at_kills), created_at_kills
