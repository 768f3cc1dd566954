"""Chaos: SIGKILL of executor, worker and scheduler processes under load, on each broker.

Each scenario has a short version, in the default run (a few executions, one or two kills), and
a long one marked ``chaos`` (``pytest -m chaos``; deselected otherwise, tests/conftest.py):

- an executor of two, chosen at random, killed every 10 s under W1's flow at 2 000/min (short: a
  burst, two kills), each restarted at once as a supervisor would;
- one worker of two killed with hundreds of Sleeps in flight (short: tens);
- the scheduler killed while a Schedule fires every second, restarted, and killed again 10 s
  after it is back (short: once): no slot missed, none fired twice.

Each test prints its row (test, broker, executions, kills, lost, doubled, stuck, failed, the
worst takeover against its 15 s target, the worst time to end; the definitions are in
tests/integration/chaos_harness.py), records it for the run's summary table, and asserts that
nothing was lost, doubled, stuck or failed (never a time).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from chaos_harness import (
    DRAIN_S,
    LONG,
    STUCK_BOUND_S,
    W1_FLOW,
    Cluster,
    Tally,
    UpdatesWatch,
    drain,
    read_effects,
    read_starts,
    report,
    tally_executions,
)

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

Record = Callable[[str, object], None]

SLEEP_FLOW = """
id: chaos_sleep
namespace: chaos
tasks:
  - id: nap
    type: chaos.tasks.Effect
    path: {path}
    seconds: {seconds}
"""

SCHEDULE_FLOW = """
id: chaos_schedule
namespace: chaos
tasks:
  - id: effect
    type: chaos.tasks.Effect
    path: {path}
    tag: "{{{{ trigger.date }}}}"
triggers:
  - id: every_second
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "* * * * * *"
    withSeconds: true
    recoverMissedSchedules: ALL
