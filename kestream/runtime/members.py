"""Member status: who is running in this installation, and is every one of them ready?

Each role process runs a :class:`MemberPublisher`: every :data:`HEARTBEAT_S` seconds, and at once
whenever its readiness changes, it writes a record to the compacted, one-partition ``members``
topic, keyed ``<role>/<hostname>/<pid>``, saying what its :class:`~kestream.runtime.health.Health`
says (:class:`MemberStatus`). At a clean stop it writes a tombstone, so it leaves the table at once.

The API role runs a :class:`MemberBoard`: it reads the topic from the beginning without a
consumer group (every reader sees every member), keeps the latest record per key in a
:class:`Roster`, and answers whether the installation is ready:

- a member counts while it has been heard from within :data:`STALE_BEATS` heartbeats; one that
  fell silent longer (killed, or its host is gone) is ignored, as if it had written a tombstone;
- the installation is ready when every member that counts is ready and live, and the roles
  :data:`REQUIRED_ROLES` (an executor and a worker) are each present at least once.

Freshness compares the record's ``ts`` (the publisher's wall clock) with the reader's wall clock:
processes on several hosts need synchronised clocks (NTP), which a Kafka installation has anyway.
A silent member cannot be told apart from a member whose event loop is blocked: both stop
counting after three beats, and that member's own ``/health/live`` is what shows the block.

On the embedded broker (Tansu) nothing is ever compacted, so a board that starts late reads every
heartbeat ever written (about 0.5 records per second per process): a few seconds of reading after
a day of uptime, which the board does before it first says "ready".
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from kestream.runtime import records
from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.compacted import assign_from_start, reached
from kestream.runtime.context import BrokerContext
from kestream.runtime.health import Health
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.member_rates import RateWindow
from kestream.runtime.metrics import Metrics

log = logging.getLogger("kestream.members")

#: A member writes its status this often (seconds), and at once when its readiness changes.
HEARTBEAT_S = 2.0
#: A member silent for this many heartbeats no longer counts.
STALE_BEATS = 3
#: How often a publisher looks at its own readiness (a change is published at once).
CHECK_S = 0.2
#: The same, until its process has first been ready: an installation's start waits for that
#: record (the API's ``/health/ready``), and a look costs a few microseconds.
STARTING_CHECK_S = 0.02
#: Roles an installation cannot be ready without.
REQUIRED_ROLES = ("executor", "worker")
_FETCH_TIMEOUT_MS = 200
_RETRY_BACKOFF_S = 0.5

WallClock = Callable[[], float]


def member_key(role: str, host: str, pid: int) -> str:
    """The members topic's record key of one process."""
    return f"{role}/{host}/{pid}"


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One process's status as it last published it (times are Unix seconds)."""

    role: str
    host: str
    pid: int
    #: Its ops HTTP port (``/metrics``, ``/health/*``), if it serves one.
    port: int | None
    ready: bool
    live: bool
    started: float
    ts: float
    #: Names of its health parts that are not ready (empty when ready).
    not_ready: tuple[str, ...] = ()
    #: A worker's group (``kestream worker --group``); ``None`` for the default workers and
    #: for the other roles.
    group: str | None = None
    #: The task types a worker can run (built-ins and its plugins); empty for other roles.
    task_types: tuple[str, ...] = ()
    #: What the cluster page shows of the process (:func:`process_facts`): its health checks'
    #: public facts (partitions owned, jobs, executions), consumer lag, worker slots, dead
    #: letters, and throughput and latency since its last record (:mod:`.member_rates`).
    #: Numbers only, as the open ``/health`` shows.
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return member_key(self.role, self.host, self.pid)

    def encode(self) -> bytes:
        return records.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes | None) -> MemberStatus:
        """Parse a record value; raises :class:`records.RecordError` when it is not a status."""
        body = records.loads(data)
        if not isinstance(body, dict):
            raise records.RecordError("a member status must be a JSON object")
        try:
            port = body.get("port")
            return cls(
                role=str(body["role"]),
                host=str(body["host"]),
                pid=int(body["pid"]),
                port=int(port) if port is not None else None,
                ready=bool(body["ready"]),
                live=bool(body["live"]),
                started=float(body["started"]),
                ts=float(body["ts"]),
                not_ready=tuple(str(name) for name in body.get("not_ready") or ()),
                group=str(group) if (group := body.get("group")) is not None else None,
                task_types=tuple(str(name) for name in body.get("task_types") or ()),
                facts=facts if isinstance(facts := body.get("facts"), dict) else {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise records.RecordError(f"bad member status: {type(exc).__name__}: {exc}") from None


class Roster:
    """The latest status per member, and the installation's readiness (pure: no I/O).

    Args:
        interval: the members' heartbeat period; members silent for ``STALE_BEATS`` of them no
            longer count.
        required_roles: roles that must each have a member that counts.
        clock: wall clock (Unix seconds), injected by tests.
    """

    def __init__(
        self,
        *,
        interval: float = HEARTBEAT_S,
        required_roles: Iterable[str] = REQUIRED_ROLES,
        clock: WallClock = time.time,
    ) -> None:
        self.stale_after = STALE_BEATS * interval
        self.required_roles = tuple(required_roles)
        self.clock = clock
        self._latest: dict[str, MemberStatus] = {}
        #: Live workers' last heartbeat by group and member key: what :meth:`group_alive` reads.
        self._workers: dict[str | None, dict[str, float]] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        """One record of the members topic: a status, or a tombstone (``None``)."""
        if value is None:
            self._forget(key)
            return
        try:
            status = MemberStatus.decode(value)
        except records.RecordError as exc:  # one bad record never stops the board
            log.warning("members: skipping the record of %s: %s", key or "<no key>", exc)
            return
        self._store(key, status)

    def put(self, status: MemberStatus) -> None:
        self._store(status.key, status)

    def _store(self, key: str, status: MemberStatus) -> None:
        self._forget(key)
        self._latest[key] = status
        if status.role == "worker" and status.live:
            self._workers.setdefault(status.group, {})[key] = status.ts

    def _forget(self, key: str) -> None:
        old = self._latest.pop(key, None)
        if old is not None and old.role == "worker":
            group = self._workers.get(old.group)
            if group is not None:
                group.pop(key, None)
                if not group:
                    del self._workers[old.group]

    def group_alive(self, group: str | None, now: float | None = None) -> bool:
        """Has a live worker of ``group`` been heard from recently enough to count?

        Costs at most the number of the group's workers (silent ones are dropped as they are
        met), not the size of the installation: the executor asks this for every job of a
        worker group it dispatches.
        """
        beats = self._workers.get(group)
        if not beats:
            return False
        horizon = (self.clock() if now is None else now) - self.stale_after
        for key, ts in list(beats.items()):
            if ts >= horizon:
                return True
            del beats[key]  # silent too long (killed): back if it beats again
        return False

    def members(self, now: float | None = None) -> list[MemberStatus]:
        """Members heard from recently enough to count, by key."""
        now = self.clock() if now is None else now
        horizon = now - self.stale_after
        return [s for _, s in sorted(self._latest.items()) if s.ts >= horizon]

    def status(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)`` of the installation (see the module doc for the rule)."""
        now = self.clock() if now is None else now
        members = self.members(now)
        roles = {m.role for m in members}
        missing = [role for role in self.required_roles if role not in roles]
        not_ready = [m.key for m in members if not (m.ready and m.live)]
        ok = not missing and not not_ready
        return ok, {
            "status": "UP" if ok else "DOWN",
            "members": [_describe(m, now) for m in members],
            "notReady": not_ready,
            "missingRoles": missing,
        }


#: The label a role's own series carry, where it is not the role's name.
_OWN_LABEL = {"api": "index"}


def process_facts(role: str, checks: dict[str, Any], metrics: Metrics | None) -> dict[str, Any]:
    """The figures a member publishes for the cluster page (see :attr:`MemberStatus.facts`).

    ``checks`` are its health's checks as ``/health/ready`` shows them (public facts only). From
    ``metrics``: the role's own records behind the high watermark (the sum over the partitions
    it reads, and per partition number) and dead letters, for a worker the jobs running and its
    thread slots, and for an executor its stream threads (executor processors running). A
    process may host several roles (standalone) with one registry: each role's record keeps the
    series labelled with its own name (the API's dead letters are the index's). Read from the
    process's own registry: no request, no lock held long.
    """
    facts: dict[str, Any] = {"checks": checks}
    if metrics is None:
        return facts
    own = _OWN_LABEL.get(role, role)
    lag = _samples(metrics.consumer_lag, "consumer")
    dead = _samples(metrics.dead_letters_total, "source", suffix="_total")
    facts["consumerLag"] = {k: v for k, v in lag.items() if k == own}
    facts["partitionLag"] = {
        sample.labels["partition"]: sample.value
        for family in metrics.consumer_partition_lag.collect()
        for sample in family.samples
        if sample.labels.get("consumer") == own
    }
    facts["deadLetters"] = {k: v for k, v in dead.items() if k == own}
    if role == "worker":
        facts["jobsRunning"] = _single(metrics.worker_job_running)
        facts["slots"] = _single(metrics.worker_job_thread)
    if role == "executor":
        facts["streamThreads"] = _single(metrics.executor_threads)
    return facts


def _samples(metric: Any, label: str, suffix: str = "") -> dict[str, float]:
    """One metric's samples by the value of ``label`` (counters: the ``_total`` ones)."""
    return {
        sample.labels[label]: sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith(suffix) and label in sample.labels
    }


def _single(metric: Any) -> float:
    """The value of an unlabelled gauge."""
    return float(next(s.value for family in metric.collect() for s in family.samples))


def _describe(member: MemberStatus, now: float) -> dict[str, Any]:
    out = asdict(member)
    out["key"] = member.key
    out["ageS"] = round(max(0.0, now - member.ts), 3)
    out["not_ready"] = list(member.not_ready)
    del out["facts"]  # behind credentials, on the cluster route; /health is open
    return out


class MemberPublisher:
    """Publishes this process's :class:`MemberStatus` (see the module doc).

    Args:
        ctx: the broker and topics.
        role: ``executor``, ``worker``, ``scheduler`` or ``api``.
        health: this process's health; its ``ready()`` is what is published.
        port: the process's ops HTTP port, published so tools can find ``/metrics``.
        metrics: if given, its ``kestream_ready`` gauge follows the published readiness.
        group: a worker's group (``None``: the default workers), published so executors know
            whether the group has a live worker (:meth:`Roster.group_alive`).
        task_types: the task types a worker can run, published for operators.
    """

    def __init__(
        self,
        ctx: BrokerContext,
        role: str,
        health: Health,
        *,
        port: int | None = None,
        metrics: Metrics | None = None,
        interval: float = HEARTBEAT_S,
        check_every: float = CHECK_S,
        host: str | None = None,
        pid: int | None = None,
        clock: WallClock = time.time,
        group: str | None = None,
        task_types: Iterable[str] = (),
    ) -> None:
        self.ctx = ctx
        self.role = role
        self.group = group
        self.task_types = tuple(task_types)
        self.health = health
        self.port = port
        self.metrics = metrics
        #: Throughput and latency since the last record (:mod:`.member_rates`).
        self._rates = RateWindow(role, metrics) if metrics is not None else None
        self.interval = interval
        self.check_every = check_every
        self.host = host or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.clock = clock
        self.started = clock()
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[bool, bool, tuple[str, ...]] | None = None
        self._last_sent = 0.0
        self._failing = False
        #: It has published "ready" once: from then on it looks every ``check_every``.
        self._was_ready = False

    @property
    def key(self) -> str:
        return member_key(self.role, self.host, self.pid)

    def status(self) -> MemberStatus:
        """What this process would publish now."""
        ready, detail = self.health.ready()
        live, _ = self.health.live()
        not_ready = () if ready else tuple(self.health.not_ready())
        facts = process_facts(self.role, detail.get("checks", {}), self.metrics)
        if self._rates is not None:
            facts.update(self._rates.figures())
        return MemberStatus(
            self.role, self.host, self.pid, self.port, ready, live, self.started, self.clock(),
            not_ready, self.group, self.task_types, facts,
        )  # fmt: skip

    async def start(self) -> None:
        """Publish a first status, then keep publishing in a background task."""
        ctx = self.ctx
        self._producer = make_producer(ctx.settings, ctx.bootstrap, ctx.kind)
        await self._producer.start()
        await self.publish()
        self._task = asyncio.create_task(self._run(), name="member-publisher")

    async def stop(self) -> None:
        """Stop publishing and leave the table (a tombstone), best effort."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await producer.send_and_wait(self.ctx.topics.members, None, key=self.key.encode())
        except KafkaError as exc:  # the board forgets a silent member after a few beats anyway
            log.warning("members: could not write the tombstone of %s: %s", self.key, exc)
        finally:
            await producer.stop()

    async def publish(self) -> MemberStatus:
        """Write the current status now (also what the loop calls)."""
        status = self.status()
        self._last = (status.ready, status.live, status.not_ready)
        self._was_ready = self._was_ready or status.ready
        self._last_sent = time.monotonic()
        if self.metrics is not None:
            self.metrics.ready_gauge.set(1 if status.ready else 0)
        producer = self._producer
        if producer is None:
            raise RuntimeError("the member publisher is not started")
        try:
            await producer.send_and_wait(
                self.ctx.topics.members, status.encode(), key=self.key.encode()
            )
        except KafkaError as exc:
            if not self._failing:  # say it once per outage, not every beat
                log.warning("members: publishing the status of %s failed: %s", self.key, exc)
            self._failing = True
        else:
            self._failing = False
        return status

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_every if self._was_ready else STARTING_CHECK_S)
            ready, _ = self.health.ready()
            live, _ = self.health.live()
            now = (ready, live, () if ready else tuple(self.health.not_ready()))
            if now != self._last or time.monotonic() - self._last_sent >= self.interval:
                try:
                    await self.publish()
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let the heartbeat die: its silence reads as "gone"
                    log.exception("members: publishing failed")
                    await asyncio.sleep(_RETRY_BACKOFF_S)


class MemberBoard:
    """Follows the members topic and says whether the installation is ready (the API uses it).

    :meth:`status` is "not ready" until the topic has been read up to the high watermark found at
    start: before that, the board cannot know who is running. ``ctx`` may be given to
    :meth:`start` instead, so the board can exist (and be handed to the HTTP routes) before the
    process has connected to the broker.
    """

    def __init__(self, ctx: BrokerContext | None = None, roster: Roster | None = None) -> None:
        self.ctx = ctx
        self.roster = roster if roster is not None else Roster()
        #: Set once the topic has been read to the end found at start.
        self.loaded = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, ctx: BrokerContext | None = None) -> None:
        """Read the topic from the beginning in the background (:attr:`loaded` when caught up)."""
        ctx = self.ctx = ctx or self.ctx
        if ctx is None:
            raise ValueError("MemberBoard.start needs a broker context")
        consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        await consumer.start()
        self._consumer = consumer
        try:
            targets = await assign_from_start(consumer, ctx.topics.members)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._run(consumer, targets), name="member-board")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def status(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)`` of the whole installation."""
        if not self.loaded.is_set():
            return False, {"status": "DOWN", "reason": "reading the members topic"}
        return self.roster.status()

    async def _run(self, consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> None:
        while True:
            try:
                await self._poll(consumer)
                if not self.loaded.is_set() and await reached(consumer, targets):
                    self.loaded.set()
                    log.info("members table loaded: %d members", len(self.roster.members()))
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:  # transient broker trouble: keep following
                log.warning("members: fetch failed (%s); retrying", exc)
                await asyncio.sleep(_RETRY_BACKOFF_S)

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        batch = await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS)
        for recs in batch.values():
            for record in recs:
                key = record.key.decode("utf-8", "replace") if record.key is not None else ""
                self.roster.apply(key, record.value)
