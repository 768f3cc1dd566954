"""Chaos beyond killed roles: the broker restarted under load, the executor group's offsets reset
to the start, and a rebalance while executions wait for their flow revision.

Like tests/integration/test_chaos.py, each scenario runs kestream's roles as separate processes
(tests/integration/chaos_harness.py), counts lost, doubled, stuck and failed executions, prints
its row for the run's summary table and asserts it is clean. Short versions run by default; the
long ones are marked ``chaos`` (``pytest -m chaos``).

- **Broker restart** (Apache Kafka): the Kafka process is stopped and started again on the same
  ports and log dir while W1's flow runs. Executions in flight end, none twice. The recovery is
  from the stop to the first end after it.
  Again under ``KESTREAM_PROCESSING_GUARANTEE=exactly_once``: the transactions open at the stop
  abort, and their cycles are read again.
- **Offsets reset to earliest**: the executor group is stopped, its committed offsets are set to
  each partition's start, and it starts again, so every creation and result is read a second
  time. Inside the dedup window (``KESTREAM_EXECUTOR_ENDED_RETENTION_H``) nothing is redone: no
  new end record, no second effect. Beyond it, an ended execution whose marker has expired is a
  stranger to the executor; what it does then is the second test's subject.
- **Rebalance while held**: creations name a flow revision no executor knows yet, so they are
  held; a second executor joins (the partitions move), then the revision is deployed. The held
  events left with their partitions: each execution runs once, on the revision it named.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import TopicPartition
from chaos_harness import (
    LONG,
    STUCK_BOUND_S,
    W1_FLOW,
    Cluster,
    Kill,
    Tally,
    UpdatesWatch,
    drain,
    read_effects,
    report,
    tally_executions,
)

from kestream.executor import events as ev
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import EXECUTOR_ASSIGNORS
from kestream.runtime.kafka import make_consumer
from kestream.runtime.tansu_compat import fetch_highwaters
from kestream.runtime.txn_markers import ListedEnds
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

Record = Callable[[str, object], None]
#: The executor prunes expired ended markers at most once a minute; a little more than that.
PRUNE_EVERY_S = 65.0


async def _submit_at(
    cluster: Cluster, namespace: str, flow_id: str, submitted: dict[str, float], count: int,
    rate_per_min: float, during: Callable[[float], Any] | None = None,
) -> None:  # fmt: skip
    """Submit ``count`` executions at ``rate_per_min``; ``during(elapsed)`` is awaited between
    submissions (a fault injected at a moment of the load)."""
    client = cluster.require_client()
    pending: set[asyncio.Task[None]] = set()

    async def submit() -> None:
        execution_id = await client.submit(namespace, flow_id)
        submitted[execution_id] = time.time()

    start = time.monotonic()
    interval = 60.0 / rate_per_min
    for index in range(count):
        await asyncio.sleep(max(0.0, start + index * interval - time.monotonic()))
        task = asyncio.create_task(submit())
        pending.add(task)
        task.add_done_callback(pending.discard)
        if during is not None:
            await during(time.monotonic() - start)
    await asyncio.gather(*pending)


# -- the broker restarted ---------------------------------------------------------------------


async def _unstable_partitions(settings: Settings, kind: str) -> list[str]:
    """The partitions of the topics an execution's end is written to whose last stable offset
    is behind their high watermark once the load drained: records of a transaction still open,
    or of one the coordinator completed without writing its markers there (Kafka 4.4 skips a
    partition that has no leader at that moment, as during a single node's restart:
    KAFKA-20734, docs/brokers.md). A read-committed reader sees nothing past that offset, so
    an execution ended there reads as lost although its end was written; the details name
    them, to tell that from an end never written."""
    names = ("executions", "worker-tasks", "execution-updates", "executor-state-changelog")
    every = range(settings.partitions)
    parts = [TopicPartition(settings.topic(name), p) for name in names for p in every]
    ends = ListedEnds(settings, settings.broker or "", kind)
    try:
        stable, high = await ends.of(set(parts))
    finally:
        await ends.stop()
    return [
        f"{tp.topic}[{tp.partition}]: last stable offset {stable[tp]} < high watermark {high[tp]}"
        " (a transaction open, or committed without its markers)"
        for tp in parts
        if stable[tp] < high[tp]
    ]


async def _broker_restarts(
    name: str, broker: BrokerHandle, prefix: str, tmp_path: Path, rate: float, duration: float,
    restarts: tuple[tuple[float, bool], ...], env: dict[str, str] | None = None,
) -> Tally:  # fmt: skip
    """A role process that exits counts as a failure: a role must ride the outage out."""
    from kestream.runtime.apache_kafka import ApacheKafka

    kafka = broker.process
    assert isinstance(kafka, ApacheKafka)
    effects = tmp_path / "effects.jsonl"
    async with Cluster(broker.bootstrap, prefix, tmp_path, effects, env) as cluster:
        client = cluster.require_client()
        flow = await client.deploy(W1_FLOW.format(path=effects))
        await cluster.start(executor=2, worker=1)
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            submitted: dict[str, float] = {}
            plan = list(restarts)
            every = set(range(cluster.settings.partitions))

            async def restart_when_due(elapsed: float) -> None:
                if plan and elapsed >= plan[0][0]:
                    _, hard = plan.pop(0)
                    down = time.time()
                    await kafka.restart(kill=hard)
                    # The recovery counts from the stop, as long as executions waited: the
                    # broker's own downtime (in the label) plus kestream's return to service.
                    back = time.time()
                    how = "SIGKILL" if hard else "SIGTERM"
                    label = f"broker ({how}, down {back - down:.1f} s)"
                    cluster.kills.append(Kill(down, label, kafka.pid or 0, every, "broker"))

            count = int(duration * rate / 60)
            await _submit_at(cluster, flow.namespace, flow.id, submitted, count, rate,
                             restart_when_due)  # fmt: skip
            await drain(watch, lambda: list(submitted))
            tally = tally_executions(
                name, broker.backend, submitted, watch, read_effects(effects), cluster.kills,
                partitions=cluster.settings.partitions, bound_s=STUCK_BOUND_S[broker.kind],
            )  # fmt: skip
            tally.details.extend(cluster.errors())
            await cluster.dump_records(tally.lost_ids, tmp_path / "lost-records.txt")
            if tally.lost_ids:
                tally.details += await _unstable_partitions(cluster.settings, client.ctx.kind)
            exited = [r.label for r in cluster.roles if r.proc.poll() is not None]
            if exited:  # a role must ride the outage out, not die of it
                tally.failed += len(exited)
                tally.details.append(f"roles exited during the restart: {exited}")
            tally.details += [kill.role for kill in cluster.kills]
    return tally


@pytest.mark.parametrize(
    ("name", "rate", "duration", "restarts"),
    [
        pytest.param("broker-restart", 600.0, 12.0, ((4.0, False),), id="short"),
        pytest.param(
            "broker-restart-long",
            2000.0,
            60.0,
            ((15.0, False), (40.0, True)),
            id="long",
            marks=LONG,
        ),
    ],
)
# Restarts a broker process this session started with its data on disk: Apache Kafka (the
# embedded Tansu under test keeps its records in memory).
@pytest.mark.brokers("apache")
async def test_the_broker_restarted_mid_load(
    broker: BrokerHandle,
    topic_prefix: str,
    tmp_path: Path,
    record_property: Record,
    name: str,
    rate: float,
    duration: float,
    restarts: tuple[tuple[float, bool], ...],
) -> None:
    tally = await _broker_restarts(name, broker, topic_prefix, tmp_path, rate, duration, restarts)
    report(tally, record_property)
    tally.assert_clean()
    assert len(tally.recoveries) == tally.kills == len(restarts), tally.table()


@pytest.mark.parametrize(
    ("name", "rate", "duration", "restarts"),
    [
        pytest.param("broker-restart-eos", 600.0, 12.0, ((4.0, False),), id="short"),
        pytest.param(
            "broker-restart-eos-long",
            2000.0,
            60.0,
            ((15.0, False), (40.0, True)),
            id="long",
            marks=LONG,
        ),
    ],
)
# Transactions exist on Apache Kafka only (Tansu falls back to at-least-once), and the restart
# keeps its data on disk.
@pytest.mark.brokers("apache")
async def test_the_broker_restarted_mid_load_under_exactly_once(
    broker: BrokerHandle,
    topic_prefix: str,
    tmp_path: Path,
    record_property: Record,
    name: str,
    rate: float,
    duration: float,
    restarts: tuple[tuple[float, bool], ...],
) -> None:
    """The broker restart under KESTREAM_PROCESSING_GUARANTEE=exactly_once: the executors'
    transactions open at the stop are aborted by the broker (or time out) and their cycles
    are read again from the committed offsets; the watchers read committed records only, so
    an aborted end or job is never counted, and nothing ends twice or is lost.

    Unsupervised, as the at-least-once restart: every role rides the outage out, and one that
    exits fails the test. A stop that falls on a transaction's offset commit kills aiokafka's
    transactional sender ("Unexpected error during batch delivery" from its coordinator
    lookup); the executor replaces that producer in place (a fresh one for the same
    transactional id, the partition's state read again), as Kafka Streams does, instead of
    exiting for a supervisor to start it again."""
    env = {"KESTREAM_PROCESSING_GUARANTEE": "exactly_once"}
    tally = await _broker_restarts(
        name, broker, topic_prefix, tmp_path, rate, duration, restarts, env
    )
    report(tally, record_property)
    tally.assert_clean()
    assert len(tally.recoveries) == tally.kills == len(restarts), tally.table()
    logs = " ".join(p.read_text(errors="replace") for p in tmp_path.glob("executor-*.log"))
    assert "exactly-once: a transaction per input partition and cycle" in logs
    replaced = logs.count("transactional producers of partitions")
    print(f"\nexecutor producers replaced in place (the restart fell on a transaction): {replaced}")
    closings, level = logs.count("closing them with empty"), logs.count("are closed now")
    print(f"partitions left without markers closed (kestream.runtime.txn_markers): {closings} "
          f"closings, {level} partitions closed")  # fmt: skip


# -- offsets reset to earliest ----------------------------------------------------------------


async def _reset_group(ctx: BrokerContext, group: str, topics: list[str]) -> int:
    """Commit each partition's first offset for ``group`` (its members all stopped), as a
    member of it with the executors' assignors (Tansu refuses a commit from outside the group);
    returns how many records its members will read again."""
    settings = ctx.settings
    consumer = make_consumer(
        settings, ctx.bootstrap, ctx.kind, group_id=group,
        partition_assignment_strategy=EXECUTOR_ASSIGNORS,
    )  # fmt: skip
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        consumer.subscribe(topics)
        deadline = time.monotonic() + 120.0
        while set(consumer.assignment()) != set(parts):
            assert time.monotonic() < deadline, "never given the executor group's partitions"
            await consumer.getmany(timeout_ms=200, max_records=1)
        starts = await consumer.beginning_offsets(parts)
        ends = await fetch_highwaters(consumer, parts)
        await consumer.commit({tp: starts[tp] for tp in parts})
        return sum(ends[tp] - starts[tp] for tp in parts)
    finally:
        await consumer.stop()


async def _caught_up(settings: Settings, kind: str, group: str, topics: list[str]) -> bool:
    """Whether ``group`` has committed every partition of ``topics`` up to its end."""
    consumer = make_consumer(settings, settings.broker or "", kind, group_id=group)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        consumer.assign(parts)
        ends = await fetch_highwaters(consumer, parts)
        for tp in parts:
            committed = await consumer.committed(tp)
            if (committed or 0) < ends[tp]:
                return False
        return True
    finally:
        await consumer.stop()


async def _offsets_reset(
    name: str, broker: BrokerHandle, prefix: str, tmp_path: Path, count: int,
    retention_h: float | None,
) -> tuple[Tally, int, dict[str, int], int]:  # fmt: skip
    """Run ``count`` executions to their end, reset the executor group to earliest, let it read
    everything again; returns the tally, the records read again, the end records per execution
    after the replay, and the executions counted once more by their effect."""
    effects = tmp_path / "effects.jsonl"
    extra = {} if retention_h is None else {"KESTREAM_EXECUTOR_ENDED_RETENTION_H": str(retention_h)}
    async with Cluster(broker.bootstrap, prefix, tmp_path, effects, extra_env=extra) as cluster:
        client = cluster.require_client()
        settings, kind = cluster.settings, client.ctx.kind
        flow = await client.deploy(W1_FLOW.format(path=effects))
        await cluster.start(executor=2, worker=1)
        async with UpdatesWatch(settings, kind) as watch:
            submitted: dict[str, float] = {}
            await _submit_at(cluster, flow.namespace, flow.id, submitted, count, 1200.0)
            await drain(watch, lambda: list(submitted))
            if retention_h is not None:
                # Past the window, and past the executor's next prune of its markers (at most
                # once a minute, on its loop: a nudge makes sure the loop runs), whose
                # tombstones reach the changelog before the executors stop.
                await asyncio.sleep(retention_h * 3600 + PRUNE_EVERY_S)
                nudge = await client.submit(flow.namespace, flow.id)
                submitted[nudge] = time.time()
                await drain(watch, lambda: list(submitted))
            group = settings.topic("executor")
            topics = [client.ctx.topics.executions, client.ctx.topics.results,
                      client.ctx.topics.admissions]  # fmt: skip
            # Every input read and committed before the executors stop (a clean stop commits).
            for role in cluster.live("executor"):
                role.proc.terminate()
            for role in cluster.roles:
                if role.name == "executor":
                    await asyncio.to_thread(role.proc.wait, 30)
            ends_before = {eid: len(seen) for (eid, _), seen in watch.ends.items()}
            effects_before = len(read_effects(effects))
            replayed = await _reset_group(client.ctx, group, topics)
            for role in [r for r in cluster.roles if r.name == "executor"]:
                cluster.restart(role)
            await cluster.ready(cluster.live("executor"))
            deadline = time.monotonic() + 120.0
            while not await _caught_up(settings, kind, group, topics):
                assert time.monotonic() < deadline, "the executors never read to the end again"
                await asyncio.sleep(0.5)
            # One more execution through the same executors: the replay did not wedge them.
            late = await client.submit(flow.namespace, flow.id)
            submitted[late] = time.time()
            await drain(watch, lambda: list(submitted))
            await asyncio.sleep(2.0)  # let any late end record of a replayed execution show
            ends_after = {eid: len(seen) for (eid, _), seen in watch.ends.items()}
            again = {
                eid: n - ends_before.get(eid, 0)
                for eid, n in ends_after.items()
                if eid != late and n > ends_before.get(eid, 0)
            }
            found = read_effects(effects)
            redone = len(found) - effects_before - 1  # less the late execution's own effect
            tally = tally_executions(
                name, broker.backend, submitted, watch, found, cluster.kills,
                partitions=settings.partitions, bound_s=STUCK_BOUND_S[broker.kind] + 120.0,
            )  # fmt: skip
            tally.details.extend(cluster.errors())
    return tally, replayed, again, redone


@pytest.mark.parametrize(
    ("name", "count"),
    [
        pytest.param("offsets-reset", 40, id="short"),
        pytest.param("offsets-reset-long", 600, id="long", marks=LONG),
    ],
)
async def test_offsets_reset_to_earliest_inside_the_dedup_window_redo_nothing(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path, record_property: Record,
    name: str, count: int,
) -> None:  # fmt: skip
    tally, replayed, again, redone = await _offsets_reset(
        name, broker, topic_prefix, tmp_path, count, retention_h=None
    )
    report(tally, record_property)
    assert replayed >= 2 * count, "the reset made the executors read everything again"
    assert again == {}, f"executions that ended once more after the reset: {again}"
    assert redone == 0, f"{redone} effect(s) done again after the reset"
    tally.assert_clean()


# -- a rebalance while executions are held ----------------------------------------------------


REVISED = W1_FLOW.replace("path: {path}", "path: {path}\n    tag: revised")


async def _held_rebalance(
    name: str, broker: BrokerHandle, prefix: str, tmp_path: Path, count: int
) -> Tally:
    effects = tmp_path / "effects.jsonl"
    # Held past the second executor's start and the deploy, however slow the machine.
    extra = {"KESTREAM_EXECUTOR_FLOW_WAIT_S": "300"}
    async with Cluster(broker.bootstrap, prefix, tmp_path, effects, extra_env=extra) as cluster:
        client = cluster.require_client()
        flow = await client.deploy(W1_FLOW.format(path=effects))
        assert flow.revision is not None
        await cluster.start(executor=1, worker=1)
        async with UpdatesWatch(cluster.settings, client.ctx.kind) as watch:
            submitted: dict[str, float] = {}
            for index in range(count):
                created = ev.ExecutionCreated(
                    execution_id=f"held-{prefix}-{index}", namespace=flow.namespace,
                    flow_id=flow.id, revision=flow.revision + 1, inputs={},
                )  # fmt: skip
                await client.send(created)
                submitted[created.execution_id] = time.time()
            # The lone executor holds them all (their revision is unknown); a second one joins
            # and takes half the partitions, held events with them.
            second = cluster.spawn("executor", 1)
            cluster.roles.append(second)
            await cluster.ready([second])
            held_through = not any(watch.ended(eid) for eid in submitted)
            revised = await client.deploy(REVISED.format(path=effects))
            assert revised.revision == flow.revision + 1
            await drain(watch, lambda: list(submitted))
            found = read_effects(effects)
            tally = tally_executions(
                name, broker.backend, submitted, watch, found, cluster.kills,
                partitions=cluster.settings.partitions, bound_s=STUCK_BOUND_S[broker.kind] * 2,
            )  # fmt: skip
            if not held_through:
                tally.details.append("an execution ended before its revision was deployed")
                tally.failed += 1
            wrong = [e for e in found if e["tag"] != "revised"]
            if wrong:
                tally.failed += len(wrong)
                tally.details.append(f"ran on another revision than it named: {wrong[:3]}")
            owners = {r.label for r in cluster.live("executor") if r.claimed()}
            tally.details.extend(cluster.errors())
            assert owners == {"executor-0", "executor-1"}, owners
    return tally


@pytest.mark.parametrize(
    ("name", "count"),
    [
        pytest.param("held-rebalance", 40, id="short"),
        pytest.param("held-rebalance-long", 400, id="long", marks=LONG),
    ],
)
async def test_a_rebalance_while_executions_wait_for_their_revision(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path, record_property: Record,
    name: str, count: int,
) -> None:  # fmt: skip
    tally = await _held_rebalance(name, broker, topic_prefix, tmp_path, count)
    report(tally, record_property)
    tally.assert_clean()


#: A dedup window of 3.6 s: the reset comes after every marker of the run has expired.
SHORT_WINDOW_H = 0.001


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_offsets_reset_beyond_the_dedup_window_runs_ended_executions_again(
    broker: BrokerHandle, topic_prefix: str, tmp_path: Path, record_property: Record
) -> None:
    """What the README says of a reset past the window (its ended markers pruned, their
    tombstones in the changelog): each ended execution is a stranger again, so its redelivered
    creation runs it a second time and it ends a second time. Its task is not run again here
    only because the worker, not restarted, still remembers the finished job (its task-run id
    is the same) and answers with the stored result: in memory, for 10 minutes
    (``worker_jobs.DEDUP_TTL_S``). A worker restarted meanwhile, or a reset later than that,
    runs the task again. Raising the window (the count and the age) to cover the topics'
    retention is the defence; this pins the behaviour down."""
    count = 20
    tally, replayed, again, redone = await _offsets_reset(
        "offsets-reset-beyond-window", broker, topic_prefix, tmp_path, count,
        retention_h=SHORT_WINDOW_H,
    )  # fmt: skip
    report(tally, record_property)
    assert replayed >= 2 * count
    # The nudge (one more execution, so the prune ran) was inside the window: not redone.
    assert (len(again), redone) == (count, 0), (again, redone, tally.details[:10])