"""


@dataclass(frozen=True)
class ExecutorLoad:
    rate_per_min: float
    duration_s: float
    first_kill_s: float
    kill_every_s: float


@dataclass(frozen=True)
class SleepRounds:
    rounds: int
    sleeps: int
    seconds: float


@dataclass(frozen=True)
class ScheduleRun:
    duration_s: float
    first_kill_s: float
    kill_every_s: float


# -- executors ------------------------------------------------------------------------------------


async def _executor_chaos(
    name: str, broker: BrokerHandle, prefix: str, tmp_path: Path, load: ExecutorLoad,
    env: dict[str, str] | None = None,
) -> Tally:  # fmt: skip
    effects = tmp_path / "effects.jsonl"
    rng = random.Random(prefix)
    async with Cluster(broker.bootstrap, prefix, tmp_path, effects, env) as cluster:
        client = cluster.require_client()
        flow = await client.deploy(W1_FLOW.format(path=effects))
        await cluster.start(executor=2, worker=1)
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            submitted: dict[str, float] = {}
            pending: set[asyncio.Task[None]] = set()

            async def submit() -> None:
                execution_id = await client.submit(flow.namespace, flow.id)
                submitted[execution_id] = time.time()

            start = time.monotonic()
            interval = 60.0 / load.rate_per_min
            next_kill = start + load.first_kill_s
            count = int(load.duration_s / interval)
            for index in range(count):
                await asyncio.sleep(max(0.0, start + index * interval - time.monotonic()))
                task = asyncio.create_task(submit())
                pending.add(task)
                task.add_done_callback(pending.discard)
                if time.monotonic() >= next_kill:
                    cluster.restart(cluster.kill_random("executor", rng))
                    next_kill += load.kill_every_s
            await asyncio.gather(*pending)
            await drain(watch, lambda: list(submitted), DRAIN_S)
            tally = tally_executions(
                name, broker.backend, submitted, watch, read_effects(effects), cluster.kills,
                partitions=cluster.settings.partitions, bound_s=STUCK_BOUND_S[broker.kind],
            )  # fmt: skip
            tally.details.extend(cluster.errors())
            await cluster.dump_records(tally.lost_ids, tmp_path / "lost-records.txt")
    return tally


@pytest.mark.parametrize(
    ("name", "load"),
    [
        pytest.param("executor-kill", ExecutorLoad(600, 10, 3, 5), id="short"),
        pytest.param(
            "executor-kill-long",
            ExecutorLoad(2000, 70, 10, 10),
            id="long",
            marks=LONG,
        ),
    ],
)
async def test_kill_a_random_executor_under_w1_load(
    broker: BrokerHandle,
    topic_prefix: str,
    tmp_path: Path,
    record_property: Record,
    name: str,
    load: ExecutorLoad,
) -> None:
    tally = await _executor_chaos(name, broker, topic_prefix, tmp_path, load)
    report(tally, record_property)
    tally.assert_clean()
    assert tally.kills >= 2 and len(tally.recoveries) == tally.kills, tally.table()


@pytest.mark.parametrize(
    ("name", "load"),
    [
        pytest.param("executor-kill-eos", ExecutorLoad(600, 10, 3, 5), id="short"),
        pytest.param(
            "executor-kill-eos-long", ExecutorLoad(2000, 70, 10, 10), id="long", marks=LONG
        ),
    ],
)
# Tansu has no transactions: exactly_once falls back to at_least_once there, which
# test_kill_a_random_executor_under_w1_load covers.
@pytest.mark.brokers("apache")
async def test_kill_a_random_executor_under_exactly_once(
    broker: BrokerHandle,
    topic_prefix: str,
    tmp_path: Path,
    record_property: Record,
    name: str,
    load: ExecutorLoad,
) -> None:
    """The executor kill under KESTREAM_PROCESSING_GUARANTEE=exactly_once: a killed executor's
    open transactions are aborted when its partitions' next owner takes their ids. The
    harness's watchers read committed records (every kestream consumer on Kafka does), so an
    aborted end or job is never counted."""
    env = {"KESTREAM_PROCESSING_GUARANTEE": "exactly_once"}
    tally = await _executor_chaos(name, broker, topic_prefix, tmp_path, load, env)
    report(tally, record_property)
    tally.assert_clean()
    assert tally.kills >= 2 and len(tally.recoveries) == tally.kills, tally.table()
    logs = " ".join(p.read_text(errors="replace") for p in tmp_path.glob("executor-*.log"))
    assert "exactly-once: a transaction per input partition and cycle" in logs


# -- workers --------------------------------------------------------------------------------------


async def _worker_chaos(
    name: str, broker: BrokerHandle, prefix: str, tmp_path: Path, plan: SleepRounds
) -> Tally:
    effects = tmp_path / "effects.jsonl"
    rng = random.Random(prefix)
    async with Cluster(broker.bootstrap, prefix, tmp_path, effects) as cluster:
        client = cluster.require_client()
        flow = await client.deploy(SLEEP_FLOW.format(path=effects, seconds=plan.seconds))
        await cluster.start(executor=1, worker=2)
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            submitted: dict[str, float] = {}

            async def submit() -> None:
                execution_id = await client.submit(flow.namespace, flow.id)
                submitted[execution_id] = time.time()

            for _ in range(plan.rounds):
                await asyncio.gather(*(submit() for _ in range(plan.sleeps)))
                # Every Sleep of the round is on a worker now, none near its end.
                await asyncio.sleep(plan.seconds / 2)
                killed = cluster.kill_random("worker", rng)
                cluster.restart(killed)
                await drain(watch, lambda: list(submitted), DRAIN_S)
                await cluster.ready(cluster.live("worker"))
            tally = tally_executions(
                name, broker.backend, submitted, watch, read_effects(effects), cluster.kills,
                partitions=cluster.settings.partitions,
                bound_s=STUCK_BOUND_S[broker.kind] + plan.seconds, starts=read_starts(effects),
            )  # fmt: skip
            tally.details.extend(cluster.errors())
            await cluster.dump_records(tally.lost_ids, tmp_path / "lost-records.txt")
    return tally


@pytest.mark.parametrize(
    ("name", "plan"),
    [
        pytest.param("worker-kill", SleepRounds(1, 30, 4.0), id="short"),
        pytest.param("worker-kill-long", SleepRounds(3, 300, 8.0), id="long", marks=LONG),
    ],
)
async def test_kill_one_of_two_workers_with_sleeps_in_flight(
    broker: BrokerHandle,
    topic_prefix: str,
    tmp_path: Path,
    record_property: Record,
    name: str,
    plan: SleepRounds,
) -> None:
    tally = await _worker_chaos(name, broker, topic_prefix, tmp_path, plan)
    report(tally, record_property)
    tally.assert_clean()
    # Each kill's Sleeps started again on another process (its takeover) and ended.
    assert len(tally.takeovers) == len(tally.recoveries) == tally.kills == plan.rounds, (
        tally.table()
    )


# -- the scheduler --------------------------------------------------------------------------------


def _slots(effects: list[dict[str, object]]) -> Counter[datetime]:
    return Counter(datetime.fromisoformat(str(e["tag"])) for e in effects)


async def _scheduler_chaos(
    name: str, broker: BrokerHandle, prefix: str, tmp_path: Path, run: ScheduleRun
) -> tuple[Tally, list[datetime]]:
    effects = tmp_path / "effects.jsonl"
    async with Cluster(broker.bootstrap, prefix, tmp_path, effects) as cluster:
        client = cluster.require_client()
        await client.deploy(SCHEDULE_FLOW.format(path=effects))
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            await cluster.start(executor=1, worker=1, scheduler=1)
            start = time.monotonic()
            next_kill = start + run.first_kill_s
            while time.monotonic() - start < run.duration_s:
                await asyncio.sleep(0.1)
                if time.monotonic() >= next_kill:
                    (scheduler,) = cluster.live("scheduler")
                    cluster.kill(scheduler)
                    await cluster.ready([cluster.restart(scheduler)])
                    # The next kill is for a scheduler that runs: one killed while it starts
                    # would only make the same outage longer.
                    next_kill = time.monotonic() + run.kill_every_s
            await cluster.ready(cluster.live("scheduler"))  # its recovery fires what it missed
            await asyncio.sleep(2.0)  # and at least one slot after it
            (scheduler,) = cluster.live("scheduler")
            scheduler.proc.terminate()  # a graceful stop: no slot after this one is expected
            await asyncio.to_thread(scheduler.proc.wait, 30)
            await drain(watch, lambda: list(watch.created), DRAIN_S)
            found = read_effects(effects)
            tally = tally_executions(
                name, broker.backend, dict(watch.created), watch, found, cluster.kills,
                partitions=cluster.settings.partitions, bound_s=STUCK_BOUND_S[broker.kind],
            )  # fmt: skip
            slots = _slots(found)
            missed: list[datetime] = []
            if slots:
                first, last = min(slots), max(slots)
                every = int((last - first).total_seconds()) + 1
                expected = [first + timedelta(seconds=s) for s in range(every)]
                missed = [slot for slot in expected if slot not in slots]
            twice = [slot for slot, count in slots.items() if count > 1]
            tally.lost += len(missed)
            tally.doubled += len(twice)
            tally.details += [f"missed slot {slot}" for slot in missed]
            tally.details += [f"slot fired {slots[slot]} times: {slot}" for slot in twice]
            tally.details.extend(cluster.errors())
            await cluster.dump_records(tally.lost_ids, tmp_path / "lost-records.txt")
    return tally, sorted(slots)


@pytest.mark.parametrize(
    ("name", "run"),
    [
        pytest.param("scheduler-kill", ScheduleRun(8.0, 3.0, 60.0), id="short"),
        pytest.param("scheduler-kill-long", ScheduleRun(90.0, 5.0, 10.0), id="long", marks=LONG),
    ],
)
async def test_kill_the_scheduler_while_a_schedule_fires_every_second(
    broker: BrokerHandle,
    topic_prefix: str,
    tmp_path: Path,
    record_property: Record,
    name: str,
    run: ScheduleRun,
) -> None:
    tally, slots = await _scheduler_chaos(name, broker, topic_prefix, tmp_path, run)
    report(tally, record_property)
    tally.assert_clean()
    # The kills fell inside the observed slots, so the slots around them were checked.
    assert slots and all(
        slots[0].timestamp() < k.at < slots[-1].timestamp() for k in tally.kill_list
    )
    assert tally.kills >= 1 and len(tally.recoveries) == tally.kills, tally.table()
