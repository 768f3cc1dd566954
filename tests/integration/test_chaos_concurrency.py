"""Chaos: a flow ``concurrency`` limit holds while the executor that owns the flow's admission
partition is killed with SIGKILL, on each broker.

Limit 2, twenty executions submitted at once, the processes of ``tests/integration/
chaos_harness.py`` (two executors, one worker). Once a few executions have ended, the executor
that owns the flow's admissions partition (where its slot table lives) is killed and restarted,
as a supervisor would. Observed from the execution-updates topic:

- at no moment were more than 2 executions RUNNING: each execution's interval runs from its
  RUNNING date (the admission's decision, carried by the answer, so a replay keeps it) to the
  end date of the first terminal update seen for it (a replayed end after the kill dates the
  same end again, later);
- all 20 end SUCCESS, each task's effect once (the harness's tally: nothing lost, doubled or
  stuck, so no slot was leaked or counted twice);
- the line is kept: the executions that were QUEUED start RUNNING in the order they were
  queued.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from chaos_harness import Cluster, UpdatesWatch, partition_of, read_effects, tally_executions

from kestream.executor.admission import flow_key
from kestream.models.execution import Execution
from kestream.models.state import StateType
from kestream.runtime.execution_updates import MergedExecution, merge_update
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

LIMIT = 2
EXECUTIONS = 20
TASK_SECONDS = 1.0
#: Ended executions before the kill: the line is still long then.
KILL_AFTER_ENDED = 5
#: Twenty one-second runs two at a time, a kill's recovery (a session timeout, a start).
BOUND_S = 60.0 + EXECUTIONS * TASK_SECONDS / LIMIT
DRAIN_S = 120.0

FLOW = """
id: chaos_limited
namespace: chaos
concurrency:
  limit: {limit}
  behavior: QUEUE
tasks:
  - id: effect
    type: chaos.tasks.Effect
    path: {path}
    seconds: {seconds}
"""


class HistoryWatch(UpdatesWatch):
    """The harness's watch, plus each execution as its first terminal update showed it."""

    def __init__(self, settings: Settings, kind: str) -> None:
        super().__init__(settings, kind)
        self.merged: dict[str, MergedExecution] = {}
        self.first_ended: dict[str, Execution] = {}

    def _note(self, value: bytes, at: float) -> None:
        super()._note(value, at)
        body = orjson.loads(value)
        execution_id = body["execution"]["id"]
        merged = merge_update(self.merged.get(execution_id), body)
        self.merged[execution_id] = merged
        if merged.terminal and merged.complete and execution_id not in self.first_ended:
            self.first_ended[execution_id] = merged.model()


def _date(execution: Execution, state: StateType) -> datetime | None:
    return next((h.date for h in execution.state.histories if h.state is state), None)


def most_running_at_once(ended: list[Execution]) -> int:
    """The largest number of executions whose [RUNNING, end] intervals overlap."""
    moves: list[tuple[datetime, int]] = []
    for execution in ended:
        start = _date(execution, StateType.RUNNING)
        assert start is not None, f"{execution.id} never ran: {execution.state.current}"
        end = execution.state.histories[-1].date
        moves += [(start, 1), (end, -1)]
    running = most = 0
    for _, step in sorted(moves, key=lambda move: (move[0], move[1])):  # ends first on a tie
        running += step
        most = max(most, running)
    return most


def queue_order_kept(ended: list[Execution]) -> tuple[list[str], list[str]]:
    """The QUEUED executions by the date they were queued, and by the date they started."""
    queued = [e for e in ended if _date(e, StateType.QUEUED) is not None]
    by_queue = sorted(queued, key=lambda e: _date(e, StateType.QUEUED) or datetime.min)
    by_start = sorted(queued, key=lambda e: _date(e, StateType.RUNNING) or datetime.min)
    return [e.id for e in by_queue], [e.id for e in by_start]


async def _until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def test_the_limit_holds_when_the_admission_owner_is_killed(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.jsonl"
    async with Cluster(broker.bootstrap, topic_prefix, tmp_path, effects) as cluster:
        client = cluster.require_client()
        flow = await client.deploy(FLOW.format(limit=LIMIT, path=effects, seconds=TASK_SECONDS))
        await cluster.start(executor=2, worker=1)
        watch = HistoryWatch(cluster.settings, client.ctx.kind)
        async with watch:
            submitted: dict[str, float] = {}

            async def submit() -> None:
                execution_id = await client.submit(flow.namespace, flow.id)
                submitted[execution_id] = time.time()

            await asyncio.gather(*(submit() for _ in range(EXECUTIONS)))
            await _until(lambda: len(watch.first_ended) >= KILL_AFTER_ENDED, DRAIN_S)
            admission = partition_of(flow_key(flow.namespace, flow.id), cluster.settings.partitions)
            (owner,) = [r for r in cluster.live("executor") if admission in (r.claimed() or ())]
            ended_before_kill = len(watch.first_ended)
            cluster.kill(owner)
            cluster.restart(owner)
            await _until(lambda: all(e in watch.first_ended for e in submitted), DRAIN_S)
            tally = tally_executions(
                "concurrency-kill", broker.backend, submitted, watch, read_effects(effects),
                cluster.kills, partitions=cluster.settings.partitions, bound_s=BOUND_S,
            )  # fmt: skip
            tally.details.extend(cluster.errors())
            ended = [watch.first_ended[e] for e in submitted if e in watch.first_ended]
    print(f"\n{tally.table()}\nended before the kill: {ended_before_kill}")
    tally.assert_clean()
    assert ended_before_kill < EXECUTIONS, "the kill came after every execution had ended"
    assert most_running_at_once(ended) <= LIMIT
    by_queue, by_start = queue_order_kept(ended)
    assert len(by_queue) >= EXECUTIONS // 2, f"only {len(by_queue)} were QUEUED"
    assert by_queue == by_start, "\n".join(
        f"{e.id} {[(h.state.value, h.date.isoformat()) for h in e.state.histories]}" for e in ended
    )
